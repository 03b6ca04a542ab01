"""Layer, batch and group norms whose second derivative is written out, for the passes that differentiate
a gradient (the unrolls of ``mtt``, ``dd`` and ``rank``; gradient matching's synthetic gradients).

PyTorch differentiates a layer, batch or group norm's backward pass with a composite of some thirty
element-wise ops. Each is, like the instance norm of :mod:`~nasdistill.training.instance_norm`, a
normalisation over a set of values followed by an affine map, and takes a written-out second derivative
(five reductions, outputs of fused multiply-adds):

* :func:`layer_norm`: a ``LayerNorm([C, H, W])`` over each image's whole feature map (the ConvNet space's
  ``layernorm``) is an instance norm of the (N, 1, C*H, W) view (no copy), then its per-element affine
  by autograd's own multiply-add;
* :func:`batch_norm`: a ``BatchNorm2d`` in training mode normalises each channel over the images and
  pixels: PyTorch's fused kernels forward (which also update the running statistics, as the module
  does) and backward, and the instance norm's formulas reduced over (images, pixels) for the second derivative;
* :func:`group_norm`: a ``GroupNorm`` of several channels a group (the ConvNet space's ``groupnorm``,
  GroupNorm(4, C)): PyTorch's fused kernels forward and backward, and :class:`_GroupBackward`'s formulas,
  whose per-channel affine parameters vary inside a group.

Values equal PyTorch's to float rounding (float64 checks of first and second derivatives, and of the
running statistics, in tests). Measured in place, alternating (2 threads of an AVX-512 Xeon, 2026-12-08,
float32, 3 rounds): unrolls of DC's ConvNet on 100 MNIST images (10 SGD steps and the images'
meta-gradient) 1.23-1.24x faster for D3-W128-relu-layernorm-avgpool, 1.26x for D2-W64-leakyrelu-layernorm-
maxpool, 1.33x for D3-W128-relu-batchnorm-avgpool, 1.07-1.13x for D3-W128-relu-groupnorm-avgpool (three
runs), 1.15-1.17x for D1-W32-leakyrelu-groupnorm-maxpool; on 50 images of 3 x 32 x 32 (5 steps) the ``macro``
space's default network 1.45x, ``nb201``'s 1.18x, ResNet-18 1.04x. :func:`written_out_norms` swaps them
in, with the instance norms, for a block.

Not taken: bf16 autocast for batch and group norms (PyTorch's kernels run there; the layer norm takes it),
``torch.func`` transforms, a batch norm in evaluation mode (an affine map, cheap to differentiate).
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import partial
from typing import Iterator

import torch
from torch import nn
from torch.autograd.function import once_differentiable

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
    """A training batch norm of an (N, C, H, W) tensor in any layout (the kernels get a contiguous copy):
    PyTorch's kernel forward (running statistics updated in place), whose backward is
    :class:`~nasdistill.training.instance_norm._Backward` of kind ``"batch"``."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, momentum, eps):
        y, mean, invstd = torch.native_batch_norm(x.contiguous(), weight, bias, running_mean, running_var, True,
                                                  momentum, eps)
        c = x.shape[1]
        # x itself, not its contiguous copy: the backward's own derivative reaches x through it (a copy made
        # here is not part of the graph, and a channels_last input's second derivative would lose that term)
        ctx.save_for_backward(x, weight, mean.view(1, c, 1), invstd.view(1, c, 1))
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, mean, invstd = ctx.saved_tensors
        dx, dw, db = _Backward.apply(dy, x, weight, mean, invstd, "batch")
        return dx, dw, db, None, None, None, None


def _kernels_apply(x: torch.Tensor) -> bool:
    """Where the batch and group norms' written-out paths run: a 4-D float32/float64 CPU tensor, outside
    autocast and ``torch.func`` transforms."""
    return (x.ndim == 4 and x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)
            and not torch.is_autocast_enabled("cpu") and transformed(x) is False)


