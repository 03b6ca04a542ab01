"""Validate proxies side by side with the alternatives, against one shared full-data reference.

>>> from nasdistill.validate import validate
>>> result = validate(["runs/dm/proxy.safetensors", "runs/dc/proxy.safetensors"], data=dataset,
...                   space="convnet", baselines=["early-stop", "zero-cost"], n_archs=20)
>>> result.to_frame()          # one row per contender: Spearman (all, top-k), Kendall, regret, costs
>>> result.save("runs/validate")

One seeded sample of ``n_archs`` architectures is scored by every contender (each proxy, the
baselines) and trained on the full training split (the *reference*). Per contender: agreement with
the reference (:func:`~nasdistill.validate.metrics.ranking_metrics`, bootstrap intervals), cost per
candidate (wall time, training FLOPs, speed-up over the reference), and a paired bootstrap test
for every pair of contenders (:func:`~nasdistill.validate.metrics.paired_bootstrap_all`).

Full-data results and training contenders' scores live in the results store
(:class:`~nasdistill.validate.reference.ReferenceStore`), are reused across runs and proxies, and
are shared by every process validating against the same store: each is computed exactly once
(claims with heartbeat leases, :mod:`~nasdistill.work.claims`), and a killed validation resumes
where it stopped. ``workers=N`` starts N-1 helper processes on this machine; other machines join by
running the same validation against the same store (e.g. a PostgreSQL URL).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .._params import is_whole
from ..data import ImageDataset, Proxy, as_dataset
from ..defaults import (DEFAULT_FULL_TRAIN, DEFAULT_N_ARCHS, DEFAULT_N_BOOTSTRAP, DEFAULT_PROXY_TRAIN, DEFAULT_REGRET_K,
                        DEFAULT_SPACE, DEFAULT_TOP_K)
from ..errors import ConfigError
from ..progress import progress_bar, resolve_disable
from ..spaces import SearchSpace, get_space
from ..training import TrainConfig
from ..work import DEFAULT_LEASE_S, Job, Outcome, ProcessGroup, run_jobs, stored_outcomes, worker_id
from ..work.launch import threads_per_worker, torch_threads
from .contenders import (DEFAULT_ZERO_COST_BATCH, Contender, Context, ProxyContender, as_contender, train_reference,
                         baseline_contenders, unique_names)
from .costs import samples_seen
from .metrics import PAIRED_STATISTICS, check_k, paired_bootstrap_all, ranking_metrics
from .reference import ReferenceKey, ReferenceResult, ReferenceStore, ScoreKey, budget_key
from .result import ContenderResult, ValidationResult
from .table import ReferenceTable

Log = Callable[[str], None]


@dataclass
class Validation:
    """Settings of a multi-contender validation; :meth:`run` does the work.

    Args:
        space: search space name or instance. With ``workers > 1`` it must pickle (a name always does).
        n_archs: architectures sampled (seeded) from the space.
        seed: seeds the sample, every network's initial weights (shared by all contenders and the
            reference), every training's batches, the zero-cost batch and the bootstraps.
        proxy_train: default budget on a proxy (a :class:`ProxyContender` may carry its own);
            default :data:`~nasdistill.defaults.DEFAULT_PROXY_TRAIN`.
        full_train: the reference's full-data budget; default :data:`~nasdistill.defaults.DEFAULT_FULL_TRAIN`.
        top_k: counts and/or fractions for ``spearman_top{k}``; default :data:`DEFAULT_TOP_K`.
        regret_k: counts and/or fractions for ``regret@{k}``; default :data:`DEFAULT_REGRET_K`.
        n_bootstrap: resamples for intervals and pairwise tests (0: none).
        confidence: level of the intervals.
        pairwise_metric: statistic the pairwise tests compare (``spearman`` or ``kendall``).
        split: ``test`` or ``val``: the split every score and the reference are measured on.
        device: torch device.
        zero_cost_batch: images in the zero-cost batch.
        store: results store (a :class:`ReferenceStore`, URL or path; None: ``$NASDISTILL_HOME/references.db``).
        workers: processes on this machine sharing the work (this one and ``workers - 1`` helpers).
        lease_s: seconds without a heartbeat after which another worker takes over a claim.
        poll_s: seconds to wait before looking again when every remaining job is held elsewhere.
        progress: show a progress bar (None: the environment decides).
        archs: the architectures to rank, given explicitly (``n_archs`` is then their number and no
            sample is drawn).
        reference: a :class:`~nasdistill.validate.table.ReferenceTable` (or the path of one): its
            architectures, full-data budget and space are used, and its results are put into the
            store first, so the validation trains nothing on the full data for seeds the table holds.
            The data must be the table's (same fingerprint).
    """

    space: str | SearchSpace = DEFAULT_SPACE
    n_archs: int = DEFAULT_N_ARCHS
    seed: int = 0
    proxy_train: TrainConfig | None = None
    full_train: TrainConfig | None = None
    top_k: Sequence[int | float] = DEFAULT_TOP_K
    regret_k: Sequence[int | float] = DEFAULT_REGRET_K
    n_bootstrap: int = DEFAULT_N_BOOTSTRAP
    confidence: float = 0.95
    pairwise_metric: str = "spearman"
    split: str = "test"
    device: str = "cpu"
    zero_cost_batch: int = DEFAULT_ZERO_COST_BATCH
    store: ReferenceStore | str | os.PathLike | None = None
    workers: int = 1
    lease_s: float = DEFAULT_LEASE_S
    poll_s: float = 2.0
    progress: bool | None = None
    archs: Sequence[Mapping] | None = None
    reference: Any = None

    # --- public ------------------------------------------------------------------------------------
    def run(self, data: ImageDataset, proxies: Any = (), baselines: Sequence[str | Contender] = (), *,
            log: Log | None = None) -> ValidationResult:
        """Score the sample with every contender and the reference; compare, cost and test them.

        ``proxies``: proxies, proxy paths or contenders (a sequence), or a mapping name -> proxy.
        ``baselines``: names (``early-stop``, ``early-stop:steps``, ``zero-cost``, ``zero-cost:NAME``)
        or contender objects. Contenders appear in the results in the order given, proxies first.
        """
        t0 = time.perf_counter()
        proxies = _as_collection(proxies)
        plan = self._plan(data, proxies, baselines)
        ctx, contenders = plan["ctx"], plan["contenders"]
        say = log or (lambda _msg: None)
        me = worker_id()
        with self._open_store() as store:
            jobs = self._jobs(plan, store)
            cheap = [c for c in contenders if not c.stored]
            # results stored by an earlier run count as done from the start, not into the rate: a
            # resumed validation's ETA is the remaining jobs at this run's pace
            stored = stored_outcomes(jobs)
            bar = progress_bar(total=len(jobs) + len(cheap) * len(plan["archs"]), initial=len(stored),
                               desc="validate", unit="job", disable=resolve_disable(self.progress))
            helpers = self._start_helpers(data, proxies, baselines, store)
            finished = False
            share = threads_per_worker(self.workers) if helpers is not None else None
            try:
                with torch_threads(share):  # this process is one of the workers: its share of the cores
                    outcomes = run_jobs(jobs, store, worker=me, lease_s=self.lease_s, poll_s=self.poll_s,
                                        on_done=lambda _job, _o: bar.update(1), log=say, known=stored)
                    cheap_scores: dict[str, list] = {}
                    for c in cheap:
                        cheap_scores[c.name] = []
                        for arch in plan["archs"]:
                            cheap_scores[c.name].append(c.score(ctx, arch))
                            bar.update(1)
                finished = True
            finally:
                bar.close()
                self._stop_helpers(helpers, say, wait=finished)
        result = self._assemble(plan, outcomes, cheap_scores, me, time.perf_counter() - t0)
        ref = result.reference
        say(f"reference: {ref['n_trained']} architectures trained on the full data here, {ref['n_reused']} reused "
            f"from the store or other workers")
        return result

    def work(self, data: ImageDataset, proxies: Any = (), baselines: Sequence[str | Contender] = (), *,
             log: Log | None = None, references_only: bool = False) -> int:
        """Only compute and store this validation's stored results (references, training contenders):
        what a helper worker does. ``references_only``: the full-data references alone, which need
        no proxy (what :func:`prefetch_references` runs while the proxy is still being distilled).
        Returns how many this process computed."""
        plan = self._plan(data, _as_collection(proxies), baselines, allow_empty=references_only)
        if references_only:
            plan["contenders"] = []
        with self._open_store() as store:
            outcomes = run_jobs(self._jobs(plan, store), store, worker=worker_id(), lease_s=self.lease_s,
                                poll_s=self.poll_s, log=log)
        return sum(o.computed for o in outcomes)

    # --- planning ----------------------------------------------------------------------------------
    def budgets(self) -> tuple[TrainConfig, TrainConfig]:
        """The seeded (proxy, full-data) training budgets: ``proxy_train`` / ``full_train``, or the
        library's defaults (:mod:`nasdistill.defaults`). The full-data one keys the stored references."""
        table = self._table()
        full = self.full_train or (table.train_config() if table is not None else DEFAULT_FULL_TRAIN)
        if table is not None and budget_key(full) != budget_key(table.train):
            raise ConfigError(f"the full-data budget {full.budget()} differs from the reference table's {table.train}",
                              "drop the full-data training settings (--full-*) when validating against a table")
        return ((self.proxy_train or DEFAULT_PROXY_TRAIN).replace(seed=self.seed), full.replace(seed=self.seed))

    def _table(self):
        """The reference table, loaded once (None without one)."""
        if self.reference is None:
            return None
        if not isinstance(self.reference, ReferenceTable):
            self.reference = ReferenceTable.load(self.reference)
        return self.reference

    def _archs(self, space: SearchSpace) -> list[dict]:
        table = self._table()
        if table is not None:
            if self.archs is not None:
                raise ConfigError("both archs and a reference table were given", "pass one of them")
            if space.name != table.space:
                raise ConfigError(f"the reference table ranks architectures of {table.space!r}, not {space.name!r}",
                                  f"use --space {table.space}")
            return [space.validate(a) for a in table.archs]
        if self.archs is not None:
            archs = [space.validate(space.resolve(a)) for a in self.archs]  # dicts or ids
            if len(archs) < 2:
                raise ConfigError(f"{len(archs)} architecture given; a ranking needs at least 2", "pass 2 or more")
            return archs
        return space.sample(self.n_archs, self.seed)

    def _check(self, data: ImageDataset) -> None:
        as_dataset(data, "validation")
        if not is_whole(self.n_archs) or self.n_archs < 2:
            raise ConfigError(f"n_archs must be an integer of at least 2, got {self.n_archs!r}",
                              "sample 10 or more architectures for a useful ranking")
        self.n_archs = int(self.n_archs)  # a NumPy integer (from a grid of settings) is an integer
        if self.split not in ("test", "val"):
            raise ConfigError(f"unknown split {self.split!r}", "use test or val")
        if self.split == "val" and len(data.y_val) == 0:
            raise ConfigError(f"{data.name} has no validation split", "use split='test' or hold out images")
        if not is_whole(self.n_bootstrap) or self.n_bootstrap < 0:
            raise ConfigError(f"n_bootstrap must be a non-negative integer, got {self.n_bootstrap!r}",
                              "pass e.g. 1000, or 0 for no intervals")
        self.n_bootstrap = int(self.n_bootstrap)
        if isinstance(self.confidence, bool) or not isinstance(self.confidence, numbers.Real) \
                or not 0 < self.confidence < 1:
            raise ConfigError(f"confidence must lie in (0, 1), got {self.confidence!r}", "pass e.g. 0.95")
        for k in _ks(self.top_k):
            check_k(k, minimum=2)
        for k in _ks(self.regret_k):
            check_k(k, minimum=1)
        if self.pairwise_metric not in PAIRED_STATISTICS:
            raise ConfigError(f"unknown pairwise metric {self.pairwise_metric!r}",
                              f"use one of {', '.join(PAIRED_STATISTICS)}")
        if not isinstance(self.workers, int) or self.workers < 1:
            raise ConfigError(f"workers must be a positive integer, got {self.workers!r}", "pass e.g. 1 or 4")
        if not (self.lease_s > 0 and self.poll_s > 0):
            raise ConfigError("lease_s and poll_s must be positive", "pass e.g. lease_s=60, poll_s=2")
        if not isinstance(self.zero_cost_batch, int) or self.zero_cost_batch < 2:
            raise ConfigError(f"zero_cost_batch must be an integer of at least 2, got {self.zero_cost_batch!r}",
                              "pass e.g. 128")

    def _plan(self, data: ImageDataset, proxies: Any, baselines: Sequence[str | Contender],
              allow_empty: bool = False) -> dict:
        self._check(data)
        space = get_space(self.space)
        space.check_input(data.image_shape)
        proxy_train, full_train = self.budgets()
        ctx = Context(dataset=data, space=space, seed=self.seed, split=self.split, device=self.device,
                      proxy_train=proxy_train, full_train=full_train, zero_cost_batch=self.zero_cost_batch)
        if isinstance(proxies, Mapping):
            given = [ProxyContender(p, name=str(n)) if not isinstance(p, Contender) else p for n, p in proxies.items()]
        else:
            given = [as_contender(p) for p in proxies]
        unique_names(given)
        extra = baseline_contenders(list(baselines), [c for c in given if isinstance(c, ProxyContender)])
        contenders: list[Contender] = []
        seen: set[tuple[str, str]] = set()
        for c in given + extra:
            c.check(ctx)
            ident = (c.kind, c.key(ctx))
            if c.kind == "early-stop" and ident in seen:  # two proxies of equal cost share one early-stop baseline
                continue
            seen.add(ident)
            contenders.append(c)
        if not contenders and not allow_empty:
            raise ConfigError("nothing to validate", "pass at least one proxy or baseline")
        unique_names(contenders)
        table = self._table()
        if table is not None:
            table.check_dataset(data)
        archs = self._archs(space)
        return {"ctx": ctx, "contenders": contenders, "archs": archs, "ids": [space.arch_id(a) for a in archs],
                "table": table}

    def _open_store(self) -> ReferenceStore:
        if isinstance(self.store, ReferenceStore):
            return _Borrowed(self.store)
        return ReferenceStore(self.store)

    def _jobs(self, plan: dict, store: ReferenceStore) -> list[Job]:
        """References first (the longest, so workers started together spread them), then training contenders."""
        ctx: Context = plan["ctx"]
        if plan.get("table") is not None:
            plan["table"].seed_store(store)
        fp, space, seed = ctx.dataset.fingerprint, ctx.space.name, ctx.seed
        ref_budget = budget_key(ctx.full_train)
        jobs = []
        for arch, aid in zip(plan["archs"], plan["ids"]):
            key = ReferenceKey(fp, space, aid, ref_budget, seed)
            jobs.append(Job(key, lookup=lambda key=key: store.get(key),
                            compute=lambda arch=arch: train_reference(ctx, arch),
                            save=lambda r, w, t, key=key: store.put(key, r, worker=w, started=t),
                            label=f"reference {aid}"))
        for c in plan["contenders"]:
            if not c.stored:
                continue
            ckey = c.key(ctx)
            for arch, aid in zip(plan["archs"], plan["ids"]):
                key = ScoreKey(fp, space, aid, ckey, seed)
                jobs.append(Job(key, lookup=lambda key=key: store.get_score(key),
                                compute=lambda c=c, arch=arch: c.score(ctx, arch),
                                save=lambda r, w, t, key=key: store.put_score(key, r, worker=w, started=t),
                                label=f"{c.name} {aid}"))
        return jobs

    # --- helper processes --------------------------------------------------------------------------
    def _start_helpers(self, data: ImageDataset, proxies: Any, baselines: Sequence,
                       store: ReferenceStore) -> ProcessGroup | None:
        if self.workers <= 1:
            return None
        settings = self._fields(workers=1, progress=False, store=_shared_url(
            store, "between workers", "use a file or a database server for the store, or workers=1"))
        return _started(ProcessGroup.for_call(_helper, (settings, data, proxies, list(baselines)), self.workers - 1,
                                              threads=threads_per_worker(self.workers),
                                              names=[f"nasdistill-validate-{i}" for i in range(1, self.workers)]))

    def _fields(self, **changes: Any) -> dict:
        """This validation's settings, with ``changes``, for another process to build it from."""
        return {**{f.name: getattr(self, f.name) for f in dataclasses.fields(self)}, **changes}

    def _stop_helpers(self, group: ProcessGroup | None, say: Log, wait: bool = True) -> None:
        """Wait for the helpers (every job is stored: they only finish their last look), or stop them
        at once when this process failed (they release their claims on the way out)."""
        if group is None:
            return
        try:
            if wait:
                group.wait(poll=min(1.0, self.poll_s), timeout=self.lease_s + 30)
            group.stop()
            for i, status in group.failures():
                say(f"helper worker {group.names[i]} exited with status {status} (its work was done here or is "
                    f"stored): {group.last_line(i)}")
        finally:
            group.close()

    # --- results -----------------------------------------------------------------------------------
    def _assemble(self, plan: dict, outcomes: list[Outcome], cheap: dict, me: str, wall: float) -> ValidationResult:
        ctx: Context = plan["ctx"]
        archs, ids, n = plan["archs"], plan["ids"], len(plan["archs"])
        refs: list[ReferenceResult] = [o.result for o in outcomes[:n]]
        full = np.array([r.test_acc if self.split == "test" else r.val_acc for r in refs], dtype=np.float64)
        if not np.isfinite(full).all():
            raise ConfigError("a stored reference has no accuracy on the validation split",
                              "use split='test', or a new results store")
        per_sample = [ctx.train_flops(a) for a in archs]
        ref_samples = samples_seen(ctx.full_train, len(ctx.dataset.y_train))
        ref_times = np.array([r.wall_time for r in refs], dtype=np.float64)
        ref_flops = np.array(per_sample) * ref_samples
        ref_cost = _cost(ref_times, ref_flops, ref_samples, ref_times, ref_flops)
        reference = {"budget_key": budget_key(ctx.full_train), "train": ctx.full_train.budget(),
                     "n_trained": sum(o.computed for o in outcomes[:n]),
                     "n_reused": sum(not o.computed for o in outcomes[:n]),
                     "scores": full, "wall_times": ref_times, "reused": [not o.computed for o in outcomes[:n]],
                     "cost": ref_cost}
        results, pos = [], n
        for c in plan["contenders"]:
            if c.stored:
                mine, pos = outcomes[pos:pos + n], pos + n
                scores = [o.result for o in mine]
                computed = sum(o.computed for o in mine)
            else:
                scores, computed = cheap[c.name], n
            values = np.array([s.value for s in scores], dtype=np.float64)
            rankable, n_bad = _rankable(values)
            times = np.array([s.wall_time for s in scores], dtype=np.float64)
            flops = np.array([math.nan if s.flops is None else s.flops for s in scores], dtype=np.float64)
            metrics = ranking_metrics(rankable, full, top_k=_ks(self.top_k), regret_k=_ks(self.regret_k),
                                      n_bootstrap=self.n_bootstrap, seed=self.seed, confidence=self.confidence)
            results.append(ContenderResult(
                name=c.name, kind=c.kind, key=c.key(ctx), stored=c.stored, description=c.describe(ctx),
                scores=rankable, wall_times=times, flops=flops, samples=c.samples(ctx), metrics=metrics,
                cost=_cost(times, flops, c.samples(ctx), ref_times, ref_flops), n_computed=computed,
                n_reused=n - computed, n_nonfinite=n_bad))
        pairwise = paired_bootstrap_all({r.name: r.scores for r in results}, full, statistic=self.pairwise_metric,
                                        n_resamples=self.n_bootstrap, confidence=self.confidence, seed=self.seed)
        return ValidationResult(
            settings=self._settings(ctx, len(plan["archs"])), dataset=ctx.dataset.describe(),
            archs=[{"arch_id": aid, "arch": dict(a), "params": sum(p.numel() for p in ctx.build(a).parameters()),
                    "train_flops_per_sample": f} for a, aid, f in zip(archs, ids, per_sample)],
            reference=reference, contenders=results, pairwise=pairwise, wall_time=wall, worker=me)

    def _settings(self, ctx: Context, n_archs: int) -> dict:
        return {"space": ctx.space.name, "n_archs": n_archs, "seed": self.seed, "split": self.split,
                "top_k": list(_ks(self.top_k)), "regret_k": list(_ks(self.regret_k)), "n_bootstrap": self.n_bootstrap,
                "confidence": self.confidence, "pairwise_metric": self.pairwise_metric,
                "proxy_train": ctx.proxy_train.budget(), "full_train": ctx.full_train.budget(),
                "zero_cost_batch": self.zero_cost_batch, "lease_s": self.lease_s, "device": self.device}


