"""Does the proxy rank architectures the way the full data does?

:class:`RankingValidator` samples architectures from a search space (seeded), trains each one on
the proxy and on the full training split from the same initial weights, scores both on the test
split and reports how well the two rankings agree (:func:`~nasdistill.validate.metrics.ranking_metrics`).
Full-data results go to a :class:`~nasdistill.validate.reference.ReferenceStore`, so validating
another proxy of the same data trains nothing on the full data.

Results are organised as one shared *reference* (the full-data scores) and *contenders* scored
against it; this release has one contender, the proxy.
"""

from __future__ import annotations

import csv
import io
import math
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .. import __version__
from .._io import to_jsonable, write_json, write_text
from ..data import ImageDataset, Proxy
from ..errors import ConfigError
from ..progress import progress_bar, resolve_disable
from ..spaces import SearchSpace, get_space
from ..training import TrainConfig, evaluate, train
from .metrics import check_k, ranking_metrics
from .reference import ReferenceKey, ReferenceResult, ReferenceStore, budget_key

#: DC's evaluation protocol for synthetic sets: 300 epochs, batch 256, SGD lr 0.01 (x0.1 at half), DSA
#: augmentation. A proxy of 10 images a class is 300 steps: about 2.5 min for DC's ConvNet on CPU with
#: MNIST (~200 images/s), 10 s with 8x8 digits; seconds on a GPU.
DEFAULT_PROXY_TRAIN = TrainConfig(epochs=300, batch_size=256, augment="dsa")
#: Full-data reference: 20 epochs, batch 256, SGD lr 0.01 with cosine decay, no augmentation; about
#: 4,300 steps on MNIST, 3,500 on CIFAR-10. The reference should approach each architecture's
#: plateau, so it is far costlier than the proxy: ~1.5 h for DC's ConvNet on CPU with MNIST (use a
#: per-class slice there, or pass a smaller budget), minutes on a GPU. It is paid once per
#: (dataset, architecture, budget, seed) thanks to the reference store.
DEFAULT_FULL_TRAIN = TrainConfig(epochs=20, batch_size=256, schedule="cosine")

RECORD_FIELDS = ("arch_id", "params", "proxy_acc", "full_acc", "proxy_time", "full_time", "reference_reused")


