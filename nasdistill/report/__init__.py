"""Reports of a run folder: ``report.md`` and a self-contained ``report.html``, with PNG figures.

>>> from nasdistill.report import write_report
>>> paths = write_report("runs/quickstart")     # {"md": ..., "html": ..., "scatter": ..., ...}

Also ``nasdistill report RUN_DIR``; ``nasdistill run`` and ``nasdistill validate`` write the report
themselves. What goes in (each part only when its files are there):

* the run's summary (``summary.json``);
* the contenders table (ρ with its interval, top-k ρ, τ, regret, cost per candidate, speed-up), their
  intervals and pairwise tests, the scatter of proxy score vs full-data accuracy
  (``report_scatter.png``) and the ρ bars with interval whiskers (``report_spearman.png``), from
  ``validation.json``;
* the search: best architecture, optimisation history (``report_history.png``, from ``trials.csv``
  or the Optuna study in ``study.db``), Pareto front, retrained top architectures;
* the proxy: its metadata and image grid (``proxy.png``, and the grids of other proxy contenders
  found in the proxy store);
* the sampled architectures with every contender's score.

Figures are drawn with matplotlib's Agg canvas: no display is needed, and the PNGs are readable on
their own.
"""

import importlib

__all__ = ["write_report", "load_run", "RunData", "build_document", "FIGURES"]

#: name -> the submodule it lives in, imported on first use (so ``nasdistill.report.notes`` imports no matplotlib).
_LAZY = {"write_report": "build", "build_document": "build", "FIGURES": "build", "load_run": "load", "RunData": "load"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
