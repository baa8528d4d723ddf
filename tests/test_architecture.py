"""Who may import whom (STYLE.md): checked by scanning the imports."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imports_of(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_workers_never_import_web_or_supervisor() -> None:
    for path in (ROOT / "workers").rglob("*.py"):
        bad = {m for m in imports_of(path) if m.split(".")[0] in ("web", "supervisor")}
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_engine_and_queue_do_no_multiprocessing() -> None:
    for name in ("engine.py", "queue.py", "graph.py", "config.py", "readiness.py"):
        mods = imports_of(ROOT / "workers" / name)
        assert not {m for m in mods if m.startswith(("multiprocessing", "concurrent"))}, name


def test_only_the_supervisor_creates_the_manager() -> None:
    for path in [*(ROOT / "workers").rglob("*.py"), *(ROOT / "web").rglob("*.py")]:
        assert "SyncManager(" not in path.read_text() and "Manager()" not in path.read_text(), path
    assert "SyncManager(" in (ROOT / "supervisor.py").read_text()
