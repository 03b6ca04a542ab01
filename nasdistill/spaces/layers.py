"""Drop-in layers for search spaces: average and max pooling that PyTorch's CPU kernels compute slowly.

PyTorch's CPU average pooling of a contiguous (N, C, H, W) tensor runs a scalar loop per output
pixel: DC's ConvNet pooling (2x2, stride 2) of 10 images of 128 channels at 28x28 takes about 3 ms
forward and 3-4 ms backward on one thread, as long as a 3x3 convolution of the same images, while the
same pooling of a channels_last tensor takes 0.2 ms. Here the four pixels of every window are read as
four strided views of the input (vectorised elementwise ops) and the backward pass writes the gradient
through four strided views: forward and backward together 2-3.5x faster (1-2 threads, fp32 and bf16,
8x8 to 28x28 maps of 32-256 channels). A float32 backward of 2 M elements or more runs as a depthwise
transposed convolution with weights 1/4 instead (one pass, 1.1-2.3x the four copies there).

On ``channels_last`` tensors (the bf16 fast layout of candidate training) PyTorch's forward is fast
and kept, but its backward is not: 2x2 average pooling's backward of 100 images of 128 channels at
28x28 in bf16 takes ~8 ms on one thread. There the gradient is a quarter of the output gradient
broadcast over each window, written in one pass through an ``(N, H, 2, W, 2, C)`` view of the
channels_last memory: 1.6 ms, bit-identical (:class:`_AvgPoolNHWC`).

Results are bit-identical to ``nn.AvgPool2d(2, 2)``: the same sums in the same order
(``((x00 + x01) + x10) + x11``, accumulated in float32 for bf16/fp16 inputs, divided by 4; bf16 forward
passes on a CPU with bf16 hardware, and float32 ones of 0.5 M elements or more, run as a depthwise
convolution with weights 1/4, 2.2x and 1.2-1.7x faster, whose float32 sum of a window's quarters rounded
once equalled PyTorch's on every window tried; a float32 window of subnormal values, below 2^-124, may
differ in its last bits there), and
gradients of any order (the backward pass is itself differentiable, for the unrolled trainings of
``dd`` and ``mtt``). The fast path takes contiguous NCHW floating CPU tensors with even height and width
(on a GPU PyTorch's pooling runs: not measured there, and not a scalar loop);
anything else (other layouts, odd sizes, other windows, padding, a divisor, and the tensors of
``torch.func`` transforms such as ``vmap``) goes to PyTorch's kernel, which is fast or the layer small there.

:class:`MaxPool2d` takes the same path when no gradient is needed (evaluation, embeddings of real
images): PyTorch's kernel is 7-12x slower than four strided maxima there (odd sizes and other windows:
its channels_last kernel on a copy, below, 2-4.8x). With a gradient to compute,
PyTorch's kernels still run, but the forward one in the channels_last layout, where it is vectorised
over channels (:class:`_MaxPool`): a copy of the input to channels_last, the pool, and the output and
the winning pixels' indices back to NCHW cost 2.2-3.7x less than the NCHW kernel that also records
them, and the backward pass is PyTorch's NCHW kernel fed those indices (the same ones: each window's
first maximum in row-major order, NaN winning, in both layouts). Outputs and gradients are bit-identical.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.modules.utils import _pair

from .._hardware import cpu_bf16
from .._transforms import transformed

_WINDOW = ((0, 0), (0, 1), (1, 0), (1, 1))  # row-major: the order PyTorch's kernels visit a window


def _quarters(x: torch.Tensor):
    """The four strided (N, C, H/2, W/2) views of a window's pixels, in :data:`_WINDOW` order."""
    return [x[..., a::2, b::2] for a, b in _WINDOW]


def _transformed(x: torch.Tensor) -> bool:
    """Whether ``x`` is a tensor of a ``torch.func`` transform (``vmap``, ``grad``): the custom autograd
    Functions below are not written for them, so PyTorch's pooling (which has their rules) runs. Where it
    cannot be told (no probe, or dynamo tracing: nothing compiled is vmapped), the fast path runs."""
    return bool(transformed(x))


def _poolable(x: torch.Tensor) -> bool:
    # CPU only: measured there; on a GPU PyTorch's (cuDNN's) pooling is not a scalar loop
    return (x.device.type == "cpu" and x.dim() == 4 and x.is_floating_point() and not _transformed(x)
            and x.shape[-2] % 2 == 0 and x.shape[-1] % 2 == 0 and x.shape[-2] >= 2 and x.shape[-1] >= 2)


def _fast(x: torch.Tensor) -> bool:
    """The four-strided-views path: a contiguous (NCHW) CPU tensor of even height and width."""
    return _poolable(x) and x.is_contiguous()


def _fast_nhwc(x: torch.Tensor) -> bool:
    """The channels_last path (:class:`_AvgPoolNHWC`): a channels_last CPU tensor of even height and width."""
    return _poolable(x) and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def _spread(parts, shape, like: torch.Tensor) -> torch.Tensor:
    """An input-shaped tensor whose four window views are ``parts`` (one quarter-size tensor each)."""
    out = torch.empty(shape, dtype=like.dtype, device=like.device)
    for view, part in zip(_quarters(out), parts):
        view.copy_(part)
    return out


