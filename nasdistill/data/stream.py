"""Streaming image datasets: an ImageFolder tree decoded once into a memory-mapped uint8 cache.

For trees larger than memory. :func:`build_cache` decodes ``root/train`` and ``root/test``
chunk by chunk into ``$NASDISTILL_HOME/datasets/<fingerprint>/{train,test}.u8`` (raw uint8
``(N, H, W, C)``, optionally resized to ``resolution``), with labels, class names and per-channel
means and standard deviations accumulated on the way. The fingerprint hashes every file's name,
size and modification time (never the pixels), so it is computed without holding images in
memory. A ``progress.json`` records the images already written: an interrupted build resumes
where it stopped. Peak memory is one chunk of decoded images, whatever the tree's size.

:class:`StreamingDataset` reads the cache through ``numpy.memmap``: :meth:`~StreamingDataset.loader`
gives a ``torch.utils.data.DataLoader`` (workers, shuffling by seed) of normalised float batches,
:meth:`~StreamingDataset.class_batch` a per-class batch of real images (what distillation methods
draw), and :func:`stream_train` trains a network over streamed epochs (full-data reference training).

>>> data = StreamingDataset.build("../shared/data/cifar10-jpeg", resolution=32)
>>> x, y = next(iter(data.loader("train", batch_size=256, workers=2)))

The in-RAM :class:`~nasdistill.data.ImageDataset` stays the fast default for small sets.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

from .._params import is_whole
from .._io import home_dir, write_json
from .._strides import nchw
from ..errors import DatasetError
from .imagefolder import _list_split
from .resize import check_resolution, pil_array, resize_images

CACHE_FORMAT = "nasdistill.stream/1"
#: images decoded and written per chunk (bounds the builder's memory)
CHUNK = 512


def _decode_one(path: str, mode: str, size: tuple[int, int] | None) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return pil_array(im.convert(mode), size)
    except Exception as e:
        raise DatasetError(f"cannot decode {path} ({e})", "remove or fix the file") from e


def _fingerprint(root: Path, stamps: tuple[str, str], resolution: int | None, limits: tuple) -> str:
    text = f"{CACHE_FORMAT}|{root}|{resolution}|{limits}|{stamps[0]}|{stamps[1]}"
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


def _limits(train_per_class, test_per_class) -> tuple[int | None, int | None]:
    """The per-class limits checked and as ints, as :func:`~nasdistill.data.load_dataset` takes them
    (so a NumPy integer keys the cache its int keys)."""
    from .dataset import slice_settings

    limits = slice_settings(train_per_class, test_per_class)
    return limits["train_per_class"], limits["test_per_class"]


def build_cache(root: str | os.PathLike, *, resolution: int | None = None, train_per_class: int | None = None,
                test_per_class: int | None = None, cache_dir: str | os.PathLike | None = None,
                chunk: int = CHUNK) -> Path:
    """Decode the tree at ``root`` into the streaming cache (or finish an interrupted build); return its folder."""
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DatasetError(f"no folder at {root}", "imagefolder:PATH needs an existing folder")
    resolution = check_resolution(resolution)
    train_per_class, test_per_class = _limits(train_per_class, test_per_class)
    classes, train_files, s1 = _list_split(root / "train", None, train_per_class)
    _, test_files, s2 = _list_split(root / "test", classes, test_per_class)
    key = _fingerprint(root, (s1, s2), resolution, (train_per_class, test_per_class))
    folder = Path(cache_dir or home_dir() / "datasets").expanduser() / key
    if (folder / "meta.json").is_file():
        return folder
    from PIL import Image

    with Image.open(train_files[0][0]) as im:
        mode = "L" if im.mode in ("L", "1", "I;16", "I") else "RGB"
    size = (resolution, resolution) if resolution else None

    def decoder(files):
        return lambda a, b: np.stack([_decode_one(p, mode, size) for p, _ in files[a:b]])

    splits = {s: (np.asarray([lab for _, lab in f], dtype=np.int64), decoder(f))
              for s, f in (("train", train_files), ("test", test_files))}
    return _write_cache(folder, splits, chunk, {"root": str(root), "name": f"imagefolder:{root}", "fingerprint": key,
                                                "classes": classes,
                                                "resolution": resolution}, f"images under {root}")


def build_array_cache(name: str, raw, *, resolution: int | None = None, train_per_class: int | None = None,
                      test_per_class: int | None = None, cache_dir: str | os.PathLike | None = None,
                      chunk: int = CHUNK) -> Path:
    """The streaming cache of a dataset a source gives as uint8 arrays (:class:`~nasdistill.data.RawData`,
    e.g. torchvision's MNIST or CIFAR-10, which torchvision itself holds in memory): the same
    format as :func:`build_cache`, resized image by image as it does, fingerprinted from the
    arrays' bytes chunk by chunk. Later runs read the cache, not the arrays."""
    from .dataset import first_per_class

    resolution = check_resolution(resolution)
    train_per_class, test_per_class = _limits(train_per_class, test_per_class)
    tr, te = first_per_class(raw.y_train, train_per_class), first_per_class(raw.y_test, test_per_class)
    arrays = {"train": (raw.x_train, raw.y_train, tr), "test": (raw.x_test, raw.y_test, te)}
    h = hashlib.blake2b(f"{CACHE_FORMAT}|array|{name}|{resolution}|{train_per_class}|{test_per_class}".encode(),
                        digest_size=12)
    for x, y, idx in arrays.values():
        h.update(f"{x.shape}|{x.dtype}".encode())
        h.update(np.ascontiguousarray(y[idx]).tobytes())
        for a in range(0, len(idx), chunk):
            h.update(np.ascontiguousarray(x[idx[a:a + chunk]]).tobytes())
    key = h.hexdigest()
    folder = Path(cache_dir or home_dir() / "datasets").expanduser() / key
    if (folder / "meta.json").is_file():
        return folder
    size = (resolution, resolution) if resolution else None

    def reader(x, idx):
        return lambda a, b: resize_images(x[idx[a:b]], size)

    splits = {s: (np.asarray(y[idx], dtype=np.int64), reader(x, idx)) for s, (x, y, idx) in arrays.items()}
    return _write_cache(folder, splits, chunk, {"root": name, "name": name, "fingerprint": key,
                                                "classes": list(raw.classes),
                                                "resolution": resolution}, name)


def _write_cache(folder: Path, splits: dict, chunk: int, meta: dict, what: str) -> Path:
    """Write ``splits`` (name -> (labels, block(a, b) -> uint8 (n, H, W, C))) chunk by chunk into
    ``folder``, resuming from ``progress.json``; then the training split's per-channel statistics
    and ``meta.json`` (written last: a cache without it is unfinished)."""
    folder.mkdir(parents=True, exist_ok=True)
    shape = splits["train"][1](0, 1).shape[1:]
    progress_path = folder / "progress.json"
    progress = json.loads(progress_path.read_text()) if progress_path.is_file() else {}
    for split, (labels, block_of) in splits.items():
        done = int(progress.get(split, 0))
        data = np.lib.format.open_memmap(folder / f"{split}.npy", mode="r+" if done else "w+", dtype=np.uint8,
                                         shape=(len(labels), *shape))
        np.save(folder / f"{split}-labels.npy", labels)
        for start in range(done, len(labels), chunk):
            block = block_of(start, start + chunk)
            if block.shape[1:] != shape:
                raise DatasetError(f"{what} differ in size ({block.shape[1:]} vs {shape})",
                                   "pass --resolution N to resize them to one size")
            data[start:start + len(block)] = block
            data.flush()
            progress[split] = start + len(block)
            write_json(progress_path, progress)
        del data
    # per-channel statistics of the training split, streamed chunk by chunk
    train = np.load(folder / "train.npy", mmap_mode="r")
    sums, n = np.zeros((2, shape[2]), dtype=np.float64), 0
    step = max(1, chunk // 8)  # small blocks: the float copies stay a few MB
    for start in range(0, len(train), step):
        block = train[start:start + step].astype(np.float32) / 255.0
        sums[0] += block.sum(axis=(0, 1, 2), dtype=np.float64)
        sums[1] += np.square(block).sum(axis=(0, 1, 2), dtype=np.float64)
        n += block.shape[0] * block.shape[1] * block.shape[2]
    mean = sums[0] / n
    std = np.sqrt(np.maximum(sums[1] / n - mean ** 2, 1e-12))
    write_json(folder / "meta.json", {"format": CACHE_FORMAT, **meta,
                                      "image_shape": [int(shape[2]), int(shape[0]), int(shape[1])],
                                      **{s: len(lab) for s, (lab, _) in splits.items()}, "mean": mean.tolist(),
                                      "std": std.tolist()})
    return folder


class _Split(torch.utils.data.Dataset):
    """One split of a cache as normalised float ``(C, H, W)`` tensors; the memmap opens lazily (per worker)."""

    def __init__(self, path: Path, labels: np.ndarray, mean, std):
        self.path, self.labels = path, labels
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self._data = None

    def __len__(self) -> int:
        return len(self.labels)

    def images(self) -> np.ndarray:
        if self._data is None:
            self._data = np.load(self.path, mmap_mode="r")
        return self._data

    def batch(self, idx) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(self.images()[np.sort(np.asarray(idx))])).permute(0, 3, 1, 2)
        return nchw((x.float() / 255.0 - self.mean) / self.std)

    def __getitem__(self, i: int):
        return self.batch([i])[0], int(self.labels[i])


class MappedImages:
    """Tensor-like view of a split's memory-mapped images: ``x[idx]`` (an index tensor, list or
    slice) reads and normalises just those images, ``len(x)`` and ``x.shape`` answer without
    reading any. What an :class:`~nasdistill.data.ImageDataset` built by
    :meth:`StreamingDataset.as_image_dataset` holds instead of an in-RAM tensor."""

    def __init__(self, split: _Split, image_shape: tuple[int, int, int], index: np.ndarray | None = None):
        self.split = split
        self.index = None if index is None else np.asarray(index, dtype=np.int64)  # rows of the split it shows
        self.shape = torch.Size((len(split) if index is None else len(self.index), *image_shape))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, idx) -> torch.Tensor:
        if isinstance(idx, slice):
            idx = range(*idx.indices(len(self)))
        idx = np.asarray(idx.cpu() if torch.is_tensor(idx) else idx, dtype=np.int64).reshape(-1)
        if self.index is not None:
            idx = self.index[idx]
        order = np.argsort(idx, kind="stable")  # read in file order, return in the order asked
        x = self.split.batch(idx[order]) if len(idx) else torch.zeros((0, *self.shape[1:]))
        out = torch.empty_like(x)
        out[torch.from_numpy(order)] = x
        return out

    def to(self, *_args, **_kwargs):
        raise DatasetError("this dataset is streamed from its cache and cannot be moved whole",
                           "index it (x[idx]) to read a batch, or pass it to train(), which reads one batch at a time")


