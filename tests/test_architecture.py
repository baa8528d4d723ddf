"""Who may import whom, and how big a daemon part may grow (docs/design/architecture.md,
"Contributing"): checked by scanning the sources."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARCHITECTURE_DOC = ROOT / "docs" / "design" / "architecture.md"
DAEMON = ROOT / "workers" / "daemon"
MAX_MODULE_LINES = 400
MAX_CLASS_LINES = 300

# The daemon's parts, and the parts each may import. A part not listed for another
# talks to it through the named types (types.py) and the protocols (backend.py,
# types.Records, types.Shared), handed in by the loop or the service.
PART_IMPORTS = {
    "types": set(),
    "events": set(),
    "inbox": {"types"},
    "backlog": set(),
    "census": set(),
    "claimer": {"types"},
    "arrivals": {"events", "backlog"},
    "intake": {"types", "events", "backlog", "census", "claimer", "arrivals"},
    "flights": set(),
    "ledger": {"types", "flights"},
    "commit": {"types", "flights", "ledger", "outcomes"},  # the commit part writes the outcomes into the ledger's book
    "outcomes": {"types", "flights", "ledger"},
    "faults": set(),
    "reconcile": {"types"},
    "backend": {"types"},
    "local_pool": {"types"},
    "celery_pool": {"types"},
    "publisher": {"types"},
    "retention": set(),
    "dashboard": {"types"},
    "loop": {"types", "backend", "commit", "dashboard", "faults", "flights", "inbox", "intake", "ledger",
             "publisher", "reconcile", "retention"},
    "service": {"types", "backend", "celery_pool", "commit", "dashboard", "faults", "inbox", "intake", "ledger",
                "local_pool", "loop", "publisher", "reconcile", "retention"},
}


def imports_of(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def daemon_modules() -> list[Path]:
    return sorted(p for p in DAEMON.glob("*.py") if p.name != "__init__.py")


def test_workers_never_import_web_or_supervisor() -> None:
    for path in (ROOT / "workers").rglob("*.py"):
        bad = {m for m in imports_of(path) if m.split(".")[0] in ("web", "supervisor")}
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_engine_and_queue_do_no_multiprocessing() -> None:
    engine = sorted(p.name for p in (ROOT / "workers").glob("engine*.py"))  # the engine and its parts
    assert "engine.py" in engine
    for name in (*engine, "queue.py", "graph.py", "config.py", "readiness.py", "daemon/intake.py",
                 "daemon/ledger.py", "daemon/commit.py", "daemon/publisher.py", "daemon/types.py"):
        mods = imports_of(ROOT / "workers" / name)
        assert not {m for m in mods if m.startswith(("multiprocessing", "concurrent"))}, name


def test_only_the_supervisor_creates_the_manager() -> None:
    for path in [*(ROOT / "workers").rglob("*.py"), *(ROOT / "web").rglob("*.py")]:
        assert "SyncManager(" not in path.read_text() and "Manager()" not in path.read_text(), path
    assert "SyncManager(" in (ROOT / "supervisor.py").read_text()


def test_every_daemon_module_is_a_known_part() -> None:
    assert {p.stem for p in daemon_modules()} == set(PART_IMPORTS)


def test_parts_import_only_the_parts_they_may() -> None:
    for path in daemon_modules():
        used = {m.split(".")[2] for m in imports_of(path) if m.startswith("workers.daemon.")}
        extra = used - PART_IMPORTS[path.stem]
        assert not extra, f"workers/daemon/{path.name} imports the parts {sorted(extra)}"


def test_the_rest_of_workers_never_imports_the_daemon_or_the_cli() -> None:
    for path in (ROOT / "workers").rglob("*.py"):
        if path.parent == DAEMON or path.name == "cli.py":
            continue
        bad = {m for m in imports_of(path) if m.startswith(("workers.daemon", "workers.cli"))}
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_web_never_imports_the_daemon_or_touches_processes() -> None:
    for path in (ROOT / "web").rglob("*.py"):
        bad = {m for m in imports_of(path)
               if m.startswith(("workers.daemon", "workers.cli", "workers.queue", "workers.worker",
                                "workers.remote", "workers.store", "supervisor"))}
        # The state database, read-only, through its one reader: no SQL of its own.
        if names_from(path, "workers.store") <= {"StateReader", "state_db_path"}:
            bad.discard("workers.store")
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"
        assert "sqlite3" not in imports_of(path), f"{path.relative_to(ROOT)} opens the state database itself"


def names_from(path: Path, module: str) -> set[str]:
    """The names ``path`` imports from ``module`` (``from module import a, b``)."""
    return {alias.name for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.ImportFrom) and node.module == module for alias in node.names}


def test_only_the_store_speaks_sql() -> None:
    """The state database's schema is the store's: no other module runs SQL on it."""
    for path in [*(ROOT / "workers").rglob("*.py"), *(ROOT / "web").rglob("*.py")]:
        if path.name == "store.py":
            continue
        text = path.read_text()
        assert not any(word in text for word in ("SELECT ", "UPDATE files", "INSERT INTO", "DELETE FROM")), path


def test_supervisor_py_is_a_thin_main() -> None:
    daemon_parts = {m for m in imports_of(ROOT / "supervisor.py") if m.startswith("workers.daemon.")}
    assert daemon_parts <= {"workers.daemon.service", "workers.daemon.types"}, daemon_parts
    assert len((ROOT / "supervisor.py").read_text().splitlines()) <= 150


def test_no_module_reads_another_objects_private_attributes() -> None:
    """``x._name`` only on ``self`` (or ``cls``, ``super()``): what one part asks of
    another goes through its methods (docs/design/architecture.md, "Contributing": a part
    never pokes another's attributes).
    The standard library's own private names are not ours to police."""
    allowed = {"os._exit", "zlib._Decompress"}
    for path in [*(ROOT / "workers").rglob("*.py"), *(ROOT / "web").rglob("*.py"), ROOT / "supervisor.py"]:
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")):
                continue
            owner = node.value
            if (isinstance(owner, ast.Name) and owner.id in ("self", "cls")) or ast.unparse(node) in allowed:
                continue
            if isinstance(owner, ast.Call) and ast.unparse(owner.func) == "super":
                continue
            raise AssertionError(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)} reads another's "
                                 "private attribute")


