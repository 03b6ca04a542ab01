"""Claims on an Optuna study: several workers fill one study with exactly ``n_trials`` trials.

A worker asks for a new trial only while ``finished + running < n_trials``, checking and creating
the trial under a lock held by every worker of the storage (:func:`claim_lock`: a PostgreSQL
advisory lock, MySQL ``GET_LOCK``, or a lock file beside an SQLite database or a journal file; the
locks themselves are :mod:`nasdistill.work.locks`), so the study ends with exactly ``n_trials``
finished trials however many workers run. Other databases, or a journal that is not a file, get a
lock only within one process: there, workers that ask at the same moment may overshoot by up to
one trial each. The study stays a plain Optuna study: the claim is the trial itself.
"""

from __future__ import annotations

import copy
import datetime
import logging
import time
from typing import Callable, ContextManager

import optuna
from optuna.storages import BaseStorage, RDBStorage
from optuna.trial import TrialState

from .._seed import derive_seed
from ..work.locks import file_lock, local_lock, sql_lock
from .storage import HeartbeatJournalStorage, has_heartbeat, heartbeat_settings

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)

_log = logging.getLogger(__name__)


class StudyFull(Exception):
    """Raised by :meth:`ClaimingStudy.ask` when no trial is left to claim."""

    def __init__(self, finished: int, running: int):
        super().__init__(f"{finished} finished and {running} running trials fill the study")
        self.finished, self.running = finished, running


def count_trials(study: optuna.Study) -> tuple[int, int]:
    """(finished, running) trials of ``study``, read from its storage now."""
    trials = study.get_trials(deepcopy=False, states=FINISHED + (TrialState.RUNNING,))
    running = sum(t.state == TrialState.RUNNING for t in trials)
    return len(trials) - running, running


class ClaimingStudy(optuna.Study):
    """An Optuna study whose :meth:`ask` claims one of ``target`` slots or raises :class:`StudyFull`.

    ``lock()`` returns the context manager that makes check-and-create atomic across workers.
    Everything else (heartbeats, pruning, callbacks) is Optuna's ``optimize``, which calls ``ask``.
    """

    def __init__(self, study_name: str, storage: BaseStorage, sampler: optuna.samplers.BaseSampler,
                 pruner: optuna.pruners.BasePruner, *, target: int, lock: Callable[[], ContextManager]):
        super().__init__(study_name=study_name, storage=storage, sampler=sampler, pruner=pruner)
        self.target = target
        self._claim_lock = lock
        self._unbeaten: dict[int, float] = {}  # trial id -> when this worker first saw it without a heartbeat

    def ask(self, fixed_distributions=None) -> optuna.Trial:
        with self._claim_lock():
            settings = heartbeat_settings(self._storage)
            heartbeat = settings is not None
            if heartbeat and self._claim_lock() is not local_lock:  # a lock every worker holds
                self._fail_orphans(older_than=settings[0])
            finished, running = count_trials(self)
            if finished + running >= self.target:
                raise StudyFull(finished, running)
            trial = super().ask(fixed_distributions)
            # A first heartbeat at once, under the lock: a worker killed before Optuna's heartbeat
            # thread starts would otherwise leave a RUNNING trial without one, never failed as stale
            if heartbeat:
                self._storage.record_heartbeat(trial._trial_id)
            return trial

    def _fail_orphans(self, older_than: float) -> None:
        """Fail, and queue again as a stale trial, every RUNNING trial without a heartbeat that
        started over ``older_than`` seconds ago (the heartbeat interval).

        Creating a trial and recording its first heartbeat are two writes: a worker killed between
        them leaves a RUNNING trial that no heartbeat ever marks stale, and the study one trial short
        for good. Seen under the claim lock, which nasdistill's workers hold from creating their trial
        to its first heartbeat, such a trial's worker died inside :meth:`ask`. A plain Optuna worker
        sharing the study takes no such lock: between its ``ask`` (which samples) and its heartbeat
        thread's first beat its trial has no heartbeat either, for moments, so a trial is left alone
        until it is a heartbeat interval old: by its start time, or, should the clocks of the machines
        disagree, by how long this worker has seen it without a heartbeat (a waiting worker looks
        again meanwhile)."""
        now, seen_now = datetime.datetime.now(), time.monotonic()  # datetime_start: the creator's local time
        orphans = []
        for t in self.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if has_heartbeat(self._storage, t):
                continue
            first_seen = self._unbeaten.setdefault(t._trial_id, seen_now)
            started_long_ago = t.datetime_start is None or (now - t.datetime_start).total_seconds() > older_than
            if started_long_ago or seen_now - first_seen > older_than:
                orphans.append(t)
        callback = self._storage.get_heartbeat_stale_trial_callback() if orphans else None
        for t in orphans:
            try:
                failed = self._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
            except optuna.exceptions.UpdateFinishedTrialError:  # failed by another worker meanwhile
                continue
            if failed:
                _log.warning("study %r: trial %d was left RUNNING by a worker that died while claiming it; "
                             "failed and queued again", self.study_name, t.number)
                if callback is not None:
                    callback(self, copy.deepcopy(self._storage.get_trial(t._trial_id)))


def claim_lock(storage: BaseStorage, study_name: str) -> Callable[[], ContextManager]:
    """A factory of the lock every worker of ``storage`` takes to claim a trial of ``study_name``."""
    key = derive_seed("nasdistill-claim", study_name)  # 63 bits: a valid PostgreSQL bigint
    if isinstance(storage, RDBStorage):
        engine = storage.engine
        dialect = engine.dialect.name
        if dialect == "postgresql":
            return lambda: sql_lock(engine, "SELECT pg_advisory_lock(:k)", "SELECT pg_advisory_unlock(:k)", key)
        if dialect in ("mysql", "mariadb"):
            name = f"nasdistill-{key:x}"
            return lambda: sql_lock(engine, "SELECT GET_LOCK(:k, 600)", "SELECT RELEASE_LOCK(:k)", name)
        db = engine.url.database
        if dialect == "sqlite" and db and db != ":memory:" and not db.startswith("file:"):
            return lambda: file_lock(f"{db}.claim")
    elif isinstance(storage, HeartbeatJournalStorage) and storage.path:
        path = storage.path
        return lambda: file_lock(f"{path}.claim")
    return lambda: local_lock


__all__ = ["ClaimingStudy", "StudyFull", "claim_lock", "count_trials", "FINISHED"]
