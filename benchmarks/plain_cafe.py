"""The reference side of ``throughput.py``'s ``cafe`` case: CAFE's loop in plain PyTorch.

A minimal re-implementation, written for this benchmark only, of one distillation iteration of CAFE
(Wang et al., CVPR 2022, "CAFE: Learning to Condense Dataset by Aligning Features") structured as the
authors' ``distill.py`` (github.com/kaiwang960112/CAFE) writes its loop with DSA, but computing the
math of nasdistill's ``cafe`` with the settings :data:`SETTINGS` passes to both sides:

* outer step: for every class, a real batch drawn with ``np.random.permutation`` and the class's
  synthetic images, both through DSA seeded from the clock (one shared transformation per class,
  ``_plain.PlainDSA``); all classes gathered into one real and one synthetic batch, one forward of
  each through a plain ConvNet (``_plain.PlainConvNet``; its conv blocks' outputs read by iterating
  ``net.features``); the squared L2 distance of per-class mean features at every block (early blocks
  weighted 0.1, the embedding 1, as the authors' ``criterion_middle``) plus 0.01 x the summed
  cross-entropy of the real embeddings under the synthetic class centres (``torch.mm`` with the
  centres, the authors' ``inner_weight`` x ``criterion_sum``); one backward and step of
  ``torch.optim.SGD`` (lr 0.1, momentum 0.5, halved at 60/80/90% of the iterations run: the
  authors' 1200/1600/1800 of 2000); the total, discrimination and alignment losses read with
  ``.item()`` as the authors log them;
* network update: the network is kept across outer steps and trained on a detached copy of the
  synthetic set through ``TensorDataset`` + ``DataLoader`` and DC's ``epoch()`` (``_plain.plain_epoch``:
  per-image DSA, ``.item()`` and NumPy accuracy per batch) with ``torch.optim.SGD`` (lr 0.01, no
  momentum), a fresh network every ``reinit_every`` outer steps.

Deviations from the authors' loop, so that both sides do the same work and math (each one makes
the reference *cheaper*, so the speed-up is, if anything, understated):

* fixed loop lengths instead of the authors' accuracy watchers (``lambda_1``/``lambda_2``): a new
  network every ``reinit_every`` (10) outer steps, and after every outer step but a round's last (and
  the run's last) ``inner_steps`` (10) network steps of one batch of ``min(batch_train, N)`` synthetic
  images each (a ``DataLoader`` epoch when N <= 256, as at ipc 10). The watchers' accuracy reads on
  128 real images a class after every outer and inner step, and the ``epoch('test')`` pass after
  every inner epoch, are left out;
* the network is frozen during the outer step (as nasdistill's): the authors' cross-entropy of the
  real images' logits (``loss_real``, which gives the pixels no gradient) and the weight gradients
  their backward computes (then zeroed by the next ``epoch()``) are left out;
* the aligned layers are nasdistill's ``Network.feature_maps`` of DC's ConvNet: each conv block's
  pooled output (0.1 each but the last) and the embedding (1); see "differences" below;
* synthetic images start from real ones (the authors' default is noise; the init is not timed);
  MNIST stays 28x28 with padding 1 in the first conv, as every reference loop of ``throughput.py``
  (the authors' ConvNet pads the first conv by 3 for one-channel data, i.e. works at 32x32).

Differences between nasdistill's ``cafe`` math and the authors' code (kept here on nasdistill's side;
they change only a few cheap reductions, not the cost): the authors align the pre-pooling
activations of blocks 1-3 (weights 0.1, 0.1, 1) plus the pooled output of block 3 (1) and, in
``loss_output``, the embedding again (1: the same tensor flattened, so 2 in all on it); nasdistill
aligns the pooled outputs of blocks 1-2 (0.1 each) and the embedding (1). The loop lengths are fixed
(``reinit_every``, ``inner_steps``) rather than decided by the accuracy watchers.

Iterations counted per call: each call of a side starts a fresh network round at its first
iteration (nasdistill's ``fit`` starts from t = 0). Since a run's last outer step never trains the
network (it would be replaced), ``iterations=1`` times the outer step alone; pass 2 or more to
include the network's inner training (``iterations=reinit_every`` times one whole network round).

    cd benchmarks && OMP_NUM_THREADS=1 python plain_cafe.py      # smoke check: tiny sizes, both sides
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from _plain import PlainConvNet, PlainDSA, ours_variants, plain_epoch
from torch import nn


#: Both sides' settings: nasdistill's defaults, which are the authors' CAFE+DSA settings (image lr 0.1,
#: momentum 0.5; early layers 0.1; discrimination 0.01 on the summed cross-entropy of plain inner
#: products; network SGD lr 0.01, no momentum, batches of up to 256 synthetic images), the authors'
#: dynamic loops fixed at their minimum lengths (10 outer steps a network, 10 network steps after each).
SETTINGS = {"lr_img": 0.1, "momentum": 0.5, "early_layer_weight": 0.1, "lambda_discrimination": 0.01,
            "temperature": 1.0, "inner_steps": 10, "reinit_every": 10, "lr_net": 0.01, "momentum_net": 0.0,
            "batch_train": 256, "init": "real", "augment": "dsa"}

#: The image lr halves at these fractions of the iterations run (the authors' 1200/1600/1800 of 2000).
MILESTONES = (0.6, 0.8, 0.9)


def plain_feature_maps(net, x):
    """Every conv block's output (after its pooling layer), the last one flattened: the embedding."""
    maps = []
    for layer in net.features:
        x = layer(x)
        if isinstance(layer, nn.AvgPool2d):
            maps.append(x)
    maps[-1] = maps[-1].flatten(1)
    return maps


