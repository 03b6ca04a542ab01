"""The proxy store: distilled proxies saved once, keyed by a fingerprint of what made them.

A store is a folder (default ``$NASDISTILL_HOME/proxies``) holding ``<key>.safetensors``,
``<key>.json`` and ``<key>.png`` per proxy, where ``key`` hashes (dataset fingerprint, method,
settings including ipc and seed, format version). Asking for the same key again loads the stored
proxy instead of distilling.
"""

from __future__ import annotations

import os
from pathlib import Path

from .._io import home_dir
from ..data import Proxy, load_proxy
from ..errors import ProxyError


class ProxyStore:
    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root).expanduser() if root else home_dir() / "proxies"

    def path(self, key: str) -> Path:
        return self.root / f"{key}.safetensors"

    def __contains__(self, key: str) -> bool:
        return self.path(key).is_file()

    def get(self, key: str) -> Proxy | None:
        """The stored proxy for ``key``, or None (a corrupt entry counts as missing and is removed)."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            proxy = load_proxy(path)
        except ProxyError:
            for p in (path, path.with_suffix(".json"), path.with_suffix(".png")):
                p.unlink(missing_ok=True)
            return None
        return proxy if proxy.key == key else None

    def put(self, proxy: Proxy) -> Path:
        if not proxy.key:
            raise ProxyError("proxy has no key", "create it with a Distiller's to_proxy()")
        path = proxy.save(self.path(proxy.key))
        proxy.save_grid(path.with_suffix(".png"))
        return path

    def keys(self) -> list[str]:
        return sorted(p.stem for p in self.root.glob("*.safetensors")) if self.root.is_dir() else []
