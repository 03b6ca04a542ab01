"""Score one architecture: train it on the proxy, measure accuracy on held-out real data.

:class:`ProxyEvaluator` is the objective of every search backend and can be called from any
loop (AutoML code, notebooks)::

    evaluator = ProxyEvaluator(get_space("convnet"), load_proxy("dm-10.safetensors"), load_dataset("cifar10"))
    acc = evaluator({"depth": 3, "width": 128, "act": "relu", "norm": "instancenorm", "pool": "avgpool"})
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import importlib
import importlib.util
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable, Mapping

from torch import nn

from .._params import as_whole
from ..data import ImageDataset, Proxy, as_dataset, as_proxy
from ..errors import ConfigError, ProxyError
from ..spaces import SearchSpace, get_space
from ..training import TrainConfig, evaluate, train

#: The tensors of a serialised evaluator (proxy and evaluation split), beside the job's JSON.
TENSORS_FILE = "evaluator.safetensors"

#: Proxy-training budget when none is given: DC's evaluation protocol (Zhao et al. 2021) of
#: 300 epochs, SGD lr 0.01 momentum 0.9, batch 256, lr x0.1 at half the budget, no augmentation.
DEFAULT_TRAIN_CONFIG = TrainConfig(epochs=300)

#: ``report(epoch, accuracy)`` -> True to stop training now (a pruner's decision).
ReportFn = Callable[[int, float], "bool | None"]

SPLITS = ("val", "test")


class ProxyEvaluator:
    """Train a candidate on ``proxy`` and return its top-1 accuracy on ``dataset``'s ``split``.

    Args:
        space: the search space (or its name) that builds architectures.
        proxy: the distilled training set (hard int labels (N,) or soft float labels (N, K)), or the
            path of its file.
        dataset: the real dataset the proxy was distilled from; only its ``val`` (default) or
            ``test`` split is used, to score candidates.
        train_config: proxy-training budget and optimiser (default :data:`DEFAULT_TRAIN_CONFIG`).
        split: ``"val"`` (search) or ``"test"`` (final reporting only; never search on it).
        device: torch device for training and evaluation.
        seed: seeds the initial weights and the batch order (it replaces ``train_config.seed``), so
            one architecture always gets the same score on CPU.
        check: raise :class:`ProxyError` unless the proxy was distilled from ``dataset``.
        report_every: evaluate and report every this many epochs when a ``report`` callback is
            given (default: about ten reports per run); the last epoch is always reported.
    """

    def __init__(self, space: SearchSpace | str, proxy: Proxy | str | os.PathLike, dataset: ImageDataset,
                 train_config: TrainConfig | None = None, *, split: str = "val", device: str = "cpu",
                 seed: int = 0, check: bool = True, report_every: int | None = None):
        if split not in SPLITS:
            raise ConfigError(f"unknown evaluation split {split!r}", "use 'val' (for search) or 'test'")
        proxy = as_proxy(proxy, "ProxyEvaluator")
        dataset = as_dataset(dataset, "ProxyEvaluator")
        if len(proxy) == 0:
            raise ProxyError("the proxy holds no images", "distil a proxy with at least one image per class")
        if check:
            proxy.check_compatible(dataset)
        self.space = get_space(space)
        self.space.check_input(dataset.image_shape)
        self.proxy = proxy
        self.dataset = dataset
        self.split = split
        self.device = device
        self.seed = as_whole(seed, "seed")
        self.train_config = _train_config(train_config).replace(seed=self.seed)
        self.x_eval, self.y_eval = ((dataset.x_val, dataset.y_val) if split == "val"
                                    else (dataset.x_test, dataset.y_test))
        if len(self.y_eval) == 0:
            raise ConfigError(f"{dataset.name} has an empty {split} split",
                              "load the dataset with val_per_class of at least 1")
        if report_every is not None and report_every < 1:
            raise ConfigError(f"report_every must be at least 1, got {report_every}", "pass a positive number")
        self.epochs = self._epochs()
        self.report_every = report_every or max(1, math.ceil(self.epochs / 10))
        self._proxy_digest: str | None = None

    def __sklearn_clone__(self) -> "ProxyEvaluator":
        """What ``sklearn.base.clone`` of a search holding this evaluator (a grid search over its
        settings clones it per fit) gets: an evaluator sharing this one's dataset and proxy, which
        are read, never written, instead of a deep copy of them (600 MB a clone for CIFAR-10)."""
        return copy.copy(self)

    def _epochs(self) -> int:
        """Epochs :func:`~nasdistill.training.train` runs for this budget on this proxy."""
        n = len(self.proxy)
        return math.ceil(self.train_config.total_steps(n) / self.train_config.steps_per_epoch(n))

    def build(self, arch: Mapping) -> nn.Module:
        """The candidate network with its seeded initial weights."""
        return self.space.build_seeded(arch, self.dataset.image_shape, self.dataset.num_classes, self.seed)

    def __call__(self, arch: Mapping, report: ReportFn | None = None) -> float:
        """Accuracy in [0, 1] of ``arch`` trained on the proxy.

        With ``report``, the accuracy is also measured every :attr:`report_every` epochs and at the
        last one, and passed to ``report(epoch, accuracy)``; when that returns True training stops
        and the accuracy at that epoch is returned (the caller decides what a stop means).
        """
        model = self.build(arch)
        last: dict[str, Any] = {}

        def on_epoch(epoch: int, m: nn.Module) -> bool:
            if epoch % self.report_every and epoch != self.epochs:
                return False
            last["epoch"], last["acc"] = epoch, self._score(m)
            return bool(report(epoch, last["acc"]))  # type: ignore[misc]

        log = train(model, self.proxy.images, self.proxy.labels, self.train_config, device=self.device,
                    callback=on_epoch if report is not None else None)
        if last.get("epoch") == log.epochs:
            return last["acc"]
        return self._score(model)

    def _score(self, model: nn.Module) -> float:
        # in the training's precision: a bf16 candidate is scored by its bf16 forward pass (as fast)
        return evaluate(model, self.x_eval, self.y_eval, device=self.device, precision=self.train_config.precision)

    def describe(self) -> dict:
        """What determines the scores (a study only mixes trials scored by equal descriptions)."""
        if self._proxy_digest is None:
            h = hashlib.blake2b(digest_size=12)
            for t in (self.proxy.images, self.proxy.labels):
                t = t.detach().cpu().contiguous()
                h.update(repr((str(t.dtype), tuple(t.shape))).encode())
                h.update(t.numpy().tobytes())
            self._proxy_digest = h.hexdigest()
        return {
            "space": self.space.name,
            "dataset": self.dataset.name,
            "dataset_fingerprint": self.dataset.fingerprint,
            "split": self.split,
            "proxy": self._proxy_digest,
            "train": self.train_config.budget(),
            "seed": self.seed,
        }

    # --- jobs: the evaluator in another process -------------------------------------------------
    def to_job(self, folder: str | os.PathLike) -> dict:
        """Serialise this evaluator for a worker process: its tensors (the proxy and the evaluation
        split) go to ``folder/evaluator.safetensors``; the rest is returned as a JSON-able dict for
        the job file. :meth:`from_job` rebuilds an equal evaluator without the full dataset."""
        from safetensors.torch import save_file

        spec = space_spec(self.space)
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        ds = self.dataset
        save_file({"proxy_images": self.proxy.images.contiguous(), "proxy_labels": self.proxy.labels.contiguous(),
                   "x_eval": self.x_eval.contiguous(), "y_eval": self.y_eval.contiguous()},
                  str(folder / TENSORS_FILE))
        return {
            "space": spec,
            "dataset": {"name": ds.name, "classes": ds.classes, "mean": ds.mean, "std": ds.std,
                        "fingerprint": ds.fingerprint, "info": ds.info},
            "proxy_meta": self.proxy.meta,
            "evaluator": {"split": self.split, "device": self.device, "seed": self.seed,
                          "report_every": self.report_every, "train": dataclasses.asdict(self.train_config)},
        }

    @classmethod
    def from_job(cls, folder: str | os.PathLike, job: Mapping) -> "ProxyEvaluator":
        """The evaluator :meth:`to_job` wrote into ``folder`` (``job``: the dict it returned)."""
        from safetensors.torch import load_file

        t = load_file(str(Path(folder) / TENSORS_FILE))
        d, e = job["dataset"], job["evaluator"]
        empty_x = t["x_eval"][:0]
        empty_y = t["y_eval"][:0]
        split = {"x_val": t["x_eval"], "y_val": t["y_eval"], "x_test": empty_x, "y_test": empty_y}
        if e["split"] == "test":
            split = {"x_val": empty_x, "y_val": empty_y, "x_test": t["x_eval"], "y_test": t["y_eval"]}
        dataset = ImageDataset(name=d["name"], x_train=empty_x, y_train=empty_y, **split,
                               classes=list(d["classes"]), mean=tuple(d["mean"]), std=tuple(d["std"]),
                               fingerprint=d["fingerprint"], info=d["info"])
        proxy = Proxy(t["proxy_images"], t["proxy_labels"], job["proxy_meta"])
        return cls(load_space(job["space"]), proxy, dataset, TrainConfig(**e["train"]), split=e["split"],
                   device=e["device"], seed=e["seed"], report_every=e["report_every"])

    def __repr__(self) -> str:
        return (f"ProxyEvaluator(space={self.space.name!r}, proxy={self.proxy!r}, dataset={self.dataset.name!r}, "
                f"split={self.split!r}, epochs={self.epochs}, seed={self.seed})")


def space_spec(space: SearchSpace | str) -> dict:
    """How a worker process finds ``space``: its name, its file, or an importable class."""
    if isinstance(space, str):
        p = Path(space).expanduser()
        return {"path": str(p.resolve())} if p.suffix == ".py" or p.is_file() else {"name": space}
    with contextlib.suppress(Exception):
        if get_space(space.name) is space:
            return {"name": space.name}
    cls = type(space)
    mod = sys.modules.get(cls.__module__)
    file = getattr(mod, "__file__", None)
    if cls.__module__.startswith("nasdistill_user_space_") and file:
        return {"path": str(Path(file).resolve())}
    if cls.__module__ != "__main__" and importlib.util.find_spec(cls.__module__) is not None:
        try:
            same = vars(cls()) == vars(space)
        except Exception:
            same = False
        if same:
            return {"class": f"{cls.__module__}:{cls.__qualname__}"}
    raise ConfigError(f"worker processes cannot rebuild the search space {space.name!r}",
                      "pass the space by name or file path, or make its class importable and argument-free")


def load_space(spec: Mapping) -> SearchSpace:
    """The space :func:`space_spec` describes."""
    if "class" in spec:
        module, _, qualname = spec["class"].partition(":")
        obj = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
        return obj()
    return get_space(spec.get("path") or spec["name"])


def _train_config(config: TrainConfig | Mapping | None) -> TrainConfig:
    """The evaluator's proxy-training budget: a :class:`TrainConfig`, a dict of its fields, or None (the default)."""
    if config is None:
        return DEFAULT_TRAIN_CONFIG
    if isinstance(config, TrainConfig):
        return config
    if isinstance(config, Mapping):
        unknown = sorted(set(config) - {f.name for f in dataclasses.fields(TrainConfig)})
        if unknown:
            raise ConfigError(f"unknown training settings {unknown}",
                              f"use some of {[f.name for f in dataclasses.fields(TrainConfig)]}")
        return TrainConfig(**config)
    raise ConfigError(f"train_config must be a TrainConfig or a dict of its settings, got {type(config).__name__}",
                      "pass e.g. TrainConfig(steps=300, augment='dsa')")


__all__ = ["ProxyEvaluator", "DEFAULT_TRAIN_CONFIG", "ReportFn", "space_spec", "load_space", "TENSORS_FILE"]
