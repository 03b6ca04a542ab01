"""``dm``: single-layer distribution matching (Zhao & Bilen, WACV 2023, "Dataset Condensation with
Distribution Matching").

Each iteration draws a freshly initialised network; real and synthetic images of every class go
through the same sampled augmentation (siamese, as DSA) and the network's embedding; the synthetic
pixels move so that each class's mean synthetic embedding matches its mean real embedding
(squared L2 summed over classes). The network is never trained. Under ``torchrun`` each rank
embeds a share of the classes and the gradients are summed (:mod:`nasdistill.distill.parallel`).
"""

from __future__ import annotations

import torch

from .. import parallel
from ...training.loop import check_precision
from ..base import NetworkMatchingDistiller, has_batchnorm
from ..embed import check_compile, real_chunk, real_passes
from ..registry import register


@register
class DistributionMatching(NetworkMatchingDistiller):
    name = "dm"
    summary = "distribution matching: per-class mean embeddings of random networks (Zhao & Bilen)"
    cpu_budget = {"iterations": 200, "batch_real": 64}

    def __init__(self, ipc: int = 10, iterations: int = 20000, lr_img: float = 1.0, momentum: float = 0.5,
                 batch_real: int = 256, init: str = "real", augment: str | None = "dsa", net: str | None = None,
                 space: str = "convnet", matching_space: str | None = None, precision: str = "fp32",
                 compile: bool = False, seed: int = 0, device: str = "cpu", checkpoint_every: int = 50):
        """Defaults are the paper's (20,000 iterations, image lr 1.0 with momentum 0.5, 256 real
        images per class, real init, DSA augmentation, DC's default ConvNet).

        Args:
            net: architecture id of the matching network in ``space`` (default: its default architecture).
            matching_space: draw the matching architecture from this space every iteration instead.
            precision: ``fp32``, or ``bf16`` to embed the real images (no gradient flows through them,
                ~90% of an iteration's time) under bfloat16 autocast in the channels_last layout: about
                2x faster on that part on CPUs with AMX; it changes the numerics, so it is off by default.
            compile: embed the real images through :func:`torch.compile` (fp32, one fixed matching network;
                needs a C++ compiler on a CPU; :mod:`nasdistill.distill.embed`): 1.4x on that part on a
                2-core AVX2 CPU after a one-time compile of ~20 s; values equal to float rounding (~1e-6),
                so it is an option, and keyed.
        """
        super().__init__(ipc=ipc, iterations=iterations, init=init, augment=augment, net=net, space=space,
                         matching_space=matching_space, seed=seed, device=device, checkpoint_every=checkpoint_every)
        self.lr_img = lr_img
        self.momentum = momentum
        self.batch_real = batch_real
        self.precision = precision
        self.compile = compile

    def check(self, dataset):
        super().check(dataset)
        check_precision(self.precision)
        check_compile(self.compile, precision=self.precision, matching_space=self.matching_space)

    def _init_state(self, dataset, ctx):
        self.images = self._initial_images(dataset).to(self.device).requires_grad_(True)
        self.labels = self._class_labels(dataset)
        self.opt = torch.optim.SGD([self.images], lr=self.lr_img, momentum=self.momentum)
        self._init_networks(dataset)
        self._by_class = dataset.indices_by_class()

    def _extra_state(self):
        return {"opt": self.opt}

    def _class_batches(self, dataset, g, keep=lambda c: True):
        """(real, synthetic) image batches of the classes ``c`` with ``keep(c)``, through one shared
        augmentation each. Every class's draws are taken from ``g`` (one random stream on every rank);
        only the kept classes' real images are read and augmented."""
        for c, idx in enumerate(self._by_class):
            idx = idx[torch.randperm(len(idx), generator=g)[: self.batch_real]]
            p = self.aug.sample(1, g, self.device) if self.aug is not None else None
            if not keep(c):
                continue
            real = dataset.x_train[idx].to(self.device)
            syn = self.images[c * self.ipc:(c + 1) * self.ipc]
            if p is not None:
                real, syn = self.aug(real, p), self.aug(syn, p)
            yield real, syn

    def _real_means(self, net, reals, chunk: int | None = None) -> list:
        """Mean embedding of each class's real batch (plain tensors autograd may use), embedded in
        pieces of ``chunk`` images (None: at once), in bf16 with ``precision="bf16"`` (one fast-layout
        block for every class)."""
        compile = self.compile and chunk is not None  # batch norm: eager (running stats)
        return [e.mean(0) for e in real_passes(net, reals, chunk=chunk, compile=compile, precision=self.precision)]

    def _step(self, t, dataset, g):
        net = self.nets.build(self.seed, t, dataset, self.device).train()
        for p in net.parameters():
            p.requires_grad_(False)
        # every rank draws every class's batch (the same random stream); it reads and embeds only its share
        pairs = list(self._class_batches(dataset, g, keep=parallel.mine))
        # Real images carry no gradient: each class is embedded on its own (bounded activations, as the
        # reference's per-class passes) under inference_mode, optionally in bf16.
        # On a CPU, pieces of ~32 MNIST images' pixels (real_chunk) keep each activation small enough for
        # the allocator to reuse its memory (no page faults): ~1.4x, the same numbers. Batch norm couples
        # images: no pieces.
        batchnorm = has_batchnorm(net)
        chunk = real_chunk(pairs[0][0], self.device) if pairs and not batchnorm else None
        real_means = self._real_means(net, [r for r, _ in pairs], chunk)
        if batchnorm or not pairs:  # batch statistics couple images: embed each class on its own
            syn_means = [net.embed(s).mean(0) for _, s in pairs]
        else:  # per-image networks: one batched pass is the same computation, faster
            syn_emb = net.embed(torch.cat([s for _, s in pairs]))
            syn_means = [e.mean(0) for e in syn_emb.split([len(s) for _, s in pairs])]
        loss = sum(((rm - sm) ** 2).sum() for rm, sm in zip(real_means, syn_means))
        self.opt.zero_grad(set_to_none=True)
        if pairs:
            loss.backward()
        parallel.all_reduce_grad(self.images)  # a no-op in one process
        self.opt.step()
        return parallel.all_reduce_sum(float(loss.detach()) if pairs else 0.0, self.device)
