"""Where a search keeps its state (an Optuna storage, from a URL) and its results (JSON + CSV).

Storage URLs accepted by :func:`make_storage`:

* ``sqlite:///PATH`` (relative) or ``sqlite:////ABS/PATH``: an SQLite file; its folder is created.
  Several local processes may share it (30 s lock timeout).
* ``postgresql://...``, ``postgresql+psycopg2://...`` (or any other SQLAlchemy URL Optuna supports).
  A bare ``postgresql://`` is pointed at psycopg2 when only psycopg2 is installed.
* ``journal:PATH``, or a path ending in ``.log`` / ``.journal``: Optuna's append-only journal file.
* ``memory``: in-process only, nothing persists (for notebooks and tests).

Every storage that persists gets a heartbeat: a running trial records one every
``heartbeat_interval`` seconds, and a trial whose worker died is marked FAILED once its heartbeat is
``grace_period`` seconds old (checked whenever a worker starts a trial, and while a worker waits
for the others), then queued once more with the same architecture (:class:`RetryStaleTrial`).
Database storages use Optuna's heartbeat (timed by the database server's clock). Optuna 5.0's
journal storage has none, so :class:`HeartbeatJournalStorage` adds the equivalent: the heartbeat is
a trial system attribute holding the writer's wall-clock time, so machines sharing one journal file
need clocks that agree to well within ``grace_period``.

Results files, shared by every search backend (see :func:`write_results`):

* ``best_arch.json``: ``arch``, ``arch_id``, ``value``, ``metric``, ``trial``, ``study_name``,
  ``n_trials`` (finished trials), ``n_complete``, ``n_pruned``, ``n_failed``, plus backend extras.
* ``trials.csv``: one row per trial: ``number, state, value, arch_id, duration_s, reused,
  reused_from``, then one column per extra objective of a multi-objective study (``params``,
  ``flops``, ``latency``...), then ``params_<name>`` for every parameter.
* ``pareto.csv`` / ``pareto.json`` (multi-objective studies, :func:`write_pareto`): the Pareto front.
"""

from __future__ import annotations

import csv
import importlib.util
import inspect
import io
import os
import re
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import optuna
from optuna.exceptions import ExperimentalWarning, UpdateFinishedTrialError
from optuna.storages import BaseStorage, InMemoryStorage, JournalStorage, RDBStorage
from optuna.storages._heartbeat import BaseHeartbeat  # Optuna's own heartbeat protocol (no public alias)
from optuna.storages.journal import BaseJournalBackend, JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from .._io import to_jsonable, write_json, write_text
from ..errors import ConfigError, StorageError

#: Seconds between heartbeats of a running trial in a database storage.
HEARTBEAT_INTERVAL = 60
#: Seconds without a heartbeat after which a RUNNING trial is considered dead and marked FAILED.
GRACE_PERIOD = 180
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
    if scheme.startswith("sqlite"):
        _make_sqlite_dir(url)
        engine_kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT}}
    elif scheme in ("postgresql", "postgres") or scheme.startswith("postgresql+"):
        url = _postgres_driver(url)
        engine_kwargs = {"connect_args": {"connect_timeout": CONNECT_TIMEOUT}}
    try:
        with warnings.catch_warnings():  # heartbeat arguments are "experimental" in Optuna 5.0
            warnings.simplefilter("ignore", ExperimentalWarning)
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


def _make_sqlite_dir(url: str) -> None:
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


# --- results files -------------------------------------------------------------------------------
TRIAL_COLUMNS = ["number", "state", "value", "arch_id", "duration_s", "reused", "reused_from"]


