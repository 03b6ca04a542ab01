"""Layer and batch norms whose second derivative is written out, for the passes that differentiate a
gradient (the unrolls of ``mtt``, ``dd`` and ``rank``; gradient matching's synthetic gradients).

PyTorch differentiates a layer norm's or a batch norm's backward pass with a composite of some thirty
element-wise ops. Both are, like the instance norm of :mod:`~nasdistill.training.instance_norm`, a
parameter-free normalisation over a set of values followed by an affine map, and take its written-out
second derivative (five reductions, two outputs of fused multiply-adds; ``_Backward`` there):

* :func:`layer_norm`: a ``LayerNorm([C, H, W])`` over each image's whole feature map (the ConvNet space's
  ``layernorm``) is an instance norm of the (N, 1, C*H, W) view (no copy), then its per-element affine
  by autograd's own multiply-add;
* :func:`batch_norm`: a ``BatchNorm2d`` in training mode normalises each channel over the images and
  pixels: PyTorch's fused kernels forward (which also update the running statistics, as the module
  does) and backward, and the same formulas reduced over (images, pixels) for the second derivative.

Values equal PyTorch's to float rounding (float64 checks of first and second derivatives, and of the
running statistics, in tests). Measured in place, alternating (2 threads of an AVX-512 Xeon, 2026-12-08,
float32, 3 rounds): unrolls of DC's ConvNet on 100 MNIST images (10 SGD steps and the images'
meta-gradient) 1.23-1.24x faster for D3-W128-relu-layernorm-avgpool, 1.26x for D2-W64-leakyrelu-layernorm-
maxpool, 1.33x for D3-W128-relu-batchnorm-avgpool; on 50 images of 3 x 32 x 32 (5 steps) the ``macro``
space's default network 1.45x, ``nb201``'s 1.18x, ResNet-18 1.04x. :func:`written_out_norms` swaps them
in, with the instance norms, for a block.

Not taken: bf16 autocast (PyTorch's kernels run there), ``torch.func`` transforms, a batch norm in
evaluation mode (an affine map, cheap to differentiate), group norms of several channels a group (done
the layer-norm way, with their per-channel affine, they measured 0.97x).
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from functools import partial
from typing import Iterator

import torch
from torch import nn

from .._transforms import transformed
from .instance_norm import _Backward, _Norm, accumulation_dtype, written_out_instance_norms


def is_map_layer_norm(m: nn.Module, x: torch.Tensor) -> bool:
    """Whether ``m`` is a LayerNorm over the whole (C, H, W) feature map of the 4-D ``x``."""
    return isinstance(m, nn.LayerNorm) and x.ndim == 4 and tuple(m.normalized_shape) == tuple(x.shape[1:])


def layer_norm(x: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
    """``norm(x)``, twice differentiable with the written-out second derivative, for a whole-map layer norm
    (:func:`is_map_layer_norm`); other inputs go through ``norm``'s own forward."""
    if not is_map_layer_norm(norm, x):
        return nn.LayerNorm.forward(norm, x)
    n, c, h, w = x.shape
    acc = accumulation_dtype(x)
    if norm.weight is not None:
        acc = torch.promote_types(acc, norm.weight.dtype)
    one, zero = torch.ones(1, dtype=acc, device=x.device), torch.zeros(1, dtype=acc, device=x.device)
    x_hat = _Norm.apply(x.reshape(n, 1, c * h, w), one, zero, norm.eps, True, None).view(n, c, h, w)
    if norm.weight is None:
        return x_hat if norm.bias is None else x_hat + norm.bias
    return x_hat * norm.weight if norm.bias is None else torch.addcmul(norm.bias, x_hat, norm.weight)


class _BatchNorm(torch.autograd.Function):
    """A training batch norm of an NCHW tensor: PyTorch's kernel forward (running statistics updated in
    place), whose backward is :class:`~nasdistill.training.instance_norm._Backward` of kind ``"batch"``."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, momentum, eps):
        x = x.contiguous()
        y, mean, invstd = torch.native_batch_norm(x, weight, bias, running_mean, running_var, True, momentum, eps)
        c = x.shape[1]
        ctx.save_for_backward(x, weight, mean.view(1, c, 1), invstd.view(1, c, 1))
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, mean, invstd = ctx.saved_tensors
        dx, dw, db = _Backward.apply(dy, x, weight, mean, invstd, "batch")
        return dx, dw, db, None, None, None, None


def _batch_norm_applies(norm: nn.BatchNorm2d, x: torch.Tensor) -> bool:
    return (norm.training and x.ndim == 4 and x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)
            and not torch.is_autocast_enabled("cpu") and transformed(x) is False)


def batch_norm(x: torch.Tensor, norm: nn.BatchNorm2d) -> torch.Tensor:
    """``norm(x)`` for a ``BatchNorm2d`` in training mode, twice differentiable with the written-out second
    derivative, its running statistics and batch count updated as the module's own forward updates them;
    anything else (see the module docstring) goes through that forward."""
    if not _batch_norm_applies(norm, x):
        return nn.BatchNorm2d.forward(norm, x)
    norm._check_input_dim(x)
    torch.nn.functional._verify_batch_size(x.size())  # one value a channel: the error F.batch_norm raises
    factor = 0.0 if norm.momentum is None else norm.momentum
    if norm.track_running_stats and norm.num_batches_tracked is not None:  # as _BatchNorm.forward does
        norm.num_batches_tracked.add_(1)
        factor = 1.0 / float(norm.num_batches_tracked) if norm.momentum is None else norm.momentum
    c = x.shape[1]
    acc = accumulation_dtype(x)
    weight = norm.weight if norm.affine else torch.ones(c, dtype=acc, device=x.device)
    bias = norm.bias if norm.affine else torch.zeros(c, dtype=acc, device=x.device)
    running = (norm.running_mean, norm.running_var) if norm.track_running_stats else (None, None)
    return _BatchNorm.apply(x, weight, bias, *running, factor, norm.eps)


def _swap(model: nn.Module, cls: type, fn) -> list[nn.Module]:
    """Point the forward of every module of exactly ``cls`` (a subclass may compute otherwise) to ``fn``,
    except where an enclosing block already did; returns the modules swapped."""
    swapped = []
    for m in model.modules():
        if type(m) is cls and "forward" not in m.__dict__:
            m.forward = partial(fn, norm=m)
            swapped.append(m)
    return swapped


@contextmanager
def written_out_norms(model: nn.Module) -> Iterator[None]:
    """Inside the block, ``model``'s instance norms, ``nn.LayerNorm`` and ``nn.BatchNorm2d`` modules take
    their written-out second derivatives (also through ``torch.func.functional_call``); on exit their own
    forward again."""
    with ExitStack() as stack:
        stack.enter_context(written_out_instance_norms(model))
        swapped = []
        stack.callback(lambda: [m.__dict__.pop("forward", None) for m in swapped])
        swapped += _swap(model, nn.LayerNorm, layer_norm)
        swapped += _swap(model, nn.BatchNorm2d, batch_norm)
        yield


__all__ = ["batch_norm", "is_map_layer_norm", "layer_norm", "written_out_norms"]
