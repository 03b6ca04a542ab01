"""Dataset distillation: condense a dataset into a small synthetic proxy set.

>>> from nasdistill.distill import distill, get_method
>>> proxy = distill(dataset, "dm", ipc=10, iterations=500)          # stored, reused next time
>>> dm = get_method("dm", ipc=10, iterations=500).fit(dataset)       # scikit-learn style
>>> dm.images_, dm.labels_, dm.to_proxy()
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from ..data import ImageDataset, Proxy, as_dataset
from .base import Distiller, FitContext, IterativeDistiller, NetworkMatchingDistiller, NetworkSampler
from .registry import METHODS, get_method, method_class, method_names, register
from .store import ProxyStore

from . import methods  # noqa: F401  (imports, and so registers, every built-in method)

__all__ = ["Distiller", "FitContext", "IterativeDistiller", "NetworkMatchingDistiller", "NetworkSampler", "METHODS",
           "ProxyStore", "distill", "get_method", "method_class", "method_names", "register"]


def distill(dataset: ImageDataset, method: str | Distiller = "dm", *, store: ProxyStore | str | os.PathLike | None
            | bool = None, checkpoint_dir: str | os.PathLike | None = None, progress: bool | None = None,
            log: Callable[[str], None] | None = None, **settings) -> Proxy:
    """Distil ``dataset`` with ``method`` (a name plus ``settings``, or a configured :class:`Distiller`).

    The result is looked up in, and saved to, ``store`` (default: ``$NASDISTILL_HOME/proxies``;
    ``False`` disables it). A stored proxy with the same key is returned without any work, and
    ``proxy.meta["reused"]`` is True. ``checkpoint_dir`` (default: ``<store>/checkpoints``) holds
    resumable checkpoints of iterative methods.
    """
    dataset = as_dataset(dataset, "distill")
    distiller = get_method(method, **settings) if isinstance(method, str) else method
    if settings and not isinstance(method, str):
        raise TypeError("pass settings to the Distiller's constructor, not to distill()")
    distiller.check(dataset)
    st = None if store is False else store if isinstance(store, ProxyStore) else ProxyStore(store or None)
    key = distiller.key(dataset)
    if st is not None:
        hit = st.get(key)
        if hit is not None:
            hit.meta["reused"] = True
            hit.meta["path"] = str(st.path(key))
            if log:
                log(f"reusing stored proxy {key} ({distiller.name}, ipc {distiller.ipc}) from {st.path(key)}")
            return hit
    if checkpoint_dir is None and st is not None:
        checkpoint_dir = st.root / "checkpoints"
    distiller.fit(dataset, checkpoint_dir=checkpoint_dir, progress=progress)
    proxy = distiller.to_proxy()
    if getattr(distiller, "resumed_from_", None):
        proxy.meta["resumed_from_iteration"] = distiller.resumed_from_
    from .parallel import is_writer

    if st is not None and is_writer():
        path = st.put(proxy)
        proxy.meta["path"] = str(path)
        ckpt = Path(checkpoint_dir) / f"{distiller.name}-{key}.ckpt" if checkpoint_dir else None
        if ckpt is not None:
            ckpt.unlink(missing_ok=True)  # the stored proxy supersedes the checkpoint
    proxy.meta["reused"] = False
    return proxy
