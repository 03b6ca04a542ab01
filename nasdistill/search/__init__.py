"""Architecture search on a distilled proxy: candidates train on the proxy and are scored on real
held-out validation data.

* :class:`ProxyEvaluator` (:mod:`~nasdistill.search.evaluator`): ``evaluator(arch, report=None) ->
  accuracy``, usable from any loop;
* :class:`SearchBackend`, :class:`SearchResult` and :data:`BACKENDS`
  (:mod:`~nasdistill.search.backend`): the contract every backend keeps and the registry of backends;
* :class:`OptunaSearch` (:mod:`~nasdistill.search.optuna_backend`): a resumable Optuna study over a
  search space (TPE, random, grid, NSGA-II samplers; median and hyperband pruners over
  proxy-training epochs; several objectives with a Pareto front, see
  :mod:`nasdistill.search.objectives`), shared by worker processes (:mod:`nasdistill.search.workers`);
* :func:`make_storage` (:mod:`~nasdistill.search.storage`): an Optuna storage from a URL (SQLite,
  PostgreSQL, journal file);
* :func:`write_results` (:mod:`~nasdistill.search.results`): the ``best_arch.json`` + ``trials.csv``
  format every backend writes.
* :class:`NNISearch` (:mod:`~nasdistill.search.nni_backend`): NNI 3.0 strategies (random, evolution,
  tpe, grid) in this process; needs the ``nni`` extra, imported only when a search is made.

Names are served lazily: ``import nasdistill.search`` (or reading :data:`BACKENDS`) imports neither
torch, Optuna nor NNI until a name that needs them is used.
"""

from __future__ import annotations

import importlib

#: name -> the module (of this package) that defines it.
_NAMES = {
    "ProxyEvaluator": "evaluator", "DEFAULT_TRAIN_CONFIG": "evaluator",
    "SearchBackend": "backend", "SearchResult": "backend", "BACKENDS": "backend", "register_backend": "backend",
    "backend_class": "backend",
    "OptunaSearch": "optuna_backend",
    "SAMPLERS": "samplers", "PRUNERS": "samplers", "make_sampler": "samplers", "make_pruner": "samplers",
    "make_storage": "storage", "default_storage_url": "storage",
    "write_results": "results", "trials_csv": "results", "write_pareto": "results", "top_rows": "results",
    "OBJECTIVES": "objectives", "parse_objectives": "objectives",
    "run_workers": "workers",
    "NNISearch": "nni_backend", "NNI_STRATEGIES": "nni_backend",
}
#: Names whose object has another name in its module.
_RENAMED = {"NNI_STRATEGIES": "STRATEGIES"}

__all__ = ["ProxyEvaluator", "DEFAULT_TRAIN_CONFIG", "SearchBackend", "SearchResult", "BACKENDS",
           "register_backend", "backend_class", "OptunaSearch", "SAMPLERS", "PRUNERS", "make_sampler",
           "make_pruner", "make_storage", "default_storage_url", "write_results", "trials_csv", "write_pareto",
           "top_rows", "OBJECTIVES", "parse_objectives", "run_workers"]


def __getattr__(name: str):
    if name in _NAMES:
        module = importlib.import_module(f"{__name__}.{_NAMES[name]}")
        return getattr(module, _RENAMED.get(name, name))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_NAMES))
