"""Run a list of stored jobs, sharing them with any other worker on the same claims.

A job is one result that lives in a store (e.g. a full-data reference, or a training contender's
score of one architecture). :func:`run_jobs` walks the list: a job whose result is stored is
reused; one that nobody holds is claimed, computed under a heartbeat lease and stored
(:mod:`~nasdistill.work.claims`); one that another live worker holds is skipped and looked at
again on the next pass, after ``poll_s`` seconds if a pass made no progress. Every worker walks the
list in the same order, so workers started together take consecutive jobs.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Mapping, Protocol, Sequence

from ..errors import NasDistillError
from .claims import DEFAULT_LEASE_S, WorkKey


class Claims(Protocol):
    """What :func:`run_jobs` needs of the claims (a :class:`~nasdistill.work.claims.ClaimBook`, or
    a store offering the same methods)."""

    def claim(self, key: WorkKey, worker: str, lease_s: float = ...) -> bool: ...

    def release(self, key: WorkKey, worker: str) -> None: ...

    def lease(self, key: WorkKey, worker: str, lease_s: float = ...) -> ContextManager: ...


@dataclass
class Job:
    """One result to reuse or compute."""

    key: WorkKey
    lookup: Callable[[], Any]  #: the stored result, or None
    compute: Callable[[], Any]  #: compute the result (the expensive part)
    save: Callable[[Any, str, float], Any]  #: store (result, worker, started); return the stored result
    label: str = ""


@dataclass
class Outcome:
    """A job's result, and whether this worker computed it (False: reused from the store)."""

    result: Any
    computed: bool


def stored_outcomes(jobs: Sequence[Job]) -> dict[int, Outcome]:
    """The outcomes already stored, by job index: one look each (pass them to :func:`run_jobs` as
    ``known``, e.g. to start a progress count at them)."""
    found = {i: job.lookup() for i, job in enumerate(jobs)}
    return {i: Outcome(result, computed=False) for i, result in found.items() if result is not None}


def run_jobs(jobs: Sequence[Job], claims: Claims, *, worker: str, lease_s: float = DEFAULT_LEASE_S,
             poll_s: float = 2.0, on_done: Callable[[Job, Outcome], None] | None = None,
             log: Callable[[str], None] | None = None, known: Mapping[int, Outcome] | None = None) -> list[Outcome]:
    """Every job's outcome, in job order, once each is stored (by this worker or another).

    ``known``: outcomes the caller already has, by job index (:func:`stored_outcomes`); they are
    neither looked up again nor passed to ``on_done``.
    """
    known = known or {}
    outcomes: list[Outcome | None] = [known.get(i) for i in range(len(jobs))]
    pending = [i for i in range(len(jobs)) if i not in known]
    waiting_said = False
    while pending:
        progressed = False
        for i in list(pending):
            outcome = _attempt(jobs[i], claims, worker, lease_s)
            if outcome is None:
                continue
            outcomes[i] = outcome
            pending.remove(i)
            progressed = True
            if on_done is not None:
                on_done(jobs[i], outcome)
        if pending and not progressed:
            if log is not None and not waiting_said:
                log(f"waiting for {len(pending)} result(s) other workers are computing; a dead worker's claim is "
                    f"taken over once its heartbeat is {lease_s:g} s old (NASDISTILL_GRACE_PERIOD)")
                waiting_said = True
            time.sleep(poll_s)
    return outcomes  # type: ignore[return-value]


def _attempt(job: Job, claims: Claims, worker: str, lease_s: float) -> Outcome | None:
    """The job's outcome if it is stored or this worker could claim and compute it; None if held elsewhere."""
    found = job.lookup()
    if found is not None:
        return Outcome(found, computed=False)
    if not claims.claim(job.key, worker, lease_s):
        return None
    try:
        found = job.lookup()  # stored by another worker between the look and the claim
        if found is not None:
            claims.release(job.key, worker)
            return Outcome(found, computed=False)
        started = time.time()
        with claims.lease(job.key, worker, lease_s):
            result = job.compute()
        return Outcome(job.save(result, worker, started), computed=True)  # saving drops the claim
    except BaseException:
        with contextlib.suppress(NasDistillError):  # keep the original error; the lease expires anyway
            claims.release(job.key, worker)
        raise


__all__ = ["Job", "Outcome", "run_jobs", "stored_outcomes", "Claims"]
