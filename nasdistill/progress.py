"""Progress bars for long work (tqdm on stderr).

Shown when stderr is a terminal; ``NASDISTILL_PROGRESS=1`` forces them on (e.g. in CI logs),
``NASDISTILL_PROGRESS=0`` turns them off.
"""

from __future__ import annotations

import os

from tqdm.auto import tqdm


def _disabled() -> bool | None:
    flag = os.environ.get("NASDISTILL_PROGRESS", "").strip().lower()
    if flag in ("0", "false", "no", "off"):
        return True
    if flag in ("1", "true", "yes", "on"):
        return False
    return None  # tqdm: on for a terminal, off otherwise


def resolve_disable(progress: bool | None) -> bool | None:
    """tqdm's ``disable`` for an explicit ``progress`` choice (None: the environment decides)."""
    return _disabled() if progress is None else not progress


def progress_bar(iterable=None, **kwargs):
    kwargs.setdefault("disable", _disabled())
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)