def validate(proxies: Any = (), *, data: ImageDataset, space: str | SearchSpace = DEFAULT_SPACE,
             baselines: Sequence[str | Contender] = (), log: Log | None = None, **settings: Any) -> ValidationResult:
    """Validate ``proxies`` (and ``baselines``) on ``data``: ``Validation(space=space, **settings).run(...)``.

    See :class:`Validation` for the settings and :class:`~nasdistill.validate.result.ValidationResult`
    for what comes back.
    """
    _check_settings(settings)
    return Validation(space=space, **settings).run(data, proxies, baselines, log=log)


def _check_settings(settings: Mapping[str, Any]) -> None:
    names = {f.name for f in dataclasses.fields(Validation)}
    unknown = sorted(set(settings) - names)
    if unknown:
        raise ConfigError(f"unknown validation settings {unknown}", f"use some of {sorted(names - {'space'})}")


def _shared_url(store: ReferenceStore, with_whom: str, fix: str) -> str:
    """The store's URL for another process to open, refused for an in-memory store."""
    if store.url.get_backend_name() == "sqlite" and store.url.database in (None, "", ":memory:"):
        raise ConfigError(f"an in-memory results store cannot be shared {with_whom}", fix)
    return store.url.render_as_string(hide_password=False)


# --- helpers ---------------------------------------------------------------------------------------
def _as_collection(proxies: Any) -> dict | list:
    """A mapping as a dict, one proxy / path / contender as a list of one, any other iterable as a list."""
    if isinstance(proxies, Mapping):
        return dict(proxies)
    if isinstance(proxies, (Proxy, Contender, str, os.PathLike)):
        return [proxies]
    return list(proxies)


