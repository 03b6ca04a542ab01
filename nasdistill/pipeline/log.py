"""What every step takes for messages: a ``log(line)`` callable (``quiet`` drops them)."""

from __future__ import annotations

from typing import Callable


Log = Callable[[str], None]


def quiet(_: str) -> None:
    """Drop the message (the steps' default ``log``)."""


__all__ = ["Log", "quiet"]
