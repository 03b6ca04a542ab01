"""The written-out instance norm (nasdistill.training.instance_norm): the bf16 fast layout's (channels_last)
and the unrolled trainings' (second derivative)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from _norms import inputs as _inputs
from _norms import make_norm as _norm
from _norms import run as _run

from nasdistill.distill.unroll import forward, parameters, sgd_unroll
from nasdistill.spaces import get_space
from nasdistill.training.instance_norm import instance_norm, is_instance_norm, written_out_instance_norms
from nasdistill.training.layout import fast_layout


TWICE = pytest.mark.parametrize("twice", [False, True], ids=["first-order", "twice"])


@TWICE
def test_float32_equals_the_native_group_norm_forward_and_backward(twice):
    x, dy = _inputs(torch.float32)
    norm = _norm(x.shape[1])
    ours = _run(lambda t: instance_norm(t, norm, twice=twice), x, dy, norm)
    native = _run(norm, x.contiguous(), dy.contiguous(), norm)
    for a, b, name in zip(ours, native, ("output", "input grad", "weight grad", "bias grad")):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=name)
    assert ours[0].is_contiguous(memory_format=torch.channels_last)


@TWICE
def test_bfloat16_is_within_bf16_rounding_of_the_exact_values(twice):
    """Against float64: relative error of the order of bf16's (2^-8), as the native bf16 kernel's."""
    x, dy = _inputs(torch.bfloat16, shape=(4, 16, 12, 12))
    norm = _norm(16)
    ours = _run(lambda t: instance_norm(t, norm, twice=twice), x, dy, norm)
    ref_norm = _norm(16).double()
    exact = _run(ref_norm, x.double(), dy.double(), ref_norm)
    assert ours[0].dtype == torch.bfloat16 and ours[1].dtype == torch.bfloat16
    for a, b, name in zip(ours, exact, ("output", "input grad", "weight grad", "bias grad")):
        err = float((a.double() - b).norm() / b.norm())
        assert err < 1e-2, (name, err)


@TWICE
def test_it_runs_under_autocast_and_lets_an_inplace_relu_follow(twice):
    x, _ = _inputs(torch.float32)
    norm = _norm(x.shape[1])
    x.requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = F.relu(instance_norm(x.to(torch.bfloat16), norm, twice=twice), inplace=True)
    y.float().sum().backward()
    assert y.dtype == torch.bfloat16 and x.grad is not None and norm.weight.grad is not None


@pytest.mark.parametrize("nhwc", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
def test_first_and_second_derivatives_pass_gradcheck_in_float64(nhwc, affine):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64) * 2 + 1
    x = x.contiguous(memory_format=torch.channels_last if nhwc else torch.contiguous_format).requires_grad_()
    norm = nn.GroupNorm(3, 3, affine=affine).double()
    if affine:
        w = (torch.rand(3, generator=g, dtype=torch.float64) + 0.5).requires_grad_()
        b = torch.randn(3, generator=g, dtype=torch.float64).requires_grad_()

        def fn(x, w, b):  # the norm's parameters as inputs of the checked function
            return instance_norm(x, SimpleNamespace(weight=w, bias=b, affine=True, eps=norm.eps))
        inputs = (x, w, b)
    else:
        fn, inputs = (lambda x: instance_norm(x, norm)), (x,)
    assert torch.autograd.gradcheck(fn, inputs)
    assert torch.autograd.gradgradcheck(fn, inputs)
    assert fn(*inputs).is_contiguous(memory_format=torch.channels_last if nhwc else torch.contiguous_format)


def _meta_gradient(x, dy, norm, fn):
    """d/dx of a function of the input gradient: the second order an unrolled training needs."""
    x = x.clone().requires_grad_()
    (gx,) = torch.autograd.grad((fn(x) * dy).sum(), x, create_graph=True)
    (ggx, gw) = torch.autograd.grad((gx * gx.detach().flip(0)).sum() + gx.square().sum(), (x, norm.weight))
    return ggx, gw


@pytest.fixture(params=["compiled", "eager"])
def kernels(request, monkeypatch):
    """Each test twice: with nasdistill.training.fused_norm's compiled double backward (the unrolls' NCHW
    norms, float32 and bf16 on a CPU) and with the eager ops (``NASDISTILL_FUSED_NORM=0``)."""
    monkeypatch.setenv("NASDISTILL_FUSED_NORM", "1" if request.param == "compiled" else "0")
    return request.param


def test_float32_second_derivative_equals_the_native_group_norm(kernels):
    x, dy = _inputs(torch.float32)
    x, dy = x.contiguous(), dy.contiguous()
    norm = _norm(x.shape[1])
    ours = _meta_gradient(x, dy, norm, lambda t: instance_norm(t, norm))
    native = _meta_gradient(x, dy, norm, norm)
    for a, b, name in zip(ours, native, ("input", "weight")):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("nhwc", [False, True], ids=["nchw", "channels_last"])
def test_bfloat16_second_derivative_is_within_bf16_rounding_of_the_exact_one(nhwc, kernels):
    x, dy = _inputs(torch.bfloat16, shape=(4, 16, 12, 12))
    if not nhwc:  # the unrolls' layout, whose double backward takes a mul and an add_ (instance_norm._affine)
        x, dy = x.contiguous(), dy.contiguous()
    norm = _norm(16)
    ours = _meta_gradient(x, dy, norm, lambda t: instance_norm(t, norm))
    ref_norm = _norm(16).double()
    exact = _meta_gradient(x.double(), dy.double(), ref_norm, ref_norm)
    for a, b, name in zip(ours, exact, ("input", "weight")):
        err = float((a.double() - b).norm() / b.norm())
        assert err < 3e-2, (name, err)


def test_the_first_order_norm_refuses_a_graph_of_its_gradient_instead_of_a_wrong_one():
    x, _ = _inputs(torch.float32)
    norm = _norm(x.shape[1])
    x.requires_grad_()
    with pytest.raises(RuntimeError, match="differentiable once"):
        torch.autograd.grad(instance_norm(x, norm, twice=False).square().sum(), x, create_graph=True)


def test_a_third_derivative_through_backward_raises():
    x, _ = _inputs(torch.float32)
    norm = _norm(x.shape[1])
    x.requires_grad_()
    (g,) = torch.autograd.grad(instance_norm(x, norm).square().sum(), x, create_graph=True)
    (gg,) = torch.autograd.grad(g.square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|twice"):
        gg.sum().backward()


@pytest.mark.parametrize("norm", ["instancenorm", "layernorm", "batchnorm", "groupnorm"])
def test_an_unrolled_training_differentiates_as_through_pytorchs_norm(norm, monkeypatch):
    """The unroll's forward uses the written-out norms: the pixels' meta-gradient of a 3-step unroll of
    DC's instance-norm (layer-, batch-, group-norm) ConvNet equals the one through PyTorch's norms."""
    import nasdistill.training.instance_norm as module
    import nasdistill.training.norms as norms

    calls = []
    function = {"batchnorm": norms._BatchNorm, "groupnorm": norms._GroupNorm}.get(norm, module._Norm)
    apply = function.apply
    monkeypatch.setattr(function, "apply", lambda *a: calls.append(1) or apply(*a))
    model = get_space("convnet").build_seeded(f"D2-W32-relu-{norm}-avgpool", (1, 12, 12), 10, 0)
    g = torch.Generator().manual_seed(0)
    x0, y = torch.randn(20, 1, 12, 12, generator=g), torch.arange(20) % 10
    real_x, real_y = torch.randn(30, 1, 12, 12, generator=g), torch.arange(30) % 10

    def meta_grad(run):
        x = x0.clone().requires_grad_()
        params = {k: v.requires_grad_() for k, v in parameters(model).items()}
        return torch.autograd.grad(F.cross_entropy(run(x, params), real_y), x)[0]

    def ours(x, params):
        final, _ = sgd_unroll(model, params, x, y, steps=3, lr=0.1)
        return forward(model, final, real_x)

    def native(x, params):
        cur = dict(params)
        for _ in range(3):
            loss = F.cross_entropy(torch.func.functional_call(model, cur, (x,)), y)
            grads = torch.autograd.grad(loss, list(cur.values()), create_graph=True)
            cur = {k: v - 0.1 * gk for (k, v), gk in zip(cur.items(), grads)}
        return torch.func.functional_call(model, cur, (real_x,))

    torch.testing.assert_close(meta_grad(ours), meta_grad(native), rtol=1e-4, atol=1e-7)
    assert not any("forward" in m.__dict__ for m in model.modules())  # swapped back after each forward
    assert len(calls) == 2 * 4  # two norms a forward pass: 3 steps and the real batch, then none in native's


def test_written_out_norms_swap_in_and_out_and_nest():
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.GroupNorm(8, 8), nn.GroupNorm(2, 8))
    with written_out_instance_norms(net):
        assert "forward" in net[1].__dict__ and "forward" not in net[2].__dict__
        with written_out_instance_norms(net):
            pass
        assert "forward" in net[1].__dict__  # the enclosing block's swap survives the inner one
    assert not any("forward" in m.__dict__ for m in net.modules())


def test_other_inputs_and_norms_keep_their_own_forward():
    norm = _norm(8)
    x3 = torch.randn(2, 8, 10)
    torch.testing.assert_close(instance_norm(x3, norm), norm(x3))
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