def _affine_parameters(norm: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A norm's per-channel (weight, bias), or ones and zeros for one without affine parameters."""
    if norm.affine:
        return norm.weight, norm.bias
    c = x.shape[1]
    return torch.ones(c, dtype=x.dtype, device=x.device), torch.zeros(c, dtype=x.dtype, device=x.device)


def batch_norm(x: torch.Tensor, norm: nn.BatchNorm2d) -> torch.Tensor:
    """``norm(x)`` for a ``BatchNorm2d`` in training mode, twice differentiable with the written-out second
    derivative, its running statistics and batch count updated as the module's own forward updates them;
    anything else (see the module docstring) goes through that forward."""
    if not (norm.training and _kernels_apply(x)):
        return nn.BatchNorm2d.forward(norm, x)
    norm._check_input_dim(x)
    torch.nn.functional._verify_batch_size(x.size())  # one value a channel: the error F.batch_norm raises
    factor = 0.0 if norm.momentum is None else norm.momentum
    if norm.track_running_stats and norm.num_batches_tracked is not None:  # as _BatchNorm.forward does
        norm.num_batches_tracked.add_(1)
        factor = 1.0 / float(norm.num_batches_tracked) if norm.momentum is None else norm.momentum
    weight, bias = _affine_parameters(norm, x)
    running = (norm.running_mean, norm.running_var) if norm.track_running_stats else (None, None)
    return _BatchNorm.apply(x, weight, bias, *running, factor, norm.eps)


class _GroupNorm(torch.autograd.Function):
    """A group norm of an (N, C, H, W) tensor in any layout (the kernels get a contiguous copy) with several
    channels a group: PyTorch's fused kernels forward and backward, whose backward (:class:`_GroupBackward`)
    is differentiable once more."""

    @staticmethod
    def forward(ctx, x, weight, bias, groups, eps):
        n, c, h, w = x.shape
        y, mean, rstd = torch.native_group_norm(x.contiguous(), weight, bias, n, c, h * w, groups, eps)
        ctx.save_for_backward(x, weight, mean, rstd)  # x itself, as _BatchNorm keeps it
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, mean, rstd = ctx.saved_tensors
        dx, dw, db = _GroupBackward.apply(dy, x, weight, mean, rstd, "nchw")
        return dx, dw, db, None, None


class _GroupBackward(_Backward):
    """The first derivative of :class:`_GroupNorm` (the instance norm's ``_Backward`` forward: PyTorch's kernel,
    with as many groups as ``mean`` has statistics an image), differentiable once by the formulas below.

    Per (image, group) of ``M`` values, ``<.>`` their mean, ``x_hat = (x - mean) r``, ``h = w g`` (``w``, ``a``,
    ``b`` per channel: they vary inside a group, unlike an instance norm's), the first backward is
    ``dx = r (h - <h> - x_hat <h x_hat>)``, ``dw = sum g x_hat``, ``db = sum g``. For ``L = sum u dx + a . dw
    + b . db``, with ``s = <u h> - <u><h> - <u x_hat><h x_hat>`` and ``G = -r (u <h x_hat> + h <u x_hat>) + a g``
    (the gradient with respect to ``x_hat`` at fixed ``r``):

    * ``dL/dg = w r (u - <u> - x_hat <u x_hat>) + a x_hat + b``;
    * ``dL/dw_c = sum over images of r (sum_c u g - <u> sum_c g - <u x_hat> sum_c g x_hat)`` (``sum_c``: over
      the channel's pixels);
    * ``dL/dx = r (G - <G> - x_hat <G x_hat>) - r^2 s x_hat``.

    Every term is a per-(image, channel) coefficient times ``u``, ``g``, the centred input or one: five
    per-(image, channel) sums over the pixels, combined per group.
    """

    @staticmethod
    @once_differentiable
    def backward(ctx, u, a, b):
        dy, x, weight, mean, rstd = ctx.saved_tensors
        n, c = x.shape[:2]
        groups = mean.numel() // n
        k = c // groups
        m = k * x.shape[2] * x.shape[3]
        per_channel = lambda t: t.view(n, groups, 1).repeat_interleave(k, 1)  # noqa: E731  (N, G) -> (N, C, 1)
        group_mean = lambda t: per_channel(t.view(n, groups, k).sum(2) / m)  # noqa: E731  (N, C, 1) sums
        x3, g3 = x.reshape(n, c, -1), dy.reshape(n, c, -1)
        centred = x3 - per_channel(mean)
        r = per_channel(rstd)
        wc = weight.view(1, c, 1)
        zero = torch.zeros((), dtype=x.dtype, device=x.device)
        ac = a.view(1, c, 1) if a is not None else zero
        bc = b.view(1, c, 1) if b is not None else zero
        sg, sgc = g3.sum(2, keepdim=True), (g3 * centred).sum(2, keepdim=True)   # per (image, channel)
        mh, mhx = group_mean(wc * sg), r * group_mean(wc * sgc)                 # <h>, <h x_hat>
        mag, magx = group_mean(ac * sg), r * group_mean(ac * sgc)               # <a g>, <a g x_hat>
        if u is not None:
            u3 = u.reshape(n, c, -1)
            su, suc, sug = u3.sum(2, keepdim=True), (u3 * centred).sum(2, keepdim=True), (u3 * g3).sum(2, keepdim=True)
            mu, mux, muh = group_mean(su), r * group_mean(suc), group_mean(wc * sug)  # <u>, <u x_hat>, <u h>
        else:
            mu = mux = muh = zero
        s = muh - mu * mh - mux * mhx
        d_dy = torch.addcmul(bc - wc * r * mu, centred, (ac - wc * r * mux) * r)
        g_mean = -r * (mhx * mu + mux * mh) + mag                               # <G>
        gx_mean = -2 * r * mux * mhx + magx                                     # <G x_hat>
        d_x = torch.addcmul(-r * g_mean, centred, r * (-r * gx_mean - r * r * s))
        d_x.addcmul_(g3, r * (ac - r * mux * wc))
        d_w = None
        if u is not None:
            d_dy.addcmul_(u3, wc * r)
            d_x.addcmul_(u3, -r * r * mhx)
            d_w = (r * (sug - mu * sg - mux * r * sgc)).sum((0, 2))
        return d_dy.view_as(dy), d_x.view_as(x), d_w, None, None, None


def group_norm(x: torch.Tensor, norm: nn.GroupNorm) -> torch.Tensor:
    """``norm(x)`` for a group norm of several channels a group (the ConvNet space's ``groupnorm``,
    GroupNorm(4, C)), twice differentiable with the written-out second derivative (:class:`_GroupBackward`);
    anything else goes through ``norm``'s own forward."""
    if not _kernels_apply(x):
        return nn.GroupNorm.forward(norm, x)
    return _GroupNorm.apply(x, *_affine_parameters(norm, x), norm.num_groups, norm.eps)


#: exact class -> its written-out forward (a subclass may compute otherwise; instance norms, GroupNorms too,
#: are swapped first by ``written_out_instance_norms``)
_WRITTEN_OUT = {nn.LayerNorm: layer_norm, nn.BatchNorm2d: batch_norm, nn.GroupNorm: group_norm}


@contextmanager
def written_out_norms(model: nn.Module) -> Iterator[None]:
    """Inside the block, ``model``'s instance norms and its ``nn.LayerNorm``, ``nn.BatchNorm2d`` and
    ``nn.GroupNorm`` modules take their written-out second derivatives (also through
    ``torch.func.functional_call``); on exit their own forward again. A norm swapped by an enclosing block
    is left as that block set it."""
    swapped = []
    with written_out_instance_norms(model):
        try:
            for m in model.modules():
                fn = _WRITTEN_OUT.get(type(m))
                if fn is not None and "forward" not in m.__dict__:
                    m.forward = partial(fn, norm=m)
                    swapped.append(m)
            yield
        finally:
            for m in swapped:
                del m.forward


__all__ = ["batch_norm", "group_norm", "is_map_layer_norm", "layer_norm", "written_out_norms"]
