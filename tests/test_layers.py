"""nasdistill.spaces.layers: the fast 2x2 average pool is nn.AvgPool2d, bit for bit, to any order; the
fast max pools (without a gradient, and with one, to any order) are nn.MaxPool2d."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nasdistill.spaces import get_space
from nasdistill.spaces.layers import AvgPool2d, MaxPool2d, _AvgPool, _AvgPoolNHWC

DTYPES = (torch.float32, torch.bfloat16, torch.float64)


def _pair(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g).to(dtype)
    return x.clone().requires_grad_(True), x.clone().requires_grad_(True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 5, 8, 8), (2, 4, 6, 10), (1, 2, 2, 2), (4, 128, 28, 28)])
def test_fast_pool_equals_pytorch_forward_and_backward_bit_for_bit(dtype, shape):
    fast, ref = AvgPool2d(2, 2), nn.AvgPool2d(2, 2)
    a, b = _pair(shape, dtype)
    ya, yb = fast(a), ref(b)
    name = type(ya.grad_fn).__name__
    assert "AvgPool" in name and "Backward0" not in name  # ours, not PyTorch's AvgPool2DBackward0
    assert ya.dtype == yb.dtype and torch.equal(ya, yb)
    g = torch.randn_like(ya)
    (ga,), (gb,) = torch.autograd.grad(ya, a, g), torch.autograd.grad(yb, b, g)
    assert torch.equal(ga, gb)


@pytest.mark.parametrize("by_conv", [True, False])
def test_bf16_pool_by_depthwise_conv_or_strided_sums_equals_pytorch_over_a_wide_range(monkeypatch, by_conv):
    """bf16 forward passes run as a depthwise convolution where bf16 is computed in hardware, as strided
    sums elsewhere: both the bits of nn.AvgPool2d, for values spanning 2^-20 to 2^20."""
    import nasdistill.spaces.layers as layers

    monkeypatch.setattr(layers, "cpu_bf16", lambda: by_conv)
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(20, 16, 10, 10, generator=g)
         * torch.exp2(torch.randint(-20, 21, (20, 16, 10, 10), generator=g).float())).bfloat16()
    assert torch.equal(AvgPool2d(2, 2)(x), nn.AvgPool2d(2, 2)(x))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # inside autocast too (the unrolls' bf16 option)
        assert torch.equal(AvgPool2d(2, 2)(x), nn.AvgPool2d(2, 2)(x))


@pytest.mark.parametrize("threshold", [0, None], ids=["depthwise-conv", "strided-sums"])
def test_float32_pool_by_depthwise_conv_or_strided_sums_equals_pytorch_over_a_wide_range(monkeypatch, threshold):
    """float32 forward passes of 0.5 M elements or more run as a depthwise convolution, smaller ones as
    strided sums: both the bits of nn.AvgPool2d, for values spanning 2^-100 to 2^100 (normal quarters),
    infinities and NaNs; also as the second derivative's pool of a gradient (any strides)."""
    import nasdistill.spaces.layers as layers

    if threshold is not None:
        monkeypatch.setattr(layers, "POOL_BY_CONV_FROM", threshold)
    calls = []
    monkeypatch.setattr(layers, "_pool_by_conv", lambda x, f=layers._pool_by_conv: calls.append(1) or f(x))
    g = torch.Generator().manual_seed(5)
    x = torch.randn(20, 16, 10, 12, generator=g) * torch.exp2(torch.randint(-100, 101, (20, 16, 10, 12), generator=g).float())
    x[0, 0, 0, :3] = torch.tensor([float("inf"), float("nan"), -float("inf")])
    ours, ref = AvgPool2d(2, 2)(x), nn.AvgPool2d(2, 2)(x)
    assert bool(calls) == (threshold == 0)
    assert torch.equal(ours.nan_to_num(), ref.nan_to_num()) and ours.isnan().sum() == ref.isnan().sum() == 1
    strided = x.transpose(2, 3)  # a non-contiguous view, as the double backward's gradients can be
    assert torch.equal(layers._AvgPool.apply(strided).nan_to_num(), nn.AvgPool2d(2, 2)(strided).nan_to_num())


