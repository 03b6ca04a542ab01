"""The data a pipeline runs on (:class:`DataSpec`: name, slices, split, streaming) and the device it runs on."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..data import ImageDataset, Proxy, load_dataset
from ..errors import ConfigError


def resolve_device(device: str | None) -> str:
    """``auto`` (or None) -> ``cuda`` when available, else ``cpu``; anything else is checked."""
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ConfigError(f"unknown device {device!r}", "use cpu, cuda, cuda:N or auto") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} asked for but no CUDA GPU is available", "use --device cpu")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise ConfigError(f"device {device!r} asked for but this machine has {n} CUDA GPU(s)",
                              f"use cuda:0 to cuda:{n - 1}, or cuda")
    elif dev.type == "meta":
        raise ConfigError("device 'meta' holds no data: nothing can be trained on it", "use --device cpu or cuda")
    elif dev.type != "cpu":
        try:  # another backend (mps, xpu...): usable when this PyTorch build and machine have it
            torch.empty(1, device=dev).add_(1)
        except Exception as e:  # noqa: BLE001 - each backend fails in its own way (NotImplemented, Assertion...)
            first = ("this PyTorch build has no kernels for it" if isinstance(e, NotImplementedError)
                     else (str(e).splitlines() or [type(e).__name__])[0][:120])
            raise ConfigError(f"device {device!r} is not available here ({first})", "use --device cpu or cuda") from e
    return str(dev)


@dataclass
class DataSpec:
    """Which dataset, where it lives and how it is sliced and split."""

    name: str = "digits"
    root: str | None = None
    download: bool = False
    train_per_class: int | None = None
    test_per_class: int | None = None
    val_per_class: int | None = None
    seed: int = 0
    #: read an ``imagefolder:PATH`` tree or a torchvision dataset (:data:`STREAMABLE`) from its
    #: memory-mapped uint8 cache instead of RAM (:mod:`nasdistill.data.stream`)
    stream: bool = False
    resolution: int | None = None

    @classmethod
    def from_proxy(cls, proxy: Proxy, *, name: str | None = None, root: str | None = None, download: bool = False,
                   train_per_class: int | None = None, test_per_class: int | None = None,
                   val_per_class: int | None = None, stream: bool | None = None,
                   resolution: int | None = None) -> "DataSpec":
        """The data ``proxy`` was distilled from: its dataset name, slices, split seed and whether it
        was streamed (at which resolution), each replaced by the argument given (not None). A proxy
        that does not record its dataset needs ``name``."""
        recorded = proxy.meta.get("dataset", {})
        info = recorded.get("info", {})
        name = name or recorded.get("name")
        if not name:
            raise ConfigError("the proxy does not record its dataset", "pass --data NAME")
        given = {"train_per_class": train_per_class, "test_per_class": test_per_class, "val_per_class": val_per_class}
        streamed = info.get("source") == "stream"
        return cls(name=name, root=root, download=download, seed=info.get("seed") or 0,
                   stream=bool(stream) if stream is not None else streamed,
                   resolution=resolution if resolution is not None else info.get("resolution"),
                   **{k: v if v is not None else info.get(k) for k, v in given.items()})

    def load(self) -> ImageDataset:
        if self.stream:
            return self._load_streamed()
        return load_dataset(self.name, root=self.root, download=self.download,
                            train_per_class=self.train_per_class, test_per_class=self.test_per_class,
                            val_per_class=self.val_per_class, seed=self.seed, resolution=self.resolution)


    def _load_streamed(self) -> ImageDataset:
        from ..data import SOURCES, default_root
        from ..data.stream import StreamingDataset, build_array_cache, build_cache

        base, _, arg = self.name.partition(":")
        limits = dict(resolution=self.resolution, train_per_class=self.train_per_class,
                      test_per_class=self.test_per_class)
        if base == "imagefolder":
            folder = build_cache(arg, **limits)
        elif base in STREAMABLE:
            root = Path(self.root) if self.root is not None else default_root()
            raw = SOURCES.get(base)(None, root=root, download=self.download)  # torchvision holds it as uint8
            folder = build_array_cache(base, raw, **limits)
            del raw
        else:
            raise ConfigError(f"--stream reads ImageFolder trees and torchvision's datasets, not {self.name!r}",
                              f"pass --data imagefolder:PATH or one of {', '.join(STREAMABLE)}, or leave --stream out")
        return StreamingDataset(folder).as_image_dataset(name=None if base == "imagefolder" else base,
                                                         val_per_class=self.val_per_class, seed=self.seed)


#: torchvision names ``--stream`` accepts (their arrays are written into the streaming cache once)
STREAMABLE = ("mnist", "fashion_mnist", "cifar10", "cifar100", "svhn")


__all__ = ["resolve_device", "DataSpec", "STREAMABLE"]
