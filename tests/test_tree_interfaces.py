"""Relative paths through the operator's interfaces (issue 21), with ``[watch] recursive =
true``: the real CLI in a subprocess and the real dashboard over real HTTP, on real files
in ``tmp_path`` (laid out by hand, or failed by a real supervisor). retry, discard and
replay of nested names, ``retry --all`` and "retry all" over failed/'s directories,
``history`` and ``status`` by relative path, a directory whose name is not UTF-8 both as
a ref and in its shown form, and the refusals: ``..``, an absolute path, a symlinked
directory on the way (nothing outside the watch dir is read or moved)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.daemon import ROOT, behave_config, dashboard_url, journal, start, wait_for
from tests.test_console import call

RAW_DIR = b"d\xff".decode("utf-8", "surrogateescape")  # a directory name that is not UTF-8
RAW_NAME = f"{RAW_DIR}/y.log"
RAW_SHOWN = "d\\xff/y.log"  # workers/names.py: shown
RAW_REF = "d%FF%2Fy.log"  # web/lookup.py: ref, one part of a URL


def tree_config(tmp_path: Path) -> Path:
    config = behave_config(tmp_path)
    config.write_text(config.read_text().replace("[watch]\n", "[watch]\nrecursive = true\n", 1))
    return config


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "supervisor.py"), "-c", str(config), *args],
                          capture_output=True, text=True, timeout=60)


def deliver(watch: Path, name: str, content: str) -> None:
    """Into unprocessed/<name> the way producers should: directories first, then the
    file written beside and renamed in."""
    target = watch / "unprocessed" / name
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = watch / f".incoming-{os.getpid()}-{os.urandom(4).hex()}"
    tmp.write_text(content)
    os.rename(tmp, target)


def lay_failed(watch: Path, name: str, reason: str = "it failed") -> None:
    """failed/<name> and its reason beside it, as a supervisor leaves them."""
    path = watch / "failed" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{name}\n")
    path.with_name(path.name + ".reason").write_text(reason + "\n")


def files_under(folder: Path) -> list[str]:
    """Every file (and symlink) below ``folder`` by its relative path, symlinks not entered."""
    found = []
    for top, dirs, files in os.walk(folder):
        rel = os.path.relpath(top, folder)
        found += [n if rel == "." else f"{rel}/{n}" for n in files]
        found += [n if rel == "." else f"{rel}/{n}" for n in dirs if os.path.islink(os.path.join(top, n))]
    return sorted(found)


def outside_with_a_secret(tmp_path: Path) -> Path:
    """A directory outside the watch dir holding a file, for symlinks to point at."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "s.log").write_text("TOP SECRET\n")
    return outside


def test_cli_retries_discards_replays_and_shows_nested_names(tmp_path: Path, daemons) -> None:
    config = tree_config(tmp_path)
    watch = tmp_path / "watch_dir"
    broken = tmp_path / "flags" / "broken"
    broken.touch()
    start(daemons, config)
    for name in ("acme/2026-12/x.log", "other/x.log"):  # one base name in two directories
        deliver(watch, name, "FAILIF broken\n")
    deliver(watch, "ok/a/r.log", "fine\n")
    wait_for(lambda: files_under(watch / "failed") == ["acme/2026-12/x.log", "acme/2026-12/x.log.reason",
                                                       "other/x.log", "other/x.log.reason"]
             and files_under(watch / "processed") == ["ok/a/r.log"], 30, "two nested failures and one processed")
    wait_for(lambda: sum(e["event"] == "failed" for e in journal(watch)) == 2, 10, "both failures journalled")

    history = cli(config, "history", "acme/2026-12/x.log")
    assert history.returncode == 0, history.stderr
    lines = history.stdout.splitlines()
    assert all(" acme/2026-12/x.log " in line for line in lines) and "failed" in lines[-1]
    assert "other/x.log" not in history.stdout  # the same base name elsewhere is another file
    status = json.loads(wait_for(lambda: (s := cli(config, "status", "--json")).returncode == 0 and s.stdout, 10,
                                 "status to answer"))
    assert status["folders"]["failed"] == 2 and status["folders"]["processed"] == 1
    assert {f["file"] for f in status["recent_failures"]} == {"acme/2026-12/x.log", "other/x.log"}

    broken.unlink()
    retried = cli(config, "retry", "acme/2026-12/x.log")
    assert retried.returncode == 0 and retried.stdout == "acme/2026-12/x.log: back in unprocessed/, with fresh " \
        "attempts\n", retried.stderr
    discarded = cli(config, "discard", "other/x.log")
    assert discarded.returncode == 0 and "other/x.log -> discarded/other/x.log" in discarded.stdout
    assert files_under(watch / "discarded") == ["other/x.log", "other/x.log.reason"]
    replayed = cli(config, "replay", "ok/a/r.log")
    assert replayed.returncode == 0, replayed.stderr
    wait_for(lambda: files_under(watch / "processed") == ["acme/2026-12/x.log", "ok/a/r-1.log"], 30,
             "the retried and the replayed file processed")
    assert (watch / "output" / "acme" / "2026-12" / "x.log").read_text() == "FAILIF BROKEN\n"
    assert (watch / "output" / "ok" / "a" / "r.log").read_text() == "FINE\n"  # the earlier output stays
    assert (watch / "output" / "ok" / "a" / "r-1.log").read_text() == "FINE\n"
    assert files_under(watch / "failed") == []  # the stale reason went with the retry
    asked = [(e["event"], e["file"], e.get("by")) for e in journal(watch) if e.get("by")]
    assert asked == [("retry-requested", "acme/2026-12/x.log", "cli"), ("discarded", "other/x.log", "cli"),
                     ("replay-requested", "ok/a/r.log", "cli")]
    assert next(e for e in journal(watch) if e["event"] == "discarded")["to"] == "discarded/other/x.log"


