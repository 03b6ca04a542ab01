"""Where a search keeps its state (an Optuna storage, from a URL) and its results (JSON + CSV).

Storage URLs accepted by :func:`make_storage`:

* ``sqlite:///PATH`` (relative) or ``sqlite:////ABS/PATH``: an SQLite file; its folder is created.
  Several local processes may share it (30 s lock timeout).
* ``postgresql://...``, ``postgresql+psycopg2://...`` (or any other SQLAlchemy URL Optuna supports).
  A bare ``postgresql://`` is pointed at psycopg2 when only psycopg2 is installed.
* ``journal:PATH``, or a path ending in ``.log`` / ``.journal``: Optuna's append-only journal file.
* ``memory``: in-process only, nothing persists (for notebooks and tests).

Database storages get a heartbeat: a trial whose worker died is marked FAILED once its heartbeat
is ``grace_period`` seconds old (checked whenever a worker starts a trial). Optuna 5.0's journal
storage has no heartbeat, so a killed worker's trial stays RUNNING there (it is not counted as
finished, so a re-run still completes the study).

Results files, shared by every search backend (see :func:`write_results`):

* ``best_arch.json``: ``arch``, ``arch_id``, ``value``, ``metric``, ``trial``, ``study_name``,
  ``n_trials`` (finished trials), ``n_complete``, ``n_pruned``, ``n_failed``, plus backend extras.
* ``trials.csv``: one row per trial: ``number, state, value, arch_id, duration_s, reused,
  reused_from``, then ``params_<name>`` for every parameter.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import os
import re
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

from optuna.exceptions import ExperimentalWarning
from optuna.storages import BaseStorage, InMemoryStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend

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


def make_storage(url: str | BaseStorage, *, heartbeat_interval: int = HEARTBEAT_INTERVAL,
                 grace_period: int | None = GRACE_PERIOD) -> BaseStorage:
    """An Optuna storage for ``url`` (see the module docstring); storages pass through unchanged.

    Raises :class:`StorageError` (one line naming the URL and the fix) when the storage cannot be
    opened: unknown scheme, missing driver, unreachable server, a file that is not a study database.
    """
    if isinstance(url, BaseStorage):
        return url
    url = str(url).strip()
    if url in ("memory", ":memory:"):
        return InMemoryStorage()
    if url.startswith("journal:") or (url.endswith(_JOURNAL_SUFFIXES) and "://" not in url):
        return _journal(url.removeprefix("journal:"))
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
                              grace_period=grace_period)
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


def _journal(path: str) -> JournalStorage:
    if not path:
        raise StorageError("journal storage needs a file path", "use journal:PATH")
    p = Path(path).expanduser()
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(p)))
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
    """The trials table as CSV text (columns: :data:`TRIAL_COLUMNS` then ``params_<name>``)."""
    names = sorted({k for t in trials for k in (t.get("params") or {})})
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(TRIAL_COLUMNS + [f"params_{n}" for n in names])
    for t in trials:
        row = [_cell(t.get(c)) for c in TRIAL_COLUMNS]
        row += [_cell((t.get("params") or {}).get(n)) for n in names]
        w.writerow(row)
    return buf.getvalue()


def _cell(v: Any) -> Any:
    v = to_jsonable(v)
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v)
    return v


__all__ = ["make_storage", "default_storage_url", "redact", "storage_label", "write_results", "trials_csv",
           "TRIAL_COLUMNS", "HEARTBEAT_INTERVAL", "GRACE_PERIOD"]
