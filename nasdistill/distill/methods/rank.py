"""``rank``: rank-aware distillation. The synthetic images are optimised so that short trainings on
them *order* a pool of architectures as full-data training does.

None of the published families targets the ranking itself: DC/DSA/MTT match one network's
gradients or trajectory, DM/CAFE match features, DD/KIP match one network's performance. A NAS
proxy is only used to rank, so this method takes a *training pool* of architectures whose full-data
scores are known (a reference table's **validation** accuracies: the test split never reaches the
proxy) and, each outer iteration, draws pairs ``(a, b)`` of pool architectures with
``score(a) > score(b)``, trains a fresh initialisation of each for ``inner_steps`` SGD steps on the
synthetic set (momentum, learning rate and augmentation of the candidate protocol; differentiable,
through ``torch.func``, :mod:`..unroll`), scores both trained networks on one batch of real
training images (cross-entropy ``L_a``, ``L_b``) and descends

    rank_weight * softplus((L_a - L_b) / temperature)  +  task_weight * (L_a + L_b) / 2

on the pixels (Adam). The first term is a pairwise (RankNet) loss that is small when the better
architecture ends with the lower real loss; the second keeps the set a good training set (Wang et
al.'s performance matching). Pairs are drawn among those with at least one member in the best
``focus`` share of the pool, where a NAS proxy's ordering matters (top-k Spearman, regret).

Measure it only on architectures *outside* the pool: the benchmark (``benchmarks/fidelity.py
--rank``) splits a reference table's architectures into a seeded training pool and a disjoint
held-out pool and validates on the held-out one.
"""

from __future__ import annotations

import math
from typing import Mapping

import torch
import torch.nn.functional as F

from ...errors import ConfigError
from ..._seed import derive_seed
from ...spaces import get_space
from ..base import NetworkMatchingDistiller
from ..registry import register
from ..unroll import forward, parameters, sgd_unroll


