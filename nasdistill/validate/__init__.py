"""Validate a proxy's ranking of architectures against full-data training.

>>> from nasdistill.validate import RankingValidator
>>> v = RankingValidator(n_archs=12, seed=0).fit(dataset, proxy)
>>> v.metrics_["spearman"], v.metrics_["spearman_ci"], v.metrics_["regret@1"]
>>> v.save("runs/validate")          # validation.json + validation.csv

Full-data results are kept in a :class:`ReferenceStore` (default ``$NASDISTILL_HOME/references.db``,
or any SQLAlchemy URL), so a second proxy of the same data is validated without full-data training.
"""

from .metrics import bootstrap_ci, kendall, ranking_metrics, regret_at_k, spearman, topk_spearman
from .reference import ReferenceKey, ReferenceResult, ReferenceStore, budget_key
from .validator import DEFAULT_FULL_TRAIN, DEFAULT_PROXY_TRAIN, RankingValidator

__all__ = [
    "RankingValidator", "DEFAULT_PROXY_TRAIN", "DEFAULT_FULL_TRAIN",
    "ReferenceStore", "ReferenceKey", "ReferenceResult", "budget_key",
    "spearman", "kendall", "topk_spearman", "regret_at_k", "bootstrap_ci", "ranking_metrics",
]
