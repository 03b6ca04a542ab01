"""Every entry point of nasdistill in one flat namespace, for AutoML code and notebooks (no CLI).

>>> from nasdistill.api import load_dataset, distill, get_space, ProxyEvaluator, OptunaSearch, validate
>>> ds = load_dataset("digits")
>>> proxy = distill(ds, "dm", ipc=10, iterations=200)                 # stored and reused
>>> evaluate = ProxyEvaluator(get_space("convnet"), proxy, ds, TrainConfig(steps=100))
>>> evaluate({"depth": 2, "width": 64, "act": "relu", "norm": "instancenorm", "pool": "avgpool"})
>>> result = validate([proxy], data=ds, space="convnet", baselines=["early-stop", "zero-cost"], n_archs=10)
>>> result.to_frame(); result.save("runs/v"); write_report("runs/v")

The package serves the same names lazily, so ``import nasdistill`` stays light (no torch) and
``nasdistill.load_dataset`` imports what it needs on first use. Two names differ there:
``nasdistill.distill`` and ``nasdistill.validate`` are the subpackages (they are never shadowed), so
the package offers their main functions as ``nasdistill.distill_proxy`` and
``nasdistill.validate_proxies`` (the same objects as ``nasdistill.api.distill`` / ``.validate``).

``NNISearch`` is imported on first use (NNI is the optional ``nni`` extra).
"""

from __future__ import annotations

from .data import ImageDataset, Proxy, dataset_names, load_dataset, load_proxy
from .distill import distill, get_method, method_names
from .errors import NasDistillError
from .pipeline import (DataSpec, RunConfig, compare_with_random, distill_step, report_step, retrain_top_archs, run,
                       search_step, validate_step)
from .report import load_run, write_report
from .search import OptunaSearch, ProxyEvaluator
from .spaces import CategoricalSpace, SearchSpace, get_space, space_names
from .training import TrainConfig, evaluate, fit_evaluate, train
from .validate import RankingValidator, Validation, ValidationResult, validate

#: ``nasdistill.validate_proxies``: :func:`nasdistill.validate.validate` under a name that does not
#: collide with the ``nasdistill.validate`` subpackage.
validate_proxies = validate
#: ``nasdistill.distill_proxy``: :func:`nasdistill.distill.distill`, likewise.
distill_proxy = distill

__all__ = [
    "load_dataset", "load_proxy", "dataset_names", "ImageDataset", "Proxy",
    "distill", "distill_proxy", "get_method", "method_names",
    "get_space", "space_names", "SearchSpace", "CategoricalSpace",
    "TrainConfig", "train", "evaluate", "fit_evaluate",
    "ProxyEvaluator", "OptunaSearch",
    "NNISearch",  # noqa: F822  (served by __getattr__ below: NNI is imported only when used)
    "validate", "validate_proxies", "Validation", "ValidationResult", "RankingValidator",
    "write_report", "load_run",
    "run", "RunConfig", "DataSpec", "distill_step", "search_step", "validate_step", "retrain_top_archs",
    "compare_with_random", "report_step",
    "NasDistillError",
]


def __getattr__(name: str):
    if name == "NNISearch":
        from .search.nni_backend import NNISearch

        return NNISearch
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