@register
class RankMatching(NetworkMatchingDistiller):
    name = "rank"
    summary = "rank-aware: short trainings on the proxy order a pool of architectures as the full data does"
    cpu_budget = {"iterations": 100, "inner_steps": 10, "batch_real": 256}
    requires = ("pool",)

    def __init__(self, ipc: int = 10, iterations: int = 1000, pool: Mapping[str, float] | None = None,
                 inner_steps: int = 20, lr_inner: float = 0.01, inner_momentum: float = 0.9,
                 batch_syn: int = 256, pairs: int = 1, focus: float = 0.5, min_gap: float = 0.0,
                 temperature: float = 0.05, rank_weight: float = 1.0, task_weight: float = 1.0,
                 lr_img: float = 0.01, batch_real: int = 512, init: str = "real", augment: str | None = "dsa",
                 space: str = "convnet", seed: int = 0, device: str = "cpu", checkpoint_every: int = 25):
        """
        Args:
            pool: the training pool, architecture id (in ``space``) -> its full-data score (higher is
                better; use validation accuracy), at least two distinct scores. Required.
            inner_steps, lr_inner, inner_momentum, batch_syn: the unrolled training of each pool
                architecture on the synthetic set (defaults: the candidate protocol's SGD, lr 0.01,
                momentum 0.9, batches of 256).
            pairs: pairs per outer iteration (gradients accumulate).
            focus: pairs have at least one member among the best ``focus`` share of the pool (1: any pair).
            min_gap: skip pairs whose scores differ by less (ties in the reference are noise).
            temperature: scale of the pairwise loss, in units of real cross-entropy.
            rank_weight, task_weight: weights of the pairwise term and of the mean real loss.
            lr_img: Adam learning rate of the pixels.
            batch_real: real training images (class-balanced draw) the trained networks are scored on.
        """
        super().__init__(ipc=ipc, iterations=iterations, init=init, augment=augment, net=None, space=space,
                         matching_space=None, seed=seed, device=device, checkpoint_every=checkpoint_every)
        self.pool = dict(pool) if pool is not None else None
        self.inner_steps = inner_steps
        self.lr_inner = lr_inner
        self.inner_momentum = inner_momentum
        self.batch_syn = batch_syn
        self.pairs = pairs
        self.focus = focus
        self.min_gap = min_gap
        self.temperature = temperature
        self.rank_weight = rank_weight
        self.task_weight = task_weight
        self.lr_img = lr_img
        self.batch_real = batch_real

    @classmethod
    def _param_names(cls) -> list[str]:  # net/matching_space are fixed: the pool names the networks
        return [n for n in super()._param_names() if n not in ("net", "matching_space")]

    # --- checks --------------------------------------------------------------------------------
    def check(self, dataset):
        super().check(dataset)
        self._check_ints("inner_steps", "batch_syn", "pairs", "batch_real")
        self._check_positive("lr_inner", "lr_img", "temperature")
        if not 0 <= self.inner_momentum < 1:
            raise ConfigError(f"rank needs inner_momentum in [0, 1), got {self.inner_momentum!r}", "pass e.g. 0.9")
        if not 0 < self.focus <= 1:
            raise ConfigError(f"rank needs focus in (0, 1], got {self.focus!r}", "pass e.g. 0.5 (1: every pair)")
        for name in ("rank_weight", "task_weight", "min_gap"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ConfigError(f"rank needs {name} >= 0, got {v!r}", f"pass a non-negative {name}")
        if not self._pairs_allowed(self._pool_archs()):
            raise ConfigError(f"rank: no pair of pool architectures differs by more than min_gap={self.min_gap}",
                              "lower min_gap or give a pool with more varied scores")

    def _pool_archs(self) -> list[tuple[str, dict, float]]:
        """The pool as (id, architecture, score), best first; raises ConfigError when unusable."""
        if not isinstance(self.pool, Mapping) or len(self.pool) < 2:
            raise ConfigError("rank needs pool: two or more architecture ids with their full-data scores",
                              "pass pool={arch_id: val_acc, ...}, e.g. dict(zip(table.arch_ids, "
                              "table.accuracies(seed=0, split='val'))) of a ReferenceTable")
        space = get_space(self.space)
        out = []
        for aid, score in self.pool.items():
            if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
                raise ConfigError(f"rank: pool score of {aid!r} is {score!r}, not a finite number",
                                  "give every pool architecture its full-data accuracy")
            out.append((str(aid), space.parse_id(str(aid)), float(score)))
        return sorted(out, key=lambda r: -r[2])

    def network_sampler(self):
        return _PoolSampler(self.space)

    def _pairs_allowed(self, pool: list[tuple[str, dict, float]]) -> list[tuple[int, int]]:
        """Index pairs (better, worse) into the sorted ``pool`` that training may draw."""
        top = max(1, math.ceil(self.focus * len(pool)))
        return [(i, j) for i in range(len(pool)) for j in range(i + 1, len(pool))
                if i < top and pool[i][2] - pool[j][2] > self.min_gap]

    # --- state ---------------------------------------------------------------------------------
    def _init_state(self, dataset, ctx):
        self._init_networks(dataset)
        self.images = self._initial_images(dataset).to(self.device).requires_grad_(True)
        self.labels = self._class_labels(dataset).to(self.device)
        self.opt = torch.optim.Adam([self.images], lr=self.lr_img, betas=(0.5, 0.999))
        self._pool = self._pool_archs()
        self._allowed = self._pairs_allowed(self._pool)
        self.pair_agreement_: list[float] = []

    def _extra_state(self):
        return {"opt": self.opt}

    # --- one outer iteration -------------------------------------------------------------------
    def _trained_loss(self, arch: dict, t: int, real_x, real_y, dataset, g, create_graph: bool = True) -> torch.Tensor:
        """Real cross-entropy of ``arch`` after the differentiable unroll on the synthetic set."""
        space = self.nets.space
        model = space.build_seeded(arch, dataset.image_shape, dataset.num_classes,
                                   derive_seed(self.seed, "rank-net", t)).to(self.device).train()
        for p in model.parameters():
            p.requires_grad_(False)
        params = {k: v.requires_grad_(True) for k, v in parameters(model).items()}
        augment = (lambda x, gen: self.aug(x, generator=gen)) if self.aug is not None else None
        params, _ = sgd_unroll(model, params, self.images, self.labels, steps=self.inner_steps, lr=self.lr_inner,
                               batch_size=self.batch_syn, generator=g, augment=augment,
                               momentum=self.inner_momentum, create_graph=create_graph)
        return F.cross_entropy(forward(model, params, real_x), real_y)

    def _step(self, t, dataset, g):
        per_class = max(1, self.batch_real // dataset.num_classes)
        idx = torch.cat([c[torch.randint(len(c), (per_class,), generator=g)] for c in dataset.indices_by_class()])
        real_x, real_y = dataset.x_train[idx].to(self.device), dataset.y_train[idx].to(self.device)
        picks = torch.randint(len(self._allowed), (self.pairs,), generator=g).tolist()
        self.opt.zero_grad(set_to_none=True)
        total, agree = 0.0, 0
        for k in picks:
            i, j = self._allowed[k]
            la = self._trained_loss(self._pool[i][1], t, real_x, real_y, dataset, g)
            lb = self._trained_loss(self._pool[j][1], t, real_x, real_y, dataset, g)
            rank = F.softplus((la - lb) / self.temperature)
            loss = (self.rank_weight * rank + self.task_weight * (la + lb) / 2) / self.pairs
            loss.backward()  # one pair's graphs at a time: gradients accumulate, memory does not
            total += float(loss.detach())
            agree += int(float(la.detach()) < float(lb.detach()))
        self.opt.step()
        self.pair_agreement_.append(agree / self.pairs)
        return total

    def pool_agreement(self, images: torch.Tensor | None = None, *, seeds=(0, 1, 2), batch_real: int = 1000) -> float:
        """Share of the drawable pool pairs that short trainings on ``images`` (default: the fitted
        proxy's) order as the pool's scores do, over fresh initialisations ``seeds``, each
        network scored by its real loss on ``batch_real`` fixed training images. A diagnostic of what
        the method optimises (on the *training* pool: it says nothing about held-out architectures)."""
        if not hasattr(self, "dataset_"):
            raise ConfigError("rank is not fitted", "call fit(dataset) first")
        dataset = self.dataset_
        saved = self.images
        self.images = (self.images_ if images is None else images).to(self.device)
        g0 = torch.Generator().manual_seed(derive_seed(self.seed, "agreement"))
        idx = torch.randperm(len(dataset.x_train), generator=g0)[:batch_real]
        real_x, real_y = dataset.x_train[idx].to(self.device), dataset.y_train[idx].to(self.device)
        try:
            agree = total = 0
            for s in seeds:
                losses = {}
                for i in sorted({k for pair in self._allowed for k in pair}):
                    g = torch.Generator().manual_seed(derive_seed(self.seed, "agreement", s))
                    with torch.enable_grad():  # the unroll needs gradients of the parameters, not of the pixels
                        losses[i] = float(self._trained_loss(self._pool[i][1], -1 - s, real_x, real_y, dataset, g,
                                                                            create_graph=False).detach())
                agree += sum(losses[i] < losses[j] for i, j in self._allowed)
                total += len(self._allowed)
        finally:
            self.images = saved
        return agree / total

    def to_proxy(self):
        proxy = super().to_proxy()
        proxy.meta["pool"] = sorted(self.pool)
        tail = self.pair_agreement_[-50:]
        proxy.meta["pair_agreement_last50"] = float(sum(tail) / len(tail)) if tail else None
        return proxy


class _PoolSampler:
    """Holds the pool's space: the pool, not a sampler, names every network ``rank`` trains."""

    def __init__(self, space):
        self.space = get_space(space)
