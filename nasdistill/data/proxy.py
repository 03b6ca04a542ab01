"""The proxy artifact: a distilled dataset saved once and reused by every later search.

On disk a proxy is ``NAME.safetensors`` (tensors ``images`` float32 (N,C,H,W) in the source
dataset's normalised space, and ``labels`` int64 (N,) or float32 (N,K) soft labels) plus a
JSON sidecar ``NAME.json`` with the method, settings, seed, dataset name, fingerprint,
mean/std, class names, wall time and package version. The same JSON is embedded in the
safetensors header, so the ``.safetensors`` file alone is complete. Loading never unpickles.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .._io import to_jsonable, write_bytes, write_json
from .._strides import nchw
from ..errors import ProxyError

if TYPE_CHECKING:
    from .dataset import ImageDataset

FORMAT_VERSION = 1
_META_KEY = "nasdistill"


@dataclass(eq=False)
class Proxy:
    """A distilled (synthetic) labelled image set plus the facts needed to trust and reuse it."""

    images: torch.Tensor
    labels: torch.Tensor
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        # NumPy arrays and lists become tensors (as train() takes them)
        self.images = self.images if isinstance(self.images, torch.Tensor) else torch.as_tensor(np.asarray(self.images))
        self.labels = self.labels if isinstance(self.labels, torch.Tensor) else torch.as_tensor(np.asarray(self.labels))
        if self.images.ndim != 4:
            raise ProxyError(f"proxy images must be (N,C,H,W), got shape {tuple(self.images.shape)}",
                             "re-create the proxy")
        if self.labels.ndim not in (1, 2) or len(self.labels) != len(self.images):
            raise ProxyError(f"proxy has {len(self.images)} images but labels shaped {tuple(self.labels.shape)}",
                             "re-create the proxy")
        if (self.labels.ndim == 1 and self.labels.is_floating_point()
                and not bool((self.labels == self.labels.round()).all())):
            raise ProxyError("proxy hard labels (one per image) hold fractions; class indices are integers",
                             "pass integer labels (N,), or soft labels as (N, num_classes) rows")
        self.images = nchw(self.images.detach().float())
        self.labels = self.labels.detach()
        self.labels = (self.labels.long() if self.labels.ndim == 1 else self.labels.float()).contiguous()

    # --- views -------------------------------------------------------------------------------
    @property
    def soft(self) -> bool:
        return self.labels.ndim == 2

    @property
    def hard_labels(self) -> torch.Tensor:
        return self.labels.argmax(1) if self.soft else self.labels

    @property
    def num_classes(self) -> int:
        n = self.meta.get("dataset", {}).get("num_classes")
        return int(n) if n else (self.labels.shape[1] if self.soft else int(self.labels.max()) + 1)

    @property
    def ipc(self) -> int:
        return int(self.meta.get("ipc") or round(len(self.images) / max(1, self.num_classes)))

    @property
    def method(self) -> str:
        return str(self.meta.get("method", "?"))

    @property
    def key(self) -> str:
        return str(self.meta.get("key", ""))

    def __len__(self) -> int:
        return len(self.images)

    def __repr__(self) -> str:
        ds = self.meta.get("dataset", {}).get("name", "?")
        return f"Proxy(method={self.method!r}, dataset={ds!r}, ipc={self.ipc}, images={tuple(self.images.shape)})"

    # --- checks ------------------------------------------------------------------------------
    def check_compatible(self, dataset: ImageDataset, *, strict: bool = True) -> None:
        """Raise :class:`ProxyError` if this proxy was not distilled from ``dataset``."""
        if tuple(self.images.shape[1:]) != tuple(dataset.image_shape):
            raise ProxyError(
                f"proxy images are {tuple(self.images.shape[1:])} but {dataset.name} images are {dataset.image_shape}",
                "use a proxy distilled from this dataset",
            )
        if self.num_classes != dataset.num_classes:
            raise ProxyError(f"proxy has {self.num_classes} classes but {dataset.name} has {dataset.num_classes}",
                             "use a proxy distilled from this dataset")
        fp = self.meta.get("dataset", {}).get("fingerprint")
        if strict and fp and fp != dataset.fingerprint:
            src = self.meta.get("dataset", {}).get("name", "?")
            differ = _differences(self.meta.get("dataset", {}).get("info") or {}, dataset.info or {})
            raise ProxyError(
                f"proxy was distilled from {src} (fingerprint {fp}) but the data given is {dataset.name} "
                f"(fingerprint {dataset.fingerprint})" + (f"; they differ in {differ}" if differ else ""),
                "pass the same dataset, slice and seed used to distil it, or distil a new proxy",
            )

    # --- persistence -------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write ``path`` (``.safetensors`` added if missing) and its ``.json`` sidecar, atomically."""
        from safetensors.torch import save as st_save

        path = _with_suffix(path)
        meta = to_jsonable({**self.meta, "format_version": FORMAT_VERSION})
        blob = st_save({"images": self.images.cpu(), "labels": self.labels.cpu()},
                       metadata={_META_KEY: json.dumps(meta, sort_keys=True)})
        write_bytes(path, blob)  # the tensors (self-describing) first: a sidecar is never left without them
        try:
            write_json(path.with_suffix(".json"), meta)
        except BaseException:
            for p in (path, path.with_suffix(".json")):  # nor tensors whose sidecar could not be written
                p.unlink(missing_ok=True)
            raise
        return path

    def save_grid(self, path: str | os.PathLike, max_per_class: int = 10) -> Path:
        """Save the images as a PNG grid, one row per class (denormalised with the stored mean/std)."""
        return save_image_grid(self.images, self.hard_labels, path, mean=self.meta.get("dataset", {}).get("mean"),
                               std=self.meta.get("dataset", {}).get("std"), max_per_class=max_per_class)