@pytest.mark.parametrize("threshold", [0, None], ids=["transposed-conv", "strided-copies"])
def test_float32_backward_by_transposed_conv_or_strided_copies_equals_pytorch(monkeypatch, threshold):
    """float32 backward passes of large maps run as a depthwise transposed convolution (each output one
    product by 1/4), smaller ones as four strided copies of the gradient over 4: both the bits of
    nn.AvgPool2d's, for gradients spanning subnormals to 2^120, infinities and NaNs included; the result
    is contiguous NCHW either way."""
    import nasdistill.spaces.layers as layers

    if threshold is not None:
        monkeypatch.setattr(layers, "UNPOOL_BY_DECONV_FROM", threshold)
    calls = []
    monkeypatch.setattr(layers, "_unpool_by_deconv", lambda g, f=layers._unpool_by_deconv: calls.append(1) or f(g))
    g = torch.Generator().manual_seed(4)
    a, b = _pair((6, 8, 10, 12), torch.float32)
    grad = torch.randn(6, 8, 5, 6, generator=g) * torch.exp2(torch.randint(-140, 121, (6, 8, 5, 6), generator=g).float())
    grad[0, 0, 0, :3] = torch.tensor([float("inf"), float("nan"), -1e-45])
    (ga,), (gb,) = torch.autograd.grad(AvgPool2d(2, 2)(a), a, grad), torch.autograd.grad(nn.AvgPool2d(2, 2)(b), b, grad)
    assert bool(calls) == (threshold == 0)
    assert ga.is_contiguous() and torch.equal(ga.nan_to_num(), gb.nan_to_num()) and ga.isnan().sum() == 4
    with torch.autocast("cpu", dtype=torch.bfloat16):  # a float32 map inside a bf16 unroll's backward
        (gc,) = torch.autograd.grad(AvgPool2d(2, 2)(a), a, grad)
    assert gc.dtype == torch.float32 and torch.equal(gc.nan_to_num(), gb.nan_to_num())


def _assert_second_order_equal(fast, ref, layout=torch.contiguous_format):
    """A gradient through the pool, then the gradient of a function of it: the same bits from both pools."""
    a, b = (t.contiguous(memory_format=layout).detach().requires_grad_(True)
            for t in _pair((2, 3, 6, 6), torch.float64, seed=1))
    head = torch.randn(2, 3, 3, 3, dtype=torch.float64)
    grads = []
    for x, pool in ((a, fast), (b, ref)):
        (gx,) = torch.autograd.grad((pool(x.square()) * head).sum(), x, create_graph=True)
        (ggx,) = torch.autograd.grad(pool(gx.sin()).sum(), x)
        grads.append((gx, ggx))
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])


@pytest.mark.parametrize("layout, function", [(torch.contiguous_format, _AvgPool),
                                              (torch.channels_last, _AvgPoolNHWC)])
def test_second_order_gradients_equal_pytorch(layout, function):
    """dd and mtt differentiate through a training step: the pool's backward is differentiable too."""
    _assert_second_order_equal(AvgPool2d(2, 2), nn.AvgPool2d(2, 2), layout)
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64).contiguous(memory_format=layout).requires_grad_(True)
    assert torch.autograd.gradgradcheck(lambda t: function.apply(t), (x,))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 5, 8, 8), (2, 4, 6, 10), (4, 128, 28, 28)])
def test_channels_last_pool_equals_pytorch_bit_for_bit_and_stays_channels_last(dtype, shape):
    """The fast layout's tensors: PyTorch's forward, our one-pass backward; the same bits, the same layout."""
    fast, ref = AvgPool2d(2, 2), nn.AvgPool2d(2, 2)
    a, b = (t.contiguous(memory_format=torch.channels_last).detach().requires_grad_(True) for t in _pair(shape, dtype))
    ya, yb = fast(a), ref(b)
    assert type(ya.grad_fn).__name__ == "_AvgPoolNHWCBackward"
    assert torch.equal(ya, yb) and ya.is_contiguous(memory_format=torch.channels_last)
    g = torch.randn_like(ya)
    (ga,), (gb,) = torch.autograd.grad(ya, a, g), torch.autograd.grad(yb, b, g)
    assert torch.equal(ga, gb) and ga.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("case", ["odd", "channels_last odd", "padded", "3x3", "divisor", "3d"])
