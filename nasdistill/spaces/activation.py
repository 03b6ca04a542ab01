"""Drop-in ReLU and LeakyReLU whose gradient has no useless second derivative.

PyTorch differentiates ``threshold_backward`` (ReLU's backward pass) with respect to the activation's
saved output too, although that derivative is zero almost everywhere: each meta-gradient of an unroll
(``mtt``, ``dd``) or of a gradient-matching loss (``dsa``, ``dc``) then writes an output-sized tensor
of zeros (``zeros_like``) for nothing: for DC's ConvNet on 100 MNIST images, 40 MB a student step at
28x28, 16.6 ms of ~370 ms on 2 threads of an AVX-512 Xeon (a profile of ``mtt``'s float32 iteration;
the fill is gone from it with this module). Here the backward pass reads the saved output as a
constant (detached), so that only the gradient's own path is differentiated: the same values (the
same kernel, ``threshold_backward`` / ``leaky_relu_backward``, on the same numbers), the zeros never
written.

The fast path takes CPU tensors that need a gradient outside ``torch.func`` transforms and compiled
regions; anything else runs PyTorch's own module. ``inplace`` is kept (the output overwrites the input
as ``nn.ReLU(inplace=True)`` does).
"""

from __future__ import annotations

import torch
from torch import nn

from .._rectifier import rectify, rectify_backward
from .._transforms import transformed


class _Rectify(torch.autograd.Function):
    """ReLU (slope 0) or LeakyReLU (``slope``), in place or not; backward from the detached output."""

    @staticmethod
    def forward(ctx, x, slope, inplace):
        out = rectify(x, slope, inplace)
        if inplace:
            ctx.mark_dirty(x)
        ctx.save_for_backward(out)
        ctx.slope = slope
        return out

    @staticmethod
    def backward(ctx, grad):
        out, = ctx.saved_tensors
        # the output as a constant: its derivative here is zero almost everywhere
        return rectify_backward(grad, out.detach(), ctx.slope), None, None


def _fast(x: torch.Tensor) -> bool:
    return (x.requires_grad and torch.is_grad_enabled() and x.device.type == "cpu" and x.is_floating_point()
            and transformed(x) is False)


class ReLU(nn.ReLU):
    """``nn.ReLU`` whose backward pass is differentiated with respect to the gradient only."""

    plain_values = True  # nn.ReLU's values: code that computes a ReLU its own way may take its place

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _Rectify.apply(x, 0.0, self.inplace) if _fast(x) else super().forward(x)


class LeakyReLU(nn.LeakyReLU):
    """``nn.LeakyReLU`` whose backward pass is differentiated with respect to the gradient only."""

    plain_values = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (_Rectify.apply(x, float(self.negative_slope), self.inplace) if _fast(x) and self.negative_slope > 0
                else super().forward(x))
