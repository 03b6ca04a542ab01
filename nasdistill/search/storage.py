"""Where an Optuna search keeps its state: an Optuna storage, from a URL, shareable by workers.

Storage URLs accepted by :func:`make_storage`:

* ``sqlite:///PATH`` (relative) or ``sqlite:////ABS/PATH``: an SQLite file; its folder is created.
  Several local processes may share it (30 s lock timeout).
* ``postgresql://...``, ``postgresql+psycopg2://...`` (or any other SQLAlchemy URL Optuna supports).
  A bare ``postgresql://`` is pointed at psycopg2 when only psycopg2 is installed.
* ``journal:PATH``, or a path ending in ``.log`` / ``.journal``: Optuna's append-only journal file.
* ``memory``: in-process only, nothing persists (for notebooks and tests).

Every storage that persists gets a heartbeat: a running trial records one every
``heartbeat_interval`` seconds, and a trial whose worker died is marked FAILED once its heartbeat is
``grace_period`` seconds old (:data:`GRACE_PERIOD`: ``$NASDISTILL_GRACE_PERIOD``, default 60; checked whenever a worker starts a trial, and while a worker waits
for the others), then queued once more with the same architecture (:class:`RetryStaleTrial`).
Database storages use Optuna's heartbeat (timed by the database server's clock). Optuna 5.0's
journal storage has none, so :class:`HeartbeatJournalStorage` adds the equivalent: the heartbeat is
a trial system attribute holding the writer's wall-clock time, so machines sharing one journal file
need clocks that agree to well within ``grace_period``.

The results files every backend writes live in :mod:`nasdistill.search.results`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import os
import re
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.exceptions import ExperimentalWarning, UpdateFinishedTrialError
from optuna.storages import BaseStorage, InMemoryStorage, JournalStorage, RDBStorage
from optuna.storages._heartbeat import BaseHeartbeat  # Optuna's own heartbeat protocol (no public alias)
from optuna.storages.journal import BaseJournalBackend, JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from ..errors import ConfigError, StorageError
from ..work.claims import grace_period_setting
from ..work.locks import file_lock

#: Seconds between heartbeats of a running trial in a database storage.
HEARTBEAT_INTERVAL = 10
#: Seconds without a heartbeat after which a RUNNING trial is considered dead and marked FAILED
#: (``$NASDISTILL_GRACE_PERIOD``, default 60; at least twice the heartbeat interval).
GRACE_PERIOD = int(max(2 * HEARTBEAT_INTERVAL, grace_period_setting()))
#: Seconds an SQLite writer waits for another process's lock before failing.
SQLITE_TIMEOUT = 30
#: Seconds to wait for a PostgreSQL server to answer.
CONNECT_TIMEOUT = 10
#: How many times a dead worker's trial is queued again (with the same architecture).
MAX_RETRY = 1
#: Trial system attribute holding the journal heartbeat (wall-clock seconds since the epoch).
HEARTBEAT_ATTR = "nasdistill:heartbeat"

_JOURNAL_SUFFIXES = (".log", ".journal")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_FIX = "use sqlite:///PATH, postgresql+psycopg2://USER@HOST/DB, journal:PATH or memory"


def default_storage_url(study_name: str, root: str | os.PathLike = "runs") -> str:
    """``sqlite:///runs/<study_name>/study.db`` (relative to the working directory)."""
    if not _NAME.fullmatch(study_name or ""):
        raise ConfigError(f"study name {study_name!r} cannot name a folder",
                          "use letters, digits, '.', '_' and '-' only, or pass a storage URL")
    return f"sqlite:///{Path(root, study_name, 'study.db').as_posix()}"


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***`` (safe to print and to store)."""
    if "://" not in url:
        return url
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not an SQLAlchemy URL: hide anything between ':' and '@' after the scheme
        return re.sub(r"(://[^:/@]*):[^@]*@", r"\1:***@", url)


def make_storage(url: str | BaseStorage, *, heartbeat_interval: int | None = HEARTBEAT_INTERVAL,
                 grace_period: int | None = GRACE_PERIOD, max_retry: int = MAX_RETRY) -> BaseStorage:
    """An Optuna storage for ``url`` (see the module docstring); storages pass through unchanged.

    ``heartbeat_interval`` / ``grace_period`` (seconds) set the heartbeat of database and journal
    storages; a trial failed by the heartbeat is queued again up to ``max_retry`` times.

    Raises :class:`StorageError` (one line naming the URL and the fix) when the storage cannot be
    opened: unknown scheme, missing driver, unreachable server, a file that is not a study database.
    """
    if isinstance(url, BaseStorage):
        return url
    url = str(url).strip()
    if (heartbeat_interval is not None and heartbeat_interval < 1) or (grace_period is not None and grace_period < 1):
        raise ConfigError(f"heartbeat interval {heartbeat_interval} and grace period {grace_period} must be "
                          "at least 1 second", "pass positive numbers of seconds (or None: no heartbeat)")
    retry = RetryStaleTrial(max_retry) if max_retry else None
    if url in ("memory", ":memory:"):
        return InMemoryStorage()
    if url.startswith("journal:") or (url.endswith(_JOURNAL_SUFFIXES) and "://" not in url):
        return _journal(url.removeprefix("journal:"), heartbeat_interval, grace_period, retry)
    if "://" not in url:
        raise StorageError(f"storage {url!r} is not a storage URL", _FIX)
    scheme = url.split("://", 1)[0].lower()
    engine_kwargs: dict[str, Any] = {}
    lock: Any = contextlib.nullcontext()
    if scheme.startswith("sqlite"):
        db = _make_sqlite_dir(url)
        engine_kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT}}
        if db is not None:  # processes creating one new study file at once take turns (else: alembic races)
            lock = file_lock(f"{db}.lock")
    elif scheme in ("postgresql", "postgres") or scheme.startswith("postgresql+"):
        url = _postgres_driver(url)
        engine_kwargs = {"connect_args": {"connect_timeout": CONNECT_TIMEOUT}}
    try:
        with warnings.catch_warnings():  # heartbeat arguments are "experimental" in Optuna 5.0
            warnings.simplefilter("ignore", ExperimentalWarning)
            with lock:
                return RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_interval,
                                  grace_period=grace_period, **{_STALE_CALLBACK_KWARG: retry})
    except ImportError as e:
        raise StorageError(f"cannot open storage {redact(url)}: missing database driver ({e.name or e})",
                           "install the driver (pip install 'nasdistill[postgres]' for PostgreSQL)") from e
    except Exception as e:  # SQLAlchemy errors, Optuna schema errors, OS errors
        from sqlalchemy.exc import ArgumentError

        if isinstance(e, ArgumentError):
            fix = _FIX
        elif scheme.startswith("sqlite"):
            fix = "pass the path of an Optuna SQLite study, or of a new file"
        else:
            fix = "check that the server is running and the host, port, user and database are right"
        raise StorageError(f"cannot open storage {redact(url)}: {_first_line(e)}", fix) from e


def check_storage_url(url: str | None) -> None:
    """Raise :class:`StorageError` for a storage URL :func:`make_storage` would refuse by its form
    alone (nothing is opened or created): before any work, so a bad ``--storage`` costs nothing."""
    if url is None or isinstance(url, BaseStorage):
        return
    url = str(url).strip()
    if url in ("memory", ":memory:") or url.startswith("journal:") or (url.endswith(_JOURNAL_SUFFIXES)
                                                                      and "://" not in url):
        if url == "journal:":
            raise StorageError("journal storage needs a file path", "use journal:PATH")
        return
    if "://" not in url:
        raise StorageError(f"storage {url!r} is not a storage URL", _FIX)
    from sqlalchemy.engine import make_url

    try:
        make_url(url)
    except Exception as e:
        raise StorageError(f"storage {redact(url)!r} is not a valid URL: {_first_line(e)}", _FIX) from None


# Optuna 4.9 renamed RDBStorage's failed_trial_callback to heartbeat_stale_trial_callback.
_STALE_CALLBACK_KWARG = ("heartbeat_stale_trial_callback"
                         if "heartbeat_stale_trial_callback" in inspect.signature(RDBStorage).parameters
                         else "failed_trial_callback")


class RetryStaleTrial:
    """Queue the trial of a dead worker again (as a WAITING trial with the same parameters), at most
    ``max_retry`` times per original trial.

    Like Optuna's ``RetryHeartbeatStaleTrialCallback``, plus: nasdistill's per-run attributes (the
    journal heartbeat, the worker, ``reused_from``) are not copied, so the retry starts clean.
    The retry's system attributes ``failed_trial`` and ``retry_history`` name the trials it replaces.
    """

    def __init__(self, max_retry: int = MAX_RETRY):
        self.max_retry = max_retry

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        history = [*trial.system_attrs.get("retry_history", []), trial.number]
        if len(history) > self.max_retry:
            return
        system_attrs = {k: v for k, v in trial.system_attrs.items() if not k.startswith("nasdistill:")}
        system_attrs.update(failed_trial=trial.system_attrs.get("failed_trial", trial.number), retry_history=history)
        user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in ("reused_from", "worker")}
        study.add_trial(optuna.create_trial(state=TrialState.WAITING, params=trial.params,
                                            distributions=trial.distributions, user_attrs=user_attrs,
                                            system_attrs=system_attrs))


class HeartbeatJournalStorage(JournalStorage, BaseHeartbeat):
    """Optuna's journal storage with the heartbeat Optuna gives only database storages.

    A running trial writes ``time.time()`` to its :data:`HEARTBEAT_ATTR` system attribute every
    ``heartbeat_interval`` seconds (Optuna's ``optimize`` runs the heartbeat thread, as for a
    database); a RUNNING trial whose last heartbeat is more than ``grace_period`` seconds old is
    stale, and :func:`optuna.storages.fail_stale_trials` marks it FAILED and calls
    ``stale_trial_callback``. Trials that never recorded a heartbeat are never stale.
    """

    def __init__(self, backend: BaseJournalBackend, *, heartbeat_interval: int | None = HEARTBEAT_INTERVAL,
                 grace_period: int | None = GRACE_PERIOD,
                 stale_trial_callback: Callable[[optuna.Study, FrozenTrial], None] | None = None,
                 path: str | None = None):
        super().__init__(backend)
        self.path = path  #: the journal file, when it is one (workers lock a file beside it)
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period if grace_period is not None or heartbeat_interval is None \
            else 2 * heartbeat_interval
        self.stale_trial_callback = stale_trial_callback

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            self.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())
        except UpdateFinishedTrialError:  # another worker already failed it as stale
            pass

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        deadline = time.time() - self.grace_period
        return [t._trial_id for t in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
                if t.system_attrs.get(HEARTBEAT_ATTR, float("inf")) < deadline]

    def get_heartbeat_interval(self) -> int | None:
        return self.heartbeat_interval

    def get_heartbeat_stale_trial_callback(self) -> Callable[[optuna.Study, FrozenTrial], None] | None:
        return self.stale_trial_callback

    def get_failed_trial_callback(self) -> Callable[[optuna.Study, FrozenTrial], None] | None:
        return self.stale_trial_callback  # the Optuna < 4.9 name


def has_heartbeat(storage: BaseStorage, trial: FrozenTrial) -> bool:
    """Whether ``trial`` has recorded a heartbeat in ``storage`` (a database's ``trial_heartbeats``
    row, a journal's :data:`HEARTBEAT_ATTR`); True where the storage keeps none to read."""
    backend = getattr(storage, "_backend", storage)  # Optuna wraps database storages in a cache
    if isinstance(backend, HeartbeatJournalStorage):
        return HEARTBEAT_ATTR in trial.system_attrs
    if isinstance(backend, RDBStorage):
        from sqlalchemy import text

        with backend.engine.connect() as conn:
            row = conn.execute(text("SELECT 1 FROM trial_heartbeats WHERE trial_id = :t"), {"t": trial._trial_id})
            return row.first() is not None
    return True


def heartbeat_settings(storage: BaseStorage) -> tuple[int, int] | None:
    """``(heartbeat_interval, grace_period)`` of ``storage``'s heartbeat, or None when it has none."""
    if not isinstance(storage, BaseHeartbeat) or storage.get_heartbeat_interval() is None:
        return None
    interval = int(storage.get_heartbeat_interval())  # type: ignore[arg-type]
    return interval, int(getattr(storage, "grace_period", None) or 2 * interval)


def _journal(path: str, heartbeat_interval: int, grace_period: int | None,
             retry: Callable[[optuna.Study, FrozenTrial], None] | None) -> JournalStorage:
    if not path:
        raise StorageError("journal storage needs a file path", "use journal:PATH")
    p = Path(path).expanduser()
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        return HeartbeatJournalStorage(JournalFileBackend(str(p)), heartbeat_interval=heartbeat_interval,
                                       grace_period=grace_period, stale_trial_callback=retry, path=str(p))
    except Exception as e:
        raise StorageError(f"cannot open journal storage {path}: {_first_line(e)}",
                           "pass a writable file path") from e


def _make_sqlite_dir(url: str) -> str | None:
    """Create the folder of an SQLite URL's file; return the file's path (None: in memory)."""
    from sqlalchemy.engine import make_url

    try:
        db = make_url(url).database
    except Exception as e:
        raise StorageError(f"storage {url!r} is not a valid SQLite URL: {_first_line(e)}",
                           "use sqlite:///relative/path.db or sqlite:////absolute/path.db") from e
    if db and db != ":memory:" and not db.startswith("file:"):
        try:
            Path(db).expanduser().parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StorageError(f"cannot create the folder for {url}: {_first_line(e)}",
                               "pass a writable path") from e
        return str(Path(db).expanduser())
    return None


def _postgres_driver(url: str) -> str:
    """Name an installed driver: SQLAlchemy 2.1 reads bare ``postgresql://`` as psycopg 3."""
    scheme, rest = url.split("://", 1)
    if scheme.lower() not in ("postgresql", "postgres"):
        return url
    if importlib.util.find_spec("psycopg") is not None:
        return f"postgresql+psycopg://{rest}"
    if importlib.util.find_spec("psycopg2") is not None:
        return f"postgresql+psycopg2://{rest}"
    raise StorageError(f"cannot open storage {redact(url)}: no PostgreSQL driver is installed",
                       "pip install 'nasdistill[postgres]' (psycopg2-binary)")


def _first_line(e: BaseException) -> str:
    text = str(getattr(e, "orig", None) or e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


def storage_label(storage: str | BaseStorage | None) -> str:
    """A printable, password-free name for a storage argument."""
    if storage is None or isinstance(storage, str):
        return redact(storage or "")
    if isinstance(storage, RDBStorage):
        return redact(str(storage.engine.url))
    return type(storage).__name__


def storage_url(storage: str | BaseStorage | None) -> str:
    """The URL other processes open ``storage`` with; memory storages cannot be shared."""
    if storage is None:
        raise ConfigError("workers need a storage they can share", "pass a storage URL")
    if isinstance(storage, str):
        if storage.strip() in ("memory", ":memory:") or storage.strip().endswith(":memory:"):
            raise ConfigError("an in-memory storage cannot be shared by worker processes",
                              "use sqlite:///FILE, journal:FILE or postgresql://...")
        return storage
    if isinstance(storage, RDBStorage):
        return storage.url
    if isinstance(storage, HeartbeatJournalStorage) and storage.path:
        return f"journal:{storage.path}"
    if isinstance(storage, InMemoryStorage):
        raise ConfigError("an in-memory storage cannot be shared by worker processes",
                          "use sqlite:///FILE, journal:FILE or postgresql://...")
    raise ConfigError(f"workers cannot reopen a {type(storage).__name__}", "pass the storage as a URL")


__all__ = ["make_storage", "has_heartbeat", "default_storage_url", "redact", "storage_label", "storage_url", "HEARTBEAT_INTERVAL",
           "GRACE_PERIOD", "MAX_RETRY", "HEARTBEAT_ATTR", "HeartbeatJournalStorage", "RetryStaleTrial",
           "heartbeat_settings"]
