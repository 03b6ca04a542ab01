"""Progress of long work: tqdm bars on a terminal or in a notebook, one-line log records otherwise.

Every long loop (distillation iterations, search trials, validation jobs, expert epochs) goes through
:func:`progress_bar`. Where it is shown:

* **a terminal** (stderr is a TTY) or **Jupyter**: a tqdm bar (``tqdm.auto``: a widget in a notebook);
* **anything else** (a file, a pipe, CI, ``nohup``, a cluster job): no bar; instead a structured
  one-line record on the ``nasdistill.progress`` logger every ``NASDISTILL_PROGRESS_EVERY`` seconds
  (default 10), also while a single long step runs, e.g.
  ``progress: distilling (dm, ipc 10) 26/200 it 13% loss=0.08827 elapsed=20s eta=2m14s``.
  The record carries the fields as ``record.progress`` (a dict) for AutoML code that captures logs.

``NASDISTILL_PROGRESS=1`` forces bars on, ``NASDISTILL_PROGRESS=0`` turns bars and progress lines off
(as ``--progress`` / ``--no-progress`` and ``progress=True/False`` in the Python API do).
The library configures no logging handler: the ``nasdistill`` command does (:func:`nasdistill.cli.main`),
and a program embedding the library sees the records once it configures :mod:`logging` at INFO.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import weakref

from tqdm.auto import tqdm

logger = logging.getLogger("nasdistill.progress")

#: Seconds between two progress lines when no bar is shown.
DEFAULT_EVERY_S = 10.0

_live: "weakref.WeakSet[Progress]" = weakref.WeakSet()


def _disabled() -> bool | None:
    flag = os.environ.get("NASDISTILL_PROGRESS", "").strip().lower()
    if flag in ("0", "false", "no", "off"):
        return True
    if flag in ("1", "true", "yes", "on"):
        return False
    return None  # a bar on a terminal or in a notebook, log lines otherwise


def resolve_disable(progress: bool | None) -> bool | None:
    """``disable`` for :func:`progress_bar` from an explicit ``progress`` choice (None: the environment decides)."""
    return _disabled() if progress is None else not progress


def every_s() -> float:
    """Seconds between progress lines: ``NASDISTILL_PROGRESS_EVERY`` (default 10)."""
    try:
        value = float(os.environ.get("NASDISTILL_PROGRESS_EVERY", DEFAULT_EVERY_S))
    except ValueError:
        return DEFAULT_EVERY_S
    return value if value > 0 else DEFAULT_EVERY_S


def in_notebook() -> bool:
    """True inside a Jupyter kernel (where tqdm.auto draws a widget)."""
    shell = sys.modules.get("IPython")
    if shell is None or "ipykernel" not in sys.modules:
        return False
    try:
        return type(shell.get_ipython()).__name__ == "ZMQInteractiveShell"
    except Exception:
        return False


def _on_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _duration(s: float) -> str:
    s = int(round(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Progress:
    """A tqdm bar, or timed log lines in its place (see the module docstring); the tqdm calls the
    library uses (iteration, ``update``, ``set_postfix``, ``set_postfix_str``, ``n``, ``disable``,
    ``close``) work on both."""

    def __init__(self, iterable=None, *, total=None, initial: int = 0, desc: str = "", unit: str = "it",
                 disable: bool | None = None, every: float | None = None, **kwargs):
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.n, self.desc, self.unit = total, initial, desc, unit
        self._initial = initial
        self.postfix: dict[str, str] = {}
        show_bar = disable is False or (disable is None and (_on_terminal() or in_notebook()))
        self.lines = disable is not True and not show_bar  #: progress lines instead of a bar
        self.disable = disable is True  #: nothing is shown at all (as tqdm's attribute)
        self._bar = (tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True, **kwargs)
                     if show_bar else None)
        self._t0 = time.monotonic()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._thread = None
        if self.lines:
            self._every = every or every_s()
            self._thread = threading.Thread(target=self._beat, name=f"progress {desc}", daemon=True)
            self._thread.start()
        _live.add(self)

    # --- the tqdm surface ---------------------------------------------------------------------
    def __iter__(self):
        try:
            for obj in self.iterable:
                yield obj
                self.update(1)
        finally:
            self.close()

    def __len__(self):
        return self.total or 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def update(self, n: int = 1) -> None:
        with self._lock:
            self.n += n
        if self._bar is not None:
            self._bar.update(n)

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs) -> None:
        fields = dict(ordered_dict or {}, **kwargs)
        with self._lock:
            self.postfix = {k: str(v) for k, v in fields.items()}
        if self._bar is not None:
            self._bar.set_postfix(fields, refresh=refresh)

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        with self._lock:
            self.postfix = {"status": str(s)} if s else {}
        if self._bar is not None:
            self._bar.set_postfix_str(s, refresh=refresh)

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        if self._bar is not None:
            self._bar.close()
        if self.lines and self.n > self._initial:
            self._emit(final=True)

    # --- log lines ----------------------------------------------------------------------------
    def fields(self) -> dict:
        """What a progress line says: done/total, percent, postfix (loss, best...), elapsed and ETA seconds."""
        with self._lock:
            n, postfix = self.n, dict(self.postfix)
        elapsed = time.monotonic() - self._t0
        done_here = n - self._initial
        eta = None
        if self.total and done_here > 0 and n < self.total:
            eta = (self.total - n) * elapsed / done_here
        return {"task": self.desc, "n": n, "total": self.total, "unit": self.unit,
                "percent": round(100.0 * n / self.total, 1) if self.total else None, **postfix,
                "elapsed_s": round(elapsed, 1), "eta_s": None if eta is None else round(eta, 1)}

    def line(self, final: bool = False) -> str:
        f = self.fields()
        parts = [f"progress: {self.desc}", f"{f['n']}/{f['total'] if f['total'] is not None else '?'} {self.unit}"]
        if f["percent"] is not None:
            parts.append(f"{f['percent']:.0f}%")
        parts += [f"{k}={v}" for k, v in self.postfix.items()]
        parts.append(f"elapsed={_duration(f['elapsed_s'])}")
        if final:  # closed: all of it, or stopped short (interrupted, failed, an early stop)
            parts.append("done" if f["total"] is None or f["n"] >= f["total"] else "stopped")
        else:
            parts.append(f"eta={_duration(f['eta_s']) if f['eta_s'] is not None else '?'}")
        return " ".join(parts)

    def _emit(self, final: bool = False) -> None:
        logger.info(self.line(final), extra={"progress": self.fields()})

    def _beat(self) -> None:
        while not self._closed.wait(self._every):
            self._emit()


def progress_bar(iterable=None, **kwargs) -> Progress:
    """A :class:`Progress` over ``iterable`` (or driven by ``update``); ``disable`` None: the environment decides."""
    kwargs.setdefault("disable", _disabled())
    kwargs.pop("dynamic_ncols", None)
    return Progress(iterable, **kwargs)


def close_all() -> None:
    """Close every progress still open (a command that failed half-way stops its progress lines)."""
    for p in list(_live):
        p.close()
