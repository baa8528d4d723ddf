"""The installed ``foldermill`` command: ``python supervisor.py`` under its own name.

``pip install .`` writes a ``foldermill`` script that imports this module and calls
:func:`main`. It imports nothing heavy, so that SIGTERM and SIGINT are counted before
``supervisor.py``'s imports, which take most of the start-up, as ``supervisor.py``
counts them when it runs as a script: a stop that arrives meanwhile is a clean stop,
exit 0. The processes that multiprocessing spawns run that script again as
``__mp_main__``, which calls nothing here, and set their own handlers.
"""

from __future__ import annotations

import signal


def main() -> int:
    """``python supervisor.py`` with this command line, named ``foldermill``."""
    early: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: early.append(signum))
    import supervisor  # after the handlers: see above

    return supervisor.main(prog="foldermill", early_signals=early)


if __name__ == "__main__":  # python foldermill.py: the same as the installed command
    raise SystemExit(main())
