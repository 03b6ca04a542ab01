"""``cafe``: Condense dataset by Aligning FEatures (Wang et al., CVPR 2022, "CAFE: Learning to Condense
Dataset by Aligning Features").

CAFE keeps one matching network for a while and alternates two updates (its bi-level loop):

* outer step (the synthetic pixels): real and synthetic images of every class go through one shared
  sampled augmentation (siamese, as DSA) and the network. The loss is

  - layer-wise feature alignment: at *every* layer (``Network.feature_maps``), the per-class mean
    feature of the synthetic images should equal that of the real ones (squared L2 summed over
    classes, the paper's categorical feature alignment). Layers before the last weigh
    ``early_layer_weight`` each, the last (the embedding) 1, as in the authors' code: the early
    maps are large and would otherwise dominate the sum;
  - discrimination: the per-class mean last-layer features of the synthetic images act as the
    weights of a linear classifier, which must classify the real features:
    ``logits = real_features @ synthetic_centres.T / temperature``, cross-entropy with the real
    labels summed over the real images, weighted by ``lambda_discrimination``. This keeps the
    synthetic centres discriminative, not merely centred.

* inner steps (the network): the network is trained on the current synthetic set with SGD (DSA
  augmentation per image), so the features it aligns come from a network that learns from the
  proxy, as the networks trained on it later will. It is re-initialised every ``reinit_every``
  outer steps (drawn from ``matching_space`` when given); a network about to be replaced is not
  trained.

The paper decides when to end each loop from the variation of the network's accuracy on real
images (its "dynamic bi-level optimisation"); here both lengths are fixed settings
(``reinit_every``, ``inner_steps``) sized like the loops that rule produces, which keeps every
iteration's cost known and a run exactly resumable.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...errors import ConfigError
from ...training.layout import fast_layout, wants_fast_layout
from ...training.loop import check_precision, optimizer_step
from ..base import NetworkMatchingDistiller, has_batchnorm
from ..embed import check_compile, real_chunk, real_pass
from ..registry import register

#: The image learning rate halves at these fractions of the run (the paper's 1200/1600/1800 of 2000).
LR_MILESTONES = (0.6, 0.8, 0.9)


class _KeptNetwork:
    """The network CAFE keeps across outer steps, with its optimiser, checkpointed as one entry.

    ``load_state_dict`` rebuilds the network of the saved round first, so a resumed run continues
    with the same architecture (``matching_space``), weights and optimiser state.
    """

    def __init__(self, owner: "CAFE", dataset):
        self.owner, self.dataset = owner, dataset
        self.round: int = -1
        self.model: torch.nn.Module | None = None
        self.opt: torch.optim.Optimizer | None = None

    def build(self, r: int) -> None:
        o = self.owner
        self.model = o.nets.build(o.seed, r, self.dataset, o.device).train()
        self.opt = torch.optim.SGD(self.model.parameters(), lr=o.lr_net, momentum=o.momentum_net)
        self.round = r

    def state_dict(self) -> dict:
        if self.model is None:
            return {"round": -1}
        return {"round": self.round, "model": self.model.state_dict(), "opt": self.opt.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if state["round"] < 0:
            return
        self.build(int(state["round"]))
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])


def _class_means(x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Mean of each consecutive chunk of ``x`` (one chunk per class): (K, *x.shape[1:])."""
    return torch.stack([chunk.mean(0) for chunk in x.split(sizes)])


