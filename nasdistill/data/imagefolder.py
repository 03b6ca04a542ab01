"""Decode ImageFolder trees (``train/<class>/*.jpg``, ``test/<class>/*.jpg``) once and cache them."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from .._io import atomic_path, home_dir
from ..errors import DatasetError
from .dataset import RawData
from .resize import check_resolution, pil_array

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp", ".gif")


def _list_split(split_dir: Path, classes: list[str] | None, per_class: int | None):
    if not split_dir.is_dir():
        raise DatasetError(f"{split_dir} is not a folder",
                           "imagefolder:PATH needs PATH/train/<class>/ and PATH/test/<class>/ folders")
    found = sorted(e.name for e in os.scandir(split_dir) if e.is_dir())
    classes = classes if classes is not None else found
    if not classes:
        raise DatasetError(f"{split_dir} holds no class folders", "put each class's images in its own sub-folder")
    files: list[tuple[str, int]] = []
    stamp = hashlib.blake2b(digest_size=16)
    for label, name in enumerate(classes):
        cdir = split_dir / name
        if not cdir.is_dir():
            continue
        entries = sorted((e for e in os.scandir(cdir) if e.name.lower().endswith(IMAGE_EXTENSIONS)),
                         key=lambda e: e.name)
        for e in entries[:per_class] if per_class else entries:
            st = e.stat()
            stamp.update(f"{name}/{e.name}:{st.st_size}:{st.st_mtime_ns};".encode())
            files.append((e.path, label))
    if not files:
        raise DatasetError(f"no images found under {split_dir}", f"images must end in one of {IMAGE_EXTENSIONS}")
    return classes, files, stamp.hexdigest()


def _decode(files: list[tuple[str, int]], mode: str, size: tuple[int, int] | None = None
            ) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    from ..progress import progress_bar

    images, labels, shape = [], [], None
    for path, label in progress_bar(files, desc="decoding images", unit="img", leave=False):
        try:
            with Image.open(path) as im:
                arr = pil_array(im.convert(mode), size)
        except Exception as e:
            raise DatasetError(f"cannot decode {path} ({e})", "remove or fix the file") from e
        if shape is None:
            shape = arr.shape
        elif arr.shape != shape:
            raise DatasetError(f"{path} is {arr.shape[:2]}, other images are {shape[:2]}",
                               "resize them to one size as they are read: --resolution PX (in Python: "
                               "load_dataset('imagefolder:PATH', resolution=PX))")
        images.append(arr)
        labels.append(label)
    return np.stack(images), np.asarray(labels, dtype=np.int64)


def load_imagefolder(root: Path, *, train_per_class: int | None = None, test_per_class: int | None = None,
                     resolution: int | None = None, cache_dir: Path | None = None) -> RawData:
    """Read ``root/train`` and ``root/test``; the decoded arrays are cached under ``$NASDISTILL_HOME/datasets``.

    ``resolution``: resize every image to that many pixels a side as it is decoded (bilinear, as
    the streaming cache does), so a tree of mixed sizes loads. The cache key covers every file's
    name, size and modification time, the per-class limits and the resolution, so editing the
    tree invalidates it.
    """
    resolution = check_resolution(resolution)
    root = root.resolve()
    if not root.is_dir():
        raise DatasetError(f"no folder at {root}", "imagefolder:PATH needs an existing folder")
    classes, train_files, s1 = _list_split(root / "train", None, train_per_class)
    _, test_files, s2 = _list_split(root / "test", classes, test_per_class)
    test_classes = sorted(e.name for e in os.scandir(root / "test") if e.is_dir())
    extra, missing = sorted(set(test_classes) - set(classes)), sorted(set(classes) - set(test_classes))
    if extra or missing:
        what = (f"test/ has class folders {extra} that train/ lacks" if extra
                else f"train/ has class folders {missing} that test/ lacks")
        raise DatasetError(f"{root}: {what}", "give train/ and test/ the same class folders")
    text = f"{root}|{train_per_class}|{test_per_class}|{s1}|{s2}" + (f"|{resolution}" if resolution else "")
    key = hashlib.blake2b(text.encode(), digest_size=12).hexdigest()
    cache = (cache_dir or home_dir() / "datasets") / f"imagefolder-{key}.npz"
    if cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as z:
                return RawData(z["x_train"], z["y_train"], z["x_test"], z["y_test"], [str(c) for c in z["classes"]])
        except Exception:
            cache.unlink(missing_ok=True)  # a corrupt cache is rebuilt below
    from PIL import Image

    try:
        with Image.open(train_files[0][0]) as im:
            mode = "L" if im.mode in ("L", "1", "I;16", "I") else "RGB"
    except Exception as e:
        raise DatasetError(f"cannot decode {train_files[0][0]} ({e})", "remove or fix the file") from e
    size = (resolution, resolution) if resolution else None
    x_tr, y_tr = _decode(train_files, mode, size)
    x_te, y_te = _decode(test_files, mode, size)
    try:
        with atomic_path(cache) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te, classes=np.array(classes))
    except OSError:
        pass  # a read-only cache only costs speed
    return RawData(x_tr, y_tr, x_te, y_te, classes)
