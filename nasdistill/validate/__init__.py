"""Validate proxies' rankings of architectures against full-data training, side by side with the alternatives.

>>> from nasdistill.validate import validate
>>> result = validate([proxy_a, proxy_b], data=dataset, space="convnet",
...                   baselines=["early-stop", "zero-cost"], n_archs=20, seed=0)
>>> result.to_frame()                 # one row per contender: Spearman (all, top-k), Kendall, regret, costs
>>> result.pair("dm-ipc10", "early-stop")["prob_a_better"]
>>> result.save("runs/validate")      # validation.json (schema: nasdistill.validate.result), .csv files

The single-proxy API of earlier releases is kept (a thin wrapper over :class:`Validation`):

>>> from nasdistill.validate import RankingValidator
>>> v = RankingValidator(n_archs=12, seed=0).fit(dataset, proxy)
>>> v.metrics_["spearman"], v.metrics_["spearman_ci"], v.metrics_["regret@1"]

Full-data results are kept in a :class:`ReferenceStore` (default ``$NASDISTILL_HOME/references.db``,
or any SQLAlchemy URL), so a second proxy of the same data is validated without full-data training,
and several processes sharing the store split the work (:mod:`nasdistill.work`).
The default budgets and sizes (``DEFAULT_PROXY_TRAIN``, ``DEFAULT_FULL_TRAIN``, ``DEFAULT_TOP_K``...)
live in :mod:`nasdistill.defaults`, which the command line reads too.

Modules: ``validation`` (:class:`Validation`, :func:`validate`, :func:`train_reference`), ``ranking``
(:class:`RankingValidator`), ``contenders``, ``result``, ``reference`` (the results store), ``table``,
``metrics``, ``costs``, ``zerocost``; work sharing lives in :mod:`nasdistill.work`.
"""

from ..work import DEFAULT_LEASE_S, worker_id
from .contenders import (BASELINES, Context, Contender, EarlyStopContender, ProxyContender, ZeroCostContender,
                         baseline_contenders)
from .costs import early_stop_config, samples_seen, train_flops_per_sample
from .metrics import (bootstrap_ci, kendall, paired_bootstrap, paired_bootstrap_all, ranking_metrics, regret_at_k,
                      spearman, topk_spearman)
from .reference import ReferenceKey, ReferenceResult, ReferenceStore, ScoreKey, StoredScore, budget_key
from .result import ContenderResult, ValidationResult
from .table import ReferenceTable, reference_jobs
from ..defaults import DEFAULT_FULL_TRAIN, DEFAULT_PROXY_TRAIN, DEFAULT_REGRET_K, DEFAULT_TOP_K
from .ranking import RankingValidator
from .validation import Validation, prefetch_references, train_reference, validate
from .zerocost import ZERO_COST, gradnorm, naswot, synflow

__all__ = [
    "validate", "Validation", "ValidationResult", "ContenderResult", "DEFAULT_TOP_K", "DEFAULT_REGRET_K",
    "Contender", "Context", "ProxyContender", "EarlyStopContender", "ZeroCostContender", "BASELINES",
    "baseline_contenders", "train_reference", "prefetch_references",
    "RankingValidator", "DEFAULT_PROXY_TRAIN", "DEFAULT_FULL_TRAIN",
    "ReferenceTable", "reference_jobs",
    "ReferenceStore", "ReferenceKey", "ReferenceResult", "ScoreKey", "StoredScore", "budget_key",
    "DEFAULT_LEASE_S", "worker_id",
    "samples_seen", "train_flops_per_sample", "early_stop_config",
    "ZERO_COST", "synflow", "naswot", "gradnorm",
    "spearman", "kendall", "topk_spearman", "regret_at_k", "bootstrap_ci", "ranking_metrics", "paired_bootstrap",
    "paired_bootstrap_all",
]
