"""Instance norm computed in the ``channels_last`` layout, for :func:`~nasdistill.training.layout.fast_layout`.

PyTorch's CPU group norm is slow on ``channels_last`` tensors with one channel a group (DC's instance
norm, ``GroupNorm(C, C)``), so the fast layout used to hand those layers a contiguous copy and copy
the result back: four full copies of the activation a layer, forward and backward, about a quarter of
a bf16 candidate training step. Here the statistics are reductions over the pixels of the
``(N, H*W, C)`` view the ``channels_last`` memory already is, and the backward pass is written out
(two reductions, two fused multiply-adds): no copy, 1.3-2.3x faster than copy + native kernel + copy
per layer forward and backward on one CPU thread (bf16, 100-256 images of 128 channels, 7x7 to 32x32).

Reductions run with float accumulation and round their per-(image, channel) results to the input's
dtype, as every bf16 op does: output and input gradient within bf16 rounding of the exact ones (relative
error ~3e-3 against ~2e-3 for the native bf16 kernel, tests). The backward pass is first-order only
(``once_differentiable``: a double backward raises instead of returning a wrong gradient); the fast
layout only runs first-order passes (candidate training, evaluation, real-batch gradients and embeddings).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.autograd.function import once_differentiable


class _InstanceNormNHWC(torch.autograd.Function):
    """Per-(image, channel) normalisation over the pixels of an (N, C, H, W) tensor, affine."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        with torch.autocast(x.device.type, enabled=False):  # the dtypes below are the ones meant
            return _InstanceNormNHWC._forward(ctx, x, weight, bias, eps)

    @staticmethod
    def _forward(ctx, x, weight, bias, eps):
        n, c, h, w = x.shape
        x3 = x.permute(0, 2, 3, 1).reshape(n, h * w, c)     # a view when x is channels_last
        # sums, not means: a bf16 mean casts the whole tensor to float32 first (10x slower)
        centred = x3 - x3.sum(1, keepdim=True) / (h * w)
        rstd = torch.rsqrt(centred.square().sum(1, keepdim=True).float() / (h * w) + eps)  # (N, 1, C) float32
        # written through an (N, H*W, C) view of a channels_last tensor, which is returned: autograd
        # forbids in-place ops (a ReLU's) on a view made inside a Function
        y = torch.empty_like(x, memory_format=torch.channels_last)
        torch.addcmul(bias.to(x.dtype), centred, (rstd * weight).to(x.dtype),
                      out=y.permute(0, 2, 3, 1).view(n, h * w, c))
        ctx.save_for_backward(centred, weight, rstd)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        centred, weight, rstd = ctx.saved_tensors
        n, hw, c = centred.shape
        dy3 = dy.permute(0, 2, 3, 1).reshape(n, hw, c)
        sum_dy = dy3.sum(1, keepdim=True).float()                        # (N, 1, C)
        sum_dy_centred = (dy3 * centred).sum(1, keepdim=True).float()
        k = rstd * weight                                                # d y / d x-hat scale
        # dx = k * (dy - mean(dy) - x_hat * mean(dy * x_hat)), x_hat = centred * rstd
        coef = -k * rstd.square() * sum_dy_centred / hw
        dx = torch.addcmul((-k * sum_dy / hw).to(dy.dtype), centred, coef.to(dy.dtype))
        dx.addcmul_(dy3, k.to(dy.dtype))
        d_weight = (sum_dy_centred * rstd).sum((0, 1))
        d_bias = sum_dy.sum((0, 1))
        return dx.view(n, dy.shape[2], dy.shape[3], c).permute(0, 3, 1, 2), d_weight, d_bias, None


def is_instance_norm(m: nn.Module) -> bool:
    """Whether ``m`` is a GroupNorm with one channel a group (an instance norm), which :func:`instance_norm_nhwc` computes."""
    return isinstance(m, nn.GroupNorm) and m.num_groups == m.num_channels


def instance_norm_nhwc(x: torch.Tensor, norm: nn.GroupNorm) -> torch.Tensor:
    """``norm(x)`` for an instance norm (:func:`is_instance_norm`) on a 4-D tensor, computed in
    ``channels_last`` and returned in it; other inputs go through ``norm``'s own forward."""
    if x.ndim != 4:
        return nn.GroupNorm.forward(norm, x)
    c = x.shape[1]
    weight = norm.weight if norm.affine else torch.ones(c, device=x.device)
    bias = norm.bias if norm.affine else torch.zeros(c, device=x.device)
    return _InstanceNormNHWC.apply(x, weight.float(), bias.float(), norm.eps)


__all__ = ["instance_norm_nhwc", "is_instance_norm"]
