"""``dd``: performance matching by meta-learning (Wang, Zhu, Torralba & Efros, 2018, "Dataset
Distillation", arXiv:1811.10959).

The synthetic images are the training set of a short, differentiable training run. Each outer
iteration draws ``n_inits`` freshly initialised networks (new seeds every iteration, so the images
serve the initialisation *distribution*, not one network), trains each for ``inner_steps`` x
``inner_epochs`` plain-SGD steps on the synthetic images, and measures the cross-entropy of the
trained parameters on a batch of real images. That loss, averaged over the initialisations, is
back-propagated through the whole unrolled run (``torch.func``, :mod:`.unroll`) to the pixels and
to the inner step sizes, which are learned too: one per inner step, kept positive by a softplus.
Adam (betas 0.5, 0.999) takes the outer step.

As in the paper, the synthetic set is fed in per-step batches: step ``k`` trains on the images
whose index within their class is ``k mod G`` (``G = min(ipc, inner_steps)``), so at ipc 10 with 10
steps every step sees one image per class (the paper's "10 steps x 1 image per class"), and at
ipc 1 every step sees the whole set. ``split_steps=False`` feeds the whole set at every step.
The learned step sizes travel in the proxy's meta (``learned_lr``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ...errors import ConfigError
from ...training.loop import bf16_autocast, check_precision
from ..base import NetworkMatchingDistiller
from ..registry import register
from ..unroll import forward, parameters, sgd_unroll, unroll_layout


def _softplus_inverse(y: float) -> float:
    return y + math.log(-math.expm1(-y))  # log(exp(y) - 1), stable for small and large y


@register
class DatasetDistillation(NetworkMatchingDistiller):
    name = "dd"
    summary = "performance matching: back-propagate through unrolled SGD on the synthetic set (Wang et al.)"
    cpu_budget = {"iterations": 300, "init": "real", "inner_epochs": 1, "batch_real": 256, "lr_img": 0.03,
                  "lr_decay_every": None, "net": "D3-W32-relu-instancenorm-avgpool"}

    def __init__(self, ipc: int = 10, iterations: int = 23_400, inner_steps: int = 10, inner_epochs: int = 3,
                 lr_inner: float = 0.02, lr_img: float = 0.01, lr_decay: float = 0.5,
                 lr_decay_every: int | None = 2_340, n_inits: int = 1, batch_real: int = 1024,
                 split_steps: bool = True, init: str = "noise", augment: str | None = None, net: str | None = None,
                 space: str = "convnet", matching_space: str | None = None, precision: str = "fp32", seed: int = 0,
                 device: str = "cpu", checkpoint_every: int = 50):
        """Defaults are the paper's MNIST settings for random initialisations (its released code):
        10 inner steps x 3 epochs, step sizes initialised at 0.02 and learned, Adam with lr 0.01 and
        betas (0.5, 0.999) halved every 40 epochs over 400 epochs of real batches of 1,024
        (about 23,400 iterations on MNIST), one fresh initialisation per iteration, noise init.
        The network is DC's default ConvNet instead of the paper's LeNet.

        Args:
            inner_steps: SGD steps per pass over the synthetic set (the paper's ``distill_steps``).
            inner_epochs: passes over those steps (``distill_epochs``); the unroll has
                ``inner_steps * inner_epochs`` steps, each with its own learned step size.
            lr_inner: initial inner step size (learned; softplus keeps it positive).
            lr_img: Adam learning rate for the pixels and the step sizes.
            lr_decay, lr_decay_every: multiply ``lr_img`` by ``lr_decay`` every that many iterations
                (None: constant).
            n_inits: random initialisations per iteration; the outer loss is their mean.
            batch_real: real images (all classes) on which the trained networks are scored.
            split_steps: per-step synthetic batches as in the paper (see the module docstring);
                False trains on the whole synthetic set at every step.
            augment: differentiable augmentation of the synthetic batches inside the unroll
                (None as in the paper, or ``"dsa"``/a strategy).
            net: architecture id of the network in ``space`` (default: its default architecture).
            matching_space: draw the architecture from this space for every initialisation instead.
            precision: ``fp32``, or ``bf16`` for the network's passes (the unrolled steps and the real
                batch's) under bfloat16 autocast, as ``mtt``'s student: the unroll's parameters, step
                sizes, losses and every gradient stay float32. Pays where the device computes bf16 in
                hardware (``nasdistill.training.native_bf16``); the images move as in fp32 to bf16
                rounding (``tests/test_speed.py``). Part of the key when not ``fp32``.
        """
        super().__init__(ipc=ipc, iterations=iterations, init=init, augment=augment, net=net, space=space,
                         matching_space=matching_space, seed=seed, device=device, checkpoint_every=checkpoint_every)
        self.inner_steps = inner_steps
        self.inner_epochs = inner_epochs
        self.lr_inner = lr_inner
        self.lr_img = lr_img
        self.lr_decay = lr_decay
        self.lr_decay_every = lr_decay_every
        self.n_inits = n_inits
        self.batch_real = batch_real
        self.split_steps = split_steps
        self.precision = precision

    def check(self, dataset):
        super().check(dataset)
        check_precision(self.precision)
        self._check_ints("inner_steps", "inner_epochs", "n_inits", "batch_real")
        self._check_positive("lr_inner", "lr_img")
        if self.lr_decay_every is not None and (self.lr_decay_every < 1 or not 0 < self.lr_decay <= 1):
            raise ConfigError("dd needs lr_decay in (0, 1] and lr_decay_every >= 1",
                              "pass lr_decay_every=None for a constant learning rate")

    # --- state ---------------------------------------------------------------------------------
    def _init_state(self, dataset, ctx):
        self.images = self._initial_images(dataset).to(self.device).requires_grad_(True)
        self.labels = self._class_labels(dataset).to(self.device)
        steps = self.inner_steps * self.inner_epochs
        self.raw_lrs = torch.full((steps,), _softplus_inverse(self.lr_inner), device=self.device, requires_grad=True)
        self.opt = torch.optim.Adam([self.images, self.raw_lrs], lr=self.lr_img, betas=(0.5, 0.999))
        self._init_networks(dataset)
        self._groups = self._step_groups(dataset.num_classes)

    def _extra_state(self):
        return {"raw_lrs": self.raw_lrs, "opt": self.opt}

    def _step_groups(self, num_classes: int) -> list[torch.Tensor]:
        """Indices into the synthetic set used at each inner step of one epoch."""
        n_groups = min(self.ipc, self.inner_steps) if self.split_steps else 1
        within = torch.arange(self.ipc)
        groups = []
        for k in range(self.inner_steps):
            keep = within[within % n_groups == k % n_groups]
            groups.append((torch.arange(num_classes)[:, None] * self.ipc + keep[None, :]).reshape(-1).to(self.device))
        return groups

    def step_sizes(self) -> torch.Tensor:
        """The current inner step sizes, one per unrolled step."""
        return F.softplus(self.raw_lrs)

    # --- one outer iteration -------------------------------------------------------------------
    def _unroll(self, model, lrs: torch.Tensor, g: torch.Generator, lay=None) -> dict:
        params = {k: v.requires_grad_(True) for k, v in parameters(model).items()}
        augment = (lambda x, gen: self.aug(x, generator=gen)) if self.aug is not None else None
        for k in range(len(lrs)):
            idx = self._groups[k % self.inner_steps]
            params, _ = sgd_unroll(model, params, self.images[idx], self.labels[idx], steps=1, lr=lrs[k],
                                   generator=g, augment=augment, layout=lay)
        return params

    def _step(self, t, dataset, g):
        for group in self.opt.param_groups:
            decays = t // self.lr_decay_every if self.lr_decay_every else 0
            group["lr"] = self.lr_img * self.lr_decay ** decays
        idx = torch.randperm(len(dataset.x_train), generator=g)[: self.batch_real]
        real_x, real_y = dataset.x_train[idx].to(self.device), dataset.y_train[idx].to(self.device)
        self.opt.zero_grad(set_to_none=True)
        total = 0.0
        for j in range(self.n_inits):
            model = self.nets.build(self.seed, t * self.n_inits + j, dataset, self.device).train()
            for p in model.parameters():
                p.requires_grad_(False)
            lrs = self.step_sizes()  # float32, outside autocast
            with unroll_layout(model, self.precision, self.device) as lay, bf16_autocast(self.device, self.precision):
                params = self._unroll(model, lrs, g, lay)
                logits = forward(model, params, lay(real_x))
            loss = F.cross_entropy(logits.float(), real_y) / self.n_inits
            loss.backward()  # one graph per initialisation: gradients accumulate, memory does not
            total += loss.item()
        self.opt.step()
        return total

    # --- results -------------------------------------------------------------------------------
    def _fit(self, dataset, ctx):
        out = super()._fit(dataset, ctx)
        self.learned_lrs_ = self.step_sizes().detach().cpu()
        return out

    def to_proxy(self):
        proxy = super().to_proxy()
        proxy.meta["learned_lr"] = [float(v) for v in self.learned_lrs_]
        return proxy
