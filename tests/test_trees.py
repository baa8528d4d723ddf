"""Trees of files (``[watch] recursive = true``): producers that write directories, as
they really do: ``tar -x``, ``cp -r``, ``rsync -a``, ``mv`` of a whole directory, a
directory made and filled within milliseconds, one renamed in while its files are still
being written. Every regular file under ``unprocessed/`` is processed once, under its
path relative to ``unprocessed/`` everywhere (its folders, its outputs, the journal);
hidden and symlinked directories are never entered; the directories the queue empties
go once they stayed empty ``empty_dirs_after``."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.daemon import (
    BASE_CONFIG,
    SUPERVISOR,
    Daemon,
    dashboard_url,
    http_json,
    journal,
    pace,
    start,
    wait_for,
    write_config,
)
from tests.deployed import Deployment, Site, start_deployed
from workers.names import shown

pytestmark = pytest.mark.timeout(120)

TREE = """
[watch]
recursive = true
empty_dirs_after = 0.5
"""
NON_UTF8 = os.fsdecode(b"caf\xe9-\xff")  # a directory name that is not UTF-8


def tree_config(tmp_path: Path, extra: str = "") -> Path:
    return write_config(tmp_path, BASE_CONFIG.replace("[watch]\n", TREE), extra)


def files_under(top: Path) -> dict[str, bytes]:
    """Every file below ``top`` (hidden ones too) by its relative path."""
    found = {}
    for dirpath, _dirs, names in os.walk(top):
        for name in names:
            path = Path(dirpath) / name
            found[os.fsdecode(path.relative_to(top))] = path.read_bytes()
    return found


def dirs_under(top: Path) -> list[str]:
    return sorted(os.fsdecode(Path(d).relative_to(top)) for d, _, _ in os.walk(top) if Path(d) != top)


def make_tree(top: Path, files: dict[str, str]) -> dict[str, bytes]:
    """Files of ``files`` (relative path -> text) under ``top``; returns their bytes."""
    out = {}
    for rel, text in files.items():
        path = top / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        out[rel] = text.encode()
    return out


def done(entry: dict) -> bool:
    """A journal entry that ends a file in processed/: its ``processed`` line, or, for a
    file its supervisor moved there just before it was killed (the line not written yet),
    the restarted one's ``reconciled`` line."""
    return entry["event"] == "processed" or (entry["event"] == "reconciled" and entry.get("status") == "processed")


def processed_once(watch: Path, names: list[str], timeout_s: float = 30, claimed_once: bool = True) -> list[dict]:
    """Wait until each of ``names`` has ended in processed/ in the journal; each did once
    (and was claimed once: nothing was taken before it was whole)."""
    shown_names = {shown(n) for n in names}
    wait_for(lambda: shown_names <= {e["file"] for e in journal(watch) if done(e)}, timeout_s,
             f"{len(names)} files processed")
    events = journal(watch)
    counts = Counter(e["file"] for e in events if done(e))
    assert all(counts[n] == 1 for n in shown_names), {n: counts[n] for n in shown_names if counts[n] != 1}
    if claimed_once:
        counts = Counter(e["file"] for e in events if e["event"] == "claimed")
        twice = {n: counts[n] for n in shown_names if counts[n] != 1}
        assert not twice, ("claimed", twice)
    return events


def test_a_tree_unpacked_by_tar_is_processed_under_its_relative_paths(tmp_path: Path, daemons: list[Daemon]
                                                                     ) -> None:
    config = tree_config(tmp_path)
    config.write_text(config.read_text().replace("[pipeline.nodes.start]", """
        [[routes]]
        match = ["acme/**/*.csv"]
        pipeline = "keep"

        [[routes]]
        match = ["*"]
        pipeline = "up"

        [pipelines.keep.nodes.start]
        processor = "lower"

        [pipelines.up.nodes.start]""".replace("\n        ", "\n")))
    watch = tmp_path / "watch_dir"
    src = tmp_path / "src"
    files = make_tree(src, {
        "top.log": "Top\n",
        "acme/2026-12/x.csv": "A,B\n",  # routed by its path
        "acme/x.csv": "C,D\n",  # ** spans no directory too
        "other/acme/x.csv": "E,F\n",  # not under acme/: the catch-all route
        "a/b/c/d/deep.log": "Deep\n",
        "a/same.log": "First\n",  # one base name in two directories: no collision
        "b/same.log": "Second\n",
        f"{NON_UTF8}/x.log": "Raw bytes\n",
    })
    d = start(daemons, config)
    archive = tmp_path / "tree.tar"
    subprocess.run(["tar", "-C", str(src), "-cf", str(archive), "."], check=True)
    subprocess.run(["tar", "-C", str(watch / "unprocessed"), "-xf", str(archive)], check=True)
    events = processed_once(watch, list(files))
    assert files_under(watch / "processed") == files
    outputs = files_under(watch / "output")
    for rel, data in files.items():
        lowered = rel.startswith("acme/")
        assert outputs[rel] == (data.lower() if lowered else data.upper()), rel
    assert {e["file"]: e["pipeline"] for e in events if e["event"] == "processed"}[shown("acme/2026-12/x.csv")] \
        == "keep"
    # The directories the queue emptied go, the folders themselves stay.
    wait_for(lambda: dirs_under(watch / "unprocessed") == [] and dirs_under(watch / "underprocess") == [], 10,
             "the emptied directories removed")
    assert all((watch / f).is_dir() for f in ("unprocessed", "underprocess"))
    assert d.alive()


