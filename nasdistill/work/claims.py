"""Claims: several processes share one SQL database without computing anything twice.

Before a worker computes a result it *claims* the result's key: it inserts a row into the claims
table (``work_claims``), whose primary key is the key, so exactly one insert succeeds. While it
works, a heartbeat thread (:func:`heartbeat`) refreshes the row every ``lease_s / 4`` seconds.
When the result is stored, the same transaction deletes the claim and appends a row to the run
log (``work_runs``: who computed it, when, and whether its result was the one stored;
:meth:`ClaimBook.log_run`).

Other workers that find a key claimed move on to other keys and come back later. A claim whose
heartbeat is older than ``lease_s`` seconds belongs to a worker that died (killed, machine lost):
the next worker takes it over with one conditional ``UPDATE``, which only one worker can win. A
worker killed mid-way therefore loses only the work in flight: finished results are stored, and
its claims expire after ``lease_s``. A worker stopped by an exception (Ctrl-C included) releases
its claim at once.

Heartbeats use each worker's clock (:func:`time.time`): machines sharing a database need clocks
that agree to well within ``lease_s``.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any, Callable, Iterator, Protocol, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as _postgresql
from sqlalchemy.dialects import sqlite as _sqlite
from sqlalchemy.exc import IntegrityError

from ..errors import NasDistillError

CLAIMS_TABLE = "work_claims"
RUNS_TABLE = "work_runs"
#: Environment variable that sets the grace period (seconds) after which a dead worker's claim
#: (validate) or trial (search) is taken over; read when nasdistill is imported.
GRACE_ENV = "NASDISTILL_GRACE_PERIOD"
#: The grace period when :data:`GRACE_ENV` is unset.
DEFAULT_GRACE_S = 60.0


def grace_period_setting(default: float = DEFAULT_GRACE_S) -> float:
    """``$NASDISTILL_GRACE_PERIOD`` in seconds (a number >= 1), else ``default``; an unusable value
    is refused in one line by the command line before any work (:func:`check_grace_env`)."""
    import math
    import os

    text = os.environ.get(GRACE_ENV, "").strip()
    try:
        value = float(text)
    except ValueError:
        return default
    return value if math.isfinite(value) and value >= 1 else default


def check_grace_env() -> None:
    """Raise a one-line error when ``$NASDISTILL_GRACE_PERIOD`` is set but is not a number of seconds >= 1."""
    import math
    import os

    from ..errors import ConfigError

    text = os.environ.get(GRACE_ENV, "").strip()
    if not text:
        return
    try:
        ok = math.isfinite(float(text)) and float(text) >= 1
    except ValueError:
        ok = False
    if not ok:
        raise ConfigError(f"{GRACE_ENV}={text!r} is not a number of seconds >= 1",
                          f"set {GRACE_ENV} to e.g. 60, or unset it")


#: Seconds without a heartbeat after which a claim counts as abandoned (``$NASDISTILL_GRACE_PERIOD``, default 60).
DEFAULT_LEASE_S = grace_period_setting()

T = TypeVar("T")


class WorkKey(Protocol):
    """What identifies one piece of work: the claims table's key columns, and what is computed."""

    dataset: str
    space: str
    arch_id: str
    seed: int

    @property
    def task(self) -> str: ...


def insert_ignore(conn: sa.Connection, table: sa.Table, row: dict) -> bool:
    """``INSERT`` that does nothing when the key exists; True when the row was inserted.

    SQLite and PostgreSQL: ``ON CONFLICT DO NOTHING``; elsewhere a plain insert inside a
    savepoint, whose key conflict is swallowed.
    """
    dialect = conn.dialect.name
    if dialect in ("sqlite", "postgresql"):
        insert = _sqlite.insert if dialect == "sqlite" else _postgresql.insert
        return conn.execute(insert(table).values(**row).on_conflict_do_nothing()).rowcount == 1
    try:
        with conn.begin_nested():
            conn.execute(sa.insert(table).values(**row))
        return True
    except IntegrityError:  # another writer stored the key first
        return False