def _quarter_kernel(t: torch.Tensor) -> torch.Tensor:
    """The depthwise 2x2 kernel of 1/4s for ``t``'s channels, in its dtype and on its device."""
    return torch.full((t.shape[1], 1, 2, 2), 0.25, dtype=t.dtype, device=t.device)


def _pool_by_conv(x: torch.Tensor) -> torch.Tensor:
    """2x2 average as a depthwise convolution with weights 1/4. oneDNN adds the window's four exact
    quarters in float32 in row-major order and rounds once, the bits of PyTorch's ``((x00 + x01) + x10)
    + x11`` then ``/ 4`` (bf16: equal on 784,000 windows spanning 2^-20 to 2^20; float32: on 1.3 M windows
    spanning 2^-60 to 2^60, infinities and NaNs), except where a quarter is subnormal (below 2^-126 in
    magnitude), which is rounded before the sum. bf16, 100 x 128 x 28 x 28: 2.4 ms against 5.2 ms for the
    strided sums with their float32 copies; float32: see :data:`POOL_BY_CONV_FROM`."""
    with torch.autocast(x.device.type, enabled=False):  # in x's own dtype, also inside a bf16 block
        return nn.functional.conv2d(x, _quarter_kernel(x), None, 2, 0, 1, x.shape[1])


#: Input size (elements) from which a float32 pool's forward runs as :func:`_pool_by_conv`. On 2 threads of
#: an AVX-512 Xeon the convolution's fixed cost (~0.1 ms) loses below ~0.2 M elements (10 x 64 x 14 x 14:
#: 0.93x; 10 x 32 x 8 x 8: 0.46x) and it wins from 0.8 M (1.18x at 100 x 128 x 8 x 8, 1.2-1.3x at 10-100
#: x 128 x 28 x 28, 1.6x at 256 x 128 x 28 x 28).
POOL_BY_CONV_FROM = 500_000


class _AvgPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.shape = x.shape
        if ((x.dtype == torch.bfloat16 and cpu_bf16())  # (emulated bf16 convolutions are slow: strided sums there)
                or (x.dtype == torch.float32 and x.numel() >= POOL_BY_CONV_FROM)):
            return _pool_by_conv(x)
        q = _quarters(x)
        acc = q[0].float() if x.dtype in (torch.bfloat16, torch.float16) else q[0].clone()
        for part in q[1:]:
            acc += part
        return acc.div_(4).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        return _AvgUnpool.apply(grad, ctx.shape)


def _unpool_by_deconv(grad: torch.Tensor) -> torch.Tensor:
    """A quarter of each gradient on the four pixels of its window, as a depthwise transposed convolution
    with weights 1/4 and stride 2: each output pixel is one product ``g * 0.25``, the same value as
    ``g / 4`` (a power of two), written by oneDNN in one pass instead of four strided copies."""
    with torch.autocast(grad.device.type, enabled=False):  # an unroll's backward under bf16 autocast: stay float32
        return nn.functional.conv_transpose2d(grad, _quarter_kernel(grad), None, 2, 0, 0, grad.shape[1])


#: Output size (elements) from which a float32 unpool runs as :func:`_unpool_by_deconv`. Measured on 2
#: threads of an AVX-512 Xeon over 36 shapes (10-256 images, 32-256 channels, 8x8-32x32 maps): below
#: 1.3 M elements its fixed cost loses (0.4-1.0x; 10 x 128 x 14 x 14: 0.10 ms as strided copies against
#: 0.12 ms), from 2 M it won every time (1.1-2.3x; 100 x 128 x 28 x 28: 3.7 ms against 7.2 ms). bf16
#: transposed convolutions are 10-30x slower than the copies on a CPU and stay on them.
UNPOOL_BY_DECONV_FROM = 2_000_000


class _AvgUnpool(torch.autograd.Function):
    """The average pool's backward: every pixel of a window gets a quarter of its gradient."""

    @staticmethod
    def forward(ctx, grad, shape):
        if grad.dtype == torch.float32 and grad.is_contiguous() and math.prod(shape) >= UNPOOL_BY_DECONV_FROM:
            return _unpool_by_deconv(grad)
        quarter = grad / 4
        return _spread([quarter] * 4, shape, grad)

    @staticmethod
    def backward(ctx, grad_grad):
        return _AvgPool.apply(grad_grad), None  # any strides: the quarters are views


class _AvgPoolNHWC(torch.autograd.Function):
    """2x2 average pool of a channels_last tensor: PyTorch's forward (fast in that layout), the backward
    written as one broadcast copy (:class:`_AvgUnpoolNHWC`)."""

    @staticmethod
    def forward(ctx, x):
        return nn.functional.avg_pool2d(x, 2)

    @staticmethod
    def backward(ctx, grad):
        return _AvgUnpoolNHWC.apply(grad)  # the input's shape is twice the gradient's (even sizes only)


