"""Contenders: the ways of ranking architectures cheaply that a validation compares.

Every contender scores each sampled architecture (higher = predicted better); the validation
compares those scores with the shared full-data reference. Three kinds, behind one protocol
(:class:`Contender`):

* :class:`ProxyContender` -- train on a proxy artifact, score on the evaluation split;
* :class:`EarlyStopContender` -- train on the full training split, for a budget equal to a proxy's
  cost (:func:`~nasdistill.validate.costs.early_stop_config`: by default the same number of training
  images seen, so the same training FLOPs for every architecture);
* :class:`ZeroCostContender` -- a training-free score (:mod:`~nasdistill.validate.zerocost`) of the
  freshly initialised network on one seeded batch of the real training split.

Training contenders are ``stored``: their scores go to the results store under a key that hashes
everything the score depends on, are computed once across workers and survive a kill. Zero-cost
scores take a fraction of a second and are recomputed.

Baselines are built by name (:data:`BASELINES`, :func:`baseline_contenders`): ``early-stop``,
``early-stop:steps``, ``zero-cost`` (synflow, naswot and gradnorm) or ``zero-cost:NAME``.
"""

from __future__ import annotations

import hashlib
import os
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import torch

from .._params import is_whole
from .._io import fingerprint
from .._registry import Registry
from .._seed import derive_seed, generator
from ..data import ImageDataset, Proxy, load_proxy
from ..defaults import DEFAULT_ZERO_COST_BATCH
from ..errors import ConfigError, warn
from ..spaces import SearchSpace
from ..training import TrainConfig, evaluate, train
from .costs import EARLY_STOP_MATCH, count_flops, early_stop_config, samples_seen, train_flops_per_sample
from .reference import ReferenceResult, StoredScore
from .zerocost import DEFAULT_ZERO_COST, ZERO_COST


@dataclass
class Context:
    """What every contender needs: the data, the space, the seed and the shared settings."""

    dataset: ImageDataset
    space: SearchSpace
    seed: int
    proxy_train: TrainConfig  #: default training budget on a proxy (seeded)
    full_train: TrainConfig  #: the reference's full-data budget (seeded)
    split: str = "test"
    device: str = "cpu"
    zero_cost_batch: int = DEFAULT_ZERO_COST_BATCH
    _flops: dict = field(default_factory=dict, repr=False)
    _batch: tuple | None = field(default=None, repr=False)

    def build(self, arch: dict, seed: int | None = None) -> torch.nn.Module:
        """``arch`` with the validation's seeded initial weights (the same for every contender), or ``seed``'s."""
        return self.space.build_seeded(arch, self.dataset.image_shape, self.dataset.num_classes,
                                       self.seed if seed is None else seed)

    def accuracy(self, model: torch.nn.Module) -> float:
        """Accuracy of ``model`` on the evaluation split."""
        d = self.dataset
        x, y = (d.x_test, d.y_test) if self.split == "test" else (d.x_val, d.y_val)
        return evaluate(model, x, y, device=self.device)

    def train_flops(self, arch: dict) -> float:
        """Forward + backward FLOPs of one training image through ``arch`` (cached)."""
        aid = self.space.arch_id(arch)
        if aid not in self._flops:
            self._flops[aid] = train_flops_per_sample(self.build(arch), self.dataset.image_shape,
                                                      self.dataset.num_classes)
        return self._flops[aid]

    def real_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The zero-cost batch: ``zero_cost_batch`` training images drawn with the validation's seed."""
        if self._batch is None:
            n = len(self.dataset.y_train)
            idx = torch.randperm(n, generator=generator(derive_seed("zero-cost batch", self.seed)))
            idx = idx[:min(self.zero_cost_batch, n)]
            self._batch = (self.dataset.x_train[idx], self.dataset.y_train[idx])
        return self._batch


