"""The reference side of ``throughput.py``: plain PyTorch pieces shared by its reference loops.

Minimal re-implementations, written for the benchmark only, of what the reference code bases
(DatasetCondensation, mtt-distillation, ...) build their loops from: DC's ConvNet as a plain
``nn.Module``, DSA's augmentation as its reference applies it, DC's gradient distance and its
``epoch()``; and :func:`ours_variants`, the one way every case runs nasdistill's side. Nothing here
is used by the package.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nasdistill.distill import get_method, method_class

ARCH = "D3-W128-relu-instancenorm-avgpool"  # DC's default ConvNet
STRATEGY = "color_crop_cutout_scale_rotate"  # DSA's strategy for MNIST (no flips)


# --- the reference side: plain PyTorch, written for this benchmark ------------------------------
class PlainConvNet(nn.Module):
    """DC's ConvNet: (conv3x3 -> instance norm (GroupNorm(C, C)) -> relu -> avgpool) x depth -> linear."""

    def __init__(self, channels, size, num_classes, depth=3, width=128):
        super().__init__()
        layers, c = [], channels
        for _ in range(depth):
            layers += [nn.Conv2d(c, width, 3, padding=1), nn.GroupNorm(width, width, affine=True), nn.ReLU(),
                       nn.AvgPool2d(2, 2)]
            c, size = width, size // 2
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width * size * size, num_classes)

    def embed(self, x):
        return self.features(x).flatten(1)

    def forward(self, x):
        return self.classifier(self.embed(x))