def class_means(x, sizes):
    """Per-class mean of a batch gathered class by class (``criterion_middle``'s view-and-mean)."""
    return torch.stack([chunk.mean(0) for chunk in x.split(sizes)])


def middle_distance(real, syn, real_sizes, syn_sizes):
    """The authors' ``criterion_middle``: summed squared error between per-class mean features."""
    return F.mse_loss(class_means(syn, syn_sizes), class_means(real, real_sizes), reduction="sum")


class PlainCAFE:
    """The reference loop's state: all training images, per-class index lists, the synthetic set and
    its optimiser (built once), and the kept network with its optimiser (rebuilt every round)."""

    def __init__(self, ds, ipc, batch_real, device, settings):
        self.s = SimpleNamespace(**settings)
        self.x = ds.x_train.to(device)
        self.indices = [idx.tolist() for idx in ds.indices_by_class()]
        self.k, self.ipc, self.batch_real, self.device = ds.num_classes, ipc, batch_real, device
        self.shape = ds.image_shape
        self.syn = torch.empty((self.k * ipc, *self.shape), device=device).requires_grad_(True)
        for c in range(self.k):  # init from random real images of each class
            self.syn.data[c * ipc:(c + 1) * ipc] = self.get_images(c, ipc).detach().data
        self.labels = torch.arange(self.k, device=device).repeat_interleave(ipc)
        self.opt_img = torch.optim.SGD([self.syn], lr=self.s.lr_img, momentum=self.s.momentum)
        self.aug = PlainDSA()
        self.net = self.opt_net = None

    def get_images(self, c, n):
        return self.x[np.random.permutation(self.indices[c])[:n]]

    def new_network(self):
        self.net = PlainConvNet(self.shape[0], self.shape[1], self.k).to(self.device)
        self.net.train()
        self.opt_net = torch.optim.SGD(self.net.parameters(), lr=self.s.lr_net, momentum=self.s.momentum_net)

    def adjust_learning_rate(self, t, iterations):
        lr = self.s.lr_img
        for m in MILESTONES:
            lr *= 0.5 if t >= round(m * iterations) else 1.0
        for group in self.opt_img.param_groups:
            group["lr"] = lr

    def loss(self, net, img_real, img_syn, real_sizes):
        """(total, alignment, discrimination) of gathered real and synthetic batches."""
        syn_sizes = [self.ipc] * self.k
        real_maps = [f.detach() for f in plain_feature_maps(net, img_real)]
        syn_maps = plain_feature_maps(net, img_syn)
        weights = [self.s.early_layer_weight] * (len(real_maps) - 1) + [1.0]
        loss_middle = sum(w * middle_distance(r, s, real_sizes, syn_sizes)
                          for w, r, s in zip(weights, real_maps, syn_maps))
        centres = class_means(syn_maps[-1], syn_sizes)
        output = torch.mm(real_maps[-1], centres.t()) / self.s.temperature
        lab_real = torch.cat([torch.full((n,), c, dtype=torch.long, device=self.device)
                              for c, n in enumerate(real_sizes)])
        loss_output = self.s.lambda_discrimination * F.cross_entropy(output, lab_real, reduction="sum")
        return loss_middle + loss_output, loss_middle, loss_output

    def outer_step(self):
        net = self.net
        for p in net.parameters():
            p.requires_grad = False
        img_real_gather, img_syn_gather, sizes = [], [], []
        for c in range(self.k):
            img_real = self.get_images(c, self.batch_real)
            img_syn = self.syn[c * self.ipc:(c + 1) * self.ipc]
            seed = int(time.time() * 1000) % 100000
            img_real, img_syn = self.aug(img_real, seed), self.aug(img_syn, seed)
            img_real_gather.append(img_real)
            img_syn_gather.append(img_syn)
            sizes.append(len(img_real))
        loss, loss_middle, loss_output = self.loss(net, torch.cat(img_real_gather), torch.cat(img_syn_gather), sizes)
        self.opt_img.zero_grad()
        loss.backward()
        self.opt_img.step()
        self.opt_img.zero_grad()
        loss_value = loss.item()
        self.loss_kai, self.loss_middle = loss_output.item(), loss_middle.item()
        for p in net.parameters():
            p.requires_grad = True
        return loss_value

    def train_network(self):
        image_syn_train, label_syn_train = self.syn.detach().clone(), self.labels.clone()
        dst = torch.utils.data.TensorDataset(image_syn_train, label_syn_train)
        bs = min(self.s.batch_train, len(dst))  # one batch a step, as nasdistill's network steps
        loader = torch.utils.data.DataLoader(dst, batch_size=bs, num_workers=0,
                                             sampler=torch.utils.data.RandomSampler(dst, num_samples=bs))
        for _ in range(self.s.inner_steps):
            plain_epoch(self.net, loader, self.opt_net, self.aug, self.device, train=True)

    def run(self, iterations):
        """``iterations`` CAFE iterations (a fresh network at the first); the last one's loss."""
        loss = None
        for t in range(iterations):
            if t % self.s.reinit_every == 0:
                self.new_network()
            self.adjust_learning_rate(t, iterations)
            loss = self.outer_step()
            last_of_round = (t + 1) % self.s.reinit_every == 0 or t + 1 == iterations
            if self.s.inner_steps and not last_of_round:  # a network about to be replaced is not trained
                self.train_network()
        return loss


