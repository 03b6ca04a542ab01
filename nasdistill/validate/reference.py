"""The reference store: full-data training results, kept so they are paid for once.

Training every sampled architecture on the full data is the expensive half of validating a proxy,
and it does not depend on the proxy. Results are stored in one SQL table keyed by
(dataset fingerprint, search space, architecture id, budget key, seed) and looked up before
training, so validating a second proxy against the same data trains nothing on the full data.

The store is any SQLAlchemy URL (``sqlite:///refs.db``, ``postgresql://user@host/db``) or a plain
file path (an SQLite file); by default ``$NASDISTILL_HOME/references.db``. Writes are
insert-or-ignore on the primary key, so several processes can write the same store and the first
result stored for a key is the one every reader sees.
"""

from __future__ import annotations

import datetime as _dt
import importlib.util
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

import sqlalchemy as sa
from sqlalchemy.exc import ArgumentError, IntegrityError, SQLAlchemyError

from .._io import canonical_json, fingerprint, home_dir
from ..errors import StorageError
from ..training import TrainConfig

T = TypeVar("T")

TABLE = "reference_results"
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


@dataclass(frozen=True)
class ReferenceResult:
    """The outcome of one full-data training run."""

    test_acc: float
    val_acc: float | None = None
    wall_time: float = 0.0
    params: int | None = None
    budget: dict | None = None  #: the settings behind the budget key, kept for people reading the table
    created: str | None = None  #: UTC ISO time it was stored (set by the store)


def _metadata() -> tuple[sa.MetaData, sa.Table]:
    md = sa.MetaData()
    table = sa.Table(
        TABLE, md,
        sa.Column("dataset_fingerprint", sa.String(64), primary_key=True),
        sa.Column("space", sa.String(128), primary_key=True),
        sa.Column("arch_id", sa.String(MAX_ARCH_ID), primary_key=True),
        sa.Column("budget_key", sa.String(32), primary_key=True),
        sa.Column("seed", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("test_acc", sa.Float, nullable=False),
        sa.Column("val_acc", sa.Float, nullable=True),
        sa.Column("wall_time", sa.Float, nullable=False),
        sa.Column("params", sa.BigInteger, nullable=True),
        sa.Column("budget", sa.Text, nullable=True),
        sa.Column("created", sa.String(40), nullable=False),
    )
    return md, table


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
    """

    def __init__(self, url: str | os.PathLike | None = None):
        self.url = _normalise_url(url)
        self._md, self._table = _metadata()
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
        try:
            self._md.create_all(self._engine, checkfirst=True)
        except SQLAlchemyError:  # another process created it between the check and the CREATE
            if not sa.inspect(self._engine).has_table(TABLE):
                raise
        columns = {c["name"] for c in sa.inspect(self._engine).get_columns(TABLE)}
        missing = {c.name for c in self._table.columns} - columns
        if missing:
            raise StorageError(f"table {TABLE!r} in {self} lacks columns {sorted(missing)}",
                               "use a new database for the reference store")

    def _where(self, key: ReferenceKey) -> Any:
        t = self._table.c
        return sa.and_(t.dataset_fingerprint == key.dataset, t.space == key.space, t.arch_id == key.arch_id,
                       t.budget_key == key.budget, t.seed == int(key.seed))

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

    def put(self, key: ReferenceKey, result: ReferenceResult) -> ReferenceResult:
        """Store ``result`` under ``key`` unless a result is already there; return the stored one.

        Idempotent and safe with concurrent writers: the first result stored for a key wins and
        later ``put`` calls return it unchanged.
        """
        if len(key.arch_id) > MAX_ARCH_ID:
            raise StorageError(f"architecture id is {len(key.arch_id)} characters, more than the store's {MAX_ARCH_ID}",
                               "give the search space a shorter arch_id()")
        row = {
            "dataset_fingerprint": key.dataset, "space": key.space, "arch_id": key.arch_id,
            "budget_key": key.budget, "seed": int(key.seed),
            **{k: v for k, v in asdict(result).items() if k not in ("budget", "created")},
            "budget": canonical_json(result.budget) if result.budget is not None else None,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }

        def op() -> None:
            try:
                with self._engine.begin() as conn:
                    conn.execute(self._insert_ignore(row))
            except IntegrityError:  # a dialect without insert-or-ignore: another writer stored the key first
                pass

        self._run(op)
        stored = self.get(key)
        if stored is None:
            raise StorageError(f"reference store {self} did not keep the result for {key.arch_id}",
                               "check that nothing else deletes rows from it")
        return stored

    def _insert_ignore(self, row: dict) -> Any:
        """``INSERT`` that does nothing when the key exists (SQLite, PostgreSQL); a plain one elsewhere."""
        dialect = self._engine.dialect.name
        if dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert
        elif dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            return sa.insert(self._table).values(**row)
        return insert(self._table).values(**row).on_conflict_do_nothing()

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
