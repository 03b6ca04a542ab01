"""A drop-in ``nn.Conv2d`` whose gradient with respect to its input is fast for few input channels.

A network's first convolution sees the image's 1 or 3 channels. oneDNN computes that layer's forward
pass well, but on a CPU its gradient with respect to the input (a transposed convolution down to 1-3
channels) runs at a small fraction of the machine's speed: for 100 MNIST images through DC's first
layer (1 -> 128 channels, 3x3, 28x28) it took 11.5 ms on 2 threads of an AVX-512 Xeon, against 3 ms
for the forward pass. Only the methods that move pixels need it (``dm``, ``dsa``, ``cafe``, ``krr``,
and twice a student step in the unrolls of ``mtt`` and ``dd``: once through the forward pass and
once through the gradient's own derivative); training a candidate does not.

Written as matrix products, the same gradients cost little: the input's gradient is ``W^T @ dY``
per image (a batched matrix product with the (C_in*kh*kw) x C_out transposed weight), folded back
onto the pixels (``F.fold``, the adjoint of ``F.unfold``): 1.9 ms there; the weight's is
``dY @ unfold(X)^T`` summed over the batch. :class:`Conv2d` keeps PyTorch's forward pass and
writes the backward pass with these differentiable ops, so that gradients of any order (the
unrolls' meta-gradients) take them too. Forward and backward together, against ``nn.Conv2d`` (2 threads
of that Xeon, 10-256 images, 16x16 and 32x32 maps): 1.1-2.1x for 1 input channel and 32-256 output
channels, 1.0-1.6x for 3 input channels and 128-256; with a second-order pass (gradient-matching style)
0.9-1.8x and 1.05-1.3x. With 3 input channels and 32-64 output channels the products lose (0.6-1.1x),
hence :func:`_thin`'s rule. In a whole ``mtt`` iteration in float32 (DC's ConvNet, 100 MNIST images,
30 student steps) it and :mod:`nasdistill.spaces.activation` together saved 4-7%. Values are equal to
PyTorch's to float rounding (another order of the same sums; ``gradcheck`` and ``gradgradcheck`` in
float64 pass).

Everything else (another stride, dilation or grouping, padding modes other than zeros, a string
padding, non-float32 or non-contiguous inputs, a GPU, inputs that need no gradient, ``torch.func``
transforms and compiled regions) runs ``nn.Conv2d``'s own path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .._transforms import transformed

#: At most this many inputs per output pixel (C_in * kh * kw): a 3x3 kernel over 1-3 channels.
THIN_INPUTS = 27
#: At least this many output channels per input of an output pixel: below it (3 channels -> 32 or 64)
#: the matrix products measured slower than oneDNN.
THIN_RATIO = 3


def _input_grad(grad: torch.Tensor, weight: torch.Tensor, shape, padding) -> torch.Tensor:
    """The input's gradient: ``W^T @ dY`` per image, folded back onto the (N, C_in, H, W) pixels."""
    n, _, h, w = shape
    c = weight.shape[0]
    wt = weight.reshape(c, -1).t().unsqueeze(0).expand(n, -1, -1)  # (N, C_in*kh*kw, C_out), no copy
    return F.fold(torch.bmm(wt, grad.reshape(n, c, -1)), (h, w), weight.shape[-2:], padding=padding)


def _weight_grad(grad: torch.Tensor, x: torch.Tensor, shape, padding) -> torch.Tensor:
    """The weight's gradient: ``dY @ unfold(X)^T`` per image, summed over the images."""
    n, c = grad.shape[:2]
    cols = F.unfold(x, shape[-2:], padding=padding)  # (N, C_in*kh*kw, H*W)
    return torch.bmm(grad.reshape(n, c, -1), cols.transpose(1, 2)).sum(0).view(shape)


class _ThinConv(torch.autograd.Function):
    """PyTorch's stride-1 convolution forward; a backward pass of differentiable matrix products."""

    @staticmethod
    def forward(ctx, x, weight, bias, padding):
        ctx.save_for_backward(x, weight)
        ctx.padding = padding
        return F.conv2d(x, weight, bias, 1, padding)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b, _ = ctx.needs_input_grad
        grad = grad.contiguous()
        return (_input_grad(grad, weight, x.shape, ctx.padding) if need_x else None,
                _weight_grad(grad, x, weight.shape, ctx.padding) if need_w else None,
                grad.sum((0, 2, 3)) if need_b else None,
                None)


def _thin(conv: nn.Conv2d, x: torch.Tensor) -> bool:
    """Whether ``conv`` of ``x`` takes :class:`_ThinConv`: a plain stride-1 convolution of few inputs
    and many outputs per pixel, on a contiguous float32 CPU tensor whose gradient is wanted."""
    inputs = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
    return (x.requires_grad and torch.is_grad_enabled() and x.device.type == "cpu" and x.dtype == torch.float32
            and x.dim() == 4 and x.is_contiguous() and conv.groups == 1 and conv.stride == (1, 1)
            and conv.dilation == (1, 1) and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)
            and inputs <= THIN_INPUTS and conv.out_channels >= THIN_RATIO * inputs
            and not torch.is_autocast_enabled("cpu") and transformed(x) is False)


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` whose backward pass runs as matrix products for few input channels (see the module
    docstring); the same parameters, state dict and values to float rounding."""

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if _thin(self, x):
            return _ThinConv.apply(x, weight, bias, self.padding)
        return super()._conv_forward(x, weight, bias)