def cafe_case(ds, args, iterations: int, **overrides):
    """-> (reference, {variant_label: ours}) : zero-arg callables, each running ``iterations`` CAFE
    iterations and returning the last loss. ``overrides`` change :data:`SETTINGS` on both sides.
    Ours runs once per precision of ``args.precisions`` if nasdistill's ``cafe`` takes a ``precision``
    setting, else in fp32 only."""
    settings = {**SETTINGS, **overrides}
    ref = PlainCAFE(ds, args.ipc, args.batch_real, args.device, settings)

    def reference():
        return ref.run(iterations)

    return reference, ours_variants("cafe", ds, args, iterations, batch_real=args.batch_real, **settings)


if __name__ == "__main__":
    from _common import data_root

    from nasdistill.data import load_dataset

    ds = load_dataset("mnist", root=data_root(), train_per_class=16, test_per_class=10)
    args = SimpleNamespace(ipc=2, batch_real=16, device="cpu", precisions=["fp32"])
    for n in (1, 2):  # 1: the outer step alone; 2: plus the network's inner training after the first
        reference, variants = cafe_case(ds, args, n)
        sides = {"reference": reference, **{f"ours {k}": v for k, v in variants.items()}}
        for label, fn in sides.items():
            t0 = time.perf_counter()
            loss = fn()
            print(f"{n} iteration(s), {label}: {time.perf_counter() - t0:.3f} s, last loss {loss:.4f}")
