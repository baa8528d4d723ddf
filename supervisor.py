"""foldermill: a fault-tolerant hot-folder processor.

    python supervisor.py -c config.toml check          validate, print the routing graph
    python supervisor.py -c config.toml run FILE...    run the pipeline on files directly

Exit status: 0 success, 1 some file failed (``run``), 2 bad configuration or usage,
3 another fatal start-up error.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from workers.config import Config, load_config
from workers.engine import run_file
from workers.errors import ConfigError, InputError
from workers.graph import Graph, compile_graph
from workers.outputs import StagedOutputs, unique_name

EXIT_OK = 0
EXIT_FILES_FAILED = 1
EXIT_USAGE = 2
EXIT_FATAL = 3


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="supervisor.py", description="foldermill hot-folder processor")
    parser.add_argument("-c", "--config", default="config.toml", help="path to config.toml (default: %(default)s)")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("check", help="validate the config and print the routing graph")
    run = sub.add_parser("run", help="run the pipeline on files directly (no folders, no pool)")
    run.add_argument("files", nargs="+", type=Path, metavar="FILE")
    run.add_argument("--output-dir", type=Path, help="where outputs go (default: the watch dir's output/)")
    run.add_argument("--trace", action="store_true", help="print the route of sampled lines")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config)
        graph = compile_graph(config.pipeline, str(config.base_dir))
    except ConfigError as exc:
        print(f"foldermill: configuration error in {args.config}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.command == "check":
        return cmd_check(config, graph)
    if args.command == "run":
        return cmd_run(config, graph, args.files, args.output_dir, args.trace)
    print("foldermill: the daemon is not available yet; use 'check' or 'run FILE...'", file=sys.stderr)
    return EXIT_USAGE


def cmd_check(config: Config, graph: Graph) -> int:
    print(f"config {config.path} is valid")
    print(f"watch dir: {config.watch.dir}")
    print("routing graph (tag -> processor -> tags it may emit):")
    for line in graph.describe():
        print(f"  {line}")
    return EXIT_OK


def cmd_run(config: Config, graph: Graph, files: list[Path], output_dir: Path | None, trace: bool) -> int:
    out_dir = output_dir or config.output_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    failed = 0
    for path in files:
        if not _run_one(graph, path, out_dir, trace):
            failed += 1
    return EXIT_FILES_FAILED if failed else EXIT_OK


def _run_one(graph: Graph, path: Path, out_dir: Path, trace: bool) -> bool:
    suffixes = graph.side_outputs()

    def taken(name: str) -> bool:
        return any((out_dir / (name + (f".{s}" if s else ""))).exists() for s in ("", *suffixes))

    started = time.monotonic()
    try:
        source = open(path, "rb")  # noqa: SIM115 - the with block below closes it
    except OSError as exc:
        print(f"{path}: cannot open: {exc.strerror}", file=sys.stderr)
        return False
    with source:
        staged = StagedOutputs(out_dir, unique_name(path.name, taken), graph.settings.encoding)
        try:
            result = run_file(graph, path.name, source, staged.sink, trace_every=100 if trace else 0)
        except InputError as exc:
            staged.abort()
            print(f"{path}: failed: {exc}", file=sys.stderr)
            return False
        except BaseException:
            staged.abort()
            raise
    finals = staged.commit()
    seconds = time.monotonic() - started
    for error in result.errors:
        print(f"{path}: line {error['line']} (node {error['node']!r}) skipped: {error['message']}", file=sys.stderr)
    shown = ", ".join(str(p) for p in finals)
    print(f"{path}: {result.lines_in} lines in, {result.lines_out} out, "
          f"{result.error_count} skipped, {seconds:.3f}s -> {shown}")
    for line_no, route in result.routes:
        print(f"  trace line {line_no}: {' -> '.join(route)}")
    return True


if __name__ == "__main__":
    sys.exit(main())