def test_cli_refuses_dotdot_absolute_paths_and_symlinked_directories(tmp_path: Path) -> None:
    config = tree_config(tmp_path)
    watch = tmp_path / "watch_dir"
    outside = outside_with_a_secret(tmp_path)
    for folder in ("unprocessed", "processed", ".foldermill"):  # as a supervisor leaves them
        (watch / folder).mkdir(parents=True)
    lay_failed(watch, "a/b/x.log")
    (watch / "failed" / "evil").symlink_to(outside)  # a directory of failed/ swapped for a symlink
    (watch / "processed" / "evil").symlink_to(outside)
    before = {f: files_under(watch / f) for f in ("unprocessed", "processed", "failed")}
    refusals = {
        ("retry", "../config.toml"): "reaches outside the watch dir",
        ("retry", "a/../../config.toml"): "reaches outside the watch dir",
        ("discard", str(outside / "s.log")): "an absolute path: names are relative to the folder",
        ("retry", "evil/s.log"): "failed/evil is a symlink: a symlink is never followed",
        ("discard", "evil/s.log"): "failed/evil is a symlink: a symlink is never followed",
        ("replay", "evil/s.log"): "processed/evil is a symlink: a symlink is never followed",
        ("retry", "a//b/x.log"): "an empty or '.' component",
        ("retry", "a/./b/x.log"): "an empty or '.' component",
        ("retry", "a/.b/x.log"): "a hidden component (.b)",
        ("retry", "a/" + "z" * 256): "a component of more than 255 bytes",
        ("history", "../input.log"): "reaches outside the watch dir",
        ("history", "/etc/passwd"): "an absolute path",
    }
    for (verb, name), said in refusals.items():
        result = cli(config, verb, name)
        assert result.returncode == 1 and said in result.stderr, (verb, name, result.stderr)
    assert {f: files_under(watch / f) for f in ("unprocessed", "processed", "failed")} == before
    assert files_under(outside) == ["s.log"] and not (watch / "discarded").exists()
    # A symlinked directory where the file would go is never followed either.
    (watch / "unprocessed" / "a").symlink_to(outside)
    result = cli(config, "retry", "a/b/x.log")
    assert result.returncode == 1 and "unprocessed/a is a symlink: a symlink is never followed" in result.stderr
    assert files_under(outside) == ["s.log"] and (watch / "failed" / "a" / "b" / "x.log").exists()
    # Without recursive a path is no name at all: flat names behave as they always did.
    config.write_text(config.read_text().replace("recursive = true\n", ""))
    result = cli(config, "retry", "a/b/x.log")
    assert result.returncode == 1 and "[watch] recursive is false" in result.stderr
    lay_failed(watch, "flat.log")
    assert cli(config, "retry", "flat.log").returncode == 0 and (watch / "unprocessed" / "flat.log").exists()