def _ks(ks: Any) -> tuple:
    return tuple(ks) if isinstance(ks, (list, tuple)) else (ks,)


def _rankable(values: np.ndarray) -> tuple[np.ndarray, int]:
    """``values`` with non-finite entries moved to the ends of the ranking (nan and -inf below every
    finite score, +inf above), and how many there were. Ranks are all the metrics use."""
    bad = ~np.isfinite(values)
    if not bad.any():
        return values, 0
    finite = values[~bad]
    lo, hi = (finite.min(), finite.max()) if finite.size else (0.0, 0.0)
    out = values.copy()
    out[np.isnan(values) | (values == -np.inf)] = lo - 1.0
    out[values == np.inf] = hi + 1.0
    return out, int(bad.sum())


def _cost(times: np.ndarray, flops: np.ndarray, samples: int | None, ref_times: np.ndarray,
          ref_flops: np.ndarray) -> dict:
    """Cost per candidate, and the speed-up of the reference's cost over it (ratio of totals)."""
    wall, fl = float(np.mean(times)), float(np.mean(flops))
    return {"wall_time_s": wall, "wall_time_total_s": float(np.sum(times)), "flops_per_candidate": fl,
            "samples_per_candidate": samples,
            "speedup_wall": float(np.mean(ref_times)) / wall if wall > 0 else math.nan,
            "speedup_flops": float(np.mean(ref_flops)) / fl if fl > 0 else math.nan}


