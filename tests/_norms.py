"""Inputs, seeded instance norms and a forward-backward runner shared by the instance-norm tests
(tests/test_instance_norm.py, tests/test_fused_norm.py)."""

from __future__ import annotations

import torch
from torch import nn


def inputs(dtype, shape=(6, 8, 5, 7), seed=0):
    """A channels_last input (values around 2, spread 3) and an incoming gradient of ``shape``."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g) * 3 + 2).to(dtype).contiguous(memory_format=torch.channels_last)
    dy = torch.randn(shape, generator=g).to(dtype).contiguous(memory_format=torch.channels_last)
    return x, dy


def make_norm(c, seed=1, affine=True):
    """An instance norm (GroupNorm(c, c)) with seeded weights near 1 and biases near 0 when ``affine``."""
    norm = nn.GroupNorm(c, c, affine=affine)
    if affine:
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            norm.weight.copy_(torch.rand(c, generator=g) + 0.5)
            norm.bias.copy_(torch.randn(c, generator=g))
    return norm


def run(fn, x, dy, norm):
    """``(y, dL/dx, dL/dw, dL/db)`` of ``y = fn(x)`` for ``L = sum(y * dy)``; the parameter gradients
    only when ``norm`` is affine."""
    x = x.clone().requires_grad_()
    norm.zero_grad()
    y = fn(x)
    y.backward(dy)
    grads = (norm.weight.grad.clone(), norm.bias.grad.clone()) if norm.affine else ()
    return (y.detach(), x.grad, *grads)