def test_retry_all_takes_every_nested_failed_file_and_no_reason_hidden_or_linked_one(tmp_path: Path,
                                                                                   daemons) -> None:
    config = tree_config(tmp_path)
    watch = tmp_path / "watch_dir"
    outside = outside_with_a_secret(tmp_path)
    (watch / "unprocessed").mkdir(parents=True)  # as a supervisor leaves it
    for name in ("a/b/x.log", "a/y.log", "top.log", "a/b/c/x.log"):
        lay_failed(watch, name)
    (watch / "failed" / "a" / "b" / "lone.log.reason").write_text("a reason left alone\n")  # a file of its own
    hidden = watch / "failed" / ".tmp" / "z.log"
    hidden.parent.mkdir()
    hidden.write_text("z\n")
    (watch / "failed" / "evil").symlink_to(outside)  # moved as the link it is, never entered
    result = cli(config, "retry", "--all")
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.splitlines()) == sorted(f"{n}: back in unprocessed/, with fresh attempts" for n in
                                                        ("a/b/c/x.log", "a/b/lone.log.reason", "a/b/x.log",
                                                         "a/y.log", "evil", "top.log"))
    assert files_under(watch / "unprocessed") == ["a/b/c/x.log", "a/b/lone.log.reason", "a/b/x.log", "a/y.log",
                                                  "evil", "top.log"]
    assert os.path.islink(watch / "unprocessed" / "evil") and files_under(outside) == ["s.log"]
    assert files_under(watch / "failed") == [".tmp/z.log"]  # reasons went with their files
    d = start(daemons, config, "--once")
    assert d.wait(60) == 0, d.log()
    assert files_under(watch / "processed") == ["a/b/c/x.log", "a/b/lone.log.reason", "a/b/x.log", "a/y.log",
                                                "top.log"]
    assert (watch / "output" / "a" / "b" / "c" / "x.log").read_text() == "A/B/C/X.LOG\n"
    assert files_under(watch / "failed") == [".tmp/z.log", "evil", "evil.reason"]  # a symlink is no work
    assert files_under(outside) == ["s.log"]