class PlainDSA:
    """DSA's augmentation as its reference applies it: one op drawn per call; siamese calls reseed the
    global generator before every random draw (so a real and a synthetic batch share parameters),
    per-image calls (``seed=-1``) draw freely."""

    def __init__(self, strategy=STRATEGY):
        self.ops = strategy.split("_")
        self.seed = -1

    def _reseed(self):
        if self.seed != -1:
            torch.manual_seed(self.seed)
            self.seed += 1

    def _rand(self, *shape, device):
        self._reseed()
        v = torch.rand(*shape, device=device)
        return v[:1].expand_as(v).contiguous() if self.siamese else v

    def __call__(self, x, seed=-1):
        self.seed, self.siamese = seed, seed != -1
        self._reseed()
        op = self.ops[torch.randint(0, len(self.ops), (1,)).item()]
        return getattr(self, op)(x)

    def _warp(self, x, theta):
        grid = F.affine_grid(theta, list(x.shape), align_corners=True)
        return F.grid_sample(x, grid, align_corners=True)

    def scale(self, x):
        lo, hi = 1 / 1.2, 1.2
        sx = self._rand(len(x), device=x.device) * (hi - lo) + lo
        sy = self._rand(len(x), device=x.device) * (hi - lo) + lo
        z = torch.zeros_like(sx)
        return self._warp(x, torch.stack([torch.stack([sx, z, z], 1), torch.stack([z, sy, z], 1)], 1))

    def rotate(self, x):
        t = (self._rand(len(x), device=x.device) - 0.5) * 2 * 15 / 180 * math.pi
        z = torch.zeros_like(t)
        return self._warp(x, torch.stack([torch.stack([t.cos(), t.sin(), z], 1),
                                          torch.stack([-t.sin(), t.cos(), z], 1)], 1))

    def color(self, x):
        x = x + (self._rand(len(x), 1, 1, 1, device=x.device) - 0.5)
        m = x.mean(dim=1, keepdim=True)
        x = (x - m) * (self._rand(len(x), 1, 1, 1, device=x.device) * 2) + m
        m = x.mean(dim=[1, 2, 3], keepdim=True)
        return (x - m) * (self._rand(len(x), 1, 1, 1, device=x.device) + 0.5) + m

    def _shifts(self, n, low, high, device):
        self._reseed()
        v = torch.randint(low, high, size=(n, 1, 1), device=device)
        return v[:1].expand_as(v).contiguous() if self.siamese else v

    def crop(self, x):  # translation by whole pixels: pad by one, then gather
        n, _, h, w = x.shape
        s = int(h * 0.125 + 0.5)
        tx, ty = self._shifts(n, -s, s + 1, x.device), self._shifts(n, -s, s + 1, x.device)
        gb, gx, gy = torch.meshgrid(torch.arange(n, device=x.device), torch.arange(h, device=x.device),
                                    torch.arange(w, device=x.device), indexing="ij")
        gx = torch.clamp(gx + tx + 1, 0, h + 1)
        gy = torch.clamp(gy + ty + 1, 0, w + 1)
        pad = F.pad(x, [1, 1, 1, 1, 0, 0, 0, 0])
        return pad.permute(0, 2, 3, 1).contiguous()[gb, gx, gy].permute(0, 3, 1, 2)

    def cutout(self, x):
        n, _, h, w = x.shape
        ch, cw = int(h * 0.5 + 0.5), int(w * 0.5 + 0.5)
        ox = self._shifts(n, 0, h + (1 - ch % 2), x.device)
        oy = self._shifts(n, 0, w + (1 - cw % 2), x.device)
        gb, gx, gy = torch.meshgrid(torch.arange(n, device=x.device), torch.arange(ch, device=x.device),
                                    torch.arange(cw, device=x.device), indexing="ij")
        gx = torch.clamp(gx + ox - ch // 2, min=0, max=h - 1)
        gy = torch.clamp(gy + oy - cw // 2, min=0, max=w - 1)
        mask = torch.ones(n, h, w, dtype=x.dtype, device=x.device)
        mask[gb, gx, gy] = 0
        return x * mask.unsqueeze(1)


def plain_distance(gs, gr):
    """DC's layer-wise gradient distance ('ours'), one term per output node, biases skipped."""
    total = 0
    for a, b in zip(gs, gr):
        if b.ndim == 1:
            continue
        a, b = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
        total = total + torch.sum(1 - torch.sum(a * b, -1) / (a.norm(dim=-1) * b.norm(dim=-1) + 1e-6))
    return total


def plain_epoch(net, loader, opt, aug, device, train):
    """One pass as DC's ``epoch()``: per-batch augmentation, loss and accuracy read on the host."""
    loss_sum, correct, count = 0.0, 0, 0
    net.train() if train else net.eval()
    for img, lab in loader:
        img, lab = img.to(device), lab.to(device)
        if train:
            img = aug(img)
        out = net(img)
        loss = F.cross_entropy(out, lab)
        correct += int(np.sum(np.equal(np.argmax(out.cpu().data.numpy(), axis=-1), lab.cpu().data.numpy())))
        loss_sum += loss.item() * len(lab)
        count += len(lab)
        if train:
            opt.zero_grad()
            loss.backward()
            opt.step()
    return loss_sum / count, correct / count


# --- nasdistill's side ---------------------------------------------------------------------------
def ours_distill(method, ds, args, iterations, **settings):
    """``iterations`` iterations of nasdistill's ``method`` on DC's ConvNet (a fresh ``fit``, no
    checkpoints); the last iteration's loss. ``settings`` go to the method as they are."""
    d = get_method(method, ipc=args.ipc, iterations=iterations, net=ARCH, device=args.device,
                   checkpoint_every=0, **settings)
    d.fit(ds, progress=False)
    return d.history_[-1]


def ours_variants(method, ds, args, iterations, labels=None, **settings):
    """{label: zero-arg callable running :func:`ours_distill`}: one per precision of ``args.precisions``
    when the method takes a ``precision`` setting, else fp32 only; plus ``"fp32 + compile"`` (the same
    settings with ``compile=True``) when ``args.compile`` and the method takes ``compile``. ``labels``
    names the precisions' rows (default: the precision itself)."""
    params = method_class(method)._param_names()
    takes = "precision" in params
    precisions = list(args.precisions) if takes else ["fp32"]
    labels = labels or {}

    def run(precision, **extra):
        extra = {**({"precision": precision} if takes else {}), **extra}
        return lambda: ours_distill(method, ds, args, iterations, **settings, **extra)

    variants = {labels.get(p, p): run(p) for p in precisions}
    if getattr(args, "compile", False) and "compile" in params:
        variants["fp32 + compile"] = run("fp32", compile=True)
    return variants