class _Borrowed:
    """A caller's store as a context manager that does not close it."""

    def __init__(self, store: ReferenceStore):
        self.store = store

    def __enter__(self) -> ReferenceStore:
        return self.store

    def __exit__(self, *exc: object) -> None:
        pass


def _helper(settings: dict, data: ImageDataset, proxies: Any, baselines: list) -> None:
    """What a helper worker process runs (``workers > 1``, through :class:`~nasdistill.work.ProcessGroup`)."""
    Validation(**settings).work(data, proxies, baselines)


def _reference_helper(settings: dict, data: ImageDataset) -> None:
    Validation(**settings).work(data, references_only=True)


def prefetch_references(data: ImageDataset, *, space: str | SearchSpace = DEFAULT_SPACE, threads: int = 1,
                        **settings: Any) -> ProcessGroup:
    """Start one background process that trains and stores the full-data references of the
    validation ``validate(..., data=data, space=space, **settings)`` will run, and return its
    (started) group: the references need no proxy, so they train while the proxy is distilled and
    searched, and the validation then reads them from the store (the same seeded results, whichever
    process computed them). The store must be shareable (a file or a database server). Stop the
    group (``.wait()``/``.stop()``, then ``.close()``) once the validation is done."""
    _check_settings(settings)
    v = Validation(space=space, **{**settings, "workers": 1, "progress": False})  # the space must pickle
    v._check(data)
    with v._open_store() as store:
        url = _shared_url(store, "with a prefetching process", "use a file or a database server for the store")
    return _started(ProcessGroup.for_call(_reference_helper, (v._fields(store=url), data), 1, threads=threads,
                                          names=["nasdistill-references"]))


def _started(group: ProcessGroup) -> ProcessGroup:
    """``group`` started, or its temporary folder removed when it cannot start."""
    try:
        return group.start()
    except BaseException:
        group.close()
        raise


__all__ = ["Validation", "validate", "prefetch_references", "train_reference", "DEFAULT_TOP_K", "DEFAULT_REGRET_K"]