class RankingValidator:
    """Measure how faithfully a proxy ranks architectures, against full-data training.

    Constructor arguments are settings only (scikit-learn style); :meth:`fit` does the work.

    Args:
        space: search space name or instance (see :func:`nasdistill.spaces.get_space`).
        n_archs: architectures sampled (seeded) from the space; at least 3 for intervals, 10+ to be useful.
        seed: seeds the sample, each network's initial weights and both trainings' batches (it
            replaces the ``seed`` of ``proxy_train`` / ``full_train``), and the bootstrap.
        proxy_train: budget on the proxy; default :data:`DEFAULT_PROXY_TRAIN` (DC's protocol).
        full_train: budget on the full training split; default :data:`DEFAULT_FULL_TRAIN`.
        top_k: count(s) or fraction(s) in (0, 1] for ``spearman_top{k}`` and ``regret@{k}``.
        n_bootstrap: bootstrap resamples for the intervals (0: no intervals).
        confidence: level of the intervals.
        split: ``"test"`` or ``"val"``: the split both trainings are scored on.
        device: torch device for training.
        store: a :class:`ReferenceStore`, a URL or path, or None for the default store.
        progress: show a progress bar (None: the environment decides, see :mod:`nasdistill.progress`).

    Fitted attributes: ``archs_``, ``arch_ids_``, ``proxy_scores_``, ``full_scores_`` (arrays in
    sample order), ``metrics_``, ``records_`` (one dict per architecture), ``wall_time_``,
    ``n_reference_trained_``, ``n_reference_reused_``.
    """

    def __init__(self, space: str | SearchSpace = "convnet", n_archs: int = 12, seed: int = 0,
                 proxy_train: TrainConfig | None = None, full_train: TrainConfig | None = None,
                 top_k: int | float | Sequence[int | float] = 5, n_bootstrap: int = 1000, confidence: float = 0.95,
                 split: str = "test", device: str = "cpu", store: ReferenceStore | str | os.PathLike | None = None,
                 progress: bool | None = None):
        self.space = space
        self.n_archs = n_archs
        self.seed = seed
        self.proxy_train = proxy_train
        self.full_train = full_train
        self.top_k = top_k
        self.n_bootstrap = n_bootstrap
        self.confidence = confidence
        self.split = split
        self.device = device
        self.store = store
        self.progress = progress

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.endswith("_"))
        return f"RankingValidator({args})"

    # --- settings ----------------------------------------------------------------------------------
    def _top_k(self) -> tuple[int | float, ...]:
        ks = tuple(self.top_k) if isinstance(self.top_k, (list, tuple)) else (self.top_k,)
        return tuple(check_k(k, minimum=2) for k in ks)

    def _check(self, dataset: ImageDataset, proxy: Proxy) -> None:
        if not isinstance(self.n_archs, int) or self.n_archs < 2:
            raise ConfigError(f"n_archs must be an integer of at least 2, got {self.n_archs!r}",
                              "sample 10 or more architectures for a useful ranking")
        if self.split not in ("test", "val"):
            raise ConfigError(f"unknown split {self.split!r}", "use test or val")
        if self.split == "val" and len(dataset.y_val) == 0:
            raise ConfigError(f"{dataset.name} has no validation split", "use split='test' or hold out images")
        if not isinstance(self.n_bootstrap, int) or self.n_bootstrap < 0:
            raise ConfigError(f"n_bootstrap must be a non-negative integer, got {self.n_bootstrap!r}",
                              "pass e.g. 1000, or 0 for no intervals")
        if not 0 < self.confidence < 1:
            raise ConfigError(f"confidence must lie in (0, 1), got {self.confidence!r}", "pass e.g. 0.95")
        self._top_k()
        proxy.check_compatible(dataset)

    # --- fitting -----------------------------------------------------------------------------------
    def fit(self, dataset: ImageDataset, proxy: Proxy) -> "RankingValidator":
        """Train every sampled architecture on ``proxy`` and on ``dataset``'s training split; score the rankings."""
        self._check(dataset, proxy)
        t0 = time.perf_counter()
        space = get_space(self.space)
        own_store = not isinstance(self.store, ReferenceStore)
        store = ReferenceStore(self.store) if own_store else self.store
        self.proxy_train_ = (self.proxy_train or DEFAULT_PROXY_TRAIN).replace(seed=self.seed)
        self.full_train_ = (self.full_train or DEFAULT_FULL_TRAIN).replace(seed=self.seed)
        self.budget_key_ = budget_key(self.full_train_)
        self.space_name_ = space.name
        self.dataset_ = dataset.describe()
        self.proxy_meta_ = _proxy_summary(proxy)

        self.archs_ = space.sample(self.n_archs, self.seed)
        self.arch_ids_ = [space.arch_id(a) for a in self.archs_]
        self.n_reference_trained_ = 0
        self.n_reference_reused_ = 0
        self.records_: list[dict[str, Any]] = []
        bar = progress_bar(list(zip(self.archs_, self.arch_ids_)), desc="validate", unit="arch",
                           disable=resolve_disable(self.progress))
        try:
            for arch, aid in bar:
                bar.set_postfix_str(aid)
                proxy_acc, proxy_time = self._score_proxy(space, arch, dataset, proxy)
                ref, reused = self._reference(space, arch, aid, dataset, store)
                self.n_reference_reused_ += int(reused)
                self.n_reference_trained_ += int(not reused)
                self.records_.append({
                    "arch_id": aid, "arch": dict(arch), "params": ref.params,
                    "proxy_acc": proxy_acc, "full_acc": self._split_acc(ref),
                    "proxy_time": proxy_time, "full_time": ref.wall_time, "reference_reused": reused,
                })
        finally:
            bar.close()
            if own_store:
                store.close()
        self.proxy_scores_ = np.array([r["proxy_acc"] for r in self.records_], dtype=np.float64)
        self.full_scores_ = np.array([r["full_acc"] for r in self.records_], dtype=np.float64)
        self.metrics_ = ranking_metrics(self.proxy_scores_, self.full_scores_, top_k=self._top_k(),
                                        n_bootstrap=self.n_bootstrap, seed=self.seed, confidence=self.confidence)
        self.wall_time_ = time.perf_counter() - t0
        return self

    def _eval_split(self, dataset: ImageDataset) -> tuple[torch.Tensor, torch.Tensor]:
        return (dataset.x_test, dataset.y_test) if self.split == "test" else (dataset.x_val, dataset.y_val)

    def _split_acc(self, ref: ReferenceResult) -> float:
        # val_acc is stored whenever the dataset has a val split, and the fingerprint pins that split.
        return ref.test_acc if self.split == "test" else float(ref.val_acc)

    def _score_proxy(self, space: SearchSpace, arch: dict, dataset: ImageDataset,
                     proxy: Proxy) -> tuple[float, float]:
        """Accuracy on the evaluation split after training on the proxy, and the seconds it took."""
        t0 = time.perf_counter()
        model = space.build_seeded(arch, dataset.image_shape, dataset.num_classes, self.seed)
        train(model, proxy.images, proxy.labels, self.proxy_train_, device=self.device)
        acc = evaluate(model, *self._eval_split(dataset), device=self.device)
        return acc, time.perf_counter() - t0

    def _reference(self, space: SearchSpace, arch: dict, aid: str, dataset: ImageDataset,
                   store: ReferenceStore) -> tuple[ReferenceResult, bool]:
        """The full-data result for ``arch``: from the store if there, else trained now and stored."""
        key = ReferenceKey(dataset=dataset.fingerprint, space=space.name, arch_id=aid, budget=self.budget_key_,
                           seed=self.seed)
        found = store.get(key)
        if found is not None:
            return found, True
        t0 = time.perf_counter()
        model = space.build_seeded(arch, dataset.image_shape, dataset.num_classes, self.seed)
        train(model, dataset.x_train, dataset.y_train, self.full_train_, device=self.device)
        result = ReferenceResult(
            test_acc=evaluate(model, dataset.x_test, dataset.y_test, device=self.device),
            val_acc=evaluate(model, dataset.x_val, dataset.y_val, device=self.device) if len(dataset.y_val) else None,
            wall_time=time.perf_counter() - t0,
            params=sum(p.numel() for p in model.parameters()),
            budget=self.full_train_.budget(),
        )
        return store.put(key, result), False

    # --- reporting ---------------------------------------------------------------------------------
    def _fitted(self) -> None:
        if not hasattr(self, "metrics_"):
            raise ConfigError("RankingValidator is not fitted", "call fit(dataset, proxy) first")

    def to_dict(self) -> dict:
        """Settings, reference, contenders (here: the proxy) with their metrics, and per-architecture records."""
        self._fitted()
        return to_jsonable({
            "nasdistill_version": __version__,
            "settings": {
                "space": self.space_name_, "n_archs": self.n_archs, "seed": self.seed, "split": self.split,
                "top_k": list(self._top_k()), "n_bootstrap": self.n_bootstrap, "confidence": self.confidence,
                "proxy_train": self.proxy_train_.budget(), "full_train": self.full_train_.budget(),
            },
            "dataset": self.dataset_,
            "reference": {
                "budget_key": self.budget_key_,
                "n_trained": self.n_reference_trained_,
                "n_reused": self.n_reference_reused_,
                "scores": dict(zip(self.arch_ids_, self.full_scores_.tolist())),
            },
            "contenders": {
                "proxy": {
                    "proxy": self.proxy_meta_,
                    "scores": dict(zip(self.arch_ids_, self.proxy_scores_.tolist())),
                    "metrics": self.metrics_,
                },
            },
            "records": self.records_,
            "wall_time_s": round(self.wall_time_, 3),
        })

    def save(self, out_dir: str | os.PathLike) -> Path:
        """Write ``validation.json`` and ``validation.csv`` (one row per architecture) into ``out_dir``, atomically."""
        self._fitted()
        out = Path(out_dir)
        write_json(out / "validation.json", self.to_dict())
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=RECORD_FIELDS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.records_)
        write_text(out / "validation.csv", buf.getvalue())
        return out

    def summary(self) -> str:
        """A few human-readable lines: the agreement metrics with their intervals."""
        self._fitted()
        m = self.metrics_
        lines = [f"{m['n']} architectures; {self.n_reference_trained_} trained on the full data, "
                 f"{self.n_reference_reused_} reused from the reference store"]
        for name, value in m.items():
            if name.endswith("_ci") or name in ("n", "confidence", "n_bootstrap"):
                continue
            ci = m.get(f"{name}_ci")
            span = f"  [{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci is not None else ""
            lines.append(f"  {name:<18} {_fmt(value)}{span}")
        return "\n".join(lines)


def _fmt(v: float) -> str:
    return "nan" if v is None or math.isnan(v) else f"{v:.3f}"


def _proxy_summary(proxy: Proxy) -> dict:
    meta = proxy.meta
    return {"method": proxy.method, "key": proxy.key, "ipc": proxy.ipc, "images": len(proxy),
            "soft_labels": proxy.soft, "seed": meta.get("seed"), "settings": meta.get("settings", {})}
