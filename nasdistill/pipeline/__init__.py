"""distil -> search -> validate, as plain functions the CLI (and AutoML code) call.

Each step takes objects and settings, writes its outputs atomically under an output folder and
returns the fitted objects, so a pipeline can run one step, several, or all (:func:`run`). One
module per step: :mod:`.data` (which data, which device), :mod:`.distill` (proxies, teachers,
expert trajectories), :mod:`.target` (distil to a fidelity target), :mod:`.compare` (proxy vs a
random subset), :mod:`.search`, :mod:`.validate`, :mod:`.report`, :mod:`.runner` (``nasdistill
run``) and :mod:`.summary` (what runs print).
"""

from __future__ import annotations

from .compare import compare_with_random
from .data import STREAMABLE, DataSpec, resolve_device
from .distill import distill_step, expert_methods, experts_step, make_teacher, method_settings, relabel_step
from .log import Log, quiet
from .report import report_step
from .runner import RunConfig, run
from .search import SEARCH_BACKENDS, check_backend, retrain_top_archs, search_step
from .summary import SMALL_SPEEDUP, proxy_note, search_summary, speedup_note, summary_table, validation_summary
from .target import target_step
from .validate import validate_step

__all__ = ["Log", "quiet", "resolve_device", "DataSpec", "STREAMABLE", "method_settings", "distill_step", "make_teacher",
           "relabel_step", "expert_methods", "experts_step", "target_step", "compare_with_random", "SEARCH_BACKENDS",
           "check_backend", "search_step", "retrain_top_archs", "validate_step", "report_step", "RunConfig", "run",
           "SMALL_SPEEDUP", "proxy_note", "speedup_note", "summary_table", "search_summary", "validation_summary"]
