"""The daemon, as named parts composed by one loop (``loop.py``):

- ``intake``     what comes in: the scan of unprocessed/, readiness, claims, rejects, recovery
- ``events``     file events (inotify) that wake the intake
- ``backend``    the protocol every backend follows: dispatch jobs, collect results,
                 say which file a dead worker was on, reload, stop
- ``local_pool`` that protocol on a local multiprocessing pool (slots, restarts, limits)
- ``celery_pool`` that protocol on Celery worker nodes behind Redis
- ``ledger``     the book of files in flight: records, the journal, requeues, returns
- ``commit``     what becomes of a file: group commit, roll-forward, attempts, moves, de-duplication
- ``publisher``  what is shown: the state snapshot, summary lines, --once progress
- ``types``      the small named types that cross between parts
"""
