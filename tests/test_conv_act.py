"""nasdistill.spaces.conv and .activation: the few-channel convolution's matrix-product backward pass, the
convolution whose derivatives of every order run oneDNN's first-order kernels, and the rectifiers'
gradient-only double backward give PyTorch's values (to float rounding, bit for bit for the rectifiers
and for a first-order gradient) to any order, skip the gradients nobody asked for, and step aside where
they do not apply."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import nasdistill.spaces.conv as conv_module
from nasdistill._second_order import differentiated_twice, twice
from nasdistill.distill.unroll import forward, parameters
from nasdistill.spaces import get_space
from nasdistill.spaces.activation import LeakyReLU, ReLU
from nasdistill.spaces.conv import Conv2d, _Conv, _thin, _ThinConv, _twice
from nasdistill.training.instance_norm import _slope


def _twins(c_in, c_out, seed=0, **kw):
    torch.manual_seed(seed)
    kw = {"kernel_size": 3, "padding": 1, **kw}
    ours = Conv2d(c_in, c_out, **kw)
    plain = nn.Conv2d(c_in, c_out, **kw)
    plain.load_state_dict(ours.state_dict())  # the same parameters and state-dict keys
    return ours, plain


def _meta(conv, x, probe):
    """A gradient-matching style second-order quantity: d/dx of ||dL/dW||^2, L = <conv(x), probe>."""
    x = x.clone().requires_grad_(True)
    y = torch.relu(conv(x))
    gw, = torch.autograd.grad((y * probe).sum(), conv.weight, create_graph=True)
    return y, gw, torch.autograd.grad(gw.square().sum() + (y * probe).sum(), x)[0]


def test_thin_conv_gradients_of_first_and_second_order_equal_pytorchs():
    ours, plain = _twins(1, 128)
    x = torch.randn(6, 1, 12, 10)
    assert _thin(ours, x.requires_grad_(True))
    probe = torch.randn(6, 128, 12, 10)
    y, gw, meta = _meta(ours, x, probe)
    assert "ThinConv" in type(ours(x).grad_fn).__name__  # the matrix-product backward ran
    yp, gwp, metap = _meta(plain, x, probe)
    assert torch.equal(y, yp)  # PyTorch's forward kernel
    torch.testing.assert_close(gw, gwp, rtol=1e-4, atol=1e-4)
    truth = _meta(copy.deepcopy(plain).double(), x.double(), probe.double())[2]  # float64: the errors' yardstick
    err = lambda m: (m.double() - truth).abs().max().item()  # noqa: E731
    assert err(meta) <= 2 * err(metap) + 1e-5, (err(meta), err(metap))
    xa, xb = x.detach().clone().requires_grad_(True), x.detach().clone().requires_grad_(True)
    ours(xa).mul(probe).sum().backward()
    plain(xb).mul(probe).sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours.bias.grad, plain.bias.grad, rtol=1e-4, atol=1e-4)


def test_thin_conv_function_passes_gradcheck_and_gradgradcheck_in_float64():
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(9, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(9, dtype=torch.float64, requires_grad=True)
    for padding in ((1, 1), (0, 2)):
        f = lambda x, w, b, p=padding: _ThinConv.apply(x, w, b, p)  # noqa: E731
        assert torch.autograd.gradcheck(f, (x, w, b))
        assert torch.autograd.gradgradcheck(f, (x, w, b))


@pytest.mark.parametrize("case", ["no input gradient", "wide input", "stride", "padding mode", "float64", "bf16",
                                  "strided input", "vmap", "1x1"])
def test_other_convolutions_take_pytorchs_path_with_the_same_result(case):
    kw = {"stride": {"stride": 2}, "padding mode": {"padding_mode": "reflect"},
          "1x1": {"kernel_size": 1, "padding": 0}}.get(case, {})
    c_in, c_out = {"wide input": (3, 32), "1x1": (24, 144)}.get(case, (1, 64))
    ours, plain = _twins(c_in, c_out, **kw)
    x = torch.randn(4, c_in, 8, 16)[..., ::2] if case == "strided input" else torch.randn(4, c_in, 8, 8)
    if case in ("float64", "bf16"):
        dt = torch.float64 if case == "float64" else torch.bfloat16
        ours, plain, x = ours.to(dt), plain.to(dt), x.to(dt)
    if case == "vmap":
        xs = torch.randn(3, 4, c_in, 8, 8, requires_grad=True)
        assert torch.equal(torch.func.vmap(ours)(xs), torch.func.vmap(plain)(xs))
        return
    x.requires_grad_(case != "no input gradient")
    assert not _thin(ours, x)
    ya, yb = ours(x), plain(x)
    assert "ThinConv" not in type(ya.grad_fn).__name__ and torch.equal(ya, yb)


@pytest.mark.parametrize("act, plain", [(ReLU(), nn.ReLU()), (LeakyReLU(0.01), nn.LeakyReLU(0.01)),
                                        (ReLU(inplace=True), nn.ReLU(inplace=True)),
                                        (LeakyReLU(0.2, inplace=True), nn.LeakyReLU(0.2, inplace=True))])
def test_rectifiers_equal_pytorchs_to_second_order_bit_for_bit(act, plain):
    torch.manual_seed(0)
    base, w, probe = torch.randn(5, 7, 6, 6), torch.randn(7, 7, 1, 1), torch.randn(5, 7, 6, 6)

    def run(module):
        x = base.clone().requires_grad_(True)
        y = module(nn.functional.conv2d(x, w))  # an intermediate: in-place is allowed on it
        g, = torch.autograd.grad((y * probe).sum(), x, create_graph=True)
        return y, g, torch.autograd.grad(g.square().sum() + y.sum(), x)[0]

    for a, b in zip(run(act), run(plain)):
        assert torch.equal(a, b)
    y = act(nn.functional.conv2d(base.clone().requires_grad_(True), w))
    assert "Rectify" in type(y.grad_fn).__name__


def test_rectifier_in_place_overwrites_its_input_and_steps_aside_without_a_gradient():
    x = torch.randn(4, 3, requires_grad=True).mul(1)
    y = ReLU(inplace=True)(x)
    assert y.data_ptr() == x.data_ptr() and (x >= 0).all()
    z = torch.randn(4, 3)
    assert torch.equal(ReLU()(z), torch.relu(z)) and ReLU()(z).grad_fn is None


def test_fused_instance_norm_still_takes_the_convnets_rectifiers_and_not_other_subclasses():
    assert _slope(ReLU()) == 0.0 and _slope(LeakyReLU(0.01)) == 0.01

    class Shifted(nn.ReLU):  # a user's subclass with other values: never fused
        def forward(self, x):
            return super().forward(x) + 1

    assert _slope(Shifted()) is None


def test_convnet_space_uses_them_and_keeps_its_state_dict_keys():
    space = get_space("convnet")
    net = space.build(space.parse_id("D2-W64-leakyrelu-instancenorm-avgpool"), (1, 16, 16), 10)
    kinds = {type(m) for m in net.modules()}
    assert Conv2d in kinds and LeakyReLU in kinds
    plain_keys = {k for k in net.state_dict()}
    assert "blocks.0.0.weight" in plain_keys and "blocks.0.0.bias" in plain_keys


@pytest.mark.parametrize("kw", [{}, {"stride": 2}, {"padding": 0}, {"groups": 2}, {"dilation": 2, "padding": 2}])
def test_twice_conv_function_passes_gradcheck_gradgradcheck_and_equals_pytorch_at_third_order(kw):
    torch.manual_seed(0)
    shape = nn.Conv2d(4, 6, 3, **{"padding": 1, **kw})  # only its stride, padding, dilation and groups
    x = torch.randn(2, 4, 7, 7, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 4 // shape.groups, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)
    ours = lambda x, w, b: _Conv.apply(x, w, b, shape)  # noqa: E731
    plain = lambda x, w, b: shape._conv_forward(x, w, b)  # noqa: E731
    assert torch.autograd.gradcheck(ours, (x, w, b))
    assert torch.autograd.gradgradcheck(ours, (x, w, b))

    def third(f):
        y = f(x, w, b)
        g1 = torch.autograd.grad(y.square().sum(), (x, w), create_graph=True)
        g2 = torch.autograd.grad(sum(t.square().sum() for t in g1), (x, w), create_graph=True)
        return torch.autograd.grad(sum(t.sin().sum() for t in g2), (x, w, b))

    for a, c in zip(third(ours), third(plain)):  # float64: another order of the same sums
        assert ((a - c).norm() / c.norm()).item() < 1e-9


def _unrolled(conv, x, probe, steps=2, lr=0.1):
    """An unroll's meta-gradient (dd/mtt style): SGD steps on conv's weight, then d/d(x, w0) of a loss."""
    w0 = conv.weight.detach().clone().requires_grad_(True)
    x = x.clone().requires_grad_(True)
    w = w0
    for _ in range(steps):
        y = torch.relu(conv._conv_forward(x, w, conv.bias))
        g, = torch.autograd.grad((y * probe).sum() + y.square().mean(), w, create_graph=True)
        w = w - lr * g
    final = torch.relu(conv._conv_forward(x, w, conv.bias)).square().mean()
    return torch.autograd.grad(final, (x, w0))


def test_twice_conv_is_taken_inside_the_flag_only_and_gives_pytorchs_gradients():
    ours, plain = _twins(16, 32)
    x, probe = torch.randn(5, 16, 10, 10, requires_grad=True), torch.randn(5, 32, 10, 10)
    assert not twice() and not _twice(ours, x, ours.weight) and "_Conv" not in type(ours(x).grad_fn).__name__
    with differentiated_twice():
        assert twice() and _twice(ours, x, ours.weight)
        assert type(ours(x).grad_fn).__name__ == "_ConvBackward"
        assert not _twice(ours, x.detach(), ours.weight.detach())  # nothing to differentiate
        assert not _twice(ours, x.double(), ours.weight)
        # first order: nn.Conv2d's own convolution_backward call, bit for bit
        xa, xb = x.detach().clone().requires_grad_(True), x.detach().clone().requires_grad_(True)
        ours(xa).mul(probe).sum().backward()
    plain(xb).mul(probe).sum().backward()
    assert torch.equal(xa.grad, xb.grad) and torch.equal(ours.weight.grad, plain.weight.grad)
    assert torch.equal(ours.bias.grad, plain.bias.grad)
    # an unroll's meta-gradient: float32 error against float64 within 2x of PyTorch's own double backward
    with differentiated_twice():
        meta = _unrolled(ours, x.detach(), probe)
    metap = _unrolled(plain, x.detach(), probe)
    truth = _unrolled(copy.deepcopy(plain).double(), x.detach().double(), probe.double())
    for m, mp, t in zip(meta, metap, truth):
        err, err_plain = ((a.double() - t).abs().max().item() for a in (m, mp))
        assert err <= 2 * err_plain + 1e-6, (err, err_plain)
        torch.testing.assert_close(m, mp, rtol=1e-4, atol=1e-5)


def test_twice_conv_skips_gradients_the_backward_pass_does_not_reach(monkeypatch):
    ours, _ = _twins(8, 16)
    calls = {"input": 0, "weight": 0}
    for name, key in (("_InputGrad", "input"), ("_WeightGrad", "weight")):
        cls = getattr(conv_module, name)
        monkeypatch.setattr(cls, "apply", (lambda f, k: lambda *a: calls.__setitem__(k, calls[k] + 1) or f(*a))(
            cls.apply, key))
    x = torch.randn(3, 8, 6, 6, requires_grad=True)
    with differentiated_twice():
        y = ours(x)
    # an unroll's first-order step: the weight's gradient only, although x requires one too
    torch.autograd.grad(y.square().sum(), ours.weight, create_graph=True)
    assert calls == {"input": 0, "weight": 1}
    torch.autograd.grad(y.square().sum(), x, create_graph=True)
    assert calls == {"input": 1, "weight": 1}


def test_unrolls_run_the_convnets_convolutions_differentiated_twice():
    space = get_space("convnet")
    net = space.build(space.parse_id("D2-W32-relu-instancenorm-avgpool"), (1, 12, 12), 10)
    params = {k: v.requires_grad_(True) for k, v in parameters(net).items()}
    seen = []
    net.blocks[1][0].register_forward_hook(lambda m, i, o: seen.append(type(o.grad_fn).__name__))
    forward(net, params, torch.randn(4, 1, 12, 12))
    assert seen == ["_ConvBackward"] and not twice()


def test_thin_conv_skips_the_pixels_gradient_an_unroll_step_does_not_ask_for(monkeypatch):
    ours, _ = _twins(1, 64)
    calls = []
    monkeypatch.setattr(conv_module, "_input_grad", (lambda f: lambda *a: calls.append(1) or f(*a))(
        conv_module._input_grad))
    x = torch.randn(3, 1, 8, 8).requires_grad_(True)
    y = ours(x)
    assert "ThinConv" in type(y.grad_fn).__name__
    torch.autograd.grad(y.square().sum(), ours.weight, create_graph=True)
    assert calls == []
    torch.autograd.grad(y.square().sum(), x)
    assert calls == [1]


def test_twice_conv_under_bf16_autocast_casts_as_autocast_does_and_moves_the_same_way():
    ours, plain = _twins(16, 32)
    x, probe = torch.randn(5, 16, 10, 10), torch.randn(5, 32, 10, 10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with differentiated_twice():
            y = ours(x.clone().requires_grad_(True))
            assert type(y.grad_fn).__name__ == "_ConvBackward" and y.dtype == torch.bfloat16
            meta = _unrolled(ours, x, probe)
        metap = _unrolled(plain, x, probe)
    for m, mp in zip(meta, metap):
        assert m.dtype == mp.dtype == torch.float32
        assert torch.nn.functional.cosine_similarity(m.flatten(), mp.flatten(), dim=0) > 0.999
