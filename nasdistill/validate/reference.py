"""The results store: full-data training results (and contender scores), kept so they are paid for once.

Training every sampled architecture on the full data is the expensive half of validating a proxy,
and it does not depend on the proxy. Results are stored in one SQL table keyed by
(dataset fingerprint, search space, architecture id, budget key, seed) and looked up before
training, so validating a second proxy against the same data trains nothing on the full data.
Scores of contenders that train (a proxy, the early-stop baseline) go to a second table keyed by
the contender's key instead of the budget, so a resumed validation skips those too.

The store is any SQLAlchemy URL (``sqlite:///refs.db``, ``postgresql://user@host/db``) or a plain
file path (an SQLite file); by default ``$NASDISTILL_HOME/references.db``. Writes are
insert-or-ignore on the primary key, so several processes can write the same store and the first
result stored for a key is the one every reader sees. Several processes sharing a store also
share the work without doing any twice: see :mod:`nasdistill.work.claims`.

Tables: ``reference_results`` (full-data results), ``contender_scores`` (scores of training
contenders), ``work_claims`` (who is computing what now) and ``work_runs`` (one row per finished
computation: who did it, when, and whether its result was the one stored).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import importlib.util
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar, Union

import sqlalchemy as sa
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from .._io import canonical_json, fingerprint, home_dir
from ..errors import StorageError
from ..training import TrainConfig
from ..work.locks import file_lock
from ..work.claims import CLAIMS_TABLE, DEFAULT_LEASE_S, RUNS_TABLE, ClaimBook, insert_ignore

T = TypeVar("T")

TABLE = "reference_results"
SCORES_TABLE = "contender_scores"
#: Longest architecture id the table holds (ids of user spaces are ``key=value`` lists).
MAX_ARCH_ID = 512


def budget_key(config: TrainConfig | dict) -> str:
    """A short stable hash (16 hex characters) of a training budget (:meth:`TrainConfig.budget`, seed excluded)."""
    return fingerprint(config.budget() if isinstance(config, TrainConfig) else dict(config), n=16)


@dataclass(frozen=True)
class ReferenceKey:
    """What identifies one full-data training run."""

    dataset: str  #: :attr:`ImageDataset.fingerprint`
    space: str  #: search-space name (ids of different spaces may look alike)
    arch_id: str  #: :meth:`SearchSpace.arch_id`
    budget: str  #: :func:`budget_key` of the training config
    seed: int  #: seed of the weights and of the batches

    @property
    def task(self) -> str:
        """What is computed, for claims and the run log: ``ref:<budget>``."""
        return f"ref:{self.budget}"


@dataclass(frozen=True)
class ScoreKey:
    """What identifies one contender's score of one architecture."""

    dataset: str  #: :attr:`ImageDataset.fingerprint`
    space: str  #: search-space name
    arch_id: str  #: :meth:`SearchSpace.arch_id`
    contender: str  #: the contender's key: a hash of everything its score depends on (proxy, budget, split)
    seed: int  #: seed of the weights and of the batches

    @property
    def task(self) -> str:
        """What is computed, for claims and the run log: ``score:<contender key>``."""
        return f"score:{self.contender}"


#: Either kind of key; both carry ``dataset, space, arch_id, seed`` and a ``task``.
TaskKey = Union[ReferenceKey, ScoreKey]


@dataclass(frozen=True)
class ReferenceResult:
    """The outcome of one full-data training run."""

    test_acc: float
    val_acc: float | None = None
    wall_time: float = 0.0
    params: int | None = None
    budget: dict | None = None  #: the settings behind the budget key, kept for people reading the table
    created: str | None = None  #: UTC ISO time it was stored (set by the store)


@dataclass(frozen=True)
class StoredScore:
    """One contender's score of one architecture, and what computing it cost."""

    value: float  #: the score (higher is better), e.g. accuracy after training on a proxy
    wall_time: float = 0.0  #: seconds it took, where it was computed
    samples: int | None = None  #: training images seen
    flops: float | None = None  #: FLOPs spent (see :mod:`nasdistill.validate.costs`)
    created: str | None = None  #: UTC ISO time it was stored (set by the store)


def _key_columns(last: str, length: int = 80) -> list[sa.Column]:
    return [sa.Column("dataset_fingerprint", sa.String(64), primary_key=True),
            sa.Column("space", sa.String(128), primary_key=True),
            sa.Column("arch_id", sa.String(MAX_ARCH_ID), primary_key=True),
            sa.Column(last, sa.String(length), primary_key=True),
            sa.Column("seed", sa.BigInteger, primary_key=True, autoincrement=False)]


