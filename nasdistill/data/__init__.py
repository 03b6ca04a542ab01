"""Datasets and proxy artifacts.

>>> from nasdistill.data import load_dataset
>>> ds = load_dataset("digits")                      # offline, scikit-learn's 8x8 digits
>>> ds = load_dataset("mnist", root="../shared/data")  # torchvision's MNIST, never downloads unless asked
>>> ds = load_dataset("imagefolder:../shared/data/cifar10-jpeg", train_per_class=100)
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import DatasetError
from .dataset import ImageDataset, RawData, as_dataset, build_dataset, slice_settings
from .proxy import Proxy, as_proxy, load_proxy
from .resize import check_resolution
from .sources import SOURCES

__all__ = ["ImageDataset", "RawData", "Proxy", "as_dataset", "as_proxy", "load_dataset", "load_proxy", "dataset_names",
           "default_root", "SOURCES"]


def default_root() -> Path:
    """The data root used when none is given: ``$NASDISTILL_DATA`` or ``./data``."""
    return Path(os.environ.get("NASDISTILL_DATA", "data")).expanduser()


def dataset_names() -> list[str]:
    return [n if n not in ("imagefolder", "npz") else f"{n}:PATH" for n in SOURCES.names()]


def load_dataset(
    name: str,
    *,
    root: str | os.PathLike | None = None,
    download: bool = False,
    train_per_class: int | None = None,
    test_per_class: int | None = None,
    val_per_class: int | None = None,
    seed: int = 0,
    resolution: int | None = None,
) -> ImageDataset:
    """Load a labelled image dataset by name.

    Args:
        name: ``digits``, ``mnist``, ``fashion_mnist``, ``cifar10``, ``cifar100``, ``svhn``,
            ``imagefolder:PATH`` or ``npz:PATH`` (or any name registered in ``SOURCES``).
        root: folder that holds torchvision datasets (default :func:`default_root`).
        download: let torchvision download a missing dataset (never done otherwise).
        train_per_class / test_per_class: keep only the first N images of each class.
        val_per_class: images of each class held out of train for validation
            (default: 10% of the smallest class, at most 500).
        seed: seeds the validation split.
        resolution: resize every image to ``resolution`` x ``resolution`` pixels (bilinear; an
            ImageFolder tree as it is decoded, so its images may differ in size), as ``--stream
            --resolution`` does; None keeps the source's size.
    """
    resolution = check_resolution(resolution)
    slices = slice_settings(train_per_class, test_per_class, val_per_class, seed)
    train_per_class, test_per_class = slices["train_per_class"], slices["test_per_class"]
    base, _, arg = str(name).partition(":")
    source = SOURCES.get(base)
    raw = source(arg or None, root=Path(root) if root is not None else default_root(), download=download,
                 train_per_class=train_per_class, test_per_class=test_per_class, resolution=resolution)
    if not isinstance(raw, RawData):
        raise DatasetError(f"source {base!r} returned {type(raw).__name__}, not RawData", "fix the registered source")
    return build_dataset(str(name), raw, train_per_class=train_per_class, test_per_class=test_per_class,
                         val_per_class=val_per_class, seed=seed, resolution=resolution, info={"source": base})
