"""The in-memory labelled image dataset every other part of nasdistill works on."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from .._params import as_whole, is_whole
from .._seed import derive_seed
from .._strides import nchw
from ..errors import ConfigError, DatasetError
from .resize import check_resolution, resize_images

#: Largest default validation split per class (MNIST/CIFAR get 500 a class).
MAX_DEFAULT_VAL_PER_CLASS = 500


@dataclass
class RawData:
    """What a source returns: uint8 images (N, H, W, C) and int64 labels, before any processing."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: list[str]

    def __post_init__(self) -> None:
        for name in ("x_train", "x_test"):
            x = _as_numpy(getattr(self, name))
            if x.ndim not in (3, 4) or x.dtype != np.uint8:
                fix = ("convert the images to uint8 in [0, 255]" if x.ndim in (3, 4) else
                       "pass one image per row: (N,H,W) for grey images, (N,H,W,C) for C channels")
                raise DatasetError(
                    f"{name} must be uint8 images shaped (N,H,W) or (N,H,W,C), got {x.dtype} {tuple(x.shape)}", fix)
            if x.ndim == 3:
                x = x[..., None]
            if x.shape[1] in CHANNEL_COUNTS and x.shape[3] not in CHANNEL_COUNTS:
                # (N, C, H, W) read as (N, H, W, C) would train on C-pixel-high images of H channels
                raise DatasetError(
                    f"{name} {tuple(x.shape)} looks channels-first (N,C,H,W); images are read as (N,H,W,C)",
                    "transpose them first: x.transpose(0, 2, 3, 1) (NumPy) or x.permute(0, 2, 3, 1) (torch)",
                )
            setattr(self, name, np.ascontiguousarray(x))
        for name in ("y_train", "y_test"):
            setattr(self, name, _int_labels(getattr(self, name), name))
        if len(self.x_train) != len(self.y_train) or len(self.x_test) != len(self.y_test):
            raise DatasetError("images and labels differ in length", "check the dataset files")
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise DatasetError(
                f"train images {self.x_train.shape[1:]} and test images {self.x_test.shape[1:]} differ in shape",
                "resize both splits to one shape",
            )
        if len(self.x_train) == 0:
            raise DatasetError("the training split is empty", "check the dataset path")
        low = int(min(self.y_train.min(), self.y_test.min() if len(self.y_test) else 0))
        n_cls = int(max(self.y_train.max(), self.y_test.max() if len(self.y_test) else 0)) + 1
        if not self.classes:
            self.classes = [str(i) for i in range(n_cls)]
        self.classes = [str(c) for c in self.classes]
        if low < 0 or n_cls > len(self.classes):
            bad = low if low < 0 else n_cls - 1
            raise DatasetError(f"label {bad} falls outside the {len(self.classes)} classes",
                               f"labels must be 0..{len(self.classes) - 1}")
        if len(self.classes) < 2:
            raise DatasetError(f"the dataset has {len(self.classes)} class; classification needs at least 2",
                               "add images of a second class")
        train_counts = np.bincount(self.y_train, minlength=len(self.classes))
        test_counts = np.bincount(self.y_test, minlength=len(self.classes))
        for k, name in enumerate(self.classes):
            if train_counts[k] == 0:
                raise DatasetError(f"class {name!r} (label {k}) has no training images",
                                   "add training images of it, or remove the class and number the labels 0..K-1")
            if len(self.y_test) and test_counts[k] == 0:
                raise DatasetError(f"class {name!r} (label {k}) has no test images",
                                   "add test images of it, or remove the class from both splits")


#: Channel counts of the image formats nasdistill reads (grey, RGB): a uint8 array with one of these
#: as its second axis and not as its last is channels-first.
CHANNEL_COUNTS = (1, 3)


def _as_numpy(a) -> np.ndarray:
    """An array, list or (CPU or GPU) tensor as a NumPy array."""
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def _int_labels(y, name: str) -> np.ndarray:
    """Labels as int64, refusing float or non-numeric labels instead of truncating them."""
    y = _as_numpy(y)
    if y.dtype.kind not in "iub":
        raise DatasetError(f"{name} holds {y.dtype} labels; labels must be integers 0..K-1",
                           "store the class indices as an integer array (e.g. y.astype(np.int64) after checking)")
    return y.astype(np.int64).reshape(-1)


