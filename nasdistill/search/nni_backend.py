"""Architecture search with NNI 3.0's multi-trial strategies, in this process, on the proxy.

>>> search = NNISearch(space, ProxyEvaluator(space, proxy, dataset), n_trials=50, strategy="evolution").run()
>>> search.best_arch_, search.best_value_
>>> search.export("runs/cifar")          # best_arch.json + trials.csv, as the Optuna backend writes them

How the search runs:

* **Model space.** NNI sees a thin ``ModelSpace`` holding one ``nni.choice(name, values)`` per
  entry of ``space.dimensions()`` (the flat categorical view every space can give); nothing else
  of the space is translated. A trial's frozen model carries the sampled values
  (``model.values``), which ``space.from_values`` turns back into our architecture dict.
* **Objective.** A ``FunctionalEvaluator`` calls the same ``evaluator(arch)`` as the Optuna backend
  (usually a :class:`~nasdistill.search.ProxyEvaluator`) and reports it with
  ``nni.report_final_result``. An architecture already scored in this run (two samples of a
  conditional space can describe one network) is not trained again: its value is reused.
* **In-process, nothing listening, nothing written.** Strategies are driven the way NNI documents
  for a strategy on its own, ``strategy(model_space, engine)``, with NNI's
  ``SequentialExecutionEngine`` (what ``NasExperimentConfig('sequential', 'simplified')`` selects)
  and its ``'simplified'`` model format (``GridSearch`` yields empty samples with ``'raw'``). No
  ``NasExperiment`` is made: even with the sequential engine and ``experiment_working_directory``
  set, an experiment writes ``~/nni-experiments/.experiment`` (a path NNI fixes from ``HOME`` when
  it is imported) and ``~/.config/nni/training_services.json``, a checkpoint and a log under its
  working directory, and registers an ``atexit`` hook; its default ``'ts'`` engine would also start
  NNI's node server on port 8080 on all interfaces. Here NNI starts no process, opens no socket and
  writes no file unless ``workdir`` is given, and then only its log, ``workdir/nni.log``.
* **Quiet.** While the search runs, NNI's console messages below ERROR are held back (they go to
  ``workdir/nni.log`` when there is one) and warnings raised inside NNI are ignored; both are
  restored afterwards. The torch ``Buffer`` RuntimeWarning NNI gives on import is suppressed. A
  search that ends short of ``n_trials`` because the strategy found no unseen sample to propose
  says so on this module's logger.
* **Seeds.** Every strategy gets a seed derived from ``seed`` (random sampling, mutation and
  tournament draws, grid order, TPE), and the sequential engine adds no randomness, so a run is
  reproducible on CPU given a deterministic evaluator. The weights and batch order of each
  candidate are the evaluator's business (ProxyEvaluator seeds them).

Differences from the Optuna backend: results live in memory only (no storage, so a run cannot be
resumed or shared by workers; export them with :meth:`NNISearch.export`), and there is no pruning.

NNI is an optional extra (``pip install "nasdistill[nni]"``); this module imports it only when a
search is made.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from .._io import to_jsonable
from .._registry import Registry
from .._seed import derive_seed
from ..errors import ConfigError
from ..progress import progress_bar, resolve_disable
from ..spaces import SearchSpace, get_space
from .backend import MAX_FAILED_IN_A_ROW, SearchBackend, SearchResult, accepts_report, failed_in_a_row, register_backend

_log = logging.getLogger(__name__)

#: The strategy when none is named.
DEFAULT_STRATEGY = "evolution"
#: The line shown when NNI (or a package it imports) is missing.
INSTALL_HINT = 'pip install "nasdistill[nni]"'


# --- NNI, imported on demand ---------------------------------------------------------------------
def import_nni() -> Any:
    """Import the parts of NNI this backend uses; :class:`ConfigError` (one line) when it is missing.

    Returns the ``nni`` module. NNI's import-time RuntimeWarning about ``torch.nn.parameter.Buffer``
    (harmless with torch 2.13+) is suppressed.
    """
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is found to be not a nn.Module", category=RuntimeWarning)
            import nni
            import nni.nas.evaluator  # noqa: F401
            import nni.nas.execution  # noqa: F401
            import nni.nas.nn.pytorch  # noqa: F401
            import nni.nas.space  # noqa: F401
            import nni.nas.strategy  # noqa: F401
    except ImportError as e:
        missing = f" (cannot import {e.name})" if e.name and e.name.split(".")[0] != "nni" else ""
        raise ConfigError(f"the NNI backend needs NNI{missing}", INSTALL_HINT) from e
    return nni


@functools.cache
def _flat_space_class() -> type:
    """The NNI ``ModelSpace`` made of one ``nni.choice`` per dimension (defined once NNI is imported)."""
    nni = import_nni()
    from nni.mutable import ensure_frozen
    from nni.nas.nn.pytorch import ModelSpace
    from nni.nas.space import model_context

    class FlatChoiceSpace(ModelSpace):
        """``choices``: label -> NNI choices. ``values`` holds the sampled choice of every label
        (NNI's dry-run default in the space itself, the strategy's sample in a frozen model)."""

        def __init__(self, choices: dict):
            super().__init__()
            self.choices = choices
            self.values = {label: ensure_frozen(self.add_mutable(nni.choice(label, list(options))))
                           for label, options in choices.items()}

        def freeze(self, sample: Mapping[str, Any]) -> "FlatChoiceSpace":
            # NNI's documented recipe for a space with add_mutable(): rebuild it inside model_context.
            with model_context(sample):
                return FlatChoiceSpace(self.choices)

        def forward(self, x):  # a description of the space, not a network
            raise TypeError("FlatChoiceSpace describes a search space; build networks with the SearchSpace")

    return FlatChoiceSpace


# --- strategies -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class StrategyContext:
    """What a strategy factory may size itself by."""

    seed: int  #: a 32-bit seed derived from the search's seed and the strategy name
    n_trials: int  #: trials the search will run at most
    n_dims: int  #: number of categorical dimensions of the space


#: ``(context, **options) -> nni.nas.strategy.Strategy``; a factory's keyword arguments are the
#: options users may pass (``NNISearch(..., population_size=20)``).
StrategyFactory = Callable[..., Any]
STRATEGIES: Registry[StrategyFactory] = Registry("NNI strategy")


@STRATEGIES.register("random")
def random_strategy(ctx: StrategyContext) -> Any:
    """Uniform sampling that never proposes the same sample twice (NNI's ``Random(dedup=True)``)."""
    from nni.nas.strategy import Random

    return Random(dedup=True, seed=ctx.seed)


@STRATEGIES.register("evolution")
def evolution_strategy(ctx: StrategyContext, *, population_size: int | None = None, sample_size: int | None = None,
                       mutation_prob: float | None = None, crossover: bool = False) -> Any:
    """Regularized (aging) evolution, Real et al. 2019 (NNI's ``RegularizedEvolution``, no repeats).

    NNI's defaults (population 100, tournament 25, mutation 0.05 a dimension) suit thousands of
    trials; with a few dozen the whole run would be the random initial population. Defaults here:
    population ``n_trials // 3`` clipped to [2, 100] (so about two thirds of the trials are
    children), tournament a quarter of the population (at least 2, NNI's ratio), and a mutation
    probability of ``1 / n_dims`` a dimension (one change per child on average, as in the paper).
    """
    from nni.nas.strategy import RegularizedEvolution

    population = population_size if population_size is not None else min(100, max(2, ctx.n_trials // 3))
    tournament = sample_size if sample_size is not None else min(population, max(2, population // 4))
    prob = mutation_prob if mutation_prob is not None else 1.0 / max(1, ctx.n_dims)
    if not 1 <= tournament <= population:
        raise ConfigError(f"evolution needs 1 <= sample_size <= population_size, got {tournament} and {population}",
                          "pass a smaller sample_size or a larger population_size")
    if not 0.0 < prob <= 1.0:
        raise ConfigError(f"mutation_prob must be in (0, 1], got {prob}", "pass a probability per dimension")
    return RegularizedEvolution(population_size=int(population), sample_size=int(tournament),
                                mutation_prob=float(prob), crossover=bool(crossover), dedup=True, seed=ctx.seed)


@STRATEGIES.register("tpe")
def tpe_strategy(ctx: StrategyContext, *, tpe_args: Mapping[str, Any] | None = None) -> Any:
    """NNI's TPE tuner, maximising. NNI's strategy loop sleeps 1 s after every trial (it polls for
    idle workers), so each trial costs about a second more than with the other strategies."""
    from nni.nas.strategy import TPE

    return TPE(optimize_mode="maximize", seed=ctx.seed, tpe_args=dict(tpe_args) if tpe_args else None)


@STRATEGIES.register("grid")
def grid_strategy(ctx: StrategyContext, *, shuffle: bool = True) -> Any:
    """Every combination of the dimensions once, in a seeded shuffled order (NNI's ``GridSearch``;
    it needs NNI's ``'simplified'`` model format, which this backend always uses)."""
    from nni.nas.strategy import GridSearch

    return GridSearch(shuffle=bool(shuffle), seed=ctx.seed)


def make_strategy(name: str, ctx: StrategyContext, options: Mapping[str, Any]) -> Any:
    """The NNI strategy registered as ``name``, built with ``options`` (checked against its factory)."""
    factory = STRATEGIES.get(name)
    try:
        inspect.signature(factory).bind(ctx, **options)
    except TypeError:
        accepted = [p for p in inspect.signature(factory).parameters.values() if p.kind == p.KEYWORD_ONLY]
        raise ConfigError(f"NNI strategy {name!r} does not take {', '.join(sorted(options))}",
                          f"its options are: {', '.join(p.name for p in accepted) or 'none'}") from None
    return factory(ctx, **options)


# --- the search -------------------------------------------------------------------------------------
@register_backend("nni")
class NNISearch(SearchBackend):
    """Search ``space`` for the architecture that ``evaluator`` scores highest, with an NNI strategy.

    Args:
        space: a :class:`SearchSpace` (with :meth:`~SearchSpace.dimensions`) or its name.
        evaluator: ``evaluator(arch) -> float`` to maximise, usually a
            :class:`~nasdistill.search.ProxyEvaluator`.
        n_trials: trials to run, at most the number of distinct samples (the product of the
            dimensions' sizes). Evolution and random search may stop earlier on a small space, when
            NNI finds no unseen sample to propose.
        strategy: a name from :data:`STRATEGIES`: ``random``, ``evolution``, ``tpe``, ``grid``.
        seed: seeds the strategy (see the module docstring).
        workdir: where NNI's log goes (``workdir/nni.log``); None writes nothing.
        progress: show a progress bar (None: ``NASDISTILL_PROGRESS`` / terminal decides).
        study_name: the name written into ``best_arch.json`` (as the Optuna backend's study name).
        timeout: stop starting trials once the trials so far took this many seconds (None: no limit).
        report_intermediate: also pass the evaluator a ``report`` callback whose accuracies go to
            ``nni.report_intermediate_result``. Off by default: no strategy here uses them, and
            ProxyEvaluator measures validation accuracy for every report.
        **strategy_options: options of the strategy's factory, e.g. ``population_size``,
            ``sample_size``, ``mutation_prob``, ``crossover`` for ``evolution``; ``shuffle`` for
            ``grid``; ``tpe_args`` for ``tpe``.

    Raises :class:`ConfigError` when NNI is not installed (``pip install "nasdistill[nni]"``).

    After :meth:`run`: ``strategy_`` (the NNI strategy), ``engine_`` (NNI's engine: its
    ``list_models()`` are NNI's own record of the trials), ``best_arch_``, ``best_id_``,
    ``best_value_``, ``best_trial_``, ``elapsed_s_`` (wall time of the search) and ``trials_`` (one
    dict per trial, as OptunaSearch's: number, state, value, arch_id, params, duration_s, reused,
    reused_from; ``params`` are the flat values NNI sampled).
    """

    takes = ("strategy",)
    choice_flag = "--backend nni --strategy NAME"

    def __init__(self, space: SearchSpace | str, evaluator: Callable[..., float], *, n_trials: int = 20,
                 strategy: str = "random", seed: int = 0, workdir: str | Path | None = None,
                 progress: bool | None = None, study_name: str = "nasdistill", timeout: float | None = None,
                 report_intermediate: bool = False, **strategy_options: Any):
        import_nni()
        super().__init__(space, evaluator, n_trials=n_trials, seed=seed, study_name=study_name, timeout=timeout,
                         progress=progress)
        self.strategy = strategy
        self.workdir = workdir
        self.report_intermediate = report_intermediate
        self.strategy_options = dict(strategy_options)

    # --- running --------------------------------------------------------------------------------
    def search(self) -> SearchResult:
        """Run the trials with the chosen strategy and collect the results."""
        space = get_space(self.space)
        dims = space.dimensions()
        if not dims:
            raise ConfigError(f"the NNI backend needs the flat categorical view of {space.name!r}, which it lacks",
                              "define dimensions() (a CategoricalSpace has it) or use --backend optuna")
        encoded = {str(name): _Encoded(str(name), list(values)) for name, values in dims.items()}
        target = min(self.n_trials, math.prod(len(enc.options) for enc in encoded.values()))
        ctx = StrategyContext(seed=derive_seed("nni", str(self.strategy).lower(), self.seed) % (2**32),
                              n_trials=target, n_dims=len(dims))
        with _quiet_nni(None):  # TPE's tuner logs its seed when made
            strategy = make_strategy(self.strategy, ctx, self.strategy_options)

        from nni.nas.evaluator import FunctionalEvaluator
        from nni.nas.execution import SequentialExecutionEngine
        from nni.nas.space import SimplifiedModelSpace

        trial = _Trials(space, self.evaluator, encoded, self.report_intermediate and accepts_report(self.evaluator),
                        self.study_name)
        flat = _flat_space_class()({name: enc.options for name, enc in encoded.items()})
        model_space = SimplifiedModelSpace.from_model(flat, FunctionalEvaluator(trial))
        engine = SequentialExecutionEngine(max_model_count=target, max_duration=self.timeout)
        self.strategy_, self.engine_ = strategy, engine
        bar = progress_bar(total=target, desc=f"search {self.study_name} (nni {self.strategy})", unit="trial",
                           disable=resolve_disable(self.progress))

        def on_done(best: float | None) -> None:
            bar.update(1)
            if best is not None:
                bar.set_postfix(best=f"{best:.4f}")

        trial.on_done = on_done
        start = time.perf_counter()
        try:
            if target:
                with _quiet_nni(self.workdir):
                    strategy(model_space, engine)  # initialize + run, as NNI documents for a bare strategy
        finally:
            bar.close()
            self.elapsed_s_ = time.perf_counter() - start
            self.result_ = self.result(trial.rows)  # kept even when a trial raised
        if len(trial.rows) < target and (self.timeout is None or self.elapsed_s_ < self.timeout):
            _log.warning("NNI's %s strategy stopped after %d of %d trials: it found no unseen sample to propose",
                         self.strategy, len(trial.rows), target)
        return self.result_

    # --- results --------------------------------------------------------------------------------
    def info(self) -> dict:
        describe = getattr(self.evaluator, "describe", None)
        return {
            "backend": "nni",
            "space": get_space(self.space).name,
            "strategy": str(self.strategy).lower(),
            "strategy_options": to_jsonable(self.strategy_options),
            "seed": self.seed,
            "evaluator": describe() if callable(describe) else None,
        }

    def no_result(self) -> tuple[str, str]:
        return "the NNI search has no completed trial to export", "run at least one trial"

    def where(self) -> str:
        return f"with NNI's {self.strategy} strategy"

    # --- options --------------------------------------------------------------------------------
    _REFUSALS = {
        "sampler": ("--sampler {v} (an Optuna sampler)", "pick an NNI strategy with --strategy instead"),
        "pruner": ("--pruner {v}", "drop --pruner (NNI trials are not pruned)"),
        "storage": ("--storage", "drop --storage (NNI results live in memory and are exported to "
                                 "best_arch.json/trials.csv; nothing to resume or share)"),
        "workers": ("--workers {v}", "drop --workers (NNI runs its trials one at a time here)"),
        "worker_index": ("--worker-index", "drop --worker-index"),
        "objectives": ("--objectives {v}", "drop --objectives (the NNI backend maximises accuracy alone)"),
    }

    @classmethod
    def refuse(cls, option: str, value: Any) -> ConfigError:
        if option not in cls._REFUSALS:
            return super().refuse(option, value)
        flag, fix = cls._REFUSALS[option]
        return ConfigError(f"{flag.format(v=value)} does not work with --backend nni",
                           f"{fix}, or use --backend optuna")

    @classmethod
    def check_ready(cls) -> None:
        """NNI must be importable (else ``pip install "nasdistill[nni]"``)."""
        import_nni()

    @classmethod
    def grid(cls, given: Mapping[str, Any]) -> bool:
        return STRATEGIES.get(given.get("strategy") or DEFAULT_STRATEGY) is STRATEGIES.get("grid")

    @classmethod
    def from_options(cls, space, evaluator, *, out_dir: Path, n_trials: int, seed: int, study_name: str,
                     progress: bool | None, **options: Any) -> "NNISearch":
        """As :meth:`SearchBackend.from_options`; the strategy defaults to ``evolution``, and NNI's
        log goes to ``OUT/nni.log``."""
        return cls(space, evaluator, n_trials=n_trials, strategy=options.get("strategy") or DEFAULT_STRATEGY,
                   seed=seed, workdir=out_dir, progress=progress, study_name=study_name)

    @classmethod
    def choices(cls) -> list[tuple[str, str]]:
        return [(n, STRATEGIES.get(n)) for n in STRATEGIES.names()]

    def __repr__(self) -> str:
        space = self.space if isinstance(self.space, str) else getattr(self.space, "name", self.space)
        return (f"NNISearch(space={space!r}, n_trials={self.n_trials}, strategy={self.strategy!r}, "
                f"seed={self.seed})" + self._found())


# --- helpers ----------------------------------------------------------------------------------------
class _Encoded:
    """One dimension as NNI sees it: its values themselves when they are distinct plain scalars,
    else their positions (NNI's choices are meant to be numbers or strings)."""

    def __init__(self, name: str, values: list):
        if not values:
            raise ConfigError(f"dimension {name!r} of the space has no values", "give every dimension a value")
        plain = all(isinstance(v, (str, int, float)) for v in values)
        distinct = all(a != b for i, a in enumerate(values) for b in values[i + 1:])  # True == 1 counts as equal
        self.values = list(values)
        self.options = list(values) if plain and distinct else list(range(len(values)))
        self.by_index = self.options != self.values

    def decode(self, option: Any) -> Any:
        return self.values[option] if self.by_index else option


class _Trials:
    """NNI's evaluation function: frozen model -> architecture -> ``evaluator`` -> reported value.

    Keeps one row per trial, in OptunaSearch's ``trials_`` format plus ``arch``.
    """

    def __init__(self, space: SearchSpace, evaluator: Callable[..., float], encoded: dict[str, _Encoded],
                 use_report: bool, study: str = "nasdistill"):
        self.space = space
        self.study = study
        self.evaluator = evaluator
        self.encoded = encoded
        self.use_report = use_report
        self.rows: list[dict] = []
        self.scored: dict[str, dict] = {}  # arch_id -> the row that trained it
        self.on_done: Callable[[float | None], Any] = lambda best: None

    def __call__(self, model: Any) -> None:
        import nni

        start = time.perf_counter()
        values = {name: self.encoded[name].decode(option) for name, option in model.values.items()}
        arch = self.space.from_values(values)
        arch_id = self.space.arch_id(arch)
        row = {"number": len(self.rows), "state": "RUNNING", "value": None, "arch_id": arch_id,
               "params": to_jsonable(values), "duration_s": None, "reused": False, "reused_from": None,
               "arch": to_jsonable(dict(arch))}
        self.rows.append(row)
        earlier = self.scored.get(arch_id)
        try:
            if earlier is not None:
                value = earlier["value"]
                row.update(reused=True, reused_from=earlier["number"])
            elif self.use_report:
                value = float(self.evaluator(arch, report=_reporter(nni)))
            else:
                value = float(self.evaluator(arch))
        except BaseException:  # NNI's engine re-raises: the search stops, as Optuna's does
            row.update(state="FAIL", duration_s=time.perf_counter() - start)
            raise
        row["duration_s"] = time.perf_counter() - start
        if math.isnan(value):  # as Optuna does: a failed trial, and the search goes on, unless
            row["state"] = "FAIL"  # the last MAX_FAILED_IN_A_ROW trials all failed (as Optuna stops)
            recent = self.rows[-MAX_FAILED_IN_A_ROW:]
            if len(recent) == MAX_FAILED_IN_A_ROW and all(r["state"] == "FAIL" for r in recent):
                raise failed_in_a_row(self.study, MAX_FAILED_IN_A_ROW, arch_id, "the evaluator returned nan")
        else:
            row.update(state="COMPLETE", value=value)
            self.scored.setdefault(arch_id, row)
            nni.report_final_result(value)  # a trial without a final result is left out by NNI's strategies
        done = [r["value"] for r in self.rows if r["state"] == "COMPLETE"]
        self.on_done(max(done) if done else None)


def _reporter(nni) -> Callable[[int, float], bool]:
    def report(epoch: int, accuracy: float) -> bool:
        nni.report_intermediate_result(float(accuracy))
        return False  # NNI strategies here never stop a trial early

    return report


@contextmanager
def _quiet_nni(workdir: str | Path | None) -> Iterator[None]:
    """Hold back NNI's console messages below ERROR and ignore warnings raised inside NNI; with
    ``workdir``, NNI's messages from INFO up go to ``workdir/nni.log``. Restores everything after."""
    logger = logging.getLogger("nni")
    consoles = [h for h in logger.handlers if type(h) is logging.StreamHandler]
    old_levels = [h.level for h in consoles]
    old_level = logger.level
    file_handler = None
    if workdir is not None:
        path = Path(workdir).expanduser()
        path.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(path / "nni.log", encoding="utf-8")
        file_handler.setFormatter(logging.Formatter("[%(asctime)s] %(levelname)s (%(name)s) %(message)s"))
        logger.addHandler(file_handler)
        logger.setLevel(logging.INFO)
    for h in consoles:
        h.setLevel(max(h.level, logging.ERROR))
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=r"nni(\.|$)")
            yield
    finally:
        for h, level in zip(consoles, old_levels):
            h.setLevel(level)
        if file_handler is not None:
            logger.removeHandler(file_handler)
            file_handler.close()
        logger.setLevel(old_level)


__all__ = ["NNISearch", "STRATEGIES", "StrategyContext", "make_strategy", "import_nni", "INSTALL_HINT", "DEFAULT_STRATEGY"]