#: The proxy's file name in the --out folder of ``nasdistill distill`` and ``nasdistill run``.
PROXY_FILE = "proxy.safetensors"


def _differences(then: dict, now: dict) -> str:
    """The loading settings (slice sizes, seed, resolution, ...) in which the proxy's data and the data
    given differ, as ``test_per_class (proxy: all, given: 20)``; "" when none recorded differs (e.g. a
    tree of the same name whose files changed)."""
    def shown(key: str, value: Any) -> str:
        return "all" if value is None and key.endswith("per_class") else repr(value)  # None: no limit

    keys = [k for k in sorted(set(then) & set(now)) if k != "source" and then[k] != now[k]]
    return ", ".join(f"{k} (proxy: {shown(k, then[k])}, given: {shown(k, now[k])})" for k in keys)


def _with_suffix(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path if path.suffix == ".safetensors" else path.with_name(path.name + ".safetensors")


def load_proxy(path: str | os.PathLike) -> Proxy:
    """Load a proxy artifact written by :meth:`Proxy.save` (no code is executed, nothing unpickled).

    ``path``: the ``.safetensors`` file, its ``.json`` sidecar, the path without the suffix, or the
    ``--out`` folder of ``nasdistill distill`` / ``run`` (its :data:`PROXY_FILE`).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load as st_load

    path = Path(path)
    if path.is_dir():  # the --out folder of 'nasdistill distill' (or run): its proxy file
        if not (path / PROXY_FILE).is_file():
            raise ProxyError(f"{path} is a folder without a {PROXY_FILE}",
                             "pass the folder 'nasdistill distill --out' wrote, or the .safetensors file itself")
        path = path / PROXY_FILE
    if path.suffix == ".json":
        path = path.with_suffix(".safetensors")
    if not path.is_file() and _with_suffix(path).is_file():
        path = _with_suffix(path)
    if not path.is_file():
        raise ProxyError(f"no proxy file at {path}", "pass the .safetensors path written by 'nasdistill distill'")
    data = path.read_bytes()
    try:
        tensors = st_load(data)
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + header_len])
        meta = json.loads(header.get("__metadata__", {}).get(_META_KEY, "{}"))
    except (SafetensorError, ValueError, UnicodeDecodeError, OSError) as e:
        raise ProxyError(f"{path} is not a valid proxy file ({e})", "re-run 'nasdistill distill' to rebuild it") from e
    if set(tensors) != {"images", "labels"}:
        raise ProxyError(f"{path} holds tensors {sorted(tensors)}, expected images and labels",
                         "re-run 'nasdistill distill' to rebuild it")
    _check_meta(path, meta)
    _check_tensors(path, tensors["images"], tensors["labels"], meta)
    _check_sidecar(path, meta)
    return Proxy(tensors["images"], tensors["labels"], meta)


_REBUILD = "re-run 'nasdistill distill' to rebuild it"


def _check_meta(path: Path, meta) -> None:
    """The header's metadata has the types every reader relies on."""
    if not isinstance(meta, dict):
        raise ProxyError(f"{path} metadata is a JSON {type(meta).__name__}, expected an object", _REBUILD)
    version = meta.get("format_version", FORMAT_VERSION)
    if not isinstance(version, int) or isinstance(version, bool):
        raise ProxyError(f"{path} has format_version {version!r}, expected an integer", _REBUILD)
    if version > FORMAT_VERSION:
        raise ProxyError(f"{path} uses proxy format {version}, newer than this nasdistill", "upgrade nasdistill")
    expected = {"dataset": dict, "settings": dict, "method": str, "key": str}
    for name, kind in expected.items():
        if name in meta and not isinstance(meta[name], kind):
            raise ProxyError(f"{path} metadata field {name!r} is a {type(meta[name]).__name__}, "
                             f"expected {kind.__name__}", _REBUILD)
    ipc = meta.get("ipc")
    if ipc is not None and (not isinstance(ipc, int) or isinstance(ipc, bool) or ipc < 1):
        raise ProxyError(f"{path} metadata field 'ipc' is {ipc!r}, expected a positive integer", _REBUILD)
    n = meta.get("dataset", {}).get("num_classes")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 2):
        raise ProxyError(f"{path} metadata says num_classes={n!r}, expected an integer of at least 2", _REBUILD)


