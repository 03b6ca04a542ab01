"""Who a worker is: the names written beside the work it did."""

from __future__ import annotations

import os
import secrets
import socket


def worker_label(index: int | None = None) -> str:
    """``host:pid`` (plus ``#index``): this process, e.g. in a search trial's ``worker`` attribute."""
    return f"{socket.gethostname()}:{os.getpid()}" + (f"#{index}" if index is not None else "")


def worker_id() -> str:
    """``host:pid:random``, unique per call: a worker's name in claims and the run log."""
    return f"{worker_label()}:{secrets.token_hex(4)}"


__all__ = ["worker_label", "worker_id"]
