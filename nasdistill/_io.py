"""Atomic file writes and small JSON helpers.

Nothing the package writes is ever half-written: every file goes to a temporary
name in the same directory and is renamed into place once complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def to_jsonable(obj: Any) -> Any:
    """Convert tuples, numpy/torch scalars and paths into plain JSON values."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 0) == 0:
        return obj.item()
    if isinstance(obj, float) and obj != obj:  # NaN -> null keeps JSON strict
        return None
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(path, json.dumps(to_jsonable(obj), indent=2, sort_keys=True) + "\n")


def canonical_json(obj: Any) -> str:
    """Stable JSON used for fingerprints: sorted keys, no whitespace."""
    return json.dumps(to_jsonable(obj), sort_keys=True, separators=(",", ":"))


def fingerprint(obj: Any, n: int = 16) -> str:
    """Hex digest of the canonical JSON of ``obj`` (``n`` hex characters)."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:n]


def home_dir() -> Path:
    """Where nasdistill keeps caches and stores: ``$NASDISTILL_HOME`` or ``~/.cache/nasdistill``."""
    env = os.environ.get("NASDISTILL_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "nasdistill"
