"""nasdistill.spaces.conv and .activation: the few-channel convolution's matrix-product backward pass and
the rectifiers' gradient-only double backward give PyTorch's values (to float rounding, bit for bit for
the rectifiers) to any order, and step aside where they do not apply."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from nasdistill.spaces import get_space
from nasdistill.spaces.activation import LeakyReLU, ReLU
from nasdistill.spaces.conv import Conv2d, _thin, _ThinConv
from nasdistill.training.instance_norm import _slope


def _twins(c_in, c_out, seed=0, **kw):
    torch.manual_seed(seed)
    ours = Conv2d(c_in, c_out, 3, padding=1, **kw)
    plain = nn.Conv2d(c_in, c_out, 3, padding=1, **kw)
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
                                  "strided input", "vmap"])
def test_other_convolutions_take_pytorchs_path_with_the_same_result(case):
    kw = {"stride": {"stride": 2}, "padding mode": {"padding_mode": "reflect"}}.get(case, {})
    c_in, c_out = (3, 32) if case == "wide input" else (1, 64)
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