class Contender(ABC):
    """A way of scoring architectures without full-data training.

    Subclasses set ``kind`` (the registry name of their family) and ``stored`` (True: scores are
    kept in the results store and shared between workers), and implement :meth:`score`.
    """

    kind: ClassVar[str] = "contender"
    stored: ClassVar[bool] = True
    name: str

    def check(self, ctx: Context) -> None:  # noqa: B027 (optional hook)
        """Raise a :class:`~nasdistill.errors.NasDistillError` if this contender cannot run on ``ctx``."""

    @abstractmethod
    def key(self, ctx: Context) -> str:
        """A short hash of everything the scores depend on besides the architecture, data, space and seed."""

    @abstractmethod
    def score(self, ctx: Context, arch: dict) -> StoredScore:
        """Score ``arch``: the value and what it cost (wall time, training images seen, FLOPs)."""

    def samples(self, ctx: Context) -> int | None:
        """Training images seen per candidate (None: not a training contender)."""
        return None

    def describe(self, ctx: Context) -> dict:
        """Plain-JSON facts about the contender for reports."""
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def _trained_score(ctx: Context, arch: dict, x: torch.Tensor, y: torch.Tensor, config: TrainConfig,
                   repeats: int = 1, draw: int = 0, vectorize: bool = False) -> StoredScore:
    """Accuracy on the evaluation split after training on (x, y); with ``repeats`` > 1 the mean over
    that many trainings from different seeded initialisations and batch orders (the first is the
    single training's), costing as much more. ``draw`` > 0: every training from initialisations and
    batch orders of that independent draw (none shared with draw 0's). ``vectorize``: the repeats
    train at once under ``vmap`` (:func:`~nasdistill.training.vectorized.train_seeds`: the same
    trainings to float rounding); an architecture ``vmap`` cannot run trains them one at a time."""
    t0 = time.perf_counter()
    seeds = []
    for r in range(repeats):
        if draw == 0:
            seeds.append(None if r == 0 else derive_seed(ctx.seed, "repeat", r))
        else:
            seeds.append(derive_seed(ctx.seed, "draw", draw, "repeat", r))
    models = [ctx.build(arch, seed) for seed in seeds]
    configs = [config if seed is None else config.replace(seed=seed % 2**31) for seed in seeds]
    if not (vectorize and repeats > 1 and _train_vectorized(models, x, y, configs, ctx.device)):
        for model, cfg in zip(models, configs):
            train(model, x, y, cfg, device=ctx.device)
    accs = [ctx.accuracy(model) for model in models]
    n = samples_seen(config, len(x)) * repeats
    return StoredScore(value=float(sum(accs) / len(accs)), wall_time=time.perf_counter() - t0, samples=n,
                       flops=ctx.train_flops(arch) * n)


def _train_vectorized(models, x, y, configs, device) -> bool:
    """:func:`~nasdistill.training.vectorized.train_seeds`; False (models untouched, a warning) where
    the architecture cannot run under ``vmap``."""
    from ..training.vectorized import train_seeds

    try:
        train_seeds(models, x, y, configs, device=device)
        return True
    except ConfigError as e:
        warn(f"{e.problem}: its repeats trained one at a time")
        return False


def _check_draw(draw) -> int:
    if not is_whole(draw) or draw < 0:
        raise ConfigError(f"draw must be a non-negative integer, got {draw!r}", "pass draw=0 (the default) or more")
    return int(draw)