class StreamingDataset:
    """A dataset read from its memory-mapped uint8 cache (see :func:`build_cache`)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        meta_path = self.folder / "meta.json"
        if not meta_path.is_file():
            raise DatasetError(f"{self.folder} is not a finished streaming cache", "build it with build_cache(root)")
        self.meta = json.loads(meta_path.read_text())
        self.classes = list(self.meta["classes"])
        self.fingerprint = self.meta["fingerprint"]
        self.image_shape = tuple(self.meta["image_shape"])
        self.mean, self.std = tuple(self.meta["mean"]), tuple(self.meta["std"])
        self.splits = {s: _Split(self.folder / f"{s}.npy", np.load(self.folder / f"{s}-labels.npy"), self.mean,
                                 self.std) for s in ("train", "test")}
        self._by_class = None

    @classmethod
    def build(cls, root, **kwargs) -> "StreamingDataset":
        return cls(build_cache(root, **kwargs))

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.splits["train"])

    def indices_by_class(self) -> list[np.ndarray]:
        if self._by_class is None:
            y = self.splits["train"].labels
            self._by_class = [np.flatnonzero(y == c) for c in range(self.num_classes)]
        return self._by_class

    def as_image_dataset(self, name: str | None = None, *, val_per_class: int | None = 0, seed: int = 0):
        """An :class:`~nasdistill.data.ImageDataset` whose ``x_train``/``x_val``/``x_test`` are
        :class:`MappedImages` (read per batch, never whole): every method distils it drawing its
        batches from the cache, and ``train()`` reads full-data training one mini-batch at a time.

        ``val_per_class`` images of each class are held out of the training split for validation
        (what search scores on), chosen as the in-RAM split chooses them (seeded by ``seed``; None:
        the in-RAM default, 10% of the smallest class); the statistics stay the whole training
        split's, as in RAM."""
        from ..errors import ConfigError
        from .dataset import ImageDataset, validation_holdout

        tr, te = self.splits["train"], self.splits["test"]
        if not (val_per_class is None or is_whole(val_per_class)):
            raise ConfigError(f"val_per_class must be an integer, got {val_per_class!r}", "pass e.g. 50, or 0")
        is_val, val_per_class = validation_holdout(tr.labels, self.num_classes, val_per_class, seed)
        train_rows, val_rows = np.flatnonzero(~is_val), np.flatnonzero(is_val)
        fp = f"stream-{self.fingerprint}" + (f"-val{val_per_class}-s{seed}" if val_per_class else "")
        return ImageDataset(
            name=name or self.meta.get("name") or f"imagefolder:{self.meta['root']}",
            x_train=MappedImages(tr, self.image_shape, train_rows if val_per_class else None),
            y_train=torch.from_numpy(tr.labels[train_rows]),
            x_val=MappedImages(tr, self.image_shape, val_rows) if val_per_class
            else torch.zeros((0, *self.image_shape)),
            y_val=torch.from_numpy(tr.labels[val_rows]), x_test=MappedImages(te, self.image_shape),
            y_test=torch.from_numpy(te.labels), classes=self.classes, mean=self.mean, std=self.std,
            fingerprint=fp,
            info={"source": "stream", "cache": str(self.folder), "resolution": self.meta.get("resolution"),
                  "val_per_class": val_per_class, "seed": seed if val_per_class else None})

    def class_batch(self, c: int, n: int, g: torch.Generator) -> torch.Tensor:
        """``n`` random training images of class ``c`` (normalised), read from the cache."""
        idx = self.indices_by_class()[c]
        pick = idx[torch.randperm(len(idx), generator=g)[:n].numpy()]
        return self.splits["train"].batch(pick)

    def loader(self, split: str = "train", *, batch_size: int = 256, workers: int = 0, shuffle: bool = True,
               seed: int = 0) -> torch.utils.data.DataLoader:
        """Batches ``(x, y)`` of ``split`` through a DataLoader (``workers`` processes, seeded shuffling)."""
        g = torch.Generator().manual_seed(seed)
        return torch.utils.data.DataLoader(self.splits[split], batch_size=batch_size, shuffle=shuffle, generator=g,
                                           num_workers=workers, persistent_workers=False)