@contextlib.contextmanager
def heartbeat(beat: Callable[[], Any], interval: float, *, name: str = "nasdistill-heartbeat") -> Iterator[None]:
    """Call ``beat()`` every ``interval`` seconds in a thread while the block runs; a beat that
    fails with a :class:`NasDistillError` is skipped (a missed beat only shortens the lease)."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(float(interval)):
            with contextlib.suppress(NasDistillError):
                beat()

    thread = threading.Thread(target=loop, name=name, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _direct(op: Callable[[], T]) -> T:
    return op()


class ClaimBook:
    """Claims and the run log kept in two tables of one database.

    Args:
        engine: the SQLAlchemy engine of the database.
        claims: the claims table: key columns ``dataset_fingerprint, space, arch_id, task, seed``
            (the primary key) and ``worker, claimed_at, heartbeat``.
        runs: the run log: ``id``, the key columns, ``worker, started, finished, stored``.
        guard: runs each database operation (``guard(op)``), e.g. to turn driver errors into a
            one-line :class:`~nasdistill.errors.StorageError`.
    """

    def __init__(self, engine: sa.Engine, claims: sa.Table, runs: sa.Table,
                 guard: Callable[[Callable[[], Any]], Any] = _direct):
        self.engine = engine
        self.claims_table = claims
        self.runs_table = runs
        self.guard = guard

    @staticmethod
    def where(key: WorkKey, table: sa.Table) -> Any:
        """The rows of ``key`` in ``table`` (the claims table or the run log)."""
        t = table.c
        return sa.and_(t.dataset_fingerprint == key.dataset, t.space == key.space, t.arch_id == key.arch_id,
                       t.task == key.task, t.seed == int(key.seed))

    # --- claims ----------------------------------------------------------------------------------
    def claim(self, key: WorkKey, worker: str, lease_s: float = DEFAULT_LEASE_S) -> bool:
        """Claim ``key`` for ``worker``: True if it now holds it (new, its own, or taken over from a
        claim whose heartbeat is older than ``lease_s``), False if another live worker holds it."""
        claims = self.claims_table
        now = time.time()
        row = {"dataset_fingerprint": key.dataset, "space": key.space, "arch_id": key.arch_id, "task": key.task,
               "seed": int(key.seed), "worker": worker, "claimed_at": now, "heartbeat": now}

        def op() -> bool:
            with self.engine.begin() as conn:
                if insert_ignore(conn, claims, row):
                    return True
                taken = conn.execute(
                    sa.update(claims)
                    .where(self.where(key, claims),
                           sa.or_(claims.c.worker == worker, claims.c.heartbeat < now - float(lease_s)))
                    .values(worker=worker, claimed_at=now, heartbeat=now))
                return taken.rowcount == 1
        return self.guard(op)

    def renew(self, key: WorkKey, worker: str) -> bool:
        """Refresh ``worker``'s heartbeat on ``key``; False if it no longer holds the claim."""
        claims = self.claims_table

        def op() -> bool:
            with self.engine.begin() as conn:
                res = conn.execute(sa.update(claims).where(self.where(key, claims), claims.c.worker == worker)
                                   .values(heartbeat=time.time()))
                return res.rowcount == 1
        return self.guard(op)

    def release(self, key: WorkKey, worker: str) -> None:
        """Drop ``worker``'s claim on ``key`` (nothing if it holds none)."""
        def op() -> None:
            with self.engine.begin() as conn:
                self.drop(conn, key, worker)
        self.guard(op)

    def drop(self, conn: sa.Connection, key: WorkKey, worker: str) -> None:
        """Drop ``worker``'s claim on ``key`` inside the caller's transaction ``conn``."""
        claims = self.claims_table
        conn.execute(sa.delete(claims).where(self.where(key, claims), claims.c.worker == worker))

    def lease(self, key: WorkKey, worker: str, lease_s: float = DEFAULT_LEASE_S):
        """Keep ``worker``'s claim on ``key`` alive (a heartbeat every ``lease_s / 4`` s) while the block runs."""
        return heartbeat(lambda: self.renew(key, worker), float(lease_s) / 4, name=f"nasdistill-lease-{key.arch_id}")

    def claims(self) -> list[dict]:
        """Every current claim: key columns, ``worker``, ``claimed_at``, ``heartbeat`` (epoch seconds)."""
        return self._rows(self.claims_table)

    # --- run log ---------------------------------------------------------------------------------
    def log_run(self, conn: sa.Connection, key: WorkKey, worker: str, started: float | None, stored: bool) -> None:
        """Inside the caller's transaction ``conn`` (the one that stores the result): log that
        ``worker`` computed ``key`` (``stored``: its result was the one kept) and drop its claim."""
        finished = time.time()
        conn.execute(sa.insert(self.runs_table).values(
            dataset_fingerprint=key.dataset, space=key.space, arch_id=key.arch_id, task=key.task,
            seed=int(key.seed), worker=worker, started=finished if started is None else float(started),
            finished=finished, stored=stored))
        self.drop(conn, key, worker)

    def runs(self, key: WorkKey | None = None) -> list[dict]:
        """Finished computations, oldest first (all, or those of ``key``): key columns, ``task``,
        ``worker``, ``started``, ``finished`` and ``stored`` (False: another result was there first)."""
        table = self.runs_table
        return self._rows(table, None if key is None else self.where(key, table), order=table.c.id)

    def _rows(self, table: sa.Table, where=None, order=None) -> list[dict]:
        def op() -> list[dict]:
            query = sa.select(table)
            if where is not None:
                query = query.where(where)
            if order is not None:
                query = query.order_by(order)
            with self.engine.connect() as conn:
                return [dict(r) for r in conn.execute(query).mappings()]
        return self.guard(op)


__all__ = ["ClaimBook", "WorkKey", "heartbeat", "insert_ignore", "CLAIMS_TABLE", "RUNS_TABLE", "DEFAULT_LEASE_S"]
