"""The cheapest proxy that meets a fidelity target.

>>> from nasdistill.target import distill_to_target
>>> result = distill_to_target(dataset, target=0.9, metric="spearman_top5", methods=["dm", "dsa"],
...                            ipcs=[1, 2, 5, 10], n_archs=12, time_budget_s=3600)
>>> result.met, result.chosen.method, result.chosen.ipc, result.chosen.value, result.chosen.ci
>>> result.chosen.validation.table()    # the kept proxy's validation (a ValidationResult)
>>> result.save("runs/target")           # proxy.*, validation.*, target.json (every candidate tried)

A *candidate* is a (method, ipc) pair. Candidates are walked **cheapest first**: by ipc (the proxy's
size, which every later search trial trains on), then by the position of the method in ``methods``
(the order you rank the methods' cost in; the CLI's default puts your ``--method`` first). Each is
distilled (or reused from the proxy store), then validated (:class:`~nasdistill.validate.Validation`)
on **one** seeded sample of ``n_archs`` architectures: the full-data reference trainings are done by
the first candidate and reused from the results store by every later one. The walk **stops as soon
as** a candidate's ``metric`` reaches ``target``: that candidate is the cheapest in the order that
meets it. Otherwise it stops when the ladder is exhausted or the budget is spent (``time_budget_s``,
checked before each candidate, so the last one started may run over it; ``max_candidates``); the
first candidate always runs. Then the best candidate tried is kept (highest metric; the cheaper on a
tie) and :attr:`TargetResult.met` is False.

``metric`` is ``spearman_top{k}`` (Spearman over the top ``k`` architectures by full-data accuracy,
``k`` a count or ``{p}pct``), ``spearman`` or ``kendall``; ``bound="value"`` compares the point
estimate, ``bound="ci-low"`` the lower end of its bootstrap interval (a conservative target).
"""

from __future__ import annotations

import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from . import __version__
from ._params import is_whole
from ._io import to_jsonable, write_json
from .data import ImageDataset, Proxy
from .defaults import DEFAULT_N_ARCHS, DEFAULT_N_BOOTSTRAP, DEFAULT_SPACE
from .distill import distill, get_method, method_names
from .errors import ConfigError
from .spaces import SearchSpace, get_space
from .training import TrainConfig
from .validate import (DEFAULT_FULL_TRAIN, DEFAULT_PROXY_TRAIN, DEFAULT_TOP_K, ReferenceStore, Validation,
                       ValidationResult)

Log = Callable[[str], None]

SCHEMA = "nasdistill.target/1"
#: The ipc ladder grown from the starting ipc (capped by the smallest class).
DEFAULT_IPC_LADDER: tuple[int, ...] = (1, 2, 5, 10, 20, 50)
#: Methods tried after the user's own at each ipc when none are named (cheapest distillation first).
DEFAULT_METHOD_LADDER: tuple[str, ...] = ("dm", "dsa")
#: The default target metric: Spearman over the 5 architectures that are best on the full data.
DEFAULT_METRIC = "spearman_top5"
BOUNDS = ("value", "ci-low")

_TOP = re.compile(r"^spearman_top(?:(\d+)|(\d+(?:\.\d+)?)pct)$")


def metric_top_k(metric: str) -> int | float | None:
    """The top-k a metric name needs in the validation (``spearman_top5`` -> 5, ``spearman_top25pct`` ->
    0.25), None for ``spearman`` / ``kendall``; a :class:`ConfigError` for anything else."""
    if metric in ("spearman", "kendall"):
        return None
    m = _TOP.match(metric or "")
    if m is None:
        raise ConfigError(f"unknown target metric {metric!r}",
                          "use spearman_topK (e.g. spearman_top5 or spearman_top25pct), spearman or kendall")
    if m.group(1) is not None:
        k = int(m.group(1))
        if k < 2:
            raise ConfigError(f"target metric {metric!r} ranks fewer than 2 architectures", "use spearman_top2 or more")
        return k
    frac = float(m.group(2)) / 100
    if not 0 < frac <= 1:
        raise ConfigError(f"target metric {metric!r} is not a share in (0, 100]%", "use e.g. spearman_top25pct")
    return frac