def test_other_inputs_and_settings_take_pytorchs_kernel_with_the_same_result(case):
    pool = AvgPool2d(2, 2)
    x = torch.randn(2, 3, 8, 8)
    if case == "odd":
        x = torch.randn(2, 3, 7, 9)
    elif case == "channels_last odd":
        x = torch.randn(2, 3, 7, 9).contiguous(memory_format=torch.channels_last)
    elif case == "padded":
        pool = AvgPool2d(2, 2, padding=1)
    elif case == "3x3":
        pool = AvgPool2d(3, 1, padding=1)
    elif case == "divisor":
        pool = AvgPool2d(2, 2, divisor_override=3)
    elif case == "3d":
        x = torch.randn(3, 8, 8)
    ref = nn.AvgPool2d(pool.kernel_size, pool.stride, pool.padding, divisor_override=pool.divisor_override)
    x.requires_grad_(True)
    y = pool(x)
    assert "AvgPool2DBackward0" == type(y.grad_fn).__name__  # PyTorch's own
    assert torch.equal(y, ref(x))


def test_convnet_space_pools_with_it_and_its_networks_are_unchanged():
    """The ConvNet space's avgpool is this layer: the same outputs as the same network with PyTorch's
    pooling, and the state dict has the same keys (stored networks load as before)."""
    space = get_space("convnet")
    net = space.build_seeded(space.parse_id("D3-W32-relu-instancenorm-avgpool"), (1, 28, 28), 10, seed=0)
    pools = [m for m in net.modules() if isinstance(m, nn.AvgPool2d)]
    assert pools and all(isinstance(m, AvgPool2d) for m in pools)
    maxnet = space.build_seeded(space.parse_id("D2-W32-relu-none-maxpool"), (1, 28, 28), 10, seed=0)
    assert any(isinstance(m, MaxPool2d) for m in maxnet.modules())
    x = torch.randn(5, 1, 28, 28)
    y = net(x)
    for block in net.blocks:
        for i, m in enumerate(block):
            if isinstance(m, AvgPool2d):
                block[i] = nn.AvgPool2d(2, 2)
    assert torch.equal(y, net(x))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 5, 8, 8), (2, 4, 6, 10), (4, 128, 28, 28)])
def test_fast_max_pool_without_gradient_equals_pytorch(dtype, shape):
    x = torch.randn(shape).to(dtype)
    x[0, 0, 0, :2] = float("nan")          # NaN propagates
    x[-1, -1, :2, :2] = 1.5                 # ties
    ref = nn.MaxPool2d(2, 2)(x)
    with torch.inference_mode():
        fast = MaxPool2d(2, 2)(x)
    with torch.no_grad():
        assert torch.equal(MaxPool2d(2, 2)(x).nan_to_num(7.0), ref.nan_to_num(7.0))
    assert torch.equal(fast.nan_to_num(7.0), ref.nan_to_num(7.0)) and fast.isnan().sum() == ref.isnan().sum() > 0


