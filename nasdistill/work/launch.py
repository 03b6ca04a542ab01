"""Local worker processes, started, watched and stopped the same way for every kind of job.

A worker is a fresh Python process (``sys.executable``) with this process's import path, progress
bars off and a share of the CPU threads (:func:`worker_env`); its stderr goes to a log file whose
last error line names what went wrong when it fails. :class:`ProcessGroup` starts a list of such
command lines, waits for them, and stops them: SIGINT first (Python unwinds, so claims are released
and running trials marked failed), then SIGKILL for any that hang.

Work that is a Python call rather than a command line (``fn(*args)``, e.g. a validation helper)
is pickled into the group's folder and run by ``python -m nasdistill.work.launch CALL_FILE``
(:func:`call_command`): everything ``fn`` and ``args`` refer to must be importable by name.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from ..errors import NasDistillError

#: The prefix of the one line a worker prints for a user error.
ERROR_PREFIX = "nasdistill: error:"


def worker_env(threads: int | None = None) -> dict[str, str]:
    """The environment of a worker process: this one, with this process's import path (so spaces
    and contenders defined in importable modules resolve the same way), progress bars off and,
    with ``threads``, that many OpenMP threads."""
    paths = [p for p in sys.path if p and Path(p).exists()]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "NASDISTILL_PROGRESS": "0"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def threads_per_worker(n: int) -> int:
    """CPU threads each of ``n`` workers on this machine gets (at least 1)."""
    return max(1, (os.cpu_count() or 1) // max(1, n))


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run a block with this process's torch CPU threads set to ``n`` (None: unchanged), restored
    after: while helper processes share the cores, this one takes its share only (OpenMP threads
    beyond the cores stall each other: a validation's trainings ran ~3x slower with the main process
    at 2 threads beside a 1-thread helper on 2 cores)."""
    if not n:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def call_command(call_file: str | os.PathLike) -> list[str]:
    """The command line that runs the call pickled in ``call_file`` (see :func:`write_call`)."""
    return [sys.executable, "-m", "nasdistill.work.launch", str(call_file)]


def write_call(path: str | os.PathLike, fn: Callable[..., Any], args: Sequence[Any] = ()) -> Path:
    """Pickle the call ``fn(*args)`` into ``path`` for :func:`call_command`; return the path."""
    path = Path(path)
    with open(path, "wb") as f:
        pickle.dump((fn, tuple(args)), f, protocol=pickle.HIGHEST_PROTOCOL)
    return path


class ProcessGroup:
    """Worker processes running ``commands`` (one argument list each), with their stderr in logs.

    Args:
        commands: one command line per worker.
        threads: OpenMP threads of each worker (None: this process's setting).
        names: a name per worker for messages (default ``worker 0``, ``worker 1``...).
        folder: where the logs go; None makes a temporary folder that :meth:`close` removes.

    Use as a context manager (``with ProcessGroup(...) as group``): leaving the block stops any
    worker still running and removes the temporary folder.
    """

    def __init__(self, commands: Sequence[Sequence[str]], *, threads: int | None = None,
                 names: Sequence[str] | None = None, folder: str | os.PathLike | None = None):
        self.commands = [list(c) for c in commands]
        self.threads = threads
        self.names = list(names) if names is not None else [f"worker {i}" for i in range(len(self.commands))]
        self._tmp = tempfile.TemporaryDirectory(prefix="nasdistill-workers-") if folder is None else None
        self.folder = Path(self._tmp.name if self._tmp is not None else folder)
        self.logs = [self.folder / f"worker{i}.log" for i in range(len(self.commands))]
        self.procs: list[subprocess.Popen] = []

    @classmethod
    def for_call(cls, fn: Callable[..., Any], args: Sequence[Any], n: int, *, threads: int | None = None,
                 names: Sequence[str] | None = None) -> "ProcessGroup":
        """``n`` workers that each run ``fn(*args)`` (pickled once into the group's temporary folder)."""
        tmp = tempfile.TemporaryDirectory(prefix="nasdistill-workers-")
        call = write_call(Path(tmp.name) / "call.pkl", fn, args)
        group = cls([call_command(call)] * n, threads=threads, names=names, folder=tmp.name)
        group._tmp = tmp
        return group

    def __enter__(self) -> "ProcessGroup":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.close()

    # --- running ---------------------------------------------------------------------------------
    def start(self) -> "ProcessGroup":
        """Start every worker; returns self."""
        env = worker_env(self.threads)
        try:
            for command, log in zip(self.commands, self.logs):
                with open(log, "wb") as err:
                    self.procs.append(subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL,
                                                       stdout=subprocess.DEVNULL, stderr=err))
        except BaseException:
            self.stop()
            raise
        return self

    def running(self) -> list[subprocess.Popen]:
        return [p for p in self.procs if p.poll() is None]

    def wait(self, *, poll: float = 1.0, on_poll: Callable[[], Any] | None = None,
             timeout: float | None = None) -> bool:
        """Wait until every worker exited (True) or ``timeout`` seconds passed (False), calling
        ``on_poll()`` about every ``poll`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while running := self.running():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            with contextlib.suppress(subprocess.TimeoutExpired):
                running[0].wait(timeout=poll if left is None else max(0.01, min(poll, left)))
            if on_poll is not None:
                on_poll()
        return True

    def stop(self, *, grace: float = 10.0, sig: int = signal.SIGINT) -> None:
        """Interrupt running workers with ``sig``, killing any still running after ``grace`` seconds."""
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(sig)
        deadline = time.monotonic() + grace
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            if p.poll() is None:
                p.kill()
                p.wait()

    def close(self) -> None:
        """Remove the temporary folder (logs, pickled call), if the group made one."""
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    # --- outcome ---------------------------------------------------------------------------------
    def failures(self) -> list[tuple[int, int]]:
        """``(index, exit status)`` of every worker that exited with a non-zero status."""
        return [(i, p.returncode) for i, p in enumerate(self.procs) if p.returncode not in (0, None)]

    def last_line(self, index: int) -> str:
        """The last error line of worker ``index``'s log (else its last line)."""
        try:
            lines = [ln.strip() for ln in self.logs[index].read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            return "no log"
        errors = [ln for ln in lines if ln.startswith(ERROR_PREFIX)]
        return (errors or lines or ["no output"])[-1]


# --- the worker process of a pickled call -----------------------------------------------------------
def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """``python -m nasdistill.work.launch CALL_FILE``: run the pickled call ``fn(*args)``.

    SIGTERM and SIGINT unwind the call (claims are released on the way out). A user error prints
    one ``nasdistill: error:`` line and exits with 2; an interrupt exits with 130.
    """
    parser = argparse.ArgumentParser(prog="python -m nasdistill.work.launch",
                                     description="Run one pickled nasdistill worker call.")
    parser.add_argument("call", type=Path, help="file written by write_call()")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        with open(args.call, "rb") as f:
            fn, call_args = pickle.load(f)
        if os.environ.get("OMP_NUM_THREADS"):
            import torch

            torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
        fn(*call_args)
    except NasDistillError as e:
        print(f"{ERROR_PREFIX} {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nasdistill: worker interrupted", file=sys.stderr)
        return 130
    return 0


__all__ = ["ProcessGroup", "worker_env", "threads_per_worker", "call_command", "write_call", "main"]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
