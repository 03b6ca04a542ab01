"""``krr``: performance matching by kernel ridge regression on network features, in the style of KIP
(Nguyen, Chen & Lee, ICLR 2021, "Dataset Meta-Learning from Kernel Ridge Regression") and FRePo
(Zhou, Nezhadarya & Ba, NeurIPS 2022, "Dataset Distillation using Neural Feature Regression").

Training a network's last layer on the synthetic set has a closed form once the features are
fixed: kernel ridge regression. With features ``phi`` from a network's embedding
(:meth:`Network.embed`), the synthetic set (X_s, Y_s) predicts a batch of real images X_t as

    pred = K_ts (K_ss + reg * tr(K_ss) / N * I)^-1 Y_s,   K_ss = phi(X_s) phi(X_s)^T,  K_ts = phi(X_t) phi(X_s)^T

and the loss of those predictions against the real labels (MSE against centred one-hot targets,
as KIP and FRePo; or cross-entropy with the predictions read as logits, ``loss="ce"``) is
differentiable in the synthetic pixels and labels - no unrolled training needed.

FRePo's model pool keeps the features from overfitting one network: ``pool_size`` networks, each
iteration one drawn at random supplies the features and is then trained ``online_steps`` steps on
the synthetic set (Adam, ``online_lr``); a network trained ``reset_every`` steps is re-initialised
(fresh seed, and a fresh architecture with ``matching_space``), and the pool starts with staggered
ages so resets are spread out. Only the synthetic images and labels get meta-gradients; the
features of the real batch are computed without a graph.

Labels: with ``learn_labels`` (FRePo's default) each synthetic image has learnable logits ``L``;
its label is the distribution ``softmax(L)`` (temperature 1), initialised at 0.9 on its class and
0.1 spread over the rest, and the regression target is that distribution centred
(``softmax(L) - 1/K``). The proxy stores ``softmax(L)``, float32 (N, K) - exactly the distribution
the regression fitted - since networks are later trained on it with soft cross-entropy. Pool
networks are trained online on the same distributions with soft cross-entropy (FRePo uses MSE on
its unbounded label vectors). Without ``learn_labels`` the labels are the class indices.

Deviation: FRePo optimises the pixels and labels with LAMB (not in torch); Adam is used here,
with FRePo's learning rate and cosine decay to 10% of it.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from ...errors import ConfigError
from ...training.layout import fast_layout, wants_fast_layout
from ...training.loop import check_precision, optimizer_step
from ..base import FitContext, NetworkMatchingDistiller
from ..embed import check_compile, real_chunk, real_pass
from ..registry import register

#: Initial probability of a synthetic image's own class when labels are learned.
LABEL_INIT_CONFIDENCE = 0.9
LOSSES = ("mse", "ce")


def kernel_ridge_predict(feat_s: torch.Tensor, y_s: torch.Tensor, feat_t: torch.Tensor, reg: float) -> torch.Tensor:
    """Kernel ridge regression with the linear kernel on features: predictions for ``feat_t``.

    ``(K_ts) (K_ss + reg * tr(K_ss)/N * I)^-1 y_s`` with ``K = feat feat^T``; the ridge is relative
    to the kernel's mean diagonal, so ``reg`` does not depend on the feature scale. The solve runs
    in float64 (the kernel of near-duplicate images is ill-conditioned) and is differentiable.
    """
    fs, ft, ys = feat_s.double(), feat_t.double(), y_s.double()
    k_ss = fs @ fs.T
    n = k_ss.shape[0]
    ridge = reg * torch.trace(k_ss) / n
    alpha = torch.linalg.solve(k_ss + ridge * torch.eye(n, dtype=k_ss.dtype, device=k_ss.device), ys)
    return (ft @ fs.T @ alpha).to(feat_s.dtype)


@register
class KernelRidgeRegression(NetworkMatchingDistiller):
    name = "krr"
    summary = "performance matching: kernel ridge regression on features of a trained model pool (KIP / FRePo)"
    cpu_budget = {"iterations": 300, "batch_real": 256, "lr_img": 0.01, "lr_label": 0.01,
                  "net": "D3-W32-relu-instancenorm-avgpool"}

    def __init__(self, ipc: int = 10, iterations: int = 500_000, pool_size: int = 10, online_steps: int = 1,
                 reset_every: int = 100, online_lr: float = 3e-4, reg: float = 1e-6, loss: str = "mse",
                 learn_labels: bool = True, lr_img: float = 3e-4, lr_label: float = 3e-4, batch_real: int = 1024,
                 init: str = "real", augment: str | None = None, net: str | None = None, space: str = "convnet",
                 matching_space: str | None = None, compile: bool = False, precision: str = "fp32", seed: int = 0,
                 device: str = "cpu", checkpoint_every: int = 50):
        """Defaults are FRePo's (released code): a pool of 10 networks, each trained online one
        Adam step (lr 3e-4) per use and reset after 100, ridge 1e-6 x mean kernel diagonal, MSE
        against centred one-hot labels, learned labels, real init, real batches of 1,024, pixel and
        label learning rate 3e-4 with cosine decay over 500,000 iterations, no augmentation. The
        feature network is DC's default ConvNet (FRePo: the same ConvNet without normalisation).

        Args:
            pool_size: networks in the pool.
            online_steps: training steps on the synthetic set for the drawn network per iteration
                (0: the pool keeps its random initialisations, as KIP's kernels of untrained networks).
            reset_every: re-initialise a pool network after this many online steps.
            online_lr: Adam learning rate of the online training.
            reg: ridge, relative to the mean of the kernel's diagonal (must be positive).
            loss: ``"mse"`` (KIP, FRePo) or ``"ce"`` (predictions read as logits).
            learn_labels: learn a label distribution per synthetic image (see the module docstring).
            lr_img, lr_label: Adam learning rates of the pixels and of the label logits.
            batch_real: real images (all classes) predicted per iteration.
            augment: differentiable augmentation of both sides before the features (None as FRePo).
            net: architecture id of the pool networks in ``space`` (default: its default architecture).
            matching_space: draw each pool network's architecture from this space instead.
            compile: embed the real batch through :func:`torch.compile` (one fixed ``net``; needs a C++
                compiler on a CPU; :mod:`nasdistill.distill.embed`); values equal to float rounding, keyed.
            precision: ``fp32``, or ``bf16`` for what no gradient to the pixels flows through: the real
                batch's features and the pool networks' online training, under bfloat16 autocast in the fast
                layout (as ``dm``'s real path and candidate training); the synthetic side stays float32. Pays
                where the device computes bf16 in hardware; part of the key when not ``fp32``.
        """
        super().__init__(ipc=ipc, iterations=iterations, init=init, augment=augment, net=net, space=space,
                         matching_space=matching_space, seed=seed, device=device, checkpoint_every=checkpoint_every)
        self.pool_size = pool_size
        self.online_steps = online_steps
        self.reset_every = reset_every
        self.online_lr = online_lr
        self.reg = reg
        self.loss = loss
        self.learn_labels = learn_labels
        self.lr_img = lr_img
        self.lr_label = lr_label
        self.batch_real = batch_real
        self.compile = compile
        self.precision = precision

    def check(self, dataset):
        super().check(dataset)
        check_precision(self.precision)
        check_compile(self.compile, precision=self.precision, matching_space=self.matching_space)
        if self.loss not in LOSSES:
            raise ConfigError(f"unknown krr loss {self.loss!r}", f"use one of {', '.join(LOSSES)}")
        if not self.reg > 0:
            raise ConfigError(f"krr needs a positive ridge reg, got {self.reg!r} (without it the synthetic kernel "
                              "is singular whenever images outnumber feature dimensions or coincide)",
                              "pass reg=1e-6 (FRePo)")
        self._check_ints("pool_size", "reset_every", "batch_real")
        self._check_ints("online_steps", low=0)
        self._check_positive("online_lr", "lr_img", "lr_label")

    # --- state ---------------------------------------------------------------------------------
    def _init_state(self, dataset, ctx):
        k = dataset.num_classes
        self.num_classes = k
        self.images = self._initial_images(dataset).to(self.device).requires_grad_(True)
        self.class_labels = self._class_labels(dataset).to(self.device)
        off = (1 - LABEL_INIT_CONFIDENCE) / (k - 1)
        logits = torch.full((len(self.class_labels), k), math.log(off))
        logits[torch.arange(len(logits)), self.class_labels.cpu()] = math.log(LABEL_INIT_CONFIDENCE)
        self.label_logits = logits.to(self.device).requires_grad_(self.learn_labels)
        groups = [{"params": [self.images], "lr": self.lr_img, "base_lr": self.lr_img}]
        if self.learn_labels:
            groups.append({"params": [self.label_logits], "lr": self.lr_label, "base_lr": self.lr_label})
        self.opt = torch.optim.Adam(groups)
        self._init_networks(dataset)
        self._dataset = dataset
        # staggered ages, so the pool's resets are spread over time (FRePo)
        self.ages = torch.tensor([(self.reset_every // self.pool_size) * i for i in range(self.pool_size)])
        self.generations = torch.zeros(self.pool_size, dtype=torch.long)
        self.pool = [None] * self.pool_size
        self.pool_opts = [None] * self.pool_size
        for i in range(self.pool_size):
            self._new_network(i)

    @property
    def labels(self) -> torch.Tensor:
        """The proxy's labels: the learned distributions, or the class indices."""
        return self._soft_labels() if self.learn_labels else self.class_labels

    def _soft_labels(self) -> torch.Tensor:
        return torch.softmax(self.label_logits, dim=1)

    def _new_network(self, i: int) -> None:
        """(Re-)initialise pool slot ``i`` for its current generation, with a fresh optimiser."""
        model = self.nets.build(self.seed, ("pool", i, int(self.generations[i])), self._dataset, self.device)
        self.pool[i] = model
        self.pool_opts[i] = torch.optim.Adam(model.parameters(), lr=self.online_lr)

    def _extra_state(self):
        state = {"opt": self.opt, "label_logits": self.label_logits, "ages": self.ages, "generations": self.generations}
        for i in range(self.pool_size):
            state[f"pool{i}"] = self.pool[i]
            state[f"pool{i}_opt"] = self.pool_opts[i]
        return state

    def _restore(self, path: Path, ctx: FitContext) -> int:
        # Pool networks must exist with the checkpoint's architectures before their weights load.
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if payload.get("key") == self.key_:
            self.generations.copy_(payload["state"]["generations"])
            for i in range(self.pool_size):
                self._new_network(i)
        return super()._restore(path, ctx)

    # --- one outer iteration -------------------------------------------------------------------
    def _targets(self) -> torch.Tensor:
        """Regression targets of the synthetic set: centred label distributions (or one-hot)."""
        y = self._soft_labels() if self.learn_labels else F.one_hot(self.class_labels, self.num_classes).float()
        return y - 1.0 / self.num_classes

    def _augment(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return self.aug(x, generator=g) if self.aug is not None else x

    def _step(self, t, dataset, g):
        for group in self.opt.param_groups:  # cosine decay to 10% (FRePo), stateless so resume is exact
            group["lr"] = group["base_lr"] * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t / max(1, self.iterations))))
        i = int(torch.randint(self.pool_size, (1,), generator=g))
        model = self.pool[i].eval()
        for p in model.parameters():
            p.requires_grad_(False)
        idx = torch.randperm(len(dataset.x_train), generator=g)[: self.batch_real]
        real_x, real_y = dataset.x_train[idx].to(self.device), dataset.y_train[idx].to(self.device)
        with torch.no_grad():
            real_x = self._augment(real_x, g)
        # no gradient through the real batch, and eval mode couples no images: embedded in pieces under
        # inference_mode on a CPU (the allocator reuses each piece's memory), optionally compiled
        chunk = real_chunk(real_x, self.device)
        feat_t = real_pass(model, real_x, chunk=chunk, compile=self.compile, precision=self.precision)
        feat_s = model.embed(self._augment(self.images, g))
        pred = kernel_ridge_predict(feat_s, self._targets(), feat_t, self.reg)
        if self.loss == "mse":
            target = F.one_hot(real_y, self.num_classes).float() - 1.0 / self.num_classes
            loss = ((pred - target) ** 2).sum(1).mean()
        else:
            loss = F.cross_entropy(pred, real_y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self._train_online(i, g)
        return loss.item()

    def _train_online(self, i: int, g: torch.Generator) -> None:
        """Train pool network ``i`` on the synthetic set, or re-initialise it when it is old enough."""
        if self.online_steps == 0:
            return
        if int(self.ages[i]) >= self.reset_every:
            self.generations[i] += 1
            self.ages[i] = 0
            self._new_network(i)
            return
        model, opt = self.pool[i].train(), self.pool_opts[i]
        for p in model.parameters():
            p.requires_grad_(True)
        x, y = self.images.detach(), self.labels.detach()
        # no gradient to the pixels here: in bf16 as the candidates' training, with precision="bf16"
        with fast_layout(model, wants_fast_layout(model, self.precision)) as nhwc:
            for _ in range(self.online_steps):
                optimizer_step(model, opt, self._augment(x, g), y, precision=self.precision, nhwc=nhwc)
        self.ages[i] += self.online_steps
