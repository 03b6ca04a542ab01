"""The contract every search backend keeps, and the registry of backends.

A backend is a :class:`SearchBackend` subclass registered in :data:`BACKENDS` (the CLI's
``--backend`` choices, ``nasdistill list`` and :func:`nasdistill.pipeline.search_step` read it)::

    @register_backend("loop")
    class LoopSearch(SearchBackend):
        \"\"\"Score a seeded sample of the space, one architecture after the other.\"\"\"

        def search(self) -> SearchResult:
            space = self.space_()
            rows = [...]  # one dict per trial (see SearchResult.trials)
            return self.result(rows)

What a backend writes is the same for all: :meth:`SearchResult.export` writes ``best_arch.json``
and ``trials.csv`` (and ``pareto.*`` for several objectives, :mod:`nasdistill.search.results`).
Options beyond the common ones (``sampler``, ``pruner``, ``storage``, ``workers``...: see
:data:`OPTIONS`) are declared in :attr:`SearchBackend.takes`; :meth:`SearchBackend.check_options`
refuses the others in one line before any work.

The built-in backends (``optuna``, ``nni``) are registered by name and imported on first use, so
reading the registry imports neither Optuna nor NNI.
"""

from __future__ import annotations

import importlib
import inspect
import math
import numbers
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping, Sequence

from .._params import Params, as_whole, is_whole
from .._registry import Registry
from ..errors import ConfigError, NasDistillError
from .results import top_rows, write_pareto, write_results

if TYPE_CHECKING:
    from ..spaces import SearchSpace

#: Search options a backend may take beyond the common ones, each with the test of "given"
#: (a value other than its default), in the order :meth:`SearchBackend.check_options` checks them.
OPTIONS: dict[str, Callable[[Any], bool]] = {
    "strategy": lambda v: v is not None,
    "sampler": lambda v: v is not None,
    "pruner": lambda v: v not in (None, "none"),
    "storage": lambda v: v is not None,
    "workers": lambda v: v is not None and v > 1,
    "worker_index": lambda v: v is not None,
    "objectives": lambda v: _n_objectives(v) > 1,
}
#: The command-line flag of each option.
FLAGS = {name: "--" + name.replace("_", "-") for name in OPTIONS}


def _n_objectives(spec: Any) -> int:
    from .objectives import parse_objectives

    return len(parse_objectives(spec))


def objective_dicts(objectives: Sequence[Any]) -> list[dict]:
    """``{name, direction, unit}`` of each :class:`~nasdistill.search.objectives.Objective`."""
    return [{"name": o.name, "direction": o.direction, "unit": o.unit} for o in objectives]


ACCURACY = [{"name": "accuracy", "direction": "maximize", "unit": ""}]

#: A search whose trials fail this many times in a row (an evaluator returning NaN) stops with
#: :func:`failed_in_a_row`: Optuna retries failed trials (they do not count towards ``n_trials``),
#: so it would go on forever; NNI counts them, so it would spend the budget on nothing.
MAX_FAILED_IN_A_ROW = 5


def failed_in_a_row(study: str, n: int, arch_id: str, why: str) -> ConfigError:
    """The one-line error that stops a search after ``n`` failed trials in a row (the last one's
    architecture and reason named); the trials that completed are kept by both backends."""
    return ConfigError(f"study {study!r}: {n} trials in a row failed (the last, {arch_id}: {why}), so the search "
                       "stopped", "the evaluator must return a finite accuracy; the trials that completed are kept")