def write_results(out_dir: str | os.PathLike, *, best: Mapping[str, Any], trials: Sequence[Mapping[str, Any]],
                  study_name: str, extra: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """Write ``best_arch.json`` and ``trials.csv`` into ``out_dir`` atomically; return their paths.

    ``best`` holds ``arch``, ``arch_id``, ``value`` and ``trial``; each trial is a dict with the
    :data:`TRIAL_COLUMNS` keys and ``params`` (a dict).
    """
    out = Path(out_dir)
    counts = {s: sum(1 for t in trials if t["state"] == s) for s in ("COMPLETE", "PRUNED", "FAIL")}
    summary = {
        "arch": dict(best["arch"]),
        "arch_id": best["arch_id"],
        "value": best["value"],
        "trial": best.get("trial"),
        "metric": best.get("metric", "val_accuracy"),
        "study_name": study_name,
        "n_trials": counts["COMPLETE"] + counts["PRUNED"],
        "n_complete": counts["COMPLETE"],
        "n_pruned": counts["PRUNED"],
        "n_failed": counts["FAIL"],
        **dict(extra or {}),
    }
    paths = {"best_arch": out / "best_arch.json", "trials": out / "trials.csv"}
    write_json(paths["best_arch"], summary)
    write_text(paths["trials"], trials_csv(trials))
    return paths


def trials_csv(trials: Sequence[Mapping[str, Any]]) -> str:
    """The trials table as CSV text (columns: :data:`TRIAL_COLUMNS`, the names in each trial's
    ``objectives`` dict (extra objectives of a multi-objective study), then ``params_<name>``)."""
    names = sorted({k for t in trials for k in (t.get("params") or {})})
    objectives = list(dict.fromkeys(k for t in trials for k in (t.get("objectives") or {})))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(TRIAL_COLUMNS + objectives + [f"params_{n}" for n in names])
    for t in trials:
        row = [_cell(t.get(c)) for c in TRIAL_COLUMNS]
        row += [_cell((t.get("objectives") or {}).get(n)) for n in objectives]
        row += [_cell((t.get("params") or {}).get(n)) for n in names]
        w.writerow(row)
    return buf.getvalue()


def write_pareto(out_dir: str | os.PathLike, *, front: Sequence[Mapping[str, Any]],
                 objectives: Sequence[Mapping[str, str]], study_name: str) -> dict[str, Path]:
    """Write the Pareto front of a multi-objective study as ``pareto.json`` and ``pareto.csv``.

    ``objectives``: ``{"name", "direction"}`` dicts in study order; each ``front`` entry holds
    ``trial``, ``arch_id``, ``arch`` and ``values`` (objective name -> value). The CSV has columns
    ``trial, arch_id``, one per objective, then ``arch_<key>`` for every architecture key.
    """
    out = Path(out_dir)
    names = [o["name"] for o in objectives]
    keys = sorted({k for p in front for k in (p.get("arch") or {})})
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["trial", "arch_id"] + names + [f"arch_{k}" for k in keys])
    for p in front:
        w.writerow([p["trial"], p["arch_id"]] + [_cell(p["values"][n]) for n in names]
                   + [_cell((p.get("arch") or {}).get(k)) for k in keys])
    paths = {"pareto_json": out / "pareto.json", "pareto_csv": out / "pareto.csv"}
    write_json(paths["pareto_json"], {"study_name": study_name, "objectives": list(objectives),
                                      "front": list(front)})
    write_text(paths["pareto_csv"], buf.getvalue())
    return paths


def top_rows(trials: Sequence[Mapping[str, Any]], k: int) -> list[Mapping[str, Any]]:
    """The ``k`` best distinct architectures among COMPLETE trials, by ``value`` (highest first, ties
    to the earliest trial); reused copies never displace the trial that trained the architecture."""
    best: dict[str, Mapping[str, Any]] = {}
    for t in sorted((t for t in trials if t["state"] == "COMPLETE" and t.get("value") is not None),
                    key=lambda t: (-t["value"], t["number"])):
        best.setdefault(t["arch_id"], t)
    return list(best.values())[:max(0, k)]


def _cell(v: Any) -> Any:
    v = to_jsonable(v)
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v)
    return v


__all__ = ["make_storage", "default_storage_url", "redact", "storage_label", "write_results", "trials_csv",
           "write_pareto", "top_rows", "TRIAL_COLUMNS", "HEARTBEAT_INTERVAL", "GRACE_PERIOD", "MAX_RETRY",
           "HEARTBEAT_ATTR", "HeartbeatJournalStorage", "RetryStaleTrial", "heartbeat_settings"]