def ipc_ladder(start: int, smallest: int, ladder: Sequence[int] = DEFAULT_IPC_LADDER) -> list[int]:
    """``start`` and the rungs of ``ladder`` above it, up to ``smallest`` (the smallest class)."""
    if not is_whole(start) or start < 1:
        raise ConfigError(f"ipc must be a positive integer, got {start!r}", "pass --ipc 1 or more")
    start = int(start)
    if start > smallest:
        raise ConfigError(f"ipc={start} is larger than the smallest class ({smallest} training images)",
                          f"use --ipc {smallest} or less")
    return [start] + [k for k in sorted(set(ladder)) if start < k <= smallest]


def default_methods(method: str) -> list[str]:
    """``method``, then the registered methods of :data:`DEFAULT_METHOD_LADDER` not already listed."""
    known = set(method_names())
    return [method] + [m for m in DEFAULT_METHOD_LADDER if m != method and m in known]


def settings_by_method(methods: Sequence[str], settings: Mapping[str, Any] | None) -> dict[str, dict]:
    """Split one set of method settings (``--set``, ``--iterations``...) between ``methods``: each
    method gets the keys its constructor takes; a key that no method takes is a :class:`ConfigError`."""
    from .distill import method_class

    if not methods:
        return {}
    accepted = {m: set(method_class(m)._param_names()) for m in methods}
    out: dict[str, dict] = {m: {} for m in methods}
    for key, value in (settings or {}).items():
        takers = [m for m in methods if key in accepted[m]]
        if not takers:
            raise ConfigError(f"no method of {', '.join(methods)} has a setting {key!r}",
                              "check the name with 'nasdistill distill --help'")
        for m in takers:
            out[m][key] = value
    return out


# --- results -----------------------------------------------------------------------------------------
@dataclass
class CandidateResult:
    """One (method, ipc) candidate: its proxy, its validation and whether it met the target."""

    index: int
    method: str
    ipc: int
    images: int
    value: float  #: the target metric (point estimate, or its interval's lower end with bound="ci-low")
    estimate: float  #: the metric's point estimate
    ci: tuple[float, float]
    met: bool
    proxy_key: str
    proxy_reused: bool
    distill_cost_s: float | None  #: the proxy's recorded distillation time (also when reused)
    distill_time_s: float  #: time spent distilling (or loading) it in this search
    validate_time_s: float
    metrics: dict
    cost: dict  #: per search candidate on this proxy: wall time, FLOPs, speed-up over full-data training
    reference: dict  #: n_trained / n_reused full-data trainings in this candidate's validation
    settings: dict = field(default_factory=dict)
    proxy: Proxy | None = field(default=None, repr=False)
    validation: ValidationResult | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return f"{self.method}-ipc{self.ipc}"

    @property
    def wall_time_s(self) -> float:
        return self.distill_time_s + self.validate_time_s

    def to_dict(self) -> dict:
        return to_jsonable({
            "index": self.index, "name": self.name, "method": self.method, "ipc": self.ipc, "images": self.images,
            "value": self.value, "estimate": self.estimate, "ci": list(self.ci), "met": self.met,
            "proxy_key": self.proxy_key, "proxy_reused": self.proxy_reused,
            "proxy_path": self.proxy.meta.get("path") if self.proxy is not None else None,
            "settings": self.settings, "distill_cost_s": self.distill_cost_s,
            "distill_time_s": round(self.distill_time_s, 3), "validate_time_s": round(self.validate_time_s, 3),
            "wall_time_s": round(self.wall_time_s, 3), "metrics": self.metrics, "cost": self.cost,
            "reference": self.reference,
        })