def test_directories_moved_copied_or_made_at_once_are_found_entire(tmp_path: Path, daemons: list[Daemon]) -> None:
    config = tree_config(tmp_path)
    watch = tmp_path / "watch_dir"
    start(daemons, config)
    unprocessed = watch / "unprocessed"
    # mv of a whole directory built beside (one rename: a tree appears at once)
    stage = watch / "stage"
    moved = make_tree(stage / "batch", {f"part-{i:03d}.log": f"moved {i}\n" for i in range(40)} |
                      {f"sub/{i}/x.log": f"moved sub {i}\n" for i in range(10)})
    os.rename(stage / "batch", unprocessed / "batch")
    # cp -r: directories made and filled by another process
    copied = make_tree(tmp_path / "copy-src", {f"c{i % 4}/f{i}.log": f"copied {i}\n" for i in range(40)})
    subprocess.run(["cp", "-r", str(tmp_path / "copy-src"), str(unprocessed / "copied")], check=True)
    # a directory made and filled within milliseconds, nested ones at once (mkdir -p)
    quick: dict[str, bytes] = {}
    for i in range(30):
        rel = f"quick/d{i}/e/f/x{i}.log"
        (unprocessed / rel).parent.mkdir(parents=True)
        (unprocessed / rel).write_text(f"quick {i}\n")
        quick[rel] = f"quick {i}\n".encode()
    expected = {f"batch/{k}": v for k, v in moved.items()} | {f"copied/{k}": v for k, v in copied.items()} | quick
    processed_once(watch, list(expected))
    assert files_under(watch / "processed") == expected
    assert files_under(watch / "output") == {k: v.upper() for k, v in expected.items()}


def test_a_directory_renamed_in_while_a_file_in_it_is_written_waits_for_the_file(
        tmp_path: Path, daemons: list[Daemon]) -> None:
    config = tree_config(tmp_path)
    watch = tmp_path / "watch_dir"
    start(daemons, config)
    stage = watch / "stage" / "upload"
    stage.mkdir(parents=True)
    (stage / "done.log").write_text("already whole\n")
    chunks = [f"line {i} of a slow upload\n" for i in range(5)]
    with open(stage / "slow.log", "w") as f:
        f.write(chunks[0])
        f.flush()
        os.rename(stage, watch / "unprocessed" / "upload")  # open, and written to, after its directory came
        for chunk in chunks[1:]:
            pace(0.5)  # longer than settle (0.3 s): only the open file holds it
            f.write(chunk)
            f.flush()
    processed_once(watch, ["upload/done.log", "upload/slow.log"])
    assert (watch / "output" / "upload" / "slow.log").read_text() == "".join(chunks).upper()
    assert not [e for e in journal(watch) if e["event"] in ("changed", "retried", "failed")]


def test_rsync_of_a_tree_its_temporary_files_and_renames(tmp_path: Path, daemons: list[Daemon]) -> None:
    rsync = shutil.which("rsync")
    if rsync is None:
        if os.environ.get("CI"):
            pytest.fail("rsync is missing (make test installs it as root)")
        pytest.skip("rsync is missing: sudo apt-get install rsync")
    config = tree_config(tmp_path)
    watch = tmp_path / "watch_dir"
    start(daemons, config)
    files = make_tree(tmp_path / "src", {f"r{i % 5}/deep/{i}.log": f"rsynced {i}\n" * 200 for i in range(50)})
    # rsync writes each file as a hidden ".NAME.XXXXXX" beside its final name, then renames it.
    subprocess.run([rsync, "-a", f"{tmp_path / 'src'}/", str(watch / "unprocessed" / "mirror")], check=True)
    expected = {f"mirror/{k}": v for k, v in files.items()}
    events = processed_once(watch, list(expected))
    assert files_under(watch / "processed") == expected
    assert not [e for e in events if "/." in e["file"]]  # a temporary file is never work