def proxy_digest(proxy: Proxy) -> str:
    """A hash of the proxy's images and labels (16 hex characters): what a stored proxy score depends on."""
    h = hashlib.sha256()
    for t in (proxy.images, proxy.labels):
        h.update(str((tuple(t.shape), str(t.dtype))).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class ProxyContender(Contender):
    """Train each architecture on ``proxy`` (budget ``train``, default the validation's ``proxy_train``).

    ``repeats`` > 1 scores each architecture by the mean accuracy of that many trainings from
    different seeded initialisations (a proxy ensemble over seeds: less noise in the ranking, at
    ``repeats`` times the cost, which the reported cost includes).

    ``draw`` > 0 trains from the initialisations and batch orders of that independent draw instead
    of the validation's own (pass it a proxy of the same draw, e.g. a random subset drawn with that
    seed): repeated draws of a contender show how much its ranking varies from run to run, and a
    test between contenders over draws whether one ranks this table better than another.

    ``vectorize``: the ``repeats`` trainings of an architecture run at once under ``torch.func.vmap``
    (:mod:`nasdistill.training.vectorized`; for GPUs, slower on a CPU): the same scores to float rounding,
    stored under the same keys.
    """

    kind = "proxy"

    def __init__(self, proxy: Proxy | str | os.PathLike, name: str | None = None, train: TrainConfig | None = None,
                 repeats: int = 1, draw: int = 0, vectorize: bool = False):
        self.proxy = proxy if isinstance(proxy, Proxy) else load_proxy(Path(proxy))
        if not is_whole(repeats) or repeats < 1:
            raise ConfigError(f"repeats must be a positive integer, got {repeats!r}", "pass repeats=1 or more")
        self.repeats = int(repeats)
        self.draw = _check_draw(draw)
        if vectorize not in (True, False):
            raise ConfigError(f"vectorize must be true or false, got {vectorize!r}", "pass vectorize=True or False")
        self.vectorize = vectorize
        self.name = name or f"{self.proxy.method}-ipc{self.proxy.ipc}" + (f"-x{repeats}" if repeats > 1 else "")
        self.train = train
        self._digest: str | None = None

    def config(self, ctx: Context) -> TrainConfig:
        """The seeded training budget on the proxy."""
        return (self.train or ctx.proxy_train).replace(seed=ctx.seed)

    def digest(self) -> str:
        if self._digest is None:
            self._digest = proxy_digest(self.proxy)
        return self._digest

    def check(self, ctx: Context) -> None:
        self.proxy.check_compatible(ctx.dataset)

    def key(self, ctx: Context) -> str:
        parts = {"kind": self.kind, "proxy": self.digest(), "train": self.config(ctx).budget(), "split": ctx.split}
        if self.repeats > 1:  # left out at 1, so scores stored before the option existed keep their keys
            parts["repeats"] = self.repeats
        if self.draw:  # left out at 0, likewise
            parts["draw"] = self.draw
        return fingerprint(parts)

    def samples(self, ctx: Context) -> int:
        return samples_seen(self.config(ctx), len(self.proxy)) * self.repeats

    def score(self, ctx: Context, arch: dict) -> StoredScore:
        return _trained_score(ctx, arch, self.proxy.images, self.proxy.labels, self.config(ctx), self.repeats,
                              self.draw, self.vectorize)

    def describe(self, ctx: Context) -> dict:
        meta = self.proxy.meta
        return {"method": self.proxy.method, "proxy_key": self.proxy.key, "ipc": self.proxy.ipc,
                "images": len(self.proxy), "soft_labels": self.proxy.soft, "seed": meta.get("seed"),
                "settings": meta.get("settings", {}), "digest": self.digest(), "train": self.config(ctx).budget(),
                "repeats": self.repeats, "draw": self.draw,
                "distill_time_s": meta.get("wall_time_s")}


class EarlyStopContender(Contender):
    """Train each architecture on the full training split for the budget a proxy costs.

    ``match``: ``"samples"`` (default; as many training images seen as on the proxy, hence the
    same training FLOPs) or ``"steps"`` (as many optimisation steps, at the full-data batch size:
    Zhao et al.'s early-stopping baseline). See :func:`~nasdistill.validate.costs.early_stop_config`.
    ``recipe``: ``"full"`` (default) trains with the full-data budget's optimiser, schedule,
    augmentation and batch size; ``"proxy"`` with the proxy's (the same recipe on the full data,
    so that a proxy's advantage cannot come from its training recipe alone). ``draw``: as
    :class:`ProxyContender`'s (default: the matched proxy's).
    """

    kind = "early-stop"
    RECIPES = ("full", "proxy")

    def __init__(self, proxy: ProxyContender, match: str = "samples", name: str | None = None,
                 recipe: str = "full", draw: int | None = None):
        self.proxy = proxy
        self.match = match
        self.recipe = recipe
        self.draw = _check_draw(getattr(proxy, "draw", 0) if draw is None else draw)
        self.name = name or "early-stop"
        if match not in EARLY_STOP_MATCH:
            raise ConfigError(f"unknown early-stop budget match {match!r}",
                              f"use one of {', '.join(EARLY_STOP_MATCH)}, e.g. --baseline early-stop:steps")
        if recipe not in self.RECIPES:
            raise ConfigError(f"unknown early-stop recipe {recipe!r}", f"use one of {', '.join(self.RECIPES)}")

    def config(self, ctx: Context) -> TrainConfig:
        """The seeded full-data budget matched to the proxy's."""
        proxy_cfg = self.proxy.config(ctx)
        base = ctx.full_train if self.recipe == "full" else proxy_cfg
        cfg = early_stop_config(proxy_cfg, len(self.proxy.proxy), base, len(ctx.dataset.y_train),
                                self.match).replace(seed=ctx.seed)
        repeats = getattr(self.proxy, "repeats", 1)  # a seed-averaged proxy costs that many trainings
        return cfg if repeats == 1 else cfg.replace(steps=cfg.total_steps(len(ctx.dataset.y_train)) * repeats)

    def key(self, ctx: Context) -> str:
        parts = {"kind": self.kind, "train": self.config(ctx).budget(), "split": ctx.split}
        if self.draw:
            parts["draw"] = self.draw
        return fingerprint(parts)

    def samples(self, ctx: Context) -> int:
        return samples_seen(self.config(ctx), len(ctx.dataset.y_train))

    def score(self, ctx: Context, arch: dict) -> StoredScore:
        return _trained_score(ctx, arch, ctx.dataset.x_train, ctx.dataset.y_train, self.config(ctx), draw=self.draw)

    def describe(self, ctx: Context) -> dict:
        return {"matches": self.proxy.name, "match": self.match, "recipe": self.recipe, "draw": self.draw, "train": self.config(ctx).budget(),
                "proxy_samples": self.proxy.samples(ctx)}


class ZeroCostContender(Contender):
    """Score each freshly initialised architecture with a training-free score on one real batch."""

    kind = "zero-cost"
    stored = False

    def __init__(self, score: str = "synflow", name: str | None = None):
        self.fn = ZERO_COST.get(score)
        self.score_name = score
        self.name = name or score

    def key(self, ctx: Context) -> str:
        return fingerprint({"kind": self.kind, "score": self.fn.__name__, "batch": ctx.zero_cost_batch})

    def score(self, ctx: Context, arch: dict) -> StoredScore:
        x, y = ctx.real_batch()
        t0 = time.perf_counter()
        model = ctx.build(arch).to(ctx.device)
        value, flops = count_flops(self.fn, model, x.to(ctx.device), y.to(ctx.device))
        return StoredScore(value=float(value), wall_time=time.perf_counter() - t0, samples=None, flops=flops)

    def describe(self, ctx: Context) -> dict:
        return {"score": self.fn.__name__, "batch": len(ctx.real_batch()[1])}


# --- baselines by name -------------------------------------------------------------------------------
#: ``name -> factory(option, proxies)``: the contenders a ``--baseline NAME[:OPTION]`` adds.
BASELINES: Registry[Callable[[str | None, Sequence[ProxyContender]], list[Contender]]] = Registry(
    "baseline", hint="e.g. early-stop, early-stop:steps, zero-cost or zero-cost:synflow")


@BASELINES.register("early-stop")
def _early_stop(option: str | None, proxies: Sequence[ProxyContender]) -> list[Contender]:
    if not proxies:
        raise ConfigError("the early-stop baseline matches a proxy's cost, but no proxy was given",
                          "pass at least one proxy")
    several = len(proxies) > 1
    return [EarlyStopContender(p, option or "samples", name=f"early-stop[{p.name}]" if several else None)
            for p in proxies]


@BASELINES.register("zero-cost")
def _zero_cost(option: str | None, proxies: Sequence[ProxyContender]) -> list[Contender]:
    return [ZeroCostContender(s) for s in ([option] if option else DEFAULT_ZERO_COST)]


def baseline_contenders(specs: Sequence[str | Contender], proxies: Sequence[ProxyContender]) -> list[Contender]:
    """Contenders for baseline specs (``"early-stop"``, ``"zero-cost:naswot"``...) or contender objects."""
    out: list[Contender] = []
    for spec in specs:
        if isinstance(spec, Contender):
            out.append(spec)
            continue
        name, _, option = str(spec).partition(":")
        out.extend(BASELINES.get(name.strip())(option.strip() or None, proxies))
    return out


def unique_names(contenders: Sequence[Contender]) -> None:
    """Make contender names unique in place (``name``, ``name#2``...)."""
    seen: dict[str, int] = {}
    for c in contenders:
        base = c.name
        seen[base] = seen.get(base, 0) + 1
        if seen[base] > 1:
            c.name = f"{base}#{seen[base]}"


def as_contender(obj: Any) -> Contender:
    """A contender from a contender, a :class:`Proxy` or a proxy path."""
    if isinstance(obj, Contender):
        return obj
    if isinstance(obj, (Proxy, str, os.PathLike)):
        return ProxyContender(obj)
    raise ConfigError(f"cannot validate a {type(obj).__name__}", "pass proxies (objects or paths) or contenders")


def train_reference(ctx: Context, arch: dict) -> ReferenceResult:
    """Train ``arch`` (seeded weights) on the full training split for ``ctx.full_train``; score test and val."""
    d = ctx.dataset
    t0 = time.perf_counter()
    model = ctx.build(arch)
    train(model, d.x_train, d.y_train, ctx.full_train, device=ctx.device)
    return ReferenceResult(
        test_acc=evaluate(model, d.x_test, d.y_test, device=ctx.device),
        val_acc=evaluate(model, d.x_val, d.y_val, device=ctx.device) if len(d.y_val) else None,
        wall_time=time.perf_counter() - t0, params=sum(p.numel() for p in model.parameters()),
        budget=ctx.full_train.budget())


__all__ = ["Context", "Contender", "ProxyContender", "EarlyStopContender", "ZeroCostContender", "BASELINES",
           "baseline_contenders", "unique_names", "as_contender", "proxy_digest", "DEFAULT_ZERO_COST_BATCH",
           "train_reference"]
