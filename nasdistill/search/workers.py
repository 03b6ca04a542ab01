"""Several processes, on one machine or many, sharing one Optuna study.

Any process that opens the same study name in the same storage joins the study. What makes that
safe:

* **Claims.** ``n_trials`` is the number of finished trials the *study* should hold; a worker claims
  a trial under a lock every worker of the storage takes (:mod:`nasdistill.search.claiming`), so
  the study ends with exactly ``n_trials`` finished trials however many workers run.
* **Heartbeats.** A worker that finds every remaining slot held by trials running elsewhere waits
  for them, failing those whose heartbeat went stale (the worker died) so that it can take their
  slot; it gives up after ``grace_period + 2 * heartbeat_interval`` seconds in which nothing in the
  study changed (a later run of the study finishes what is left).
* **Seeds.** Give each worker a distinct ``worker_index`` (``--worker-index``; :func:`run_workers`
  does) so their samplers do not propose the same architectures. A proposal equal to one being
  trained by another worker waits for that trial and reuses its result.

:func:`run_workers` (behind ``nasdistill search --workers N``) starts N local worker processes
(``python -m nasdistill.search.workers JOB --index I``, through :class:`nasdistill.work.ProcessGroup`)
and waits for them. A job is a folder with ``job.json`` (search settings, the space's name or file)
and ``evaluator.safetensors`` (the proxy and the evaluation split), written by the search itself
(``search.to_job(folder)``), so a worker needs neither the full dataset nor the caller's objects.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path
import optuna

from ..errors import ConfigError, NasDistillError
from ..progress import progress_bar, resolve_disable
from ..work.launch import ERROR_PREFIX, ProcessGroup, threads_per_worker, worker_env
from .backend import SearchBackend, backend_class
from .claiming import count_trials
from .storage import make_storage

JOB_FILE = "job.json"


def prepare_job(search: SearchBackend, folder: str | os.PathLike, *, threads: int | None = None) -> Path:
    """Write what a worker process needs to join ``search``'s study into ``folder`` (``search.to_job``)."""
    return search.to_job(folder, threads=threads)


def load_job(folder: str | os.PathLike, index: int | None) -> SearchBackend:
    """The search a worker process runs for the job in ``folder`` (its backend's ``from_job``)."""
    job = json.loads((Path(folder) / JOB_FILE).read_text())
    return backend_class(job.get("backend", "optuna")).from_job(folder, index)


def worker_command(folder: str | os.PathLike, index: int) -> list[str]:
    """The command line of worker ``index`` for the job in ``folder``."""
    return [sys.executable, "-m", "nasdistill.search.workers", str(folder), "--index", str(index)]


def run_workers(search: SearchBackend, n: int, *, poll: float = 1.0) -> None:
    """Run ``search``'s study in ``n`` local worker processes and wait until they all exit.

    Each worker gets ``cpu_count // n`` torch threads (at least 1) and the index 0..n-1. Raises
    :class:`NasDistillError` naming the first worker that failed, with its last error line.
    """
    if n < 1:
        raise ConfigError(f"workers must be 1 or more, got {n}", "pass --workers 1 or more")
    url = search.shared_storage_url()
    threads = threads_per_worker(n)
    with tempfile.TemporaryDirectory(prefix="nasdistill-workers-") as tmp:
        job = prepare_job(search, tmp, threads=threads)
        with ProcessGroup([worker_command(job, i) for i in range(n)], threads=threads, folder=tmp) as group:
            group.start()
            _wait(group, search, url, poll)
            failed = group.failures()
            if failed:
                i, rc = failed[0]
                raise NasDistillError(f"worker {i} of {n} exited with status {rc}: {group.last_line(i)}",
                                      "fix the cause, then run the same command again to continue the study")


def _wait(group: ProcessGroup, search: SearchBackend, url: str, poll: float) -> None:
    study = None

    def finished() -> int | None:
        nonlocal study
        with contextlib.suppress(Exception):  # the study may not exist yet
            if study is None:
                storage = make_storage(url, heartbeat_interval=search.heartbeat_interval,
                                       grace_period=search.grace_period)
                study = optuna.load_study(study_name=search.study_name, storage=storage)
            return count_trials(study)[0]
        return None

    disable = resolve_disable(search.progress)
    # a resumed study's finished trials count as done from the start, not into the rate (the workers,
    # still importing, have finished none of theirs yet)
    bar = progress_bar(total=search.n_trials, initial=0 if disable else (finished() or 0),
                       desc=f"search {search.study_name} ({len(group.commands)} workers)", unit="trial",
                       disable=disable)

    def tick() -> None:
        if bar.disable:
            return
        done = finished()
        if done is not None:
            bar.update(done - bar.n)

    try:
        group.wait(poll=poll, on_poll=tick)
    finally:
        bar.close()


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
            import torch

            torch.set_num_threads(int(job["threads"]))
        load_job(args.job, args.index).run()
    except NasDistillError as e:
        print(f"{ERROR_PREFIX} {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nasdistill: worker interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        print(f"{ERROR_PREFIX} cannot read the worker job in {args.job}: {e}", file=sys.stderr)
        return 2
    return 0


__all__ = ["prepare_job", "load_job", "worker_command", "worker_env", "run_workers", "main", "JOB_FILE"]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