@dataclass
class SearchResult:
    """What a search found, in the form every backend shares.

    ``trials``: one dict per trial: ``number, state`` (COMPLETE, PRUNED, FAIL...), ``value``,
    ``arch_id``, ``arch``, ``params`` (what the backend sampled), ``duration_s``, ``reused``,
    ``reused_from`` and, with several objectives, ``objectives`` (the other objectives' values).
    ``best``: ``arch, arch_id, value, trial`` and ``values`` (objective name -> value) of the best
    trial, or None. ``objectives``: ``{name, direction, unit}`` in study order, accuracy first.
    ``pareto``: the Pareto front (several objectives), most accurate first. ``info``: the
    backend's entries of ``best_arch.json`` (``backend``, ``space``, ``evaluator``, ...).
    ``retrain``: the best architectures retrained on the full data, once a retraining step ran
    (:func:`nasdistill.pipeline.retrain_top_archs`).
    """

    study_name: str
    trials: list[dict]
    best: dict | None
    info: dict
    objectives: list[dict] = field(default_factory=lambda: list(ACCURACY))
    pareto: list[dict] | None = None
    retrain: list[dict] | None = None

    def top(self, k: int) -> list[Mapping[str, Any]]:
        """The ``k`` best distinct architectures (:func:`~nasdistill.search.results.top_rows`)."""
        return top_rows(self.trials, k)

    def export(self, out_dir: str | Path) -> dict:
        """Write ``best_arch.json`` and ``trials.csv`` (and for several objectives ``pareto.csv`` and
        ``pareto.json``) into ``out_dir`` (atomically); return their paths."""
        if self.best is None:
            raise NasDistillError(f"study {self.study_name!r} has no completed trial to export", "run more trials")
        extra = dict(self.info)
        several = len(self.objectives) > 1
        if several:
            extra.update(objectives=self.objectives, values=self.best.get("values"), pareto_size=len(self.pareto or []),
                         best_rule="the most accurate architecture of the Pareto front")
        best = {"arch": self.best["arch"], "arch_id": self.best["arch_id"], "value": self.best["value"],
                "trial": self.best["trial"], "metric": "val_accuracy"}
        if isinstance(extra.get("evaluator"), dict) and extra["evaluator"].get("split") == "test":
            best["metric"] = "test_accuracy"
        paths = write_results(out_dir, best=best, trials=self.trials, study_name=self.study_name, extra=extra)
        if several:
            paths.update(write_pareto(out_dir, front=self.pareto or [], objectives=self.objectives,
                                      study_name=self.study_name))
        return paths


