"""Claims: several processes share one results store without computing anything twice.

Before a worker trains an architecture (a full-data reference, or a proxy's score) it *claims*
the key: it inserts a row into ``work_claims``, whose primary key is the key, so exactly one
insert succeeds. While it trains, a heartbeat thread refreshes the row every ``lease_s / 4``
seconds. When the result is stored, the same transaction deletes the claim and appends a row to
``work_runs`` (who computed it, when, and whether its result was the one stored).

Other workers that find a key claimed move on to other keys and come back later. A claim whose
heartbeat is older than ``lease_s`` seconds belongs to a worker that died (killed, machine lost):
the next worker takes it over with one conditional ``UPDATE``, which only one worker can win. A
validation killed mid-way therefore loses only the training in flight: finished results are in
the store, and its claims expire after ``lease_s``. A worker stopped by an exception (Ctrl-C
included) releases its claim at once.

Heartbeats use each worker's clock (:func:`time.time`): machines sharing a store need clocks
that agree to well within ``lease_s``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import threading
import time
from typing import TYPE_CHECKING, Iterator

import sqlalchemy as sa

from ..errors import NasDistillError

if TYPE_CHECKING:
    from .reference import TaskKey

CLAIMS_TABLE = "work_claims"
RUNS_TABLE = "work_runs"
#: Seconds without a heartbeat after which a claim counts as abandoned.
DEFAULT_LEASE_S = 60.0


def worker_id() -> str:
    """A name for this process in claims and the run log: ``host:pid:random``, unique per call."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class ClaimsMixin:
    """Claims and the run log of a :class:`~nasdistill.validate.reference.ReferenceStore`."""

    # --- claims ----------------------------------------------------------------------------------
    def claim(self, key: TaskKey, worker: str, lease_s: float = DEFAULT_LEASE_S) -> bool:
        """Claim ``key`` for ``worker``: True if it now holds it (new, its own, or taken over from a
        claim whose heartbeat is older than ``lease_s``), False if another live worker holds it."""
        claims = self._tables[CLAIMS_TABLE]
        now = time.time()
        row = {"dataset_fingerprint": key.dataset, "space": key.space, "arch_id": key.arch_id, "task": key.task,
               "seed": int(key.seed), "worker": worker, "claimed_at": now, "heartbeat": now}

        def op() -> bool:
            with self._engine.begin() as conn:
                if self._insert_ignore(conn, claims, row):
                    return True
                taken = conn.execute(
                    sa.update(claims)
                    .where(self._where(key, claims),
                           sa.or_(claims.c.worker == worker, claims.c.heartbeat < now - float(lease_s)))
                    .values(worker=worker, claimed_at=now, heartbeat=now))
                return taken.rowcount == 1
        return self._run(op)

    def renew(self, key: TaskKey, worker: str) -> bool:
        """Refresh ``worker``'s heartbeat on ``key``; False if it no longer holds the claim."""
        claims = self._tables[CLAIMS_TABLE]

        def op() -> bool:
            with self._engine.begin() as conn:
                res = conn.execute(sa.update(claims).where(self._where(key, claims), claims.c.worker == worker)
                                   .values(heartbeat=time.time()))
                return res.rowcount == 1
        return self._run(op)

    def release(self, key: TaskKey, worker: str) -> None:
        """Drop ``worker``'s claim on ``key`` (nothing if it holds none)."""
        claims = self._tables[CLAIMS_TABLE]

        def op() -> None:
            with self._engine.begin() as conn:
                conn.execute(sa.delete(claims).where(self._where(key, claims), claims.c.worker == worker))
        self._run(op)

    @contextlib.contextmanager
    def lease(self, key: TaskKey, worker: str, lease_s: float = DEFAULT_LEASE_S) -> Iterator[None]:
        """Keep ``worker``'s claim on ``key`` alive (a heartbeat every ``lease_s / 4`` s) while the block runs."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(float(lease_s) / 4):
                with contextlib.suppress(NasDistillError):  # a missed beat only shortens the lease
                    self.renew(key, worker)

        thread = threading.Thread(target=beat, name=f"nasdistill-lease-{key.arch_id}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def claims(self) -> list[dict]:
        """Every current claim: key columns, ``worker``, ``claimed_at``, ``heartbeat`` (epoch seconds)."""
        return self._rows(self._tables[CLAIMS_TABLE])

    # --- run log ---------------------------------------------------------------------------------
    def runs(self, key: TaskKey | None = None) -> list[dict]:
        """Finished computations, oldest first (all, or those of ``key``): key columns, ``task``,
        ``worker``, ``started``, ``finished`` and ``stored`` (False: another result was there first)."""
        table = self._tables[RUNS_TABLE]
        return self._rows(table, None if key is None else self._where(key, table), order=table.c.id)

    def _rows(self, table: sa.Table, where=None, order=None) -> list[dict]:
        def op() -> list[dict]:
            query = sa.select(table)
            if where is not None:
                query = query.where(where)
            if order is not None:
                query = query.order_by(order)
            with self._engine.connect() as conn:
                return [dict(r) for r in conn.execute(query).mappings()]
        return self._run(op)


__all__ = ["ClaimsMixin", "worker_id", "CLAIMS_TABLE", "RUNS_TABLE", "DEFAULT_LEASE_S"]
