"""Dataset sources, found by name.

A source turns a name (and, for ``imagefolder:PATH`` / ``npz:PATH``, a path) into
:class:`RawData`: uint8 images and int64 labels. Register your own with
``SOURCES.register("name", fn)``; ``fn(arg, root=..., download=..., train_per_class=...,
test_per_class=..., resolution=...)`` must return ``RawData`` (at any size: ``load_dataset`` resizes
what it keeps to ``resolution``; a source whose images differ in size resizes them itself).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np

from .._registry import Registry
from ..errors import DatasetError
from .dataset import RawData
from .imagefolder import load_imagefolder

Source = Callable[..., RawData]
SOURCES: Registry[Source] = Registry(
    "dataset", hint="or imagefolder:PATH for a train/ and test/ ImageFolder tree, npz:PATH for arrays"
)


@SOURCES.register("digits")
def _digits(arg: str | None, **_: object) -> RawData:
    """scikit-learn's 8x8 handwritten digits (1,797 images), split 75/25 stratified (a fixed split:
    ``digits_test.txt`` beside this file)."""
    images, target = _digits_arrays()
    x = np.round(images * (255.0 / 16.0)).astype(np.uint8)
    test = np.zeros(len(x), dtype=bool)
    test[np.loadtxt(Path(__file__).with_name("digits_test.txt"), dtype=np.int64).reshape(-1)] = True
    return RawData(x[~test], target[~test], x[test], target[test], [str(c) for c in range(10)])


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 digits (8x8, values 0-16) and their labels, read from the file scikit-learn ships
    without importing scikit-learn (two seconds of imports, scipy's among them, that every command
    on digits paid); through ``load_digits`` where that file is not where it has always been."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz" if spec and spec.origin else None
    if path is None or not path.is_file():
        from sklearn.datasets import load_digits

        d = load_digits()
        return d.images, d.target.astype(np.int64)
    import gzip

    with gzip.open(path, "rt") as f:
        data = np.loadtxt(f, delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(np.int64)


def _torchvision(cls_name: str, folder_hint: str, split_kw: Callable[[bool], dict]) -> Source:
    def load(arg: str | None, *, root: str | os.PathLike | None = None, download: bool = False, **_: object) -> RawData:
        import torchvision.datasets as tvd

        if root is None:
            raise DatasetError(f"{cls_name} needs a data root", "pass --data-root DIR (or set NASDISTILL_DATA)")
        cls = getattr(tvd, cls_name)
        splits = []
        for train in (True, False):
            try:
                ds = cls(root=str(root), download=download, **split_kw(train))
            except RuntimeError as e:
                if download:
                    raise DatasetError(f"could not download {cls_name} into {root}: {e}", "check the network") from e
                tree = _image_tree_named(root, cls_name)
                fix = (f"its image tree {tree} loads as --data imagefolder:{tree}" if tree else
                       "pass --data-root DIR pointing at the folder that holds it, or add --download to fetch it")
                raise DatasetError(f"{cls_name} not found under {root} (looked for {folder_hint})", fix) from e
            data = ds.data.numpy() if hasattr(ds.data, "numpy") else np.asarray(ds.data)
            if data.ndim == 4 and data.shape[1] in (1, 3) and data.shape[-1] not in (1, 3):
                data = data.transpose(0, 2, 3, 1)  # SVHN stores (N, C, H, W)
            labels = getattr(ds, "targets", None)
            if labels is None:
                labels = ds.labels
            labels = labels.numpy() if hasattr(labels, "numpy") else np.asarray(labels)
            splits.append((data.astype(np.uint8), labels))
            classes = list(getattr(ds, "classes", []) or [])
        if not classes:
            classes = [str(i) for i in range(int(splits[0][1].max()) + 1)]
        return RawData(splits[0][0], splits[0][1], splits[1][0], splits[1][1], [str(c) for c in classes])

    load.__doc__ = f"torchvision's {cls_name} (offline unless download=True)."
    return load


def _image_tree_named(root: str | os.PathLike, cls_name: str) -> Path | None:
    """A folder in ``root`` named after the dataset (``cifar10-jpeg`` for CIFAR10) holding ``train/`` and
    ``test/``: an ImageFolder copy of it (as the JPEG mirrors ship), which the error then points at."""
    want = "".join(ch for ch in cls_name.lower() if ch.isalnum())

    def named(folder: Path) -> bool:  # cifar10-jpeg for CIFAR10, not cifar100-jpeg
        name = "".join(ch for ch in folder.name.lower() if ch.isalnum())
        return name.startswith(want) and not name[len(want):len(want) + 1].isdigit()

    try:
        found = sorted(p for p in Path(root).iterdir()
                       if p.is_dir() and named(p) and (p / "train").is_dir() and (p / "test").is_dir())
    except OSError:
        return None
    return found[0] if found else None


SOURCES.register("mnist", _torchvision("MNIST", "MNIST/raw", lambda t: {"train": t}))
SOURCES.register("fashion_mnist", _torchvision("FashionMNIST", "FashionMNIST/raw", lambda t: {"train": t}))
SOURCES.register("cifar10", _torchvision("CIFAR10", "cifar-10-batches-py", lambda t: {"train": t}))
SOURCES.register("cifar100", _torchvision("CIFAR100", "cifar-100-python", lambda t: {"train": t}))
SOURCES.register("svhn", _torchvision("SVHN", "train_32x32.mat", lambda t: {"split": "train" if t else "test"}))


@SOURCES.register("imagefolder")
def _imagefolder(arg: str | None, *, train_per_class: int | None = None, test_per_class: int | None = None,
                 resolution: int | None = None, **_: object) -> RawData:
    """A ``train/`` and ``test/`` ImageFolder tree (decoded once, resized to ``resolution`` if given, then cached)."""
    if not arg:
        raise DatasetError("imagefolder needs a path", "write imagefolder:PATH with PATH holding train/ and test/")
    return load_imagefolder(Path(arg).expanduser(), train_per_class=train_per_class, test_per_class=test_per_class,
                            resolution=resolution)


@SOURCES.register("npz")
def _npz(arg: str | None, **_: object) -> RawData:
    """A NumPy ``.npz`` with x_train, y_train, x_test, y_test (uint8 images) and optional classes."""
    if not arg:
        raise DatasetError("npz needs a path", "write npz:PATH")
    path = Path(arg).expanduser()
    if not path.is_file():
        raise DatasetError(f"no npz file at {path}", "check the path after npz:")
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in z.files]
            if missing:
                raise DatasetError(f"{path} lacks the arrays {', '.join(missing)}",
                                   "save x_train, y_train, x_test and y_test in the npz")
            classes = [str(c) for c in z["classes"]] if "classes" in z.files else []
            return RawData(z["x_train"], z["y_train"], z["x_test"], z["y_test"], classes)
    except DatasetError:
        raise
    except Exception as e:  # zipfile.BadZipFile, ValueError for pickled arrays...
        raise DatasetError(f"cannot read {path} as npz ({type(e).__name__}: {e})",
                           "save it with numpy.savez and plain (non-object) arrays") from e