class SearchBackend(Params, ABC):
    """A search of ``space`` for the architecture ``evaluator`` scores highest.

    Subclasses implement :meth:`search`, declare the options they take in :attr:`takes` (and
    their constructor's keyword arguments of the same names), and are registered with
    :func:`register_backend`. The constructor stores settings; :meth:`run` does the work and keeps
    its :class:`SearchResult` in ``result_``, whose parts are also ``trials_``, ``best_arch_``,
    ``best_id_``, ``best_value_``, ``best_trial_``, ``best_values_``, ``pareto_`` and ``retrain_``.

    Args:
        space: a :class:`SearchSpace` or its name.
        evaluator: ``evaluator(arch, report=None) -> float`` to maximise, usually a
            :class:`~nasdistill.search.ProxyEvaluator`.
        n_trials: trials wanted.
        seed: seeds the search.
        study_name: the name written into ``best_arch.json``.
        timeout: stop starting trials after this many seconds (None: no limit).
        progress: show a progress bar (None: ``NASDISTILL_PROGRESS`` / terminal decides).
    """

    #: The registry name (set by :func:`register_backend`).
    name: ClassVar[str] = ""
    #: The options of :data:`OPTIONS` this backend takes.
    takes: ClassVar[tuple[str, ...]] = ()

    def __init__(self, space: SearchSpace | str, evaluator: Callable[..., float], *, n_trials: int = 20,
                 seed: int = 0, study_name: str = "nasdistill", timeout: float | None = None,
                 progress: bool | None = None):
        self.space = space
        self.evaluator = evaluator
        self.n_trials = n_trials
        self.seed = seed
        self.study_name = study_name
        self.timeout = timeout
        self.progress = progress

    # --- the contract ------------------------------------------------------------------------------
    @abstractmethod
    def search(self) -> SearchResult:
        """Run the trials and return what they found (called by :meth:`run`)."""

    def run(self) -> "SearchBackend":
        """Run the search (:meth:`search`), keep its result in ``result_``; returns self."""
        n = self.n_trials
        if not is_whole(n) or n < 0:
            # 2.5 trials ran 3 in Optuna and tripped NNI's model count; True ran as 1
            raise ConfigError(f"n_trials must be an integer, 0 or more, got {n!r}", "pass a number of trials")
        self.n_trials = int(n)
        self.seed = as_whole(self.seed, "seed")  # a NumPy integer (a grid of settings) as the int it stands for
        t = self.timeout
        if t is not None and (isinstance(t, bool) or not isinstance(t, numbers.Real) or not math.isfinite(t) or t <= 0):
            raise ConfigError(f"timeout must be a positive number of seconds or None, got {t!r}",
                              "pass e.g. timeout=3600, or None for no limit")
        self.result_ = self.search()
        return self

    def export(self, out_dir: str | Path) -> dict:
        """Write the result files into ``out_dir`` (:meth:`SearchResult.export`); return their paths."""
        result = getattr(self, "result_", None)
        if result is None:
            raise ConfigError("the search has not run yet", "call run() before export()")
        if result.best is None:
            raise NasDistillError(*self.no_result())
        return result.export(out_dir)

    def no_result(self) -> tuple[str, str]:
        """(problem, fix) when the search has no completed trial to export."""
        return f"study {self.study_name!r} has no completed trial to export", "run more trials"

    def where(self) -> str:
        """How the search ran, for the one-line summary (``search: N trials <where>; best ...``)."""
        return f"with the {self.name} backend"

    def space_(self) -> SearchSpace:
        """The search space (resolved from its name)."""
        from ..spaces import get_space

        return get_space(self.space)

    def info(self) -> dict:
        """This backend's entries of ``best_arch.json``: ``backend``, ``space``, ``evaluator``."""
        describe = getattr(self.evaluator, "describe", None)
        return {"backend": self.name, "space": self.space_().name,
                "evaluator": describe() if callable(describe) else None}

    def result(self, trials: list[dict], *, info: dict | None = None) -> SearchResult:
        """The single-objective :class:`SearchResult` of ``trials`` (best: the most accurate
        COMPLETE trial, ties to the earliest)."""
        done = [t for t in trials if t["state"] == "COMPLETE"]
        best = max(done, key=lambda t: (t["value"], -t["number"])) if done else None
        return SearchResult(self.study_name, trials, None if best is None else {
            "arch": dict(best["arch"]), "arch_id": best["arch_id"], "value": best["value"],
            "trial": best["number"], "values": {"accuracy": best["value"]}}, self.info() if info is None else info)

    # --- results as attributes ---------------------------------------------------------------------
    def _part(self, get: Callable[[SearchResult], Any]) -> Any:
        result = self.__dict__.get("result_")
        if result is None:
            raise AttributeError("the search has not run yet; call run() first")
        return get(result)

    trials_ = property(lambda self: self._part(lambda r: r.trials), doc="SearchResult.trials")
    best_arch_ = property(lambda self: self._part(lambda r: r.best and r.best["arch"]), doc="the best architecture")
    best_id_ = property(lambda self: self._part(lambda r: r.best and r.best["arch_id"]), doc="its id")
    best_value_ = property(lambda self: self._part(lambda r: r.best and r.best["value"]), doc="its accuracy")
    best_trial_ = property(lambda self: self._part(lambda r: r.best and r.best["trial"]), doc="its trial number")
    best_values_ = property(lambda self: self._part(lambda r: r.best and r.best.get("values")),
                            doc="its objective values")
    pareto_ = property(lambda self: self._part(lambda r: r.pareto), doc="the Pareto front (several objectives)")
    retrain_ = property(lambda self: self._part(lambda r: r.retrain), doc="the retrained top (or None)")

    # --- options -------------------------------------------------------------------------------------
    @classmethod
    def check_options(cls, *, space: SearchSpace | str | None = None, **given: Any) -> None:
        """Fail with one line, before any work, on options (:data:`OPTIONS`) this backend cannot use,
        a backend that cannot run here (:meth:`check_ready`), or a grid over a space that is not
        finite and categorical."""
        for option, is_given in OPTIONS.items():
            if option in given and option not in cls.takes and is_given(given[option]):
                raise cls.refuse(option, given[option])
        cls.check_ready()
        if cls.grid(given) and space is not None:
            from ..spaces import CategoricalSpace, get_space

            if not isinstance(get_space(space), CategoricalSpace):
                raise ConfigError(f"grid search needs a finite categorical space, and {get_space(space).name!r} is "
                                  "not one", "use another sampler/strategy (random, tpe, evolution), or define the "
                                             "space as a CategoricalSpace")

    @classmethod
    def refuse(cls, option: str, value: Any) -> ConfigError:
        """The error for an ``option`` this backend does not take."""
        shown = FLAGS[option] if option in ("storage", "worker_index") else f"{FLAGS[option]} {value}"
        return ConfigError(f"{shown} does not work with --backend {cls.name}", f"drop {FLAGS[option]}")

    @classmethod
    def check_ready(cls) -> None:
        """Raise a one-line :class:`~nasdistill.errors.NasDistillError` when this backend cannot run
        here (a missing optional dependency); nothing by default."""
        return None

    @classmethod
    def grid(cls, given: Mapping[str, Any]) -> bool:
        """Whether these options make a grid search (which needs a finite categorical space)."""
        return False

    @classmethod
    def from_options(cls, space: SearchSpace | str, evaluator: Callable[..., float], *, out_dir: Path,
                     n_trials: int, seed: int, study_name: str, progress: bool | None,
                     **options: Any) -> "SearchBackend":
        """The backend as :func:`~nasdistill.pipeline.search_step` makes it: the common settings, the
        options it takes (others are dropped: :meth:`check_options` refused the given ones), and
        ``out_dir``, the folder its results go to."""
        return cls(space, evaluator, n_trials=n_trials, seed=seed, study_name=study_name, progress=progress,
                   **{k: v for k, v in options.items() if k in cls.takes})

    @classmethod
    def choices(cls) -> list[tuple[str, str]]:
        """(name, summary) of what ``nasdistill list samplers`` shows for this backend."""
        return []

    #: How ``nasdistill list samplers`` says to pick one of :meth:`choices`.
    choice_flag: ClassVar[str] = ""

    def __repr__(self) -> str:
        space = self.space if isinstance(self.space, str) else getattr(self.space, "name", self.space)
        return f"{type(self).__name__}(space={space!r}, n_trials={self.n_trials}, seed={self.seed})" + self._found()

    def _found(self) -> str:
        """What a fitted search found, for its ``repr`` (empty before :meth:`run`)."""
        result = getattr(self, "result_", None)
        if result is None or result.best is None:
            return ""
        return f"  # {len(result.trials)} trials, best {result.best['arch_id']} ({result.best['value']:.4f})"


