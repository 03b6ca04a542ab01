"""Architecture search on a distilled proxy: candidates train on the proxy and are scored on real
held-out validation data.

* :class:`ProxyEvaluator`: ``evaluator(arch, report=None) -> accuracy``, usable from any loop;
* :class:`OptunaSearch`: a resumable Optuna study over a search space (TPE, random, grid, NSGA-II
  samplers; median and hyperband pruners over proxy-training epochs; several objectives with a
  Pareto front, see :mod:`nasdistill.search.objectives`), shared by worker processes
  (:mod:`nasdistill.search.workers`);
* :func:`make_storage`: an Optuna storage from a URL (SQLite, PostgreSQL, journal file);
* :func:`write_results`: the ``best_arch.json`` + ``trials.csv`` format every backend writes.
* :class:`NNISearch`: NNI 3.0 strategies (random, evolution, tpe, grid) in this process; needs the
  ``nni`` extra, imported only when used (``nasdistill.search.nni_backend``).
"""

from .objective import DEFAULT_TRAIN_CONFIG, ProxyEvaluator
from .optuna_backend import OptunaSearch
from .samplers import PRUNERS, SAMPLERS, make_pruner, make_sampler
from .storage import default_storage_url, make_storage, top_rows, trials_csv, write_pareto, write_results
from .objectives import OBJECTIVES, parse_objectives
from .workers import run_workers

__all__ = ["ProxyEvaluator", "DEFAULT_TRAIN_CONFIG", "OptunaSearch", "SAMPLERS", "PRUNERS", "make_sampler",
           "make_pruner", "make_storage", "default_storage_url", "write_results", "trials_csv", "write_pareto",
           "top_rows", "OBJECTIVES", "parse_objectives", "run_workers"]

#: Names served lazily from :mod:`nasdistill.search.nni_backend`, so importing this package never imports NNI.
_NNI_NAMES = {"NNISearch": "NNISearch", "NNI_STRATEGIES": "STRATEGIES"}


def __getattr__(name: str):
    if name in _NNI_NAMES:
        from . import nni_backend

        return getattr(nni_backend, _NNI_NAMES[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