def _check_tensors(path: Path, images: torch.Tensor, labels: torch.Tensor, meta: dict) -> None:
    """Finite float32 images of the recorded shape; integer labels in range or valid soft labels."""
    if images.dtype != torch.float32:
        raise ProxyError(f"{path} images are {images.dtype}, expected float32", "rebuild the proxy")
    if images.ndim != 4 or len(images) == 0:
        raise ProxyError(f"{path} images are shaped {tuple(images.shape)}, expected (N,C,H,W) with N >= 1", _REBUILD)
    if not bool(torch.isfinite(images).all()):
        raise ProxyError(f"{path} images hold NaN or infinite values", _REBUILD)
    shape = meta.get("dataset", {}).get("image_shape")
    if isinstance(shape, list) and tuple(shape) != tuple(images.shape[1:]):
        raise ProxyError(f"{path} images are {tuple(images.shape[1:])} but its metadata says {tuple(shape)}",
                         _REBUILD)
    if labels.ndim not in (1, 2) or len(labels) != len(images):
        raise ProxyError(f"{path} has {len(images)} images but labels shaped {tuple(labels.shape)}", _REBUILD)
    k = meta.get("dataset", {}).get("num_classes")
    if labels.ndim == 1:
        if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.is_complex():
            raise ProxyError(f"{path} hard labels are {labels.dtype}, expected integers", _REBUILD)
        top = k if k is not None else int(labels.max()) + 1
        if int(labels.min()) < 0 or int(labels.max()) >= top:
            raise ProxyError(f"{path} labels run {int(labels.min())}..{int(labels.max())}, outside 0..{top - 1}",
                             _REBUILD)
    else:
        if not labels.dtype.is_floating_point:
            raise ProxyError(f"{path} soft labels are {labels.dtype}, expected float32", _REBUILD)
        if k is not None and labels.shape[1] != k:
            raise ProxyError(f"{path} soft labels have {labels.shape[1]} columns for {k} classes", _REBUILD)
        if not bool(torch.isfinite(labels).all()) or bool((labels < 0).any()):
            raise ProxyError(f"{path} soft labels hold negative, NaN or infinite values", _REBUILD)