@dataclass(eq=False)
class ImageDataset:
    """A labelled image dataset as normalised float tensors.

    ``x_*`` are float32 (N, C, H, W) tensors normalised with the per-channel ``mean`` /
    ``std`` of the training split; ``y_*`` are int64. ``val`` is a seeded, class-balanced
    split held out of the training split (used to score search candidates).
    ``fingerprint`` hashes the content and the split settings.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    fingerprint: str
    info: dict = field(default_factory=dict)

    @classmethod
    def from_arrays(cls, x_train, y_train, x_test, y_test, *, classes: Sequence[str] | None = None,
                    name: str = "arrays", train_per_class: int | None = None, test_per_class: int | None = None,
                    val_per_class: int | None = None, seed: int = 0, resolution: int | None = None
                    ) -> "ImageDataset":
        """A dataset from images already in memory (NumPy arrays, torch tensors or lists).

        Images are uint8 in [0, 255] shaped (N, H, W) or (N, H, W, C) (a torchvision dataset's
        ``.data``: ``ImageDataset.from_arrays(train.data, train.targets, test.data, test.targets,
        classes=train.classes)``); labels are integers 0..K-1. The other arguments are
        :func:`~nasdistill.data.load_dataset`'s: the same slicing, validation split and fingerprint
        (of the pixels and labels, so equal arrays give equal proxies' keys whatever ``name``).
        """
        raw = RawData(x_train, y_train, x_test, y_test, list(classes or []))
        return build_dataset(str(name), raw, train_per_class=train_per_class, test_per_class=test_per_class,
                             val_per_class=val_per_class, seed=seed, resolution=resolution, info={"source": "arrays"})

    def __repr__(self) -> str:
        return (f"ImageDataset({self.name!r}, train={len(self.y_train)}, val={len(self.y_val)}, "
                f"test={len(self.y_test)}, image_shape={self.image_shape}, classes={self.num_classes}, "
                f"fingerprint={self.fingerprint[:12]!r})")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]

    def class_counts(self) -> list[int]:
        return torch.bincount(self.y_train, minlength=self.num_classes).tolist()

    def indices_by_class(self) -> list[torch.Tensor]:
        """Indices into the training split, one tensor per class."""
        return [torch.nonzero(self.y_train == c).flatten() for c in range(self.num_classes)]

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Map normalised images back to [0, 1] pixel space (for pictures)."""
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return (x * std + mean).clamp(0, 1)

    def load_flags(self) -> list[str]:
        """The command-line flags that load this dataset again as it was loaded (``--data NAME`` and the
        slice sizes, streaming and resolution its ``info`` records), for the commands nasdistill prints."""
        info = self.info or {}
        flags = [f"--data {self.name}"]
        for k in ("train_per_class", "test_per_class", "val_per_class"):
            if info.get(k) is not None:
                flags.append(f"--{k.replace('_', '-')} {info[k]}")
        if info.get("source") == "stream":
            flags.append("--stream")
        if info.get("resolution"):
            flags.append(f"--resolution {info['resolution']}")
        return flags

    def describe(self) -> dict:
        return {
            "name": self.name,
            "fingerprint": self.fingerprint,
            "image_shape": list(self.image_shape),
            "num_classes": self.num_classes,
            "train": len(self.y_train),
            "val": len(self.y_val),
            "test": len(self.y_test),
        }


def slice_settings(train_per_class: Any = None, test_per_class: Any = None, val_per_class: Any = None,
                   seed: Any = 0) -> dict[str, int | None]:
    """The slicing and split settings of :func:`~nasdistill.data.load_dataset`, checked (a one-line
    :class:`ConfigError` for anything but a whole number in range, or None where None means "all" or
    "the default") and as plain ints: a NumPy integer gives the dataset, and fingerprint, of its int."""
    out: dict[str, int | None] = {}
    for name, value, low in (("train_per_class", train_per_class, 1), ("test_per_class", test_per_class, 1),
                             ("val_per_class", val_per_class, 0)):
        if value is not None and not (is_whole(value) and value >= low):
            raise ConfigError(f"{name} must be a whole number >= {low}, got {value!r}",
                              f"pass e.g. {name}=10 (--{name.replace('_', '-')} 10), or leave it unset")
        out[name] = None if value is None else int(value)
    out["seed"] = as_whole(seed, "seed")
    return out


def first_per_class(y: np.ndarray, n: int | None) -> np.ndarray:
    """Indices of the first ``n`` examples of each class, in source order."""
    if n is None:
        return np.arange(len(y))
    if n < 1:
        raise ConfigError(f"per-class slice must be at least 1, got {n}", "pass a positive number")
    keep = np.zeros(len(y), dtype=bool)
    for c in np.unique(y):
        keep[np.flatnonzero(y == c)[:n]] = True
    return np.flatnonzero(keep)


def _digest(raw: RawData, settings: dict) -> str:
    h = hashlib.blake2b(digest_size=16)
    for arr in (raw.x_train, raw.y_train, raw.x_test, raw.y_test):
        h.update(repr((arr.dtype.str, arr.shape)).encode())
        h.update(memoryview(np.ascontiguousarray(arr)).cast("B"))
    h.update(repr(sorted(settings.items())).encode())
    return h.hexdigest()


def _to_tensor(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(x).permute(0, 3, 1, 2).float().div_(255.0)
    t.sub_(torch.from_numpy(mean).float().view(1, -1, 1, 1)).div_(torch.from_numpy(std).float().view(1, -1, 1, 1))
    return nchw(t)


def validation_holdout(y: np.ndarray, num_classes: int, val_per_class: int | None, seed: int
                       ) -> tuple[np.ndarray, int]:
    """Which training images the validation split holds out (a boolean mask over ``y``) and how
    many a class: ``val_per_class`` drawn from every present class, seeded by ``seed`` (None: 10% of
    the smallest class, at most :data:`MAX_DEFAULT_VAL_PER_CLASS`). The in-RAM and the streamed
    datasets both hold out with this, so the same slices and seed give the same split."""
    counts = np.bincount(y, minlength=num_classes)
    smallest = int(counts[counts > 0].min())
    if val_per_class is None:
        val_per_class = min(MAX_DEFAULT_VAL_PER_CLASS, max(1, round(0.1 * smallest)))
    if val_per_class < 0 or val_per_class >= smallest:
        raise ConfigError(
            f"val_per_class={val_per_class} leaves no training images in the smallest class ({smallest} images)",
            f"use a value from 0 to {smallest - 1}",
        )
    rng = np.random.default_rng(derive_seed("val-split", seed) % (2**63))
    is_val = np.zeros(len(y), dtype=bool)
    for c in np.flatnonzero(counts):
        is_val[rng.choice(np.flatnonzero(y == c), size=val_per_class, replace=False)] = True
    return is_val, val_per_class


def build_dataset(
    name: str,
    raw: RawData,
    *,
    train_per_class: int | None = None,
    test_per_class: int | None = None,
    val_per_class: int | None = None,
    seed: int = 0,
    resolution: int | None = None,
    info: dict | None = None,
) -> ImageDataset:
    """Slice, resize (to ``resolution`` pixels a side, if given), split, normalise and fingerprint
    ``raw`` into an :class:`ImageDataset`."""
    resolution = check_resolution(resolution)
    settings = slice_settings(train_per_class, test_per_class, val_per_class, seed)
    train_per_class, test_per_class = settings["train_per_class"], settings["test_per_class"]
    val_per_class, seed = settings["val_per_class"], settings["seed"]
    tr = first_per_class(raw.y_train, train_per_class)
    te = first_per_class(raw.y_test, test_per_class)
    x_tr, y_tr = raw.x_train[tr], raw.y_train[tr]
    x_te, y_te = raw.x_test[te], raw.y_test[te]
    if resolution is not None:
        x_tr, x_te = resize_images(x_tr, (resolution, resolution)), resize_images(x_te, (resolution, resolution))
        info = {**(info or {}), "resolution": resolution}
    is_val, val_per_class = validation_holdout(y_tr, len(raw.classes), val_per_class, seed)

    # Per-channel statistics of the whole training split (before the validation hold-out).
    pix = x_tr.reshape(-1, x_tr.shape[-1]).astype(np.float64) / 255.0
    mean = pix.mean(axis=0)
    std = pix.std(axis=0)
    std[std < 1e-8] = 1.0

    settings = {
        "train_per_class": train_per_class,
        "test_per_class": test_per_class,
        "val_per_class": val_per_class,
        "seed": seed if val_per_class else None,
    }
    fp = _digest(RawData(x_tr, y_tr, x_te, y_te, list(raw.classes)), settings)
    return ImageDataset(
        name=name,
        x_train=_to_tensor(x_tr[~is_val], mean, std),
        y_train=torch.from_numpy(y_tr[~is_val]).long(),
        x_val=_to_tensor(x_tr[is_val], mean, std),
        y_val=torch.from_numpy(y_tr[is_val]).long(),
        x_test=_to_tensor(x_te, mean, std),
        y_test=torch.from_numpy(y_te).long(),
        classes=list(raw.classes),
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
        fingerprint=fp,
        info={**(info or {}), **settings},
    )


def as_dataset(obj: Any, where: str) -> ImageDataset:
    """``obj`` if it is an :class:`ImageDataset`; otherwise a one-line :class:`DatasetError` naming
    what was passed to ``where`` and how to make a dataset of it."""
    if isinstance(obj, ImageDataset):
        return obj
    kind = type(obj).__name__
    if hasattr(obj, "as_image_dataset"):  # a StreamingDataset
        fix = "pass its in-RAM view: data.as_image_dataset()"
    elif hasattr(obj, "data") and hasattr(obj, "targets"):  # a torchvision dataset
        fix = ("load it by name (load_dataset('mnist', root=...)) or wrap its arrays: "
               "ImageDataset.from_arrays(train.data, train.targets, test.data, test.targets, classes=train.classes)")
    else:
        fix = ("load one with load_dataset(NAME) or build one from uint8 arrays with "
               "ImageDataset.from_arrays(x_train, y_train, x_test, y_test)")
    raise DatasetError(f"{where} takes a nasdistill ImageDataset, got {kind}", fix)