MAX_WINDOWS = [(2, 2, 0, 1, False), (2, 2, 0, 1, True), (3, 2, 1, 1, False), (3, 2, 1, 2, True), (3, 1, 1, 1, False)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("window", MAX_WINDOWS)
@pytest.mark.parametrize("shape", [(3, 5, 8, 8), (2, 4, 7, 9), (2, 1, 6, 6), (4, 128, 14, 14)])
def test_max_pool_with_a_gradient_is_pytorchs_bit_for_bit_ties_and_nans_included(dtype, window, shape):
    """With a gradient to compute, the channels_last forward and the NCHW backward from its indices give
    PyTorch's output and gradient: the same winner in every window (ties go to the first pixel in
    row-major order, NaN wins), for any window, stride, padding, dilation and ceil mode."""
    k, s, p, d, ceil = window
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 3, shape, generator=g).to(dtype)  # small integers: ties in most windows
    x[0, 0, 0, :2] = float("nan")
    a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ya, yb = MaxPool2d(k, s, p, d, ceil_mode=ceil)(a), nn.MaxPool2d(k, s, p, d, ceil_mode=ceil)(b)
    assert type(ya.grad_fn).__name__ == "_MaxPoolBackward" and ya.is_contiguous()
    assert torch.equal(ya.nan_to_num(7.0), yb.nan_to_num(7.0)) and ya.isnan().sum() == yb.isnan().sum()
    assert d == 2 or ya.isnan().any()  # (a dilated window may skip the NaN pixels)
    up = torch.randn(ya.shape, generator=g).to(dtype)
    (ga,), (gb,) = torch.autograd.grad(ya, a, up), torch.autograd.grad(yb, b, up)
    assert torch.equal(ga, gb) and ga.is_contiguous()
    with torch.no_grad():  # without a gradient: strided maxima (2x2 on even sizes) or the channels_last kernel
        yn = MaxPool2d(k, s, p, d, ceil_mode=ceil)(x)
    assert torch.equal(yn.nan_to_num(7.0), yb.nan_to_num(7.0)) and yn.is_contiguous() and yn.grad_fn is None


def test_max_pool_gradients_of_any_order_equal_pytorchs():
    """The backward pass is PyTorch's operator on the saved indices, so autograd differentiates it again."""
    _assert_second_order_equal(MaxPool2d(2, 2), nn.MaxPool2d(2, 2))
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(MaxPool2d(3, 2, 1), (x,)) and torch.autograd.gradgradcheck(MaxPool2d(2, 2), (x,))


def test_max_pool_elsewhere_is_pytorchs():
    """channels_last inputs (PyTorch's kernel is vectorised there), return_indices, vmap and inputs that
    need no gradient at odd sizes run nn.MaxPool2d's own path, with its results."""
    x = torch.randn(2, 3, 8, 8).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    y = MaxPool2d(2, 2)(x)
    assert type(y.grad_fn).__name__ == "MaxPool2DWithIndicesBackward0" and torch.equal(y, nn.MaxPool2d(2, 2)(x))
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    out, idx = MaxPool2d(2, 2, return_indices=True)(x)
    assert type(out.grad_fn).__name__ == "MaxPool2DWithIndicesBackward0" and idx.dtype == torch.int64
    with torch.no_grad():
        assert MaxPool2d(2, 2)(x).grad_fn is None
    per_sample = torch.func.vmap(torch.func.grad(lambda t: MaxPool2d(2, 2)(t.unsqueeze(0)).square().sum()))(x.detach())
    ref = torch.func.vmap(torch.func.grad(lambda t: nn.MaxPool2d(2, 2)(t.unsqueeze(0)).square().sum()))(x.detach())
    assert torch.equal(per_sample, ref)
    odd = torch.randn(2, 3, 7, 7)
    with torch.inference_mode():
        assert torch.equal(MaxPool2d(2, 2)(odd), nn.MaxPool2d(2, 2)(odd))


def test_tensors_off_the_cpu_take_pytorchs_kernels(monkeypatch):
    """The fast paths were measured on CPUs only: other devices (here the meta device) keep PyTorch's."""
    import nasdistill.spaces.layers as layers

    def refuse(*_):
        raise AssertionError("fast path taken off the CPU")

    monkeypatch.setattr(layers._AvgPool, "apply", refuse)
    monkeypatch.setattr(layers, "_max_of_quarters", refuse)
    x = torch.empty(2, 3, 8, 8, device="meta")
    assert AvgPool2d(2, 2)(x).shape == (2, 3, 4, 4)
    with torch.no_grad():
        assert MaxPool2d(2, 2)(x).shape == (2, 3, 4, 4)
    with pytest.raises(AssertionError, match="fast path"):
        AvgPool2d(2, 2)(torch.randn(2, 3, 8, 8))