def _check_sidecar(path: Path, meta: dict) -> None:
    """A JSON sidecar beside the file, when present, must tell the same story as the header."""
    side = path.with_suffix(".json")
    if not side.is_file():
        return
    try:
        other = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ProxyError(f"the sidecar {side} is not valid JSON ({e})",
                         f"delete {side.name} (the .safetensors header holds the same facts) or rebuild the proxy") \
            from None
    if not isinstance(other, dict):
        raise ProxyError(f"the sidecar {side} is a JSON {type(other).__name__}, expected an object",
                         f"delete {side.name} or rebuild the proxy")
    for field_ in ("method", "ipc", "key"):
        if field_ in other and field_ in meta and other[field_] != meta[field_]:
            raise ProxyError(f"the sidecar {side.name} says {field_}={other[field_]!r} but {path.name} says "
                             f"{meta[field_]!r}", f"delete {side.name} or rebuild the proxy")
    fp_a = (other.get("dataset") or {}).get("fingerprint") if isinstance(other.get("dataset"), dict) else None
    fp_b = meta.get("dataset", {}).get("fingerprint")
    if fp_a and fp_b and fp_a != fp_b:
        raise ProxyError(f"the sidecar {side.name} names dataset fingerprint {fp_a} but {path.name} names {fp_b}",
                         f"delete {side.name} or rebuild the proxy")


def save_image_grid(images: torch.Tensor, labels: torch.Tensor, path: str | os.PathLike, *, mean=None, std=None,
                    max_per_class: int = 10, scale: int | None = None) -> Path:
    """A PNG with one row per class of (denormalised) images. Pure PIL, no display needed."""
    from PIL import Image

    from .._io import atomic_path

    x = images.detach().float().cpu()
    if mean is not None and std is not None:
        x = x * torch.tensor(std).view(1, -1, 1, 1) + torch.tensor(mean).view(1, -1, 1, 1)
    else:  # per-image min/max stretch
        lo = x.amin(dim=(1, 2, 3), keepdim=True)
        hi = x.amax(dim=(1, 2, 3), keepdim=True)
        x = (x - lo) / (hi - lo).clamp_min(1e-8)
    x = x.clamp(0, 1)
    labels = labels.cpu()
    classes = sorted(set(labels.tolist()))
    c, h, w = x.shape[1:]
    cols = max(1, min(max_per_class, max(int((labels == k).sum()) for k in classes)))
    scale = scale or max(1, 64 // max(h, w))
    pad = 1
    grid = np.ones(((h + pad) * len(classes) + pad, (w + pad) * cols + pad, 3), dtype=np.float32)
    for r, k in enumerate(classes):
        for j, img in enumerate(x[labels == k][:cols]):
            arr = img.permute(1, 2, 0).numpy()
            if c == 1:
                arr = np.repeat(arr, 3, axis=2)
            y0, x0 = pad + r * (h + pad), pad + j * (w + pad)
            grid[y0:y0 + h, x0:x0 + w] = arr[..., :3]
    im = Image.fromarray((grid * 255).round().astype(np.uint8)).resize(
        (grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST)
    path = Path(path)
    with atomic_path(path) as tmp:
        im.save(tmp, format="PNG")
    return path


def as_proxy(obj: Any, where: str) -> Proxy:
    """``obj`` if it is a :class:`Proxy`, the proxy a path names (:func:`load_proxy`), or a one-line
    :class:`ProxyError` naming what was passed to ``where``."""
    if isinstance(obj, Proxy):
        return obj
    if isinstance(obj, (str, os.PathLike)):
        return load_proxy(obj)
    raise ProxyError(f"{where} takes a Proxy or a proxy file's path, got {type(obj).__name__}",
                     "distil one with distill(dataset, METHOD) or load one with load_proxy(PATH)")