def test_the_api_and_the_dashboard_on_nested_and_non_utf8_names(tmp_path: Path, daemons) -> None:
    config = tree_config(tmp_path)
    watch = tmp_path / "watch_dir"
    outside = outside_with_a_secret(tmp_path)
    broken = tmp_path / "flags" / "broken"
    broken.touch()
    d = start(daemons, config)
    url = dashboard_url(d)
    for name in ("acme/2026-12/x.log", RAW_NAME, "z/q.log"):
        deliver(watch, name, "FAILIF broken\n")
    deliver(watch, "acme/outputs/p.log", "fine\n")  # a directory named like the URL's "outputs" part
    page = wait_for(lambda: (p := call(url + "failed")[1])["total"] == 3 and all(f["attempts"] for f in p["files"])
                    and p, 30, "three nested failures listed with their records")
    listed = {f["name"]: f for f in page["files"]}
    assert listed.keys() == {"acme/2026-12/x.log", RAW_SHOWN, "z/q.log"}
    assert listed[RAW_SHOWN]["ref"] == RAW_REF and listed["acme/2026-12/x.log"]["ref"] == "acme%2F2026-12%2Fx.log"
    assert all("flag broken is set" in f["reason"] and f["attempts"] == 2 for f in page["files"])
    assert [f["failed_at"] for f in page["files"]] == sorted((f["failed_at"] for f in page["files"]), reverse=True)

    # Refused, with the reason, and nothing touched: "..", an absolute path, a symlink on the way.
    (watch / "failed" / "evil").symlink_to(outside)
    (watch / "output" / "evil").symlink_to(outside)
    for method, path, said in (
            ("POST", "failed/..%2Fconfig.toml/retry", "reaches outside the watch dir"),
            ("POST", "failed/acme%2F..%2F..%2Fconfig.toml/discard", "reaches outside the watch dir"),
            ("POST", "processed/..%2Ffailed%2Fz%2Fq.log/replay", "reaches outside the watch dir"),
            ("POST", "failed/%2Fetc%2Fpasswd/retry", "an absolute path"),
            ("POST", "failed/evil%2Fs.log/retry", "failed/evil is a symlink: a symlink is never followed"),
            ("POST", "failed/evil%2Fs.log/discard", "failed/evil is a symlink: a symlink is never followed"),
            ("GET", "files/..%2Finput.log", "reaches outside the watch dir"),
            ("GET", "files/z%2Fq.log/outputs/evil%2Fs.log", "output/evil is a symlink: a symlink is never followed"),
            ("GET", "files/z%2Fq.log/outputs/..%2F..%2Foutside%2Fs.log", "reaches outside the watch dir")):
        status, answer = call(url + path, method)
        assert status == 400 and said in answer["error"], (path, status, answer)
    assert files_under(outside) == ["s.log"] and not (watch / "discarded").exists()
    listed = [f["name"] for f in call(url + "failed")[1]["files"]]
    assert sorted(listed) == sorted(["acme/2026-12/x.log", RAW_SHOWN, "z/q.log", "evil"])  # a link: not entered

    # A retry by ref (the name's exact bytes), then its timeline and an output's head.
    broken.unlink()
    assert call(url + f"failed/{RAW_REF}/retry", "POST") == (202, {"accepted": True, "action": "retry",
                                                                  "file": RAW_SHOWN})
    wait_for(lambda: os.path.lexists(watch / "processed" / RAW_NAME), 30, "the non-UTF-8 path processed")
    t = wait_for(lambda: (t := call(url + f"files/{RAW_REF}")[1]).get("entries", [{}])[-1].get("event") == "processed"
                 and t, 10, "its timeline to end in processed")
    assert t["file"] == RAW_SHOWN and t["ref"] == RAW_REF and "retry-requested" in [e["event"] for e in t["entries"]]
    assert t["outputs"] == [{"name": RAW_SHOWN, "ref": RAW_REF, "bytes": len("FAILIF BROKEN\n")}]
    assert call(url + f"files/{RAW_REF}/outputs/{RAW_REF}") == (200, "FAILIF BROKEN\n")
    assert call(url + "files/d%5Cxff%2Fy.log?shown=1")[1]["ref"] == RAW_REF  # its shown form, said so
    wait_for(lambda: os.path.lexists(watch / "output" / "acme" / "outputs" / "p.log"), 10, "acme/outputs/p.log done")
    assert call(url + "files/acme%2Foutputs%2Fp.log/outputs/acme%2Foutputs%2Fp.log") == (200, "FINE\n")
    assert call(url + "files/d%5Cxff%2Fy.log")[0] == 404  # exact: a file literally named so is another
    # The CLI takes the same name in its shown form, and shows it so.
    history = cli(config, "history", RAW_SHOWN)
    assert history.returncode == 0 and f" {RAW_SHOWN} " in history.stdout.splitlines()[-1]
    replayed = cli(config, "replay", RAW_SHOWN)
    assert replayed.returncode == 0 and replayed.stdout.startswith(f"{RAW_SHOWN}: back in unprocessed/")
    wait_for(lambda: os.path.lexists(watch / "output" / RAW_DIR / "y-1.log"), 30, "its replay's new output")

    # Discard by ref; search by part of a path; retry all of what is left, confirmed.
    assert call(url + "failed/z%2Fq.log/discard", "POST")[0] == 202
    wait_for(lambda: files_under(watch / "discarded") == ["z/q.log", "z/q.log.reason"], 20, "z/q.log discarded")
    found = call(url + "files?q=acme/2026")[1]["files"]
    assert [(f["name"], f["ref"]) for f in found] == [("acme/2026-12/x.log", "acme%2F2026-12%2Fx.log")]
    assert call(url + "files/acme/2026-12/x.log")[1]["ref"] == "acme%2F2026-12%2Fx.log"  # "/" typed: one name too
    page = wait_for(lambda: (p := call(url + "failed")[1])["total"] == 2 and p, 10, "failed/ without z/q.log")
    assert {f["name"] for f in page["files"]} == {"acme/2026-12/x.log", "evil"}
    os.unlink(watch / "failed" / "evil")
    assert call(url + "failed/retry-all", "POST", {"count": 2, "set": page["set"]})[0] == 409  # it changed
    page = wait_for(lambda: (p := call(url + "failed")[1])["total"] == 1 and p, 10, "failed/ without the link")
    assert call(url + "failed/retry-all", "POST", {"count": 1, "set": page["set"]}) == (
        202, {"accepted": True, "action": "retry-all", "count": 1})
    wait_for(lambda: os.path.lexists(watch / "processed" / "acme" / "2026-12" / "x.log"), 30,
             "acme/2026-12/x.log retried from the dashboard and processed")
    audit = call(url + "audit")[1]["entries"]
    assert audit[0]["action"] == "retry-all" and audit[0]["targets"] == ["acme/2026-12/x.log"]
    assert files_under(outside) == ["s.log"]
    assert d.stop() == 0
