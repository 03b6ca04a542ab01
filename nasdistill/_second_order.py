"""Where a forward pass is differentiated twice: a flag the distillation methods raise around the forward
passes whose gradients they differentiate again (the unrolled student steps of ``dd``, ``mtt`` and
``rank``, gradient matching's synthetic gradients), and that layers read when they choose a backward
pass (``nasdistill.spaces.conv``): one whose own derivative is fast costs a little per call where
nothing is differentiated twice (candidate training), so layers take it only inside the flag."""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator

_TWICE: ContextVar[bool] = ContextVar("nasdistill_differentiated_twice", default=False)


@contextmanager
def differentiated_twice() -> Iterator[None]:
    """Inside the block, forward passes are marked as ones whose gradients are differentiated again."""
    token = _TWICE.set(True)
    try:
        yield
    finally:
        _TWICE.reset(token)


def twice() -> bool:
    """Whether the current forward pass runs inside :func:`differentiated_twice`."""
    return _TWICE.get()
