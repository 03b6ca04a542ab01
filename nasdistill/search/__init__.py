"""Architecture search on a distilled proxy: candidates train on the proxy and are scored on real
held-out validation data.

* :class:`ProxyEvaluator`: ``evaluator(arch, report=None) -> accuracy``, usable from any loop;
* :class:`OptunaSearch`: a resumable Optuna study over a search space (TPE, random, grid samplers;
  median and hyperband pruners over proxy-training epochs);
* :func:`make_storage`: an Optuna storage from a URL (SQLite, PostgreSQL, journal file);
* :func:`write_results`: the ``best_arch.json`` + ``trials.csv`` format every backend writes.
"""

from .objective import DEFAULT_TRAIN_CONFIG, ProxyEvaluator
from .optuna_backend import OptunaSearch
from .samplers import PRUNERS, SAMPLERS, make_pruner, make_sampler
from .storage import default_storage_url, make_storage, trials_csv, write_results

__all__ = ["ProxyEvaluator", "DEFAULT_TRAIN_CONFIG", "OptunaSearch", "SAMPLERS", "PRUNERS", "make_sampler",
           "make_pruner", "make_storage", "default_storage_url", "write_results", "trials_csv"]