class _AvgUnpoolNHWC(torch.autograd.Function):
    """A quarter of each output gradient on the four pixels of its window, returned channels_last."""

    @staticmethod
    def forward(ctx, grad):
        n, c, h, w = grad.shape
        quarter = (grad / 4).contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1)  # (N, H, W, C) view
        out = quarter[:, :, None, :, None, :].expand(n, h, 2, w, 2, c).reshape(n, 2 * h, 2 * w, c)
        return out.permute(0, 3, 1, 2)  # (N, C, 2H, 2W), channels_last memory

    @staticmethod
    def backward(ctx, grad_grad):
        return nn.functional.avg_pool2d(grad_grad, 2)  # differentiable again (any order)


def _window(module) -> tuple:
    """A pooling module's (kernel size, stride, padding) as pairs (a stride of None is the kernel size)."""
    stride = module.stride if module.stride is not None else module.kernel_size
    return _pair(module.kernel_size), _pair(stride), _pair(module.padding)


def _plain_2x2(module) -> bool:
    """Whether a pooling module is 2x2, stride 2, unpadded (DC's ConvNet pooling; ``ceil_mode`` changes
    nothing on the even sizes the fast path takes)."""
    return _window(module) == ((2, 2), (2, 2), (0, 0))


class AvgPool2d(nn.AvgPool2d):
    """``nn.AvgPool2d`` with fast paths for 2x2 windows of stride 2 on contiguous NCHW tensors and for
    the backward pass on channels_last ones (bit-identical results; see the module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _plain_2x2(self) and self.divisor_override is None:
            if _fast(x):
                return _AvgPool.apply(x)
            if _fast_nhwc(x):
                return _AvgPoolNHWC.apply(x)
        return super().forward(x)


def _max_of_quarters(x: torch.Tensor) -> torch.Tensor:
    q0, q1, q2, q3 = _quarters(x)
    return torch.maximum(torch.maximum(q0, q1), torch.maximum(q2, q3))  # NaN propagates, as PyTorch's


def _pool_args(module: nn.MaxPool2d) -> tuple:
    """The module's window settings as PyTorch's max-pooling operators take them."""
    return (*_window(module), _pair(module.dilation), bool(module.ceil_mode))


class _MaxPool(torch.autograd.Function):
    """Max pooling of a contiguous NCHW tensor with a gradient to compute: PyTorch's forward kernel run on a
    channels_last copy (vectorised over channels; the NCHW one is a scalar loop per output pixel), its
    output and indices returned in NCHW, and PyTorch's NCHW backward kernel fed those indices. Measured
    on 2 threads of an AVX-512 Xeon, forward and backward together, float32: 100 x 256 x 8 x 8 4.45 ->
    1.66 ms, 100 x 128 x 14 x 14 6.7 -> 2.2 ms, 10 x 128 x 28 x 28 2.5 -> 0.9 ms, 100 x 128 x 28 x 28
    31 -> 21 ms. The backward is PyTorch's operator, so autograd differentiates it again (any order). Saved
    for it: the input and the indices, as PyTorch's own node saves; the channels_last copy is transient
    (one input-sized tensor more at the layer's peak, freed when the forward returns)."""

    @staticmethod
    def forward(ctx, x, args):
        out, idx = torch.ops.aten.max_pool2d_with_indices(x.contiguous(memory_format=torch.channels_last), *args)
        idx = idx.contiguous()
        ctx.save_for_backward(x, idx)
        ctx.args = args
        return out.contiguous()

    @staticmethod
    def backward(ctx, grad):
        x, idx = ctx.saved_tensors
        return torch.ops.aten.max_pool2d_with_indices_backward(grad.contiguous(), x, *ctx.args, idx), None


class MaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` with fast paths for contiguous NCHW CPU tensors: without a gradient to compute,
    2x2 windows of stride 2 on even sizes as the maximum of the four strided views (7-12x faster than
    PyTorch's kernel, equal to it; a window holding both zeros may give the other zero), other sizes and
    windows through PyTorch's channels_last kernel on a copy (2-4.8x: 1,000 x 128 x 7 x 7 11.9 -> 4.3 ms);
    with a gradient to compute, any window through that kernel too (:class:`_MaxPool`, 2.2-3.7x,
    bit-identical). Other devices, layouts, ``return_indices`` and ``torch.func`` transforms run
    ``nn.MaxPool2d``'s own path."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (self.return_indices or not (x.device.type == "cpu" and x.dim() == 4 and x.is_floating_point()
                                        and x.is_contiguous()) or _transformed(x)):
            return super().forward(x)
        if not (torch.is_grad_enabled() and x.requires_grad):
            if _plain_2x2(self) and self.dilation in (1, (1, 1)) and _fast(x):
                return _max_of_quarters(x)
            # odd sizes (DC's ConvNet at 7x7), other windows: PyTorch's vectorised channels_last kernel
            return torch.ops.aten.max_pool2d(x.contiguous(memory_format=torch.channels_last),
                                             *_pool_args(self)).contiguous()
        return _MaxPool.apply(x, _pool_args(self))


__all__ = ["AvgPool2d", "MaxPool2d"]