@dataclass
class TargetResult:
    """What a fidelity search tried and kept.

    ``chosen`` is the kept candidate: the first (cheapest) one that met the target when ``met``,
    else the best one tried. ``to_dict()`` (``target.json``, schema ``nasdistill.target/1``)::

        schema, nasdistill_version, target, metric, bound, met, stopped, chosen (index), wall_time_s,
        settings {methods, ipcs, order, n_archs, seed, validation_seed, time_budget_s, max_candidates,
                  proxy_train, full_train, n_bootstrap, space},
        dataset {...}, candidates [CandidateResult.to_dict() in the order tried]
    """

    target: float
    metric: str
    bound: str
    candidates: list[CandidateResult]
    stopped: str  #: why the walk ended: "target met", "ladder exhausted", "time budget spent ...", "candidate budget spent ..."
    settings: dict
    dataset: dict
    wall_time: float = 0.0

    @property
    def met(self) -> bool:
        return any(c.met for c in self.candidates)

    @property
    def best(self) -> CandidateResult:
        """The candidate with the highest metric value (undefined values lowest; the cheaper on a tie)."""
        return max(self.candidates, key=lambda c: (_finite(c.value), -c.index))

    @property
    def chosen(self) -> CandidateResult:
        """The first candidate that met the target, else :attr:`best`."""
        return next((c for c in self.candidates if c.met), None) or self.best

    @property
    def proxy(self) -> Proxy:
        return self.chosen.proxy

    def message(self) -> str:
        """One line: what was kept and whether it meets the target."""
        c = self.chosen
        what = (f"{c.name} ({c.images} images), {self.metric} {_f(c.estimate)} [{_f(c.ci[0])}, {_f(c.ci[1])}]"
                + (f", CI low {_f(c.value)}" if self.bound == "ci-low" else ""))
        if self.met:
            return f"target met: {what} >= {self.target:g} (candidate {c.index + 1} of {len(self.candidates)} tried)"
        return (f"target {self.metric} >= {self.target:g} NOT met after {len(self.candidates)} candidates "
                f"({self.stopped}); best: {what}")

    def table(self) -> str:
        """A Markdown table of the candidates tried, in order."""
        head = ["#", "candidate", "images", f"{self.metric} [95% CI]", "met", "distil s", "validate s", "proxy"]
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        for c in self.candidates:
            lines.append("| " + " | ".join([
                str(c.index + 1), c.name, str(c.images), f"{_f(c.estimate)} [{_f(c.ci[0])}, {_f(c.ci[1])}]",
                "yes" if c.met else "no", f"{c.distill_time_s:.1f}", f"{c.validate_time_s:.1f}",
                "reused" if c.proxy_reused else "distilled"]) + " |")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return to_jsonable({
            "schema": SCHEMA, "nasdistill_version": __version__, "target": self.target, "metric": self.metric,
            "bound": self.bound, "met": self.met, "stopped": self.stopped, "chosen": self.chosen.index,
            "message": self.message(), "wall_time_s": round(self.wall_time, 3), "settings": self.settings,
            "dataset": self.dataset, "candidates": [c.to_dict() for c in self.candidates],
        })

    def save(self, out_dir: str | os.PathLike) -> Path:
        """Write the kept proxy (``proxy.safetensors``/``.json``/``.png``), its validation
        (``validation.json``/``.csv``, ``validation_archs.csv``) and ``target.json`` into ``out_dir``."""
        out = Path(out_dir)
        chosen = self.chosen
        chosen.proxy.save(out / "proxy.safetensors")
        chosen.proxy.save_grid(out / "proxy.png")
        chosen.validation.save(out)
        write_json(out / "target.json", self.to_dict())
        return out