def _metadata() -> tuple[sa.MetaData, dict[str, sa.Table]]:
    md = sa.MetaData()
    results = sa.Table(
        TABLE, md, *_key_columns("budget_key", 32),
        sa.Column("test_acc", sa.Float, nullable=False),
        sa.Column("val_acc", sa.Float, nullable=True),
        sa.Column("wall_time", sa.Float, nullable=False),
        sa.Column("params", sa.BigInteger, nullable=True),
        sa.Column("budget", sa.Text, nullable=True),
        sa.Column("created", sa.String(40), nullable=False),
    )
    scores = sa.Table(
        SCORES_TABLE, md, *_key_columns("contender_key"),
        sa.Column("value", sa.Float, nullable=False),
        sa.Column("wall_time", sa.Float, nullable=False),
        sa.Column("samples", sa.BigInteger, nullable=True),
        sa.Column("flops", sa.Float, nullable=True),
        sa.Column("created", sa.String(40), nullable=False),
    )
    claims = sa.Table(
        CLAIMS_TABLE, md, *_key_columns("task"),
        sa.Column("worker", sa.String(200), nullable=False),
        sa.Column("claimed_at", sa.Float, nullable=False),
        sa.Column("heartbeat", sa.Float, nullable=False),
    )
    runs = sa.Table(
        RUNS_TABLE, md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("dataset_fingerprint", sa.String(64), nullable=False),
        sa.Column("space", sa.String(128), nullable=False),
        sa.Column("arch_id", sa.String(MAX_ARCH_ID), nullable=False),
        sa.Column("task", sa.String(80), nullable=False),
        sa.Column("seed", sa.BigInteger, nullable=False),
        sa.Column("worker", sa.String(200), nullable=False),
        sa.Column("started", sa.Float, nullable=False),
        sa.Column("finished", sa.Float, nullable=False),
        sa.Column("stored", sa.Boolean, nullable=False),
    )
    return md, {TABLE: results, SCORES_TABLE: scores, CLAIMS_TABLE: claims, RUNS_TABLE: runs}


def _now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _normalise_url(url: str | os.PathLike | None) -> sa.URL:
    """A SQLAlchemy URL from a URL, a file path, or None (the default store)."""
    if url is None:
        url = home_dir() / "references.db"
    text = os.fspath(url)
    if "://" not in text:
        text = f"sqlite:///{Path(text).expanduser().resolve()}"
    try:
        parsed = sa.make_url(text)
    except ArgumentError as e:
        raise StorageError(f"invalid reference-store URL ({e})",
                           "pass a SQLAlchemy URL such as sqlite:///refs.db or a file path") from e
    if parsed.drivername == "postgresql" and not _importable("psycopg") and _importable("psycopg2"):
        parsed = parsed.set(drivername="postgresql+psycopg2")  # SQLAlchemy 2.1 defaults to psycopg 3
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        path = Path(parsed.database).expanduser()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StorageError(f"cannot create the folder for the reference store {path} ({e.strerror or e})",
                               "use a writable path for the reference store") from e
    return parsed


def _importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


