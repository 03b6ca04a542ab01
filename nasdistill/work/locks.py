"""Locks every process of one database or file can take, for short check-and-create steps.

Each lock is also held across the threads of this process (:data:`local_lock`), so threads of one
process queue for it like processes do.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Iterator

#: Seconds a lock file may be held before another worker breaks it (its holder must have died;
#: a check-and-create step holds it for milliseconds).
LOCK_FILE_GRACE = 30

#: The lock of this process's threads (the only lock where no shared one exists).
local_lock = threading.Lock()


@contextlib.contextmanager
def sql_lock(engine: Any, acquire: str, release: str, key: Any) -> Iterator[None]:
    """Hold a database lock: run ``acquire`` (SQL with a ``:k`` parameter) on a connection of
    ``engine``, then ``release`` when the block ends (e.g. ``pg_advisory_lock`` / ``pg_advisory_unlock``)."""
    from sqlalchemy import text

    with local_lock, engine.connect() as conn:
        conn.execute(text(acquire), {"k": key})
        try:
            yield
        finally:
            conn.execute(text(release), {"k": key})
            conn.commit()


@contextlib.contextmanager
def file_lock(path: str, grace_period: int = LOCK_FILE_GRACE) -> Iterator[None]:
    """Hold the lock file ``path`` (created with ``O_EXCL``, so it works on NFS too); a lock file
    older than ``grace_period`` seconds is taken to be a dead holder's and broken."""
    from optuna.storages.journal import JournalFileOpenLock

    lock = JournalFileOpenLock(path, grace_period=grace_period)
    with local_lock:
        lock.acquire()
        try:
            yield
        finally:
            lock.release()


__all__ = ["sql_lock", "file_lock", "local_lock", "LOCK_FILE_GRACE"]