# --- the search ----------------------------------------------------------------------------------------
@dataclass
class FidelitySearch:
    """Settings of a walk over (method, ipc) candidates, cheapest first, until one meets ``target``.

    Args:
        target: the value ``metric`` must reach, in [-1, 1].
        metric: ``spearman_top{k}`` (default ``spearman_top5``), ``spearman`` or ``kendall``.
        bound: ``value`` (the point estimate must reach the target) or ``ci-low`` (the lower end of
            its bootstrap interval must).
        methods: distillation methods in cost order (tie-break within an ipc). Duplicates are dropped.
        ipcs: images per class to try; sorted ascending. Each must fit the smallest class.
        method_settings: settings per method (missing: the method's defaults).
        seed: distillation seed.
        validation_seed: seeds the architecture sample, initial weights and bootstraps (default:
            derived from ``seed``, as ``nasdistill run`` does).
        n_archs, space, proxy_train, full_train, n_bootstrap, top_k: the validation's settings; the
            metric's top-k is added to ``top_k``.
        time_budget_s: stop starting new candidates once this many seconds have passed (None: no limit).
        max_candidates: try at most this many candidates (None: no limit).
        store: proxy store (``distill``'s ``store``). reference_store: the results store (a
            :class:`~nasdistill.validate.ReferenceStore`, URL or path; None: the default).
        checkpoint_dir: where iterative methods checkpoint (None: the proxy store's).
    """

    target: float
    methods: Sequence[str] = ("dm",)
    ipcs: Sequence[int] = (1, 2, 5, 10)
    metric: str = DEFAULT_METRIC
    bound: str = "value"
    method_settings: Mapping[str, Mapping[str, Any]] | None = None
    seed: int = 0
    validation_seed: int | None = None
    n_archs: int = DEFAULT_N_ARCHS
    space: str | SearchSpace = DEFAULT_SPACE
    proxy_train: TrainConfig | None = None
    full_train: TrainConfig | None = None
    n_bootstrap: int = DEFAULT_N_BOOTSTRAP
    top_k: Sequence[int | float] = DEFAULT_TOP_K
    time_budget_s: float | None = None
    max_candidates: int | None = None
    device: str = "cpu"
    store: Any = None
    reference_store: ReferenceStore | str | os.PathLike | None = None
    checkpoint_dir: str | os.PathLike | None = None
    progress: bool | None = None

    # --- planning ----------------------------------------------------------------------------------
    def candidates(self) -> list[tuple[str, int]]:
        """The (method, ipc) pairs in the order they are tried: ipc ascending, then method order."""
        methods = list(dict.fromkeys(self.methods))
        return [(m, k) for k in sorted(set(self.ipcs)) for m in methods]

    def _validation(self) -> Validation:
        k = metric_top_k(self.metric)
        top_k = tuple(self.top_k) + ((k,) if k is not None and k not in tuple(self.top_k) else ())
        vseed = self.validation_seed if self.validation_seed is not None else _validation_seed(self.seed)
        return Validation(space=self.space, n_archs=self.n_archs, seed=vseed, proxy_train=self.proxy_train,
                          full_train=self.full_train, top_k=top_k, n_bootstrap=self.n_bootstrap,
                          device=self.device, progress=self.progress)

    def check(self, dataset: ImageDataset) -> None:
        """Every setting, before any work: a :class:`ConfigError` names the first bad one."""
        t = self.target
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not -1 <= t <= 1:
            raise ConfigError(f"target {t!r} is outside [-1, 1], the range of a rank correlation",
                              "pass e.g. --target-spearman 0.9")
        if self.bound not in BOUNDS:
            raise ConfigError(f"unknown target bound {self.bound!r}", f"use one of {', '.join(BOUNDS)}")
        metric_top_k(self.metric)
        if not list(self.methods):
            raise ConfigError("the method ladder is empty", "name at least one method, e.g. --target-methods dm")
        if not list(self.ipcs):
            raise ConfigError("the ipc ladder is empty", "name at least one ipc, e.g. --target-ipcs 1,2,5,10")
        smallest = min(dataset.class_counts())
        for k in self.ipcs:
            if not is_whole(k) or k < 1:
                raise ConfigError(f"ipc {k!r} in the ladder is not a positive integer", "use e.g. --target-ipcs 1,2,5")
            if k > smallest:
                raise ConfigError(f"ipc {k} in the ladder is above the smallest class of {dataset.name} "
                                  f"({smallest} training images)", f"use ipcs of at most {smallest}")
        if self.time_budget_s is not None and not self.time_budget_s > 0:
            raise ConfigError(f"time budget must be positive, got {self.time_budget_s!r}",
                              "pass a number of seconds, e.g. --target-budget 3600")
        if self.max_candidates is not None and (not isinstance(self.max_candidates, int) or self.max_candidates < 1):
            raise ConfigError(f"max_candidates must be a positive integer, got {self.max_candidates!r}",
                              "pass e.g. --target-max-candidates 5")
        if self.bound == "ci-low" and self.n_bootstrap < 1:
            raise ConfigError("bound ci-low needs bootstrap intervals", "pass --bootstrap 1000, or bound value")
        val = self._validation()
        val._check(dataset)
        get_space(self.space)
        settings = self.method_settings or {}
        for method, ipc in self.candidates():  # unknown methods or settings fail here, before any work
            get_method(method, ipc=ipc, seed=self.seed, device=self.device, **settings.get(method, {})).check(dataset)

    # --- the walk ----------------------------------------------------------------------------------
    def run(self, dataset: ImageDataset, *, log: Log | None = None) -> TargetResult:
        """Walk the candidates cheapest first; stop at the first that meets the target or when the budget is spent."""
        self.check(dataset)
        say = log or (lambda _msg: None)
        t0 = time.perf_counter()
        validation = self._validation()
        order = self.candidates()
        settings = self.method_settings or {}
        tried: list[CandidateResult] = []
        stopped = "ladder exhausted"
        own_store = not isinstance(self.reference_store, ReferenceStore)
        store = ReferenceStore(self.reference_store) if own_store else self.reference_store
        validation.store = store
        try:
            for i, (method, ipc) in enumerate(order):
                if tried and self.max_candidates is not None and len(tried) >= self.max_candidates:
                    stopped = f"candidate budget spent ({len(tried)} of {self.max_candidates})"
                    break
                elapsed = time.perf_counter() - t0
                if tried and self.time_budget_s is not None and elapsed >= self.time_budget_s:
                    stopped = f"time budget spent ({elapsed:.0f} s of {self.time_budget_s:g} s)"
                    break
                say(f"target: candidate {i + 1}/{len(order)}: {method} ipc {ipc}")
                cand = self._try(dataset, i, method, ipc, dict(settings.get(method, {})), validation, say)
                tried.append(cand)
                say(f"target: {cand.name}: {self.metric} {_f(cand.estimate)} [{_f(cand.ci[0])}, {_f(cand.ci[1])}]"
                    f" -> {'meets' if cand.met else 'below'} {self.target:g}")
                if cand.met:
                    stopped = "target met"
                    break
        finally:
            if own_store:
                store.close()
        result = TargetResult(target=float(self.target), metric=self.metric, bound=self.bound, candidates=tried,
                              stopped=stopped, settings=self._describe(validation, order),
                              dataset=dataset.describe(), wall_time=time.perf_counter() - t0)
        say(result.table() + "\n" + result.message())
        return result

    def _try(self, dataset: ImageDataset, index: int, method: str, ipc: int, settings: dict, validation: Validation,
             say: Log) -> CandidateResult:
        t = time.perf_counter()
        proxy = distill(dataset, method, ipc=ipc, seed=self.seed, device=self.device, store=self.store,
                        checkpoint_dir=self.checkpoint_dir, progress=self.progress, log=say, **settings)
        distill_time = time.perf_counter() - t
        t = time.perf_counter()
        name = f"{method}-ipc{ipc}"
        result = validation.run(dataset, {name: proxy}, log=say)
        validate_time = time.perf_counter() - t
        c = result[name]
        estimate = float(c.metrics[self.metric])
        ci = tuple(float(v) for v in c.metrics[f"{self.metric}_ci"])
        value = estimate if self.bound == "value" else ci[0]
        return CandidateResult(
            index=index, method=method, ipc=ipc, images=len(proxy), value=value, estimate=estimate, ci=ci,
            met=bool(math.isfinite(value) and value >= self.target), proxy_key=proxy.key,
            proxy_reused=bool(proxy.meta.get("reused")), distill_cost_s=proxy.meta.get("wall_time_s"),
            distill_time_s=distill_time, validate_time_s=validate_time, metrics=c.metrics, cost=c.cost,
            reference={k: result.reference[k] for k in ("n_trained", "n_reused")}, settings=settings,
            proxy=proxy, validation=result)

    def _describe(self, validation: Validation, order: list[tuple[str, int]]) -> dict:
        return {"methods": list(dict.fromkeys(self.methods)), "ipcs": sorted(set(self.ipcs)),
                "order": [f"{m}-ipc{k}" for m, k in order], "n_archs": self.n_archs, "seed": self.seed,
                "validation_seed": validation.seed, "time_budget_s": self.time_budget_s,
                "max_candidates": self.max_candidates, "space": get_space(self.space).name,
                "proxy_train": (validation.proxy_train or DEFAULT_PROXY_TRAIN).budget(),
                "full_train": (validation.full_train or DEFAULT_FULL_TRAIN).budget(),
                "n_bootstrap": self.n_bootstrap, "top_k": list(validation.top_k)}


def distill_to_target(dataset: ImageDataset, *, target: float, log: Log | None = None, **settings: Any) -> TargetResult:
    """``FidelitySearch(target=target, **settings).run(dataset)``: see :class:`FidelitySearch`."""
    return FidelitySearch(target=target, **settings).run(dataset, log=log)


def _validation_seed(seed: int) -> int:
    from ._seed import derive_seed

    return derive_seed(seed, "validate") % 10**6


def _finite(v: float) -> float:
    return v if math.isfinite(v) else -math.inf


def _f(v: float | None) -> str:
    return "nan" if v is None or not math.isfinite(v) else f"{v:.3f}"


__all__ = ["FidelitySearch", "TargetResult", "CandidateResult", "distill_to_target", "metric_top_k", "ipc_ladder",
           "default_methods", "settings_by_method", "DEFAULT_IPC_LADDER", "DEFAULT_METHOD_LADDER", "DEFAULT_METRIC",
           "BOUNDS", "SCHEMA"]
