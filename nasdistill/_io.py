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

from .errors import DISK_FULL_ERRNOS, OutputError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        if e.errno in DISK_FULL_ERRNOS:
            raise OutputError(f"cannot write {path}: {e.strerror or e}",
                              "free some space, then run the same command again to resume") from e
        raise
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        full = _disk_full(e)
        if full:
            raise OutputError(f"cannot write {path}: {full}",
                              "free some space (or raise the quota / file-size limit), then run the same command "
                              "again to resume") from e
        raise


def _disk_full(e: BaseException) -> str | None:
    """What a failed write says when it ran out of room (a full disk, a quota, a file-size limit), else None.

    Libraries that write files themselves (``torch.save``, safetensors) report it as their own
    error types, so their messages are read too."""
    if isinstance(e, OSError):
        return (e.strerror or str(e)) if e.errno in DISK_FULL_ERRNOS else None
    if isinstance(e, (RuntimeError, ValueError)) or type(e).__name__ == "SafetensorError":
        text = " ".join(str(e).split())
        if any(s in text for s in ("No space left", "File too large", "Disk quota", "file write failed",
                                   "failed writing")):
            return text[:200]
    return None


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
