"""The channels_last instance norm of the bf16 fast layout (nasdistill.training.instance_norm)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nasdistill.training.instance_norm import instance_norm_nhwc, is_instance_norm
from nasdistill.training.layout import fast_layout


def _inputs(dtype, shape=(6, 8, 5, 7), seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g) * 3 + 2).to(dtype).contiguous(memory_format=torch.channels_last)
    dy = torch.randn(shape, generator=g).to(dtype).contiguous(memory_format=torch.channels_last)
    return x, dy


def _run(fn, x, dy, norm):
    x = x.clone().requires_grad_()
    norm.zero_grad()
    y = fn(x)
    y.backward(dy)
    return y.detach(), x.grad, norm.weight.grad.clone(), norm.bias.grad.clone()


def _norm(c, seed=1):
    norm = nn.GroupNorm(c, c)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(c, generator=g) + 0.5)
        norm.bias.copy_(torch.randn(c, generator=g))
    return norm


def test_float32_equals_the_native_group_norm_forward_and_backward():
    x, dy = _inputs(torch.float32)
    norm = _norm(x.shape[1])
    ours = _run(lambda t: instance_norm_nhwc(t, norm), x, dy, norm)
    native = _run(norm, x.contiguous(), dy.contiguous(), norm)
    for a, b, name in zip(ours, native, ("output", "input grad", "weight grad", "bias grad")):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=name)
    assert ours[0].is_contiguous(memory_format=torch.channels_last)


def test_bfloat16_is_within_bf16_rounding_of_the_exact_values():
    """Against float64: relative error of the order of bf16's (2^-8), as the native bf16 kernel's."""
    x, dy = _inputs(torch.bfloat16, shape=(4, 16, 12, 12))
    norm = _norm(16)
    ours = _run(lambda t: instance_norm_nhwc(t, norm), x, dy, norm)
    ref_norm = _norm(16).double()
    exact = _run(ref_norm, x.double(), dy.double(), ref_norm)
    assert ours[0].dtype == torch.bfloat16 and ours[1].dtype == torch.bfloat16
    for a, b, name in zip(ours, exact, ("output", "input grad", "weight grad", "bias grad")):
        err = float((a.double() - b).norm() / b.norm())
        assert err < 1e-2, (name, err)


def test_it_runs_under_autocast_and_lets_an_inplace_relu_follow():
    x, _ = _inputs(torch.float32)
    norm = _norm(x.shape[1])
    x.requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = F.relu(instance_norm_nhwc(x.to(torch.bfloat16), norm), inplace=True)
    y.float().sum().backward()
    assert y.dtype == torch.bfloat16 and x.grad is not None and norm.weight.grad is not None


def test_a_double_backward_raises_instead_of_returning_a_wrong_gradient():
    x, _ = _inputs(torch.float32)
    norm = _norm(x.shape[1])
    x.requires_grad_()
    (g,) = torch.autograd.grad(instance_norm_nhwc(x, norm).square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|twice"):
        g.sum().backward()


def test_other_inputs_and_norms_keep_their_own_forward():
    norm = _norm(8)
    x3 = torch.randn(2, 8, 10)
    torch.testing.assert_close(instance_norm_nhwc(x3, norm), norm(x3))
    assert is_instance_norm(nn.GroupNorm(8, 8)) and not is_instance_norm(nn.GroupNorm(2, 8))
    assert not is_instance_norm(nn.BatchNorm2d(8))


def test_fast_layout_swaps_the_instance_norm_in_and_out():
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.GroupNorm(8, 8), nn.ReLU(), nn.GroupNorm(2, 8))
    x = torch.randn(3, 1, 6, 6)
    before = net(x)
    with fast_layout(net) as nhwc:
        assert nhwc and "forward" in net[1].__dict__ and "forward" not in net[3].__dict__
        inside = net(x.contiguous(memory_format=torch.channels_last))
    assert not any("forward" in m.__dict__ or m._forward_hooks or m._forward_pre_hooks for m in net.modules())
    torch.testing.assert_close(inside, before, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(net(x), before)