def test_hidden_symlinked_and_too_deep_directories_are_never_entered(tmp_path: Path, daemons: list[Daemon]) -> None:
    config = tree_config(tmp_path)
    text = config.read_text().replace("empty_dirs_after = 0.5\n", "empty_dirs_after = 0.5\nmax_depth = 2\n")
    config.write_text(text)
    watch = tmp_path / "watch_dir"
    outside = tmp_path / "outside"
    make_tree(outside, {"secret.log": "not yours\n"})
    unprocessed = watch / "unprocessed"
    make_tree(unprocessed, {".git/objects/x.log": "hidden\n", "a/b/ok.log": "two down\n",
                            "a/b/c/too-deep.log": "three down\n"})
    os.symlink(outside, unprocessed / "a" / "link")
    d = start(daemons, config)
    processed_once(watch, ["a/b/ok.log"])
    wait_for(lambda: (watch / "failed" / "a" / "link").is_symlink(), 10, "the symlinked directory rejected")
    assert "symlink" in (watch / "failed" / "a" / "link.reason").read_text()
    assert (outside / "secret.log").read_text() == "not yours\n"  # never entered, never moved
    pace(1.0)  # a few passes over the tree (poll_interval 0.2 s)
    assert (unprocessed / ".git" / "objects" / "x.log").exists()
    assert (unprocessed / "a" / "b" / "c" / "too-deep.log").exists()
    assert not [e for e in journal(watch) if "too-deep" in e["file"] or ".git" in e["file"]]
    said = "unprocessed/a/b/c is not entered: deeper than max_depth = 2"
    assert d.log().count(said) == 1, d.log()


def test_a_directory_waits_for_its_ready_marker(tmp_path: Path, daemons: list[Daemon]) -> None:
    config = tree_config(tmp_path)
    config.write_text(config.read_text().replace("empty_dirs_after = 0.5\n",
                                                 'empty_dirs_after = 0.5\ndir_ready_marker = "_SUCCESS"\n'))
    watch = tmp_path / "watch_dir"
    start(daemons, config)
    job = watch / "unprocessed" / "job-1"
    files = make_tree(job, {f"part-{i:05d}.log": f"part {i}\n" for i in range(6)} |
                      {"year=2026/part-00009.log": "partitioned\n"})
    make_tree(watch / "unprocessed", {"flat.log": "no directory, no marker\n"})
    processed_once(watch, ["flat.log"])
    pace(1.0)  # more than settle and several passes: the job's files wait for the marker
    assert not [e for e in journal(watch) if e["file"].startswith("job-1/")]
    (job / "_SUCCESS").write_text("")
    processed_once(watch, [f"job-1/{k}" for k in files])
    assert not [e for e in journal(watch) if e["file"].endswith("_SUCCESS")]  # the marker is not work
    wait_for(lambda: not job.exists(), 10, "the delivered directory (and its marker) removed once empty")


def test_empty_directories_go_after_the_setting_but_never_one_being_filled(tmp_path: Path,
                                                                          daemons: list[Daemon]) -> None:
    config = tree_config(tmp_path)
    config.write_text(config.read_text().replace("empty_dirs_after = 0.5", "empty_dirs_after = 1.0"))
    watch = tmp_path / "watch_dir"
    start(daemons, config)
    unprocessed = watch / "unprocessed"
    make_tree(unprocessed, {"done/x.log": "one\n"})
    processed_once(watch, ["done/x.log"])
    emptied_at = time.monotonic()
    # A producer adds a file to "filling/" every 0.3 s for 2.4 s: each is claimed at once,
    # so the directory is empty most of the time, but never for 1 s; it must stay.
    names = []
    for i in range(8):
        (unprocessed / "filling").mkdir(exist_ok=True)
        with open(unprocessed / "filling" / f"{i}.log", "w") as f:  # fails if the directory went
            f.write(f"{i}\n")
        names.append(f"filling/{i}.log")
        pace(0.3)
    processed_once(watch, names)
    assert not (unprocessed / "done").exists()  # emptied long ago
    assert time.monotonic() - emptied_at > 1.0
    wait_for(lambda: not (unprocessed / "filling").exists(), 10, "filling/ removed once it stayed empty")
    assert (watch / "processed" / "filling").is_dir()  # results keep their directories


def test_a_supervisor_killed_amid_a_tree_leaves_every_file_processed_once(tmp_path: Path,
                                                                         daemons: list[Daemon]) -> None:
    config = tree_config(tmp_path)
    watch = tmp_path / "watch_dir"
    files = make_tree(watch / "unprocessed", {f"k{i % 7}/j{i % 3}/{i}.log": f"kill {i}\n" * 50 for i in range(150)})
    d = start(daemons, config)
    wait_for(lambda: len([e for e in journal(watch) if e["event"] == "processed"]) >= 20, 30, "some processed")
    os.kill(d.pid, signal.SIGKILL)
    d.wait()
    wait_for(lambda: not d.workers(), 10, "the workers to notice their supervisor is gone")
    start(daemons, config, name="restarted")
    processed_once(watch, list(files), timeout_s=60, claimed_once=False)  # those in flight at the kill: again
    assert files_under(watch / "processed") == files
    assert files_under(watch / "output") == {k: v.upper() for k, v in files.items()}