def stream_train(model: torch.nn.Module, data: StreamingDataset, *, epochs: int = 1, batch_size: int = 256,
                 lr: float = 0.01, momentum: float = 0.9, weight_decay: float = 5e-4, workers: int = 0, seed: int = 0,
                 device: str = "cpu") -> list[float]:
    """Train ``model`` on ``data``'s training split over streamed epochs (SGD, cosine decay); return the losses."""
    import math

    from ..training.loop import soft_cross_entropy

    model.to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    total = epochs * math.ceil(len(data) / batch_size)
    losses, step = [], 0
    for epoch in range(epochs):
        for x, y in data.loader("train", batch_size=batch_size, workers=workers, seed=seed + epoch):
            for group in opt.param_groups:
                group["lr"] = 0.5 * (1 + math.cos(math.pi * step / total)) * lr
            loss = soft_cross_entropy(model(x.to(device)), y.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            step += 1
    return losses


@torch.no_grad()
def stream_evaluate(model: torch.nn.Module, data: StreamingDataset, *, split: str = "test", batch_size: int = 512,
                    workers: int = 0, device: str = "cpu") -> float:
    """Top-1 accuracy of ``model`` on a streamed split."""
    model.to(device).eval()
    right = n = 0
    for x, y in data.loader(split, batch_size=batch_size, workers=workers, shuffle=False):
        right += int((model(x.to(device)).argmax(1).cpu() == y).sum())
        n += len(y)
    return right / max(1, n)


__all__ = ["build_cache", "build_array_cache", "StreamingDataset", "MappedImages", "stream_train", "stream_evaluate", "CACHE_FORMAT"]
