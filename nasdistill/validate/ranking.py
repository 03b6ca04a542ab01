"""The single-proxy validator of earlier releases, kept as a thin wrapper over :class:`Validation`.

:class:`RankingValidator` validates one proxy: ``fit(dataset, proxy)`` runs
:class:`~nasdistill.validate.validation.Validation` with that proxy as its only contender and lays the
result out as before (arrays in sample order, ``metrics_``, ``records_``, a single-proxy
``validation.json``). It trains the same networks the same way and shares the results store, so a
proxy validated either way is never trained twice. The fitted ``result_`` is the full
:class:`~nasdistill.validate.result.ValidationResult` (``result_.save(out)`` writes the file reports read).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from .. import __version__
from .._io import to_jsonable
from .._params import Params
from ..data import ImageDataset, Proxy, as_dataset, as_proxy
from ..defaults import DEFAULT_N_ARCHS, DEFAULT_N_BOOTSTRAP, DEFAULT_SPACE
from ..errors import ConfigError
from ..spaces import SearchSpace
from ..training import TrainConfig
from .contenders import ProxyContender
from .reference import ReferenceStore, budget_key
from .validation import Validation

RECORD_FIELDS = ("arch_id", "params", "proxy_acc", "full_acc", "proxy_time", "full_time", "reference_reused")


class RankingValidator(Params):
    """Measure how faithfully a proxy ranks architectures, against full-data training.

    Constructor arguments are settings only (scikit-learn style); :meth:`fit` does the work.

    Args:
        space: search space name or instance (see :func:`nasdistill.spaces.get_space`).
        n_archs: architectures sampled (seeded) from the space; at least 3 for intervals, 10+ to be useful.
        seed: seeds the sample, each network's initial weights and both trainings' batches (it
            replaces the ``seed`` of ``proxy_train`` / ``full_train``), and the bootstrap.
        proxy_train: budget on the proxy; default :data:`~nasdistill.defaults.DEFAULT_PROXY_TRAIN` (DC's protocol).
        full_train: budget on the full training split; default :data:`~nasdistill.defaults.DEFAULT_FULL_TRAIN`.
        top_k: count(s) or fraction(s) in (0, 1] for ``spearman_top{k}`` and ``regret@{k}``.
        n_bootstrap: bootstrap resamples for the intervals (0: no intervals).
        confidence: level of the intervals.
        split: ``"test"`` or ``"val"``: the split both trainings are scored on.
        device: torch device for training.
        store: a :class:`ReferenceStore`, a URL or path, or None for the default store.
        progress: show a progress bar (None: the environment decides, see :mod:`nasdistill.progress`).

    Fitted attributes: ``archs_``, ``arch_ids_``, ``proxy_scores_``, ``full_scores_`` (arrays in
    sample order), ``metrics_``, ``records_`` (one dict per architecture), ``wall_time_``,
    ``n_reference_trained_``, ``n_reference_reused_``, ``result_`` (the :class:`ValidationResult`).
    """

    def __init__(self, space: str | SearchSpace = DEFAULT_SPACE, n_archs: int = DEFAULT_N_ARCHS, seed: int = 0,
                 proxy_train: TrainConfig | None = None, full_train: TrainConfig | None = None,
                 top_k: int | float | Sequence[int | float] = 5, n_bootstrap: int = DEFAULT_N_BOOTSTRAP,
                 confidence: float = 0.95, split: str = "test", device: str = "cpu",
                 store: ReferenceStore | str | os.PathLike | None = None, progress: bool | None = None):
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
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"RankingValidator({args})"

    def _top_k(self) -> tuple[int | float, ...]:
        return tuple(self.top_k) if isinstance(self.top_k, (list, tuple)) else (self.top_k,)

    def validation(self) -> Validation:
        """The :class:`Validation` these settings stand for (``regret@1`` and ``regret@k`` per ``top_k``)."""
        ks = self._top_k()
        return Validation(space=self.space, n_archs=self.n_archs, seed=self.seed, proxy_train=self.proxy_train,
                          full_train=self.full_train, top_k=ks, regret_k=(1, *[k for k in ks if k != 1]),
                          n_bootstrap=self.n_bootstrap, confidence=self.confidence, split=self.split,
                          device=self.device, store=self.store, progress=self.progress)

    # --- fitting -----------------------------------------------------------------------------------
    def fit(self, dataset: ImageDataset, proxy: Proxy) -> "RankingValidator":
        """Train every sampled architecture on ``proxy`` and on ``dataset``'s training split; score the rankings."""
        dataset = as_dataset(dataset, "RankingValidator.fit")
        proxy = as_proxy(proxy, "RankingValidator.fit")
        validation = self.validation()
        result = validation.run(dataset, [ProxyContender(proxy)])
        contender, ref = result.primary, result.reference
        self.result_ = result
        self.proxy_train_, self.full_train_ = validation.budgets()
        self.budget_key_ = budget_key(self.full_train_)
        self.space_name_ = result.settings["space"]
        self.dataset_ = result.dataset
        self.proxy_meta_ = _proxy_summary(proxy)
        self.archs_ = [a["arch"] for a in result.archs]
        self.arch_ids_ = result.arch_ids
        self.proxy_scores_ = np.asarray(contender.scores, dtype=np.float64)
        self.full_scores_ = np.asarray(ref["scores"], dtype=np.float64)
        self.n_reference_trained_ = int(ref["n_trained"])
        self.n_reference_reused_ = int(ref["n_reused"])
        self.records_ = [{
            "arch_id": aid, "arch": dict(a["arch"]), "params": a["params"], "proxy_acc": float(p),
            "full_acc": float(f), "proxy_time": float(pt), "full_time": float(ft), "reference_reused": bool(reused),
        } for aid, a, p, f, pt, ft, reused in zip(self.arch_ids_, result.archs, self.proxy_scores_, self.full_scores_,
                                                  contender.wall_times, ref["wall_times"], ref["reused"])]
        self.metrics_ = contender.metrics
        self.wall_time_ = result.wall_time
        return self

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
        """Write the validation (``validation.json``, ``validation.csv``, ``validation_archs.csv``) into
        ``out_dir``, atomically: the files of :meth:`ValidationResult.save`, which ``nasdistill report`` reads."""
        self._fitted()
        return self.result_.save(out_dir)

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


__all__ = ["RankingValidator", "RECORD_FIELDS"]
