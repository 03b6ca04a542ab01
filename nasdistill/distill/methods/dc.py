"""``dc``: dataset condensation with gradient matching (Zhao, Mopuri & Bilen, ICLR 2021, "Dataset
Condensation with Gradient Matching"), and ``dsa``: the same with differentiable siamese
augmentation (Zhao & Bilen, ICML 2021, "Dataset Condensation with Differentiable Siamese
Augmentation").

Every outer iteration draws a freshly initialised network. Then, ``outer_loop`` times:

1. for each class, the gradient of the cross-entropy with respect to the network's parameters is
   taken on a batch of ``batch_real`` real images of that class and on that class's synthetic
   images (the latter with ``create_graph=True``, so it stays a function of the pixels);
2. the matching loss is the sum over classes of :func:`gradient_distance` (the paper's layer-wise
   distance: per output node, one minus the cosine similarity of the two gradients, summed);
3. the synthetic pixels take one SGD step on it (``lr_img``, momentum 0.5);
4. the network trains for ``inner_loop`` epochs on the synthetic set (plain SGD, ``lr_net``), so
   the next matching step sees the parameters a network trained on the synthetic set would reach
   (skipped after the last matching step).

Single-step parameter matching: real and synthetic gradients are compared at the same parameters,
not after unrolled training. ``dsa`` applies one sampled augmentation to both the real and the
synthetic batch of a class before their gradients are taken (siamese: the same crop, rotation...
for both), and per-image random augmentation while training the network in the inner loop.

Data-parallel under ``torchrun`` (:mod:`nasdistill.distill.parallel`): every rank draws every
class's real batch and augmentation (one random stream), matches only its share of the classes,
and the gradients on the synthetic images are summed before the identical image step; the
inner-loop training is the same on every rank.

BatchNorm: one synthetic image per class gives meaningless batch statistics, so (as the paper's
code) before every matching step a real batch of 16 images per class sets each BatchNorm layer's
statistics, and the layers are frozen in eval mode while the real and synthetic gradients are
taken. Unlike the reference code (whose single forward only moves the running statistics 10% of
the way from their initial values), the statistics here are exactly those of the real batch. The
inner-loop training uses ordinary train-mode BatchNorm on the synthetic batches.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ...errors import ConfigError
from ...training.loop import bf16_autocast, check_precision, optimizer_step
from ...training.layout import as_layout, fast_layout, wants_fast_layout
from .. import parallel
from ..base import NetworkMatchingDistiller, changed_defaults, has_batchnorm
from ..embed import real_chunk
from ..registry import register
from ..unroll import twice_differentiable

#: (outer_loop, inner_loop) by images per class, from the papers' released code (the ICLR paper
#: states the 1, 10 and 50 entries).
PAPER_LOOPS: dict[int, tuple[int, int]] = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15),
                                           50: (50, 10)}

#: Real images per class that set BatchNorm statistics before a matching step (as the paper's code).
BN_IMAGES_PER_CLASS = 16


def paper_loops(ipc: int) -> tuple[int, int]:
    """The paper's (outer_loop, inner_loop) for ``ipc``; other ipc take the nearest tabulated entry
    (ties go to the larger ipc, so 2-5 images per class use (1, 1) and 6-14 use (10, 50))."""
    nearest = min(PAPER_LOOPS, key=lambda k: (abs(k - ipc), -k))
    return PAPER_LOOPS[nearest]


def layer_distance(g_syn: torch.Tensor, g_real: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """The paper's distance between two gradients of one parameter tensor.

    The gradient is viewed as one row per output node (a conv kernel ``(out, in, k, k)`` as ``out``
    rows of ``in*k*k``; a linear weight ``(out, in)`` as is; a LayerNorm weight ``(C, H, W)`` as
    ``C`` rows); the distance is the sum over rows of ``1 - cos(row_syn, row_real)``. One-dimensional
    parameters (biases, normalisation scales and shifts) contribute nothing, as in the paper's code.
    """
    if g_real.ndim <= 1:
        return g_syn.new_zeros(())
    a = g_syn.reshape(g_syn.shape[0], -1)
    b = g_real.reshape(g_real.shape[0], -1)
    cos = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(eps)
    return (1 - cos).sum()


def gradient_distance(g_syn: Sequence[torch.Tensor], g_real: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sum of :func:`layer_distance` over the parameters of a network (0 when the gradients agree in
    direction node by node, up to 2 per output node when they are opposite)."""
    if len(g_syn) != len(g_real):
        raise ValueError(f"{len(g_syn)} synthetic gradients but {len(g_real)} real ones")
    return sum((layer_distance(a, b) for a, b in zip(g_syn, g_real)), g_syn[0].new_zeros(()))