class ReferenceStore:
    """Full-data results keyed by :class:`ReferenceKey`, in any SQL database SQLAlchemy reaches.

    >>> store = ReferenceStore()                       # $NASDISTILL_HOME/references.db
    >>> store = ReferenceStore("postgresql://u@host/db")
    >>> store.get(key) or store.put(key, ReferenceResult(test_acc=0.91, wall_time=12.0))

    Contender scores: :meth:`get_score` / :meth:`put_score` with a :class:`ScoreKey`. Claims and
    the run log (several workers sharing the store): :attr:`work`, a
    :class:`~nasdistill.work.claims.ClaimBook` on the store's ``work_claims`` and ``work_runs``
    tables, whose :meth:`claim`, :meth:`renew`, :meth:`release`, :meth:`lease`, :meth:`claims`
    and :meth:`runs` the store offers as its own.
    """

    def __init__(self, url: str | os.PathLike | None = None):
        self.url = _normalise_url(url)
        self._md, self._tables = _metadata()
        self._table = self._tables[TABLE]
        connect_args = {"sqlite": {"timeout": 30}, "postgresql": {"connect_timeout": 10}}.get(
            self.url.get_backend_name(), {})
        try:
            self._engine = sa.create_engine(self.url, connect_args=connect_args)
        except ImportError as e:
            fix = ("pip install 'nasdistill[postgres]'" if self.url.get_backend_name() == "postgresql"
                   else f"install a database driver for {self.url.drivername}")
            raise StorageError(f"no database driver for the reference store {self} ({e})", fix) from e
        except ArgumentError as e:
            raise StorageError(f"cannot open the reference store {self} ({e})",
                               "pass a SQLAlchemy URL such as sqlite:///refs.db or a file path") from e
        self._run(self._create_table)
        #: Claims and the run log of the workers sharing this store.
        self.work = ClaimBook(self._engine, self._tables[CLAIMS_TABLE], self._tables[RUNS_TABLE], guard=self._run)

    def __repr__(self) -> str:
        return f"ReferenceStore({self.url.render_as_string(hide_password=True)!r})"

    def __str__(self) -> str:
        return self.url.render_as_string(hide_password=True)

    # --- plumbing --------------------------------------------------------------------------------
    def _run(self, fn: Callable[[], T]) -> T:
        """Run a database operation, turning driver errors into a one-line :class:`StorageError`."""
        try:
            return fn()
        except SQLAlchemyError as e:
            detail = " ".join(str(getattr(e, "orig", None) or e).split())
            raise StorageError(f"reference store {self} failed: {detail}",
                               "check that the database is reachable and is a nasdistill reference store, "
                               "or use another URL or path") from e

    def _create_table(self) -> None:
        db = self.url.database if self.url.get_backend_name() == "sqlite" else None
        # Processes creating one new SQLite store at once take turns; other databases are retried.
        lock = file_lock(f"{Path(db).expanduser()}.lock") if db not in (None, "", ":memory:") else contextlib.nullcontext()
        with lock:
            for attempt in range(5):
                try:
                    self._md.create_all(self._engine, checkfirst=True)
                    break
                except SQLAlchemyError:  # another process created some between the check and the CREATE
                    inspector = sa.inspect(self._engine)
                    if all(inspector.has_table(name) for name in self._tables):
                        break
                    if attempt == 4:
                        raise
                    time.sleep(0.05 * (attempt + 1))
        inspector = sa.inspect(self._engine)
        for name, table in self._tables.items():
            columns = {c["name"] for c in inspector.get_columns(name)}
            missing = {c.name for c in table.columns} - columns
            if missing:
                raise StorageError(f"table {name!r} in {self} lacks columns {sorted(missing)}",
                                   "use a new database for the reference store")

    def _where(self, key: TaskKey) -> Any:
        """The row of ``key`` in its results table (references or contender scores)."""
        if isinstance(key, ReferenceKey):
            table, last = self._table, self._table.c.budget_key == key.budget
        else:
            table = self._tables[SCORES_TABLE]
            last = table.c.contender_key == key.contender
        t = table.c
        return sa.and_(t.dataset_fingerprint == key.dataset, t.space == key.space, t.arch_id == key.arch_id,
                       last, t.seed == int(key.seed))

    # --- claims and the run log (see nasdistill.work.claims) --------------------------------------
    def claim(self, key: TaskKey, worker: str, lease_s: float = DEFAULT_LEASE_S) -> bool:
        """:meth:`ClaimBook.claim <nasdistill.work.claims.ClaimBook.claim>` on this store."""
        return self.work.claim(key, worker, lease_s)

    def renew(self, key: TaskKey, worker: str) -> bool:
        """:meth:`ClaimBook.renew <nasdistill.work.claims.ClaimBook.renew>` on this store."""
        return self.work.renew(key, worker)

    def release(self, key: TaskKey, worker: str) -> None:
        """:meth:`ClaimBook.release <nasdistill.work.claims.ClaimBook.release>` on this store."""
        self.work.release(key, worker)

    def lease(self, key: TaskKey, worker: str, lease_s: float = DEFAULT_LEASE_S):
        """:meth:`ClaimBook.lease <nasdistill.work.claims.ClaimBook.lease>` on this store."""
        return self.work.lease(key, worker, lease_s)

    def claims(self) -> list[dict]:
        """:meth:`ClaimBook.claims <nasdistill.work.claims.ClaimBook.claims>` on this store."""
        return self.work.claims()

    def runs(self, key: TaskKey | None = None) -> list[dict]:
        """:meth:`ClaimBook.runs <nasdistill.work.claims.ClaimBook.runs>` on this store."""
        return self.work.runs(key)

    # --- API -------------------------------------------------------------------------------------
    def get(self, key: ReferenceKey) -> ReferenceResult | None:
        """The stored result for ``key``, or None."""
        def op() -> ReferenceResult | None:
            with self._engine.connect() as conn:
                row = conn.execute(sa.select(self._table).where(self._where(key))).mappings().first()
            if row is None:
                return None
            return ReferenceResult(test_acc=float(row["test_acc"]),
                                   val_acc=None if row["val_acc"] is None else float(row["val_acc"]),
                                   wall_time=float(row["wall_time"]),
                                   params=None if row["params"] is None else int(row["params"]),
                                   budget=json.loads(row["budget"]) if row["budget"] else None,
                                   created=row["created"])
        return self._run(op)

    def put(self, key: ReferenceKey, result: ReferenceResult, *, worker: str | None = None,
            started: float | None = None) -> ReferenceResult:
        """Store ``result`` under ``key`` unless a result is already there; return the stored one.

        Idempotent and safe with concurrent writers: the first result stored for a key wins and
        later ``put`` calls return it unchanged. With ``worker`` (and ``started``, a
        :func:`time.time`), the same transaction logs the run in ``work_runs`` and drops that
        worker's claim on the key.
        """
        self._check_arch_id(key)
        row = {
            "dataset_fingerprint": key.dataset, "space": key.space, "arch_id": key.arch_id,
            "budget_key": key.budget, "seed": int(key.seed),
            **{k: v for k, v in asdict(result).items() if k not in ("budget", "created")},
            "budget": canonical_json(result.budget) if result.budget is not None else None,
            "created": _now_iso(),
        }
        self._record(self._table, row, key, worker, started)
        stored = self.get(key)
        if stored is None:
            raise StorageError(f"reference store {self} did not keep the result for {key.arch_id}",
                               "check that nothing else deletes rows from it")
        return stored

    def get_score(self, key: ScoreKey) -> StoredScore | None:
        """The stored contender score for ``key``, or None."""
        def op() -> StoredScore | None:
            with self._engine.connect() as conn:
                row = conn.execute(sa.select(self._tables[SCORES_TABLE]).where(self._where(key))).mappings().first()
            if row is None:
                return None
            return StoredScore(value=float(row["value"]), wall_time=float(row["wall_time"]),
                               samples=None if row["samples"] is None else int(row["samples"]),
                               flops=None if row["flops"] is None else float(row["flops"]), created=row["created"])
        return self._run(op)

    def put_score(self, key: ScoreKey, score: StoredScore, *, worker: str | None = None,
                  started: float | None = None) -> StoredScore:
        """Store ``score`` under ``key`` unless one is there (first writer wins); return the stored one.

        ``worker`` / ``started``: as for :meth:`put`.
        """
        self._check_arch_id(key)
        row = {"dataset_fingerprint": key.dataset, "space": key.space, "arch_id": key.arch_id,
               "contender_key": key.contender, "seed": int(key.seed), "value": float(score.value),
               "wall_time": float(score.wall_time), "samples": score.samples,
               "flops": None if score.flops is None else float(score.flops), "created": _now_iso()}
        self._record(self._tables[SCORES_TABLE], row, key, worker, started)
        stored = self.get_score(key)
        if stored is None:
            raise StorageError(f"reference store {self} did not keep the score for {key.arch_id}",
                               "check that nothing else deletes rows from it")
        return stored

    def _check_arch_id(self, key: TaskKey) -> None:
        if len(key.arch_id) > MAX_ARCH_ID:
            raise StorageError(f"architecture id is {len(key.arch_id)} characters, more than the store's {MAX_ARCH_ID}",
                               "give the search space a shorter arch_id()")

    def _record(self, table: sa.Table, row: dict, key: TaskKey, worker: str | None, started: float | None) -> None:
        """Insert-or-ignore ``row``; with ``worker``, log the run and drop its claim, all in one transaction."""
        def op() -> None:
            with self._engine.begin() as conn:
                stored = insert_ignore(conn, table, row)
                if worker is not None:
                    self.work.log_run(conn, key, worker, started, stored)
        self._run(op)

    def count(self) -> int:
        """Number of stored results."""
        def op() -> int:
            with self._engine.connect() as conn:
                return int(conn.execute(sa.select(sa.func.count()).select_from(self._table)).scalar_one())
        return self._run(op)

    def close(self) -> None:
        """Release pooled connections (the store can still be used; it reconnects)."""
        self._engine.dispose()

    def __enter__(self) -> "ReferenceStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