MAX_WATCHES = Path("/proc/sys/fs/inotify/max_user_watches")


@pytest.mark.serial  # the limit is the machine's: lowered, it would starve the tests running beside it
def test_out_of_inotify_watches_the_tree_is_found_by_passes_and_said_once(
        daemons: list[Daemon], deployment: Deployment, site: Site) -> None:
    """The service user may hold 4 inotify watches (``fs.inotify.max_user_watches``, a
    limit per user: root's own watches elsewhere are not touched); a tree of 12
    directories needs 13. The directories without a watch are found by passes: every
    file is processed, a directory made afterwards too; it is said once in the log and
    on ``/health``."""
    site.write_config(BASE_CONFIG.replace("[watch]\n", TREE))
    files = {}
    for i in range(12):
        rel = f"d{i:02d}/f.log"
        files[rel] = f"file {i}\n".encode()
    _group_tree(site.unprocessed, files)
    was = MAX_WATCHES.read_text()
    MAX_WATCHES.write_text("4\n")
    try:
        d = start_deployed(daemons, deployment, site)
        processed_once(site.watch, list(files))
        later = {"late/one/x.log": b"made after the start\n"}
        _group_tree(site.unprocessed, later)
        processed_once(site.watch, list(later))
        body = http_json(dashboard_url(d) + "health")[1]
        assert "max_user_watches" in body["file_events"], body
        assert d.log().count("no inotify watch left") == 1, d.log()
        assert d.alive()
    finally:
        MAX_WATCHES.write_text(was)


def _group_tree(top: Path, files: dict[str, bytes]) -> None:
    """Files written as root into a deployed site's unprocessed/, their directories
    group-writable (setgid: the group's), as an uploader in the group makes them."""
    for rel, data in files.items():
        path = top / rel
        for parent in reversed(path.relative_to(top).parents):
            folder = top / parent
            if parent != Path(".") and not folder.exists():
                folder.mkdir()
                folder.chmod(0o2775)
        path.write_bytes(data)


ROUTES = """
[watch]
recursive = true

[[routes]]
match = ["acme/**/*.csv"]
pipeline = "keep"

[[routes]]
match = ["*.csv", "*.log"]
pipeline = "up"

[pipelines.keep.nodes.start]
processor = "lower"

[pipelines.up.nodes.start]
processor = "upper"
"""


def test_check_and_run_say_which_route_a_path_takes(tmp_path: Path) -> None:
    config = write_config(tmp_path, ROUTES)
    check = subprocess.run([sys.executable, str(SUPERVISOR), "-c", str(config), "check", "acme/2026/12/x.csv",
                            "acme/x.csv.gz", "other/acme/x.csv", "x.txt"], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr
    lines = check.stdout.splitlines()
    assert "acme/2026/12/x.csv: routes[1] ['acme/**/*.csv'] -> pipeline keep" in lines
    assert "acme/x.csv.gz: routes[1] ['acme/**/*.csv'] -> pipeline keep (matched as 'acme/x.csv')" in lines
    assert "other/acme/x.csv: routes[2] ['*.csv', '*.log'] -> pipeline up" in lines
    assert any(line.startswith("x.txt: no route matches this name") for line in lines)
    # run FILE routes a file in a queue folder by its path there, one elsewhere by the path typed
    make_tree(tmp_path / "watch_dir" / "unprocessed", {"acme/9/a.csv": "Mixed\n"})
    make_tree(tmp_path / "acme", {"b.csv": "Mixed\n"})
    run = subprocess.run([sys.executable, str(SUPERVISOR), "-c", str(config), "run", "--output-dir",
                          str(tmp_path / "out"), str(tmp_path / "watch_dir" / "unprocessed" / "acme" / "9" / "a.csv"),
                          "acme/b.csv", str(tmp_path / "acme" / "b.csv")],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "acme/9/a.csv: routes[1] ['acme/**/*.csv'] -> pipeline keep" in run.stdout
    assert "acme/b.csv: routes[1] ['acme/**/*.csv'] -> pipeline keep" in run.stdout
    assert "b.csv: routes[2] ['*.csv', '*.log'] -> pipeline up" in run.stdout.splitlines()
    assert (tmp_path / "out" / "a.csv").read_text() == "mixed\n"