@register
class GradientMatching(NetworkMatchingDistiller):
    name = "dc"
    summary = "gradient matching on freshly initialised networks (Zhao, Mopuri & Bilen)"
    #: 2-core CPU (about 3 minutes at ipc 10, MNIST, default ConvNet): 20 iterations instead of
    #: 1000, 32 real images a class, the paper's ipc-dependent loops scaled by 0.2 (ipc 1: (1, 1);
    #: ipc 10: (2, 10); ipc 50: (10, 2)), a 10x image lr to make up for 50x fewer steps, and real
    #: init (noise only turns into images over the full budget).
    cpu_budget = {"iterations": 20, "batch_real": 32, "loop_scale": 0.2, "lr_img": 1.0, "init": "real"}

    def __init__(self, ipc: int = 10, iterations: int = 1000, lr_img: float = 0.1, momentum: float = 0.5,
                 batch_real: int = 256, outer_loop: int | None = None, inner_loop: int | None = None,
                 loop_scale: float = 1.0, lr_net: float = 0.01, batch_train: int = 256, init: str = "noise",
                 augment: str | None = None, net: str | None = None, space: str = "convnet",
                 matching_space: str | None = None, precision: str = "fp32", seed: int = 0, device: str = "cpu",
                 checkpoint_every: int = 50):
        """Defaults are the paper's (1000 iterations; image SGD lr 0.1 with momentum 0.5; 256 real
        images per class; network SGD lr 0.01; initialisation from Gaussian noise, the released
        code's default, which the authors report performs like real-image init; DC's default ConvNet).

        Args:
            outer_loop: matching steps per iteration (None: the paper's table by ipc,
                1 -> 1, 10 -> 10, 50 -> 50; see :func:`paper_loops`).
            inner_loop: epochs of network training on the synthetic set between matching steps
                (None: the paper's table, 1 -> 1, 10 -> 50, 50 -> 10).
            loop_scale: multiplies the table's loops (rounded, at least 1) to trade fidelity for
                time; explicit ``outer_loop``/``inner_loop`` are used as given.
            batch_train: mini-batch size of the inner-loop training (256: one batch per epoch
                unless the synthetic set is larger).
            augment: None (DC), ``"dsa"`` or a DSA strategy: siamese augmentation while matching and
                random augmentation in the inner loop.
            net: architecture id of the matching network in ``space`` (default: its default architecture).
            matching_space: draw the matching architecture from this space every iteration instead.
            precision: ``fp32``, or ``bf16`` for the passes no gradient to the pixels flows through
                (the real batches' gradients, most of an iteration, and the inner-loop training) under
                bfloat16 autocast in the channels_last layout (:mod:`nasdistill.training.layout`); the
                synthetic gradients, differentiated twice, stay float32. It changes the numerics, so
                it is off by default.
        """
        super().__init__(ipc=ipc, iterations=iterations, init=init, augment=augment, net=net, space=space,
                         matching_space=matching_space, seed=seed, device=device, checkpoint_every=checkpoint_every)
        self.lr_img = lr_img
        self.momentum = momentum
        self.batch_real = batch_real
        self.outer_loop = outer_loop
        self.inner_loop = inner_loop
        self.loop_scale = loop_scale
        self.lr_net = lr_net
        self.batch_train = batch_train
        self.precision = precision

    # --- settings --------------------------------------------------------------------------
    def loops(self) -> tuple[int, int]:
        """The (outer_loop, inner_loop) this run uses."""
        outer, inner = (max(1, round(v * self.loop_scale)) for v in paper_loops(self.ipc))
        return (self.outer_loop if self.outer_loop is not None else outer,
                self.inner_loop if self.inner_loop is not None else inner)

    def check(self, dataset):
        super().check(dataset)
        self._check_positive("lr_img", "lr_net", "loop_scale")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum!r}", "use e.g. momentum=0.5")
        self._check_ints("batch_real", "batch_train")
        self._check_ints("outer_loop", "inner_loop", optional=True)  # None: the paper's table
        check_precision(self.precision)

    # --- the algorithm ---------------------------------------------------------------------
    def _init_state(self, dataset, ctx):
        self.images = self._initial_images(dataset).to(self.device).requires_grad_(True)
        self.labels = self._class_labels(dataset)
        self._labels_dev = self.labels.to(self.device)
        self.opt = torch.optim.SGD([self.images], lr=self.lr_img, momentum=self.momentum)
        self._init_networks(dataset)
        self._by_class = dataset.indices_by_class()
        self.loops_ = self.loops()

    def _extra_state(self):
        return {"opt": self.opt}

    def _draw(self, c: int, n: int, g: torch.Generator) -> torch.Tensor:
        """Indices of ``n`` random training images of class ``c``."""
        idx = self._by_class[c]
        return idx[torch.randperm(len(idx), generator=g)[:n]]

    def _real(self, dataset, c: int, n: int, g: torch.Generator) -> torch.Tensor:
        return dataset.x_train[self._draw(c, n, g)].to(self.device)

    @torch.no_grad()
    def _freeze_batchnorm(self, net, dataset, g):
        """Set every BatchNorm layer's statistics to those of a real batch, then freeze them (eval)."""
        bns = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        saved = [m.momentum for m in bns]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average: after one batch, exactly its statistics
        net.train()
        net(torch.cat([self._real(dataset, c, BN_IMAGES_PER_CLASS, g) for c in range(len(self._by_class))]))
        for m, mom in zip(bns, saved):
            m.momentum = mom
            m.eval()

    def _full(self, n: int, c: int) -> torch.Tensor:
        return torch.full((n,), c, dtype=torch.long, device=self.device)

    def _real_gradients(self, net, params, real, c: int, chunk: int | None = None) -> list[torch.Tensor]:
        """Gradient of the mean cross-entropy of a class's real batch (no graph kept).

        On a CPU the batch goes through in pieces (:func:`~nasdistill.distill.embed.real_chunk`: ~32 MNIST
        images' pixels, 392 8x8 digits) whose summed gradients are divided by the batch size: the same
        gradient (to float rounding), with activations small enough for the allocator to reuse (~1.3x;
        digits' pieces of 392 instead of 32: dsa 1.2x). Pieces need per-image layers:
        a BatchNorm layer in training mode keeps the batch whole (here they are frozen, in eval mode).
        """
        if chunk is None:
            chunk = real_chunk(real, self.device)
        coupled = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.training for m in net.modules())
        with fast_layout(net, wants_fast_layout(net, self.precision)) as nhwc, \
                bf16_autocast(self.device, self.precision):
            if not chunk or coupled or len(real) <= chunk:
                logits = net(as_layout(real, nhwc)).float()
                return [gr.detach().contiguous() for gr in
                        torch.autograd.grad(F.cross_entropy(logits, self._full(len(real), c)), params)]
            return self._chunked_gradients(net, params, real, c, chunk, nhwc)

    def _chunked_gradients(self, net, params, real, c: int, chunk: int, nhwc: bool) -> list[torch.Tensor]:
        total: list[torch.Tensor] | None = None
        for piece in real.split(chunk):
            logits = net(as_layout(piece, nhwc)).float()
            loss = F.cross_entropy(logits, self._full(len(piece), c), reduction="sum")
            grads = torch.autograd.grad(loss, params)
            if total is None:
                total = [gr.detach().clone() for gr in grads]
            else:
                for acc, gr in zip(total, grads):
                    acc.add_(gr)
        return [acc.div_(len(real)).contiguous() for acc in total]

    def _matching_loss(self, net, params, dataset, g) -> torch.Tensor | None:
        """Sum over this rank's classes (all of them in one process) of the distance between real
        and synthetic gradients (differentiable with respect to the synthetic images); None when
        the rank has no class."""
        loss = None
        for c in range(len(self._by_class)):
            idx = self._draw(c, self.batch_real, g)  # every rank draws every class: one stream
            p = self.aug.sample(1, g, self.device) if self.aug is not None else None
            if not parallel.mine(c):  # another rank's class: its images are not read
                continue
            real = dataset.x_train[idx].to(self.device)
            syn = self.images[c * self.ipc:(c + 1) * self.ipc]
            if p is not None:
                real, syn = self.aug(real, p), self.aug(syn, p)
            g_real = self._real_gradients(net, params, real, c)
            with twice_differentiable(net):  # the fast second derivatives
                g_syn = torch.autograd.grad(F.cross_entropy(net(syn), self._full(len(syn), c)), params,
                                            create_graph=True)
            d = gradient_distance(g_syn, g_real)
            loss = d if loss is None else loss + d
        return loss

    def _train_network(self, net, opt, epochs: int, g) -> None:
        x, y = self.images.detach(), self._labels_dev
        n = len(x)
        bs = min(self.batch_train, n)
        net.train()
        with fast_layout(net, wants_fast_layout(net, self.precision)) as nhwc:
            for _ in range(epochs):
                perm = torch.randperm(n, generator=g).to(self.device)
                for i in range(0, n, bs):
                    idx = perm[i:i + bs]
                    xb = x[idx] if self.aug is None else self.aug(x[idx], generator=g)
                    optimizer_step(net, opt, xb, y[idx], precision=self.precision, nhwc=nhwc)

    def _step(self, t, dataset, g):
        net = self.nets.build(self.seed, t, dataset, self.device).train()
        params = [p for p in net.parameters() if p.requires_grad]
        net_opt = torch.optim.SGD(params, lr=self.lr_net)
        batchnorm = has_batchnorm(net)
        outer, inner = self.loops_
        total = 0.0
        for ol in range(outer):
            if batchnorm:
                self._freeze_batchnorm(net, dataset, g)
            loss = self._matching_loss(net, params, dataset, g)
            self.opt.zero_grad(set_to_none=True)
            self.images.grad = (torch.autograd.grad(loss, self.images)[0] if loss is not None
                                else torch.zeros_like(self.images))
            parallel.all_reduce_grad(self.images)  # a no-op in one process
            self.opt.step()
            total += parallel.all_reduce_sum(loss.item() if loss is not None else 0.0, self.device)
            if ol < outer - 1:
                self._train_network(net, net_opt, inner, g)
        return total / (outer * len(self._by_class))


@register
class DifferentiableSiameseAugmentation(GradientMatching):
    name = "dsa"
    summary = "gradient matching through differentiable siamese augmentation (Zhao & Bilen)"
    cpu_budget = {"iterations": 20, "batch_real": 32, "loop_scale": 0.2, "lr_img": 1.0}  # as dc's

    __init__ = changed_defaults(
        GradientMatching.__init__, init="real", augment="dsa",
        doc=""":class:`GradientMatching` with DSA's defaults: the same loops and learning rates (1000
        iterations, image lr 0.1, network lr 0.01), initialisation from real images, and
        ``augment="dsa"`` (color, crop, cutout, flip, scale, rotate, one drawn per batch; flips
        dropped for single-channel data). The same sampled transformation is applied to a class's
        real and synthetic batch before their gradients are matched, and the inner-loop training
        augments each synthetic image independently. See :class:`GradientMatching` for the settings.
        """)
