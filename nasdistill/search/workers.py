"""Several processes, on one machine or many, sharing one study.

Any process that opens the same study name in the same storage joins the study. What makes that
safe:

* **Claims.** ``n_trials`` is the number of finished trials the *study* should hold. A worker asks
  for a new trial only while ``finished + running < n_trials``, checking and creating the trial
  under a lock held by every worker of the storage (:func:`claim_lock`: a PostgreSQL advisory
  lock, MySQL ``GET_LOCK``, or a lock file beside an SQLite database or a journal file), so the
  study ends with exactly ``n_trials`` finished trials however many workers run. Other databases,
  or a journal that is not a file, get a lock only within one process: there, workers that ask at
  the same moment may overshoot by up to one trial each.
* **Heartbeats.** A worker that finds every remaining slot held by trials running elsewhere waits
  for them, failing those whose heartbeat went stale (the worker died) so that it can take their
  slot; it gives up after ``grace_period + 2 * heartbeat_interval`` seconds in which nothing in the
  study changed (a later run of the study finishes what is left).
* **Seeds.** Give each worker a distinct ``worker_index`` (``--worker-index``; :func:`run_workers`
  does) so their samplers do not propose the same architectures. A proposal equal to one being
  trained by another worker waits for that trial and reuses its result.

:func:`run_workers` (behind ``nasdistill search --workers N``) starts N local worker processes
(``python -m nasdistill.search.workers JOB --index I``) and waits for them. A job is a folder with
``job.json`` (search settings, the space's name or file) and ``evaluator.safetensors`` (the proxy
and the evaluation split), so a worker needs neither the full dataset nor the caller's objects.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, ContextManager, Iterator

import optuna
import torch
from optuna.storages import BaseStorage, InMemoryStorage, RDBStorage
from optuna.trial import TrialState

from .._io import write_json
from .._seed import derive_seed
from ..errors import ConfigError, NasDistillError
from ..progress import progress_bar, resolve_disable
from ..spaces import SearchSpace, get_space
from .storage import HeartbeatJournalStorage, default_storage_url, make_storage

if TYPE_CHECKING:
    from .optuna_backend import OptunaSearch

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
#: Seconds a lock file may be held before another worker breaks it (its holder must have died;
#: a claim holds it for milliseconds).
LOCK_FILE_GRACE = 30
JOB_FILE = "job.json"
TENSORS_FILE = "evaluator.safetensors"
_LOCAL = threading.Lock()


# --- claims ----------------------------------------------------------------------------------------
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

    def ask(self, fixed_distributions=None) -> optuna.Trial:
        with self._claim_lock():
            finished, running = count_trials(self)
            if finished + running >= self.target:
                raise StudyFull(finished, running)
            return super().ask(fixed_distributions)


def claim_lock(storage: BaseStorage, study_name: str) -> Callable[[], ContextManager]:
    """A factory of the lock every worker of ``storage`` takes to claim a trial of ``study_name``."""
    key = derive_seed("nasdistill-claim", study_name)  # 63 bits: a valid PostgreSQL bigint
    if isinstance(storage, RDBStorage):
        engine = storage.engine
        dialect = engine.dialect.name
        if dialect == "postgresql":
            return lambda: _sql_lock(engine, "SELECT pg_advisory_lock(:k)", "SELECT pg_advisory_unlock(:k)", key)
        if dialect in ("mysql", "mariadb"):
            name = f"nasdistill-{key:x}"
            return lambda: _sql_lock(engine, "SELECT GET_LOCK(:k, 600)", "SELECT RELEASE_LOCK(:k)", name)
        db = engine.url.database
        if dialect == "sqlite" and db and db != ":memory:" and not db.startswith("file:"):
            return lambda: _file_lock(f"{db}.claim")
    elif isinstance(storage, HeartbeatJournalStorage) and storage.path:
        path = storage.path
        return lambda: _file_lock(f"{path}.claim")
    return lambda: _LOCAL


@contextlib.contextmanager
def _sql_lock(engine, acquire: str, release: str, key) -> Iterator[None]:
    from sqlalchemy import text

    with _LOCAL, engine.connect() as conn:
        conn.execute(text(acquire), {"k": key})
        try:
            yield
        finally:
            conn.execute(text(release), {"k": key})
            conn.commit()


@contextlib.contextmanager
def _file_lock(path: str) -> Iterator[None]:
    from optuna.storages.journal import JournalFileOpenLock  # O_EXCL lock file: works on NFS too

    lock = JournalFileOpenLock(path, grace_period=LOCK_FILE_GRACE)
    with _LOCAL:
        lock.acquire()
        try:
            yield
        finally:
            lock.release()


def worker_label(index: int | None) -> str:
    """``host:pid`` (plus ``#index``): who ran a trial (the trial's ``worker`` user attribute)."""
    import socket

    return f"{socket.gethostname()}:{os.getpid()}" + (f"#{index}" if index is not None else "")


# --- jobs: what a worker process needs ----------------------------------------------------------------
def storage_url(storage) -> str:
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


def _storage_or_default(search: "OptunaSearch"):
    return search.storage if search.storage is not None else default_storage_url(search.study_name)


def space_spec(space: SearchSpace | str) -> dict:
    """How a worker process finds ``space``: its name, its file, or an importable class."""
    if isinstance(space, str):
        p = Path(space).expanduser()
        return {"path": str(p.resolve())} if p.suffix == ".py" or p.is_file() else {"name": space}
    with contextlib.suppress(Exception):
        if get_space(space.name) is space:
            return {"name": space.name}
    cls = type(space)
    mod = sys.modules.get(cls.__module__)
    file = getattr(mod, "__file__", None)
    if cls.__module__.startswith("nasdistill_user_space_") and file:
        return {"path": str(Path(file).resolve())}
    if cls.__module__ != "__main__" and importlib.util.find_spec(cls.__module__) is not None:
        try:
            same = vars(cls()) == vars(space)
        except Exception:
            same = False
        if same:
            return {"class": f"{cls.__module__}:{cls.__qualname__}"}
    raise ConfigError(f"worker processes cannot rebuild the search space {space.name!r}",
                      "pass the space by name or file path, or make its class importable and argument-free")


def load_space(spec: dict) -> SearchSpace:
    if "class" in spec:
        module, _, qualname = spec["class"].partition(":")
        obj = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
        return obj()
    return get_space(spec.get("path") or spec["name"])


def check_job(search: "OptunaSearch") -> dict:
    """Raise :class:`ConfigError` unless worker processes can rebuild ``search``; return the space spec."""
    from .objective import ProxyEvaluator

    if not isinstance(search.evaluator, ProxyEvaluator):
        raise ConfigError("worker processes can only rebuild a ProxyEvaluator",
                          "start your own processes on the same study name and storage instead")
    for what, value in (("sampler", search.sampler), ("pruner", search.pruner)):
        if not (value is None or isinstance(value, str)):
            raise ConfigError(f"worker processes need the {what} by name, not a {type(value).__name__}",
                              f"pass the {what} name")
    storage_url(_storage_or_default(search))
    return space_spec(search.space)


def prepare_job(search: "OptunaSearch", folder: str | os.PathLike, *, threads: int | None = None) -> Path:
    """Write what a worker process needs to join ``search``'s study into ``folder``; return the folder."""
    from safetensors.torch import save_file

    spec = check_job(search)
    ev = search.evaluator
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ds = ev.dataset
    save_file({"proxy_images": ev.proxy.images.contiguous(), "proxy_labels": ev.proxy.labels.contiguous(),
               "x_eval": ev.x_eval.contiguous(), "y_eval": ev.y_eval.contiguous()}, str(folder / TENSORS_FILE))
    job = {
        "space": spec,
        "dataset": {"name": ds.name, "classes": ds.classes, "mean": ds.mean, "std": ds.std,
                    "fingerprint": ds.fingerprint, "info": ds.info},
        "proxy_meta": ev.proxy.meta,
        "evaluator": {"split": ev.split, "device": ev.device, "seed": ev.seed, "report_every": ev.report_every,
                      "train": dataclasses.asdict(ev.train_config)},
        "search": {"n_trials": search.n_trials, "sampler": search.sampler, "pruner": search.pruner,
                   "storage": storage_url(_storage_or_default(search)), "study_name": search.study_name, "seed": search.seed,
                   "timeout": search.timeout, "objectives": [o.name for o in search.objectives_list()],
                   "heartbeat_interval": search.heartbeat_interval, "grace_period": search.grace_period},
        "threads": threads,
    }
    write_json(folder / JOB_FILE, job)
    return folder


def load_job(folder: str | os.PathLike, index: int | None) -> "OptunaSearch":
    """The :class:`OptunaSearch` a worker process runs for the job in ``folder``."""
    from safetensors.torch import load_file

    from ..data import ImageDataset, Proxy
    from ..training import TrainConfig
    from .objective import ProxyEvaluator
    from .optuna_backend import OptunaSearch

    folder = Path(folder)
    job = json.loads((folder / JOB_FILE).read_text())
    t = load_file(str(folder / TENSORS_FILE))
    d, e = job["dataset"], job["evaluator"]
    empty_x = t["x_eval"][:0]
    empty_y = t["y_eval"][:0]
    split = {"x_val": t["x_eval"], "y_val": t["y_eval"], "x_test": empty_x, "y_test": empty_y}
    if e["split"] == "test":
        split = {"x_val": empty_x, "y_val": empty_y, "x_test": t["x_eval"], "y_test": t["y_eval"]}
    dataset = ImageDataset(name=d["name"], x_train=empty_x, y_train=empty_y, **split, classes=list(d["classes"]),
                           mean=tuple(d["mean"]), std=tuple(d["std"]), fingerprint=d["fingerprint"], info=d["info"])
    proxy = Proxy(t["proxy_images"], t["proxy_labels"], job["proxy_meta"])
    space = load_space(job["space"])
    evaluator = ProxyEvaluator(space, proxy, dataset, TrainConfig(**e["train"]), split=e["split"],
                               device=e["device"], seed=e["seed"], report_every=e["report_every"])
    return OptunaSearch(space, evaluator, **job["search"], progress=False, worker_index=index)


def worker_command(folder: str | os.PathLike, index: int) -> list[str]:
    """The command line of worker ``index`` for the job in ``folder``."""
    return [sys.executable, "-m", "nasdistill.search.workers", str(folder), "--index", str(index)]


def worker_env(threads: int | None = None) -> dict[str, str]:
    """The environment of a worker process: this one, with this process's import path (so spaces
    defined in importable modules resolve the same way) and progress bars off."""
    paths = [p for p in sys.path if p and Path(p).exists()]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "NASDISTILL_PROGRESS": "0"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def run_workers(search: "OptunaSearch", n: int, *, poll: float = 1.0) -> None:
    """Run ``search``'s study in ``n`` local worker processes and wait until they all exit.

    Each worker gets ``cpu_count // n`` torch threads (at least 1) and the index 0..n-1. Raises
    :class:`NasDistillError` naming the first worker that failed, with its last error line.
    """
    if n < 1:
        raise ConfigError(f"workers must be 1 or more, got {n}", "pass --workers 1 or more")
    url = storage_url(_storage_or_default(search))
    threads = max(1, (os.cpu_count() or 1) // n)
    with tempfile.TemporaryDirectory(prefix="nasdistill-workers-") as tmp:
        job = prepare_job(search, tmp, threads=threads)
        logs = [Path(tmp) / f"worker{i}.log" for i in range(n)]
        procs = []
        try:
            for i, log in enumerate(logs):
                with open(log, "wb") as err:
                    procs.append(subprocess.Popen(worker_command(job, i), env=worker_env(threads),
                                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err))
            _wait(procs, search, url, poll)
        except BaseException:
            _stop(procs)
            raise
        failed = [(i, p.returncode) for i, p in enumerate(procs) if p.returncode != 0]
        if failed:
            i, rc = failed[0]
            raise NasDistillError(f"worker {i} of {n} exited with status {rc}: {_last_line(logs[i])}",
                                  "fix the cause, then run the same command again to continue the study")


def _wait(procs: list[subprocess.Popen], search: "OptunaSearch", url: str, poll: float) -> None:
    target = search.n_trials
    bar = progress_bar(total=target, desc=f"search {search.study_name} ({len(procs)} workers)", unit="trial",
                       disable=resolve_disable(search.progress))
    study = None
    try:
        while running := [p for p in procs if p.poll() is None]:
            with contextlib.suppress(subprocess.TimeoutExpired):
                running[0].wait(timeout=poll)
            if bar.disable:
                continue
            with contextlib.suppress(Exception):  # the study may not exist yet
                if study is None:
                    storage = make_storage(url, heartbeat_interval=search.heartbeat_interval,
                                           grace_period=search.grace_period)
                    study = optuna.load_study(study_name=search.study_name, storage=storage)
                bar.update(count_trials(study)[0] - bar.n)
    finally:
        bar.close()


def _stop(procs: list[subprocess.Popen], wait: float = 10.0) -> None:
    """Interrupt running workers (Optuna then marks their trials FAILED), killing any that hang."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    deadline = time.monotonic() + wait
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        if p.poll() is None:
            p.kill()
            p.wait()


def _last_line(log: Path) -> str:
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    errors = [ln for ln in lines if ln.startswith("nasdistill: error:")]
    return (errors or lines or ["no output"])[-1]


# --- the worker process --------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """``python -m nasdistill.search.workers JOB_FOLDER --index I``: join the job's study, run its trials."""
    parser = argparse.ArgumentParser(prog="python -m nasdistill.search.workers",
                                     description="One worker of a shared nasdistill study.")
    parser.add_argument("job", type=Path, help="folder written by prepare_job()")
    parser.add_argument("--index", type=int, default=None, help="this worker's index (seeds its sampler)")
    args = parser.parse_args(argv)
    try:
        job = json.loads((args.job / JOB_FILE).read_text())
        if job.get("threads"):
            torch.set_num_threads(int(job["threads"]))
        load_job(args.job, args.index).run()
    except NasDistillError as e:
        print(f"nasdistill: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nasdistill: worker interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        print(f"nasdistill: error: cannot read the worker job in {args.job}: {e}", file=sys.stderr)
        return 2
    return 0


__all__ = ["ClaimingStudy", "StudyFull", "claim_lock", "count_trials", "worker_label", "check_job", "prepare_job",
           "load_job",
           "worker_command", "worker_env", "run_workers", "storage_url", "space_spec", "load_space", "main"]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