@register
class CAFE(NetworkMatchingDistiller):
    name = "cafe"
    summary = "CAFE: layer-wise feature alignment + discrimination, network trained on the proxy (Wang et al.)"
    cpu_budget = {"iterations": 150, "batch_real": 64, "inner_steps": 2}

    def __init__(self, ipc: int = 10, iterations: int = 20000, lr_img: float = 0.1, momentum: float = 0.5,
                 batch_real: int = 256, early_layer_weight: float = 0.1, lambda_discrimination: float = 0.01,
                 temperature: float = 1.0, inner_steps: int = 10, reinit_every: int = 10, lr_net: float = 0.01,
                 momentum_net: float = 0.0, batch_train: int = 256, init: str = "real", augment: str | None = "dsa",
                 net: str | None = None, space: str = "convnet", matching_space: str | None = None,
                 compile: bool = False, precision: str = "fp32", seed: int = 0, device: str = "cpu",
                 checkpoint_every: int = 50):
        """Defaults are the paper's CAFE+DSA settings, as in the authors' code: image lr 0.1 with
        momentum 0.5, halved at 60, 80 and 90% of the run; 256 real images per class; early layers
        weighted 0.1; discrimination weight 0.01 on the summed cross-entropy with plain inner
        products; network SGD with lr 0.01 and no momentum on batches of up to 256 synthetic images;
        DC's default ConvNet; real init. The authors' 2,000 networks, each kept for at least ten
        outer steps with at least ten network steps after each, become ``iterations=20000``,
        ``reinit_every=10``, ``inner_steps=10``.

        Args:
            early_layer_weight: weight of the feature alignment at every layer before the last.
            lambda_discrimination: weight of the discrimination loss (cross-entropy of the real
                images under the synthetic class centres, summed over the real images).
            temperature: the discrimination logits are inner products divided by this.
            inner_steps: SGD steps of the kept network on the synthetic set after each outer step
                (0: the network is never trained, as DM).
            reinit_every: outer steps between re-initialisations of the network.
            lr_net, momentum_net, batch_train: the network's optimiser and batch size.
            net: architecture id of the matching network in ``space`` (default: its default architecture).
            matching_space: draw each new network's architecture from this space instead.
            compile: the real images' feature maps through :func:`torch.compile` (one fixed ``net``; needs
                a C++ compiler on a CPU; :mod:`nasdistill.distill.embed`); values equal to float rounding, keyed.
            precision: ``fp32``, or ``bf16`` for what no gradient to the pixels flows through: the real
                images' feature maps and the network's training on the synthetic set, under bfloat16 autocast
                in the fast layout (as ``dm``'s real path and candidate training); the synthetic side stays
                float32. Pays where the device computes bf16 in hardware; part of the key when not ``fp32``.
        """
        super().__init__(ipc=ipc, iterations=iterations, init=init, augment=augment, net=net, space=space,
                         matching_space=matching_space, seed=seed, device=device, checkpoint_every=checkpoint_every)
        self.precision = precision
        self.lr_img = lr_img
        self.momentum = momentum
        self.batch_real = batch_real
        self.early_layer_weight = early_layer_weight
        self.lambda_discrimination = lambda_discrimination
        self.temperature = temperature
        self.inner_steps = inner_steps
        self.reinit_every = reinit_every
        self.lr_net = lr_net
        self.momentum_net = momentum_net
        self.batch_train = batch_train
        self.compile = compile

    def check(self, dataset):
        super().check(dataset)
        check_precision(self.precision)
        check_compile(self.compile, precision=self.precision, matching_space=self.matching_space)
        self._check_ints("batch_real", "batch_train", "reinit_every")
        self._check_ints("inner_steps", low=0)
        self._check_positive("lr_img", "lr_net", "temperature")
        if not self.lambda_discrimination >= 0:
            raise ConfigError(f"lambda_discrimination must be 0 or more, got {self.lambda_discrimination!r}",
                              "pass lambda_discrimination >= 0 (0 turns the discrimination loss off)")

    def _init_state(self, dataset, ctx):
        self.images = self._initial_images(dataset).to(self.device).requires_grad_(True)
        self.labels = self._class_labels(dataset)
        self.opt = torch.optim.SGD([self.images], lr=self.lr_img, momentum=self.momentum)
        self._init_networks(dataset)
        self.kept = _KeptNetwork(self, dataset)
        self._by_class = dataset.indices_by_class()

    def _extra_state(self):
        return {"opt": self.opt, "network": self.kept}

    def _lr_at(self, t: int) -> float:
        return self.lr_img * 0.5 ** sum(t >= round(m * self.iterations) for m in LR_MILESTONES)

    def _batches(self, dataset, g):
        """Real and synthetic images of every class (concatenated, class by class) through one
        shared augmentation per class, with the number of real images of each class."""
        reals, syns, sizes = [], [], []
        for c, idx in enumerate(self._by_class):
            idx = idx[torch.randperm(len(idx), generator=g)[: self.batch_real]]
            real = dataset.x_train[idx].to(self.device)
            syn = self.images[c * self.ipc:(c + 1) * self.ipc]
            if self.aug is not None:
                p = self.aug.sample(1, g, self.device)
                real, syn = self.aug(real, p), self.aug(syn, p)
            reals.append(real)
            syns.append(syn)
            sizes.append(len(real))
        return torch.cat(reals), torch.cat(syns), sizes

    def _loss(self, net, real, syn, sizes):
        syn_sizes = [self.ipc] * len(sizes)
        # no gradient through the real images: on a CPU they go through in pieces under inference_mode
        # (the allocator reuses each piece's activations: no 1 GB pass), unless batch norm couples them
        chunk = real_chunk(real, self.device) if not has_batchnorm(net) else None
        real_maps = real_pass(net, real, what="feature_maps", chunk=chunk, compile=self.compile and chunk is not None,
                              precision=self.precision)
        syn_maps = net.feature_maps(syn)
        weights = [self.early_layer_weight] * (len(real_maps) - 1) + [1.0]
        align = sum(w * ((_class_means(r, sizes) - _class_means(s, syn_sizes)) ** 2).sum()
                    for w, r, s in zip(weights, real_maps, syn_maps))
        if not self.lambda_discrimination:
            return align
        centres = _class_means(syn_maps[-1], syn_sizes)  # (K, D): a classifier made of synthetic centres
        logits = real_maps[-1] @ centres.t() / self.temperature
        real_labels = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes)).to(logits.device)
        return align + self.lambda_discrimination * F.cross_entropy(logits, real_labels, reduction="sum")

    def _train_network(self, g):
        """``inner_steps`` SGD steps of the kept network on the (augmented) synthetic set."""
        net, opt = self.kept.model, self.kept.opt
        x, y = self.images.detach(), self.labels.to(self.device)
        bs = min(self.batch_train, len(x))
        # no gradient to the pixels here: in bf16 as the candidates' training, with precision="bf16"
        with fast_layout(net, wants_fast_layout(net, self.precision)) as nhwc:
            for _ in range(self.inner_steps):
                idx = torch.randperm(len(x), generator=g)[:bs].to(self.device)
                xb = x[idx] if self.aug is None else self.aug(x[idx], generator=g)
                optimizer_step(net, opt, xb, y[idx], precision=self.precision, nhwc=nhwc)

    def _step(self, t, dataset, g):
        r = t // self.reinit_every
        if self.kept.round != r:
            self.kept.build(r)
        net = self.kept.model
        net.requires_grad_(False)
        loss = self._loss(net, *self._batches(dataset, g))
        for group in self.opt.param_groups:
            group["lr"] = self._lr_at(t)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        net.requires_grad_(True)
        last_of_round = (t + 1) % self.reinit_every == 0 or t + 1 == self.iterations
        if self.inner_steps and not last_of_round:  # a network about to be replaced is not trained
            self._train_network(g)
        return loss.item()