def test_a_flight_changes_only_in_the_table_of_flights() -> None:
    """A file in flight has one owner (``workers/daemon/flights.py``): no other daemon
    module assigns to a flight's fields; they ask ``Flights.to`` (a state and its data)
    or ``Flights.note`` (a fact that is not a state)."""
    from workers.daemon.flights import Flight

    fields = set(Flight.__dataclass_fields__)
    for path in DAEMON.glob("*.py"):
        if path.name == "flights.py" or "workers.daemon.flights" not in imports_of(path):  # those that see flights
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            targets = node.targets if isinstance(node, ast.Assign) else (
                [node.target] if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else [])
            for target in (t for tt in targets for t in (tt.elts if isinstance(tt, ast.Tuple) else [tt])):
                if (isinstance(target, ast.Attribute) and target.attr in fields
                        and not (isinstance(target.value, ast.Name) and target.value.id == "self")):
                    raise AssertionError(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(target)} is set "
                                         "outside the table of flights")


def test_every_transition_of_the_diagram_is_used_and_no_other() -> None:
    """Each transition the table allows is asked for somewhere (a dead edge in the
    diagram is a state nobody leaves that way), read from the calls ``to(flight,
    State.X)`` can make: a state a part moves flights to appears in the daemon's code."""
    from workers.daemon.flights import TRANSITIONS, State

    targets = {b for _, b in TRANSITIONS}
    code = "\n".join(p.read_text() for p in DAEMON.glob("*.py") if p.name != "flights.py")
    for state in targets:
        assert f"State.{state.name}" in code, f"nothing moves a flight to {state.name}"
    assert set(State) == targets | {State.WAITING}


def file_in_flight_section() -> str:
    """docs/design/architecture.md, "A file in flight": from its heading to the next one
    of its level."""
    text = ARCHITECTURE_DOC.read_text()
    found = re.search(r"^## A file in flight\n(.*?)(?=^## )", text, re.MULTILINE | re.DOTALL)
    assert found, f"{ARCHITECTURE_DOC.relative_to(ROOT)} has no section \"A file in flight\""
    return found.group(1)


def test_the_docs_describe_every_state_of_a_flight() -> None:
    """docs/design/architecture.md, "A file in flight": its table has one row per state,
    and its diagram names each."""
    from workers.daemon.flights import State

    section = file_in_flight_section()
    rows = [line.split("`")[1] for line in section.splitlines() if line.startswith("| `")]
    assert rows == [s.value for s in State]
    for state in State:
        assert state.name in section, f"the diagram lacks {state.name}"


def test_the_docs_list_exactly_the_transitions_of_the_table() -> None:
    """docs/design/architecture.md, "A file in flight": its list of transitions is
    TRANSITIONS, no more, no less."""
    from workers.daemon.flights import TRANSITIONS, State

    section = file_in_flight_section()
    listed = re.findall(r"^\| (\w+) → (\w+) \|", section, re.MULTILINE)
    assert len(listed) == len(set(listed)), "a transition is listed twice"
    assert {(State(a), State(b)) for a, b in listed} == set(TRANSITIONS)


def test_the_loop_has_no_backend_branches() -> None:
    """Only the service knows there are two backends (it builds one); the loop speaks
    the protocol alone."""
    for name in ("loop.py", "intake.py", "ledger.py", "commit.py", "publisher.py", "inbox.py"):
        text = (DAEMON / name).read_text().lower()
        for word in ("celery", "localpool", "local_pool", "remote", "slot"):
            assert word not in text, f"workers/daemon/{name} mentions {word!r}"


def test_daemon_modules_and_classes_stay_small() -> None:
    for path in [*daemon_modules(), ROOT / "workers" / "cli.py", ROOT / "supervisor.py"]:
        lines = len(path.read_text().splitlines())
        assert lines <= MAX_MODULE_LINES, f"{path.relative_to(ROOT)} has {lines} lines (> {MAX_MODULE_LINES})"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                size = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                assert size <= MAX_CLASS_LINES, f"{path.relative_to(ROOT)}: class {node.name} has {size} lines"