#: name -> backend class, or ``"module:Class"`` for a built-in imported on first use.
BACKENDS: Registry[type[SearchBackend] | str] = Registry("search backend")
BACKENDS.register("optuna", "nasdistill.search.optuna_backend:OptunaSearch")
BACKENDS.register("nni", "nasdistill.search.nni_backend:NNISearch")


def register_backend(name: str) -> Callable[[type[SearchBackend]], type[SearchBackend]]:
    """Class decorator: register a :class:`SearchBackend` as ``name`` (and set its ``name``)."""
    def add(cls: type[SearchBackend]) -> type[SearchBackend]:
        if not (isinstance(cls, type) and issubclass(cls, SearchBackend)):
            raise TypeError(f"{cls!r} is not a SearchBackend subclass")
        lazy = BACKENDS._items.get(name.lower())
        cls.name = name.lower()
        BACKENDS.register(name, cls, overwrite=lazy == f"{cls.__module__}:{cls.__qualname__}")
        return cls
    return add


def backend_class(name: str) -> type[SearchBackend]:
    """The backend registered as ``name`` (imported if it is a built-in not yet loaded)."""
    entry = BACKENDS.get(name)
    if isinstance(entry, str):
        module, _, qualname = entry.partition(":")
        importlib.import_module(module)  # its @register_backend replaces the entry with the class
        entry = BACKENDS.get(name)
        if isinstance(entry, str):
            raise ConfigError(f"search backend {name!r} did not register itself from {module}",
                              "decorate the class with @register_backend")
    return entry


def accepts_report(fn: Callable) -> bool:
    """Whether ``fn`` takes a ``report`` keyword (or ``**kwargs``): pruners and intermediate results need it."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "report" in params or any(p.kind == p.VAR_KEYWORD for p in params.values())


__all__ = ["SearchBackend", "SearchResult", "BACKENDS", "register_backend", "backend_class", "accepts_report",
           "OPTIONS", "FLAGS"]
