"""Instance norm with its second derivative written out, in the tensor's own layout.

DC's default ConvNet normalises with an instance norm (``GroupNorm(C, C)``). PyTorch's handling of it
is a poor fit for two of this project's hot paths:

* **bf16 candidate training** runs in ``channels_last`` (:mod:`nasdistill.training.layout`), where
  PyTorch's CPU group norm is ~10x slower and the fast layout used to copy each norm's input to NCHW
  and back: four full copies of the activation a layer, forward and backward. Here the statistics
  are reductions over the pixels of the ``(N, H*W, C)`` view the ``channels_last`` memory already is:
  no copy, 1.3-2.3x faster than copy + native kernel + copy per layer (bf16, one CPU thread). Where
  :mod:`~nasdistill.training.fused_norm` applies (bf16 on a CPU), these first-order passes run as its
  compiled kernels instead, 1.9-2.1x faster again; the eager ops below remain the fallback.
* **Unrolled training** (``mtt``, ``dd``: :mod:`nasdistill.distill.unroll`) differentiates the
  gradient itself. PyTorch's double backward of a group norm is a composite of some thirty
  element-wise ops, and under bf16 autocast every norm's input and gradient is cast to float32 and
  back. Here NCHW tensors keep PyTorch's fused kernels forward and backward, fed bf16 directly (they
  take bf16 inputs with float32 parameters), and the second derivative is written out: five
  reductions and two outputs of three fused multiply-adds each (see ``_Backward.backward``). Per layer, forward + gradient
  + gradient of the gradient, on 2 threads of an AVX-512/AMX Xeon: 1.1-1.3x PyTorch's in float32 and
  1.1-2.3x in bf16 (10-256 images of 128 channels, 14x14 and 28x28). The bf16 unrolls of instance-norm
  ConvNets on a CPU run in ``channels_last`` instead (:func:`~nasdistill.distill.unroll.unroll_layout`),
  where all three passes are :mod:`~nasdistill.training.fused_norm`'s compiled kernels.

Per (image, channel) with ``M = H*W`` pixels, ``x_hat = (x - mean) * r``, ``r = (var + eps)^-1/2`` and
``y = w * x_hat + b``, the first backward of an incoming ``g = dL/dy`` is
``dx = w r (g - <g> - x_hat <g x_hat>)`` (``<.>``: the mean over the pixels), ``dw = sum g x_hat``,
``db = sum g``. Reductions of bf16 tensors accumulate in float32 and round their per-(image, channel)
results to bf16, as every bf16 op does: bf16 values are within bf16 rounding of the exact ones
(relative error ~3e-3 against ~2e-3 for the native bf16 kernel, tests), float32 ones equal the native
kernel's to float rounding, and ``torch.autograd.gradgradcheck`` passes in float64. A third
derivative is not computed: through ``backward()`` it raises (``once_differentiable``'s guard), but
``torch.autograd.grad(..., inputs)`` prunes that guard (it hangs off detached copies) and leaves the
term out without a word. Nothing in nasdistill takes a third derivative.

Layer and batch norms take the same written-out derivative in :mod:`~nasdistill.training.norms`.
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import partial
from typing import Iterator

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from .._rectifier import rectify, rectify_backward
from . import fused_norm


def _flat(t: torch.Tensor, nhwc: bool) -> torch.Tensor:
    """An (N, C, H, W) tensor as (N, H*W, C) (``nhwc``) or (N, C, H*W): a view where its memory allows."""
    n, c, h, w = t.shape
    return t.permute(0, 2, 3, 1).reshape(n, h * w, c) if nhwc else t.reshape(n, c, h * w)


def _empty(like: torch.Tensor, nhwc: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """A new (N, C, H, W) tensor in ``like``'s layout and its flat view, to be written with ``out=``
    (autograd forbids in-place ops, a ReLU's, on a view made inside a Function: the 4-D tensor is
    returned, never a view)."""
    out = torch.empty_like(like, memory_format=torch.channels_last if nhwc else torch.contiguous_format)
    n, c, h, w = like.shape
    return out, (out.permute(0, 2, 3, 1).view(n, h * w, c) if nhwc else out.view(n, c, h * w))


def accumulation_dtype(t: torch.Tensor) -> torch.dtype:
    """The dtype statistics accumulate in: float32 for 16-bit tensors, else the tensor's own."""
    return torch.float32 if t.dtype in (torch.bfloat16, torch.float16) else t.dtype


def _sum(t: torch.Tensor, dim: int | tuple, acc: torch.dtype) -> torch.Tensor:
    """Per-(image, channel) sums over the pixels, as ``acc``: a 16-bit tensor is summed with float
    accumulation and its (small) result converted; ``sum(dtype=float32)`` would copy the whole tensor."""
    return t.sum(dim, keepdim=True).to(acc)


def _dot(a: torch.Tensor, b: torch.Tensor, dim: int | tuple, acc: torch.dtype) -> torch.Tensor:
    """Per-(image, channel) sums of ``a * b`` over the pixels (``_sum(a * b)``'s values, in one call;
    PyTorch's CPU ``vecdot`` still writes the product out, a ``mul`` then a ``sum``: measured in float32)."""
    if isinstance(dim, tuple):  # a batch norm's (images, pixels)
        return (a * b).sum(dim, keepdim=True).to(acc)
    return torch.linalg.vecdot(a, b, dim=dim).unsqueeze(dim).to(acc)


def _affine(t: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``out = shift + t * scale`` for per-(image, channel) ``scale`` and ``shift`` broadcast over the
    pixels of a flat ``t``: one ``addcmul``, except for a 16-bit NCHW ``t`` (scale and shift (N, C, 1),
    constant along the contiguous axis), where PyTorch's CPU ``addcmul`` with two broadcast operands
    runs its unvectorised loop, converting every element: a ``mul`` and an ``add_`` instead (bf16
    10 x 128 x 784: 0.26 ms against 0.72 ms; a norm's forward, gradient and gradient of the gradient
    1.1-1.2x), at the cost of a second bf16 rounding. float32 keeps the ``addcmul`` (0.32 ms against
    0.26 ms there, no difference measurable in a whole layer)."""
    if t.dtype in (torch.bfloat16, torch.float16) and scale.shape[-1] == 1 and t.shape[-1] > 1:
        return torch.mul(t, scale, out=out).add_(shift)
    return torch.addcmul(shift, t, scale, out=out)


def _is_nhwc(x: torch.Tensor) -> bool:
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def _first_order(dy: torch.Tensor, centred: torch.Tensor, weight, rstd):
    """``(dx, dw, db)`` for the incoming gradient ``dy`` (4-D) and the flat (N, H*W, C) ``centred``
    input of a channels_last tensor: ``dx = k (g - <g> - x_hat <g x_hat>)``, ``k = w r``, ``x_hat = centred r``."""
    acc = accumulation_dtype(centred)
    dy3 = _flat(dy, True)
    m = centred.shape[1]
    sum_g = _sum(dy3, 1, acc)  # (N, 1, C)
    sum_gc = _sum(dy3 * centred, 1, acc)
    k = rstd * weight.view(1, 1, -1)
    dx, dx3 = _empty(dy, True)
    torch.addcmul((-k * sum_g / m).to(dy.dtype), centred, (-k * rstd.square() * sum_gc / m).to(dy.dtype), out=dx3)
    dx3.addcmul_(dy3, k.to(dy.dtype))
    return dx, (sum_gc * rstd).sum((0, 1)), sum_g.sum((0, 1))


def _native(t: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``t`` as PyTorch's group-norm kernels take it beside ``weight``: the CPU kernels take bf16 inputs
    with float32 parameters as they are; elsewhere (not measured) the input is cast to the parameters'
    dtype, as autocast does for a group norm."""
    return t if t.device.type == "cpu" or t.dtype == weight.dtype else t.to(weight.dtype)


def _native_backward(dy, x, weight, mean, rstd):
    """``(dx, dw, db)`` of an NCHW tensor from PyTorch's fused group-norm backward kernel, for as many groups
    as ``mean`` has statistics an image (an instance norm's: one a channel)."""
    n, c, h, w = x.shape
    groups = mean.numel() // n
    dx, dw, db = torch.ops.aten.native_group_norm_backward(
        _native(dy, weight).contiguous(), _native(x, weight).contiguous(), mean.view(n, groups), rstd.view(n, groups),
        weight, n, c, h * w, groups, [True, True, True])
    return dx.to(dy.dtype), dw, db


def _nhwc_statistics(x: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """An instance norm's statistics as the channels_last eager formulas take them, (N, 1, C), from the
    compiled kernels' (N, C, 1, 1) (a view of the same values)."""
    n, c = x.shape[:2]
    return mean.view(n, 1, c), rstd.view(n, 1, c)


class _Norm(torch.autograd.Function):
    """``y = w * (x - mean) * r + b`` per (image, channel) over the pixels of an (N, C, H, W) tensor.

    NCHW tensors go through PyTorch's fused kernels forward and backward (fast in that layout, also
    on bf16 inputs with float32 parameters, which autocast would otherwise cast to float32 and back);
    channels_last ones through the written-out reductions. ``twice``: the backward pass is itself
    differentiable (:class:`_Backward`, which keeps ``x``); else first-order only (the fast layout's
    candidate training keeps the centred input instead, and a second derivative raises). Channels_last
    bf16 CPU tensors take :mod:`~nasdistill.training.fused_norm`'s compiled kernels, which keep ``x``:
    first-order ones (candidate training) and twice-differentiable ones (the bf16 unrolls' layout,
    :func:`~nasdistill.distill.unroll.unroll_layout`), whose gradient is then a :class:`_Backward` of kind
    ``"fused"``. ``slope`` (see :func:`instance_norm`): a leaky ReLU applied on the way out, whose backward
    (from the saved output's signs) runs in the backward kernel, or before the norm's eager backward."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps, twice, slope=None):
        with torch.autocast(x.device.type, enabled=False):  # the dtypes below are the ones meant
            nhwc = _is_nhwc(x)
            n, c, h, w = x.shape
            fused = (nhwc and fused_norm.applies(x)
                     and fused_norm.run("forward", x, weight.view(1, c, 1, 1), bias.view(1, c, 1, 1), eps,
                                        fused_norm.slope_tensor(1.0 if slope is None else slope, x.device)))
            if fused:  # two compiled passes (nasdistill.training.fused_norm), the activation inside
                y, mean, rstd = fused
            elif nhwc:
                acc, x3 = accumulation_dtype(x), _flat(x, True)
                # sums, not means: a bf16 mean casts the whole tensor to float32 first (10x slower)
                mean = (_sum(x3, 1, acc) / (h * w)).to(x.dtype)                       # (N, 1, C)
                centred = x3 - mean
                rstd = torch.rsqrt(_sum(centred.square(), 1, acc) / (h * w) + eps)    # float32
                y, y3 = _empty(x, True)
                torch.addcmul(bias.view(1, 1, -1).to(x.dtype), centred, (rstd * weight.view(1, 1, -1)).to(x.dtype),
                              out=y3)
            else:
                y, mean, rstd = torch.native_group_norm(_native(x, weight).contiguous(), weight, bias, n, c, h * w, c, eps)
                y, mean, rstd = y.to(x.dtype), mean.view(n, c, 1), rstd.view(n, c, 1)
            if slope is not None and not fused:  # the activation the kernel would have applied
                y = rectify(y, slope)
        # x itself for a second derivative (the double backward reaches it through _Backward) and for the
        # fused kernels (which centre it on the fly); the centred input for the eager first-order path;
        # with an activation also the output, whose signs its backward takes
        saved = (centred if nhwc and not twice and not fused else x, weight, mean, rstd)
        ctx.save_for_backward(*saved, *((y,) if slope is not None else ()))
        ctx.nhwc, ctx.twice, ctx.fused, ctx.slope = nhwc, twice, bool(fused), slope
        return y

    @staticmethod
    def backward(ctx, dy):
        saved, weight, mean, rstd = ctx.saved_tensors[:4]
        out = ctx.saved_tensors[4] if ctx.slope is not None else None  # the output, after the activation
        res = None
        if ctx.fused and not torch.is_grad_enabled():  # the activation's backward and the norm's in one kernel
            c = saved.shape[1]
            slope = fused_norm.slope_tensor(1.0 if out is None else ctx.slope, dy.device)  # 1: no activation
            res = fused_norm.run("backward", dy, saved, mean, rstd, weight.view(1, c, 1, 1),
                                 dy if out is None else out, slope)
        if res is not None:
            dx, dw, db = res
        else:
            if out is not None:  # through the activation first (PyTorch's kernel), then the norm's eager ops
                dy = rectify_backward(dy, out, ctx.slope)
            dx, dw, db = _Norm._eager_backward(ctx, dy, saved, weight, mean, rstd)
        return dx, dw, db, None, None, None

    @staticmethod
    def _eager_backward(ctx, dy, saved, weight, mean, rstd):
        if ctx.twice:
            kind = "fused" if ctx.fused else "nhwc" if ctx.nhwc else "nchw"
            dx, dw, db = _Backward.apply(dy, saved, weight, mean, rstd, kind)
        elif torch.is_grad_enabled():  # create_graph=True: a silent first-order result would be wrong
            raise RuntimeError("this instance norm is differentiable once (the fast layout's); run it twice-"
                               "differentiable: instance_norm(x, norm, twice=True) or written_out_instance_norms(model)")
        elif ctx.fused:  # compiling the backward failed: the eager ops, from the saved input
            n, c = saved.shape[:2]
            mean3, rstd3 = mean.view(n, 1, c), rstd.view(n, 1, c)
            dx, dw, db = _first_order(dy, _flat(saved, True) - mean3.to(saved.dtype), weight, rstd3)
        elif ctx.nhwc:
            dx, dw, db = _first_order(dy, saved, weight, rstd)
        else:
            dx, dw, db = _native_backward(dy, saved, weight, mean, rstd)
        return dx, dw, db


class _Backward(torch.autograd.Function):
    """The first derivative of :class:`_Norm`, itself differentiable once (the unroll's second order).
    ``kind``: ``"nchw"`` or ``"nhwc"`` (an instance norm's per-(image, channel) statistics over the pixels,
    in that layout; ``mean``/``rstd`` (N, C, 1) or (N, 1, C)), ``"fused"`` (channels_last, the compiled
    forward's float32 (N, C, 1, 1) statistics: the compiled backward and double backward, the ``nhwc``
    formulas where compiling failed), or ``"batch"`` (a training batch norm's
    per-channel statistics over the images and pixels of an NCHW tensor; ``mean``/``rstd`` (1, C, 1))."""

    @staticmethod
    def forward(ctx, dy, x, weight, mean, rstd, kind):
        with torch.autocast(x.device.type, enabled=False):
            res = None
            if kind == "fused":  # channels_last, statistics (N, C, 1, 1) from the compiled forward
                c = x.shape[1]
                res = fused_norm.run("backward", dy, x, mean, rstd, weight.view(1, c, 1, 1), dy,
                                     fused_norm.slope_tensor(1.0, dy.device))
            if res is not None:
                dx, dw, db = res
            elif kind in ("nhwc", "fused"):
                mean3, rstd3 = _nhwc_statistics(x, mean, rstd)
                dx, dw, db = _first_order(dy, _flat(x, True) - mean3.to(x.dtype), weight, rstd3)
            elif kind == "batch":  # (train=True: the saved statistics are used, eps is not)
                dx, dw, db = torch.ops.aten.native_batch_norm_backward(
                    dy.contiguous(), x.contiguous(), weight, None, None, mean.view(-1), rstd.view(-1), True, 0.0,
                    [True, True, True])
            else:
                dx, dw, db = _native_backward(dy, x, weight, mean, rstd)
        ctx.save_for_backward(dy, x, weight, mean, rstd)
        ctx.kind = kind
        return dx, dw, db

    @staticmethod
    @once_differentiable
    def backward(ctx, u, a, b):
        """Gradients of ``L = sum u dx + a . dw + b . db`` with respect to ``dy``, ``x`` and ``w``.

        With ``<.>`` the per-(image, channel) pixel mean (a batch norm's: per channel, over the images and
        pixels; ``M`` the count it averages), ``x_hat = centred * r`` and
        ``s = <u g> - <u><g> - <u x_hat><g x_hat>`` (so that ``sum u dx = M w r s``):

        * ``dL/dg = w r (u - <u> - x_hat <u x_hat>) + a x_hat + b``;
        * ``dL/dw = sum over images of M r s``;
        * ``dL/dx = r P(G) - r^2 w s x_hat``, where ``G = -w r (u <g x_hat> + g <u x_hat>) + a g`` is the
          gradient with respect to ``x_hat`` at fixed ``r``, ``- r^2 w s x_hat`` the one through ``r``
          (``dL/dr = M w s``, ``dr/dx = -r^2 x_hat / M``), and ``P(v) = v - <v> - x_hat <v x_hat>`` the projection
          ``x_hat``'s dependence on ``x`` applies.
        """
        dy, x, weight, mean, rstd = ctx.saved_tensors
        kind = ctx.kind
        if (kind in ("nchw", "fused") and u is not None and a is not None and b is not None
                and fused_norm.applies(x, (torch.bfloat16, torch.float32))):  # the unrolls' instance norms
            n, c = x.shape[:2]
            res = fused_norm.run("double_backward", u, a, b, dy, x, weight, mean.view(n, c, 1, 1),
                                 rstd.view(n, c, 1, 1))
            if res is not None:
                return (*res, None, None, None)
        if kind == "fused":  # the compiled kernel failed or does not take these: the eager formulas
            kind = "nhwc"
            mean, rstd = _nhwc_statistics(x, mean, rstd)
        nhwc = kind == "nhwc"
        dim = {"nhwc": 1, "nchw": 2, "batch": (0, 2)}[kind]  # what the statistics reduce over
        acc = accumulation_dtype(x)
        shape = (1, 1, -1) if nhwc else (1, -1, 1)
        others = (0, 1) if nhwc else (0, 2)
        x3, g3 = _flat(x, nhwc), _flat(dy, nhwc)
        m = x3.shape[0] * x3.shape[2] if kind == "batch" else x3.shape[dim]
        dtype = dy.dtype
        centred = x3 - mean.to(x.dtype)
        r, w = rstd, weight.view(shape)
        wr = w * r
        mg, mgx = _sum(g3, dim, acc) / m, r * _dot(g3, centred, dim, acc) / m          # <g>, <g x_hat>
        a = a.view(shape).to(acc) if a is not None else torch.zeros((), device=x.device)
        b = b.view(shape).to(acc) if b is not None else torch.zeros((), device=x.device)
        if u is not None:
            u3 = _flat(u, nhwc)
            mu = _sum(u3, dim, acc) / m  # <u>
            mux = r * _dot(u3, centred, dim, acc) / m  # <u x_hat>
            mug = _dot(u3, g3, dim, acc) / m  # <u g>
        else:
            mu = mux = mug = torch.zeros((), device=x.device)
        s = mug - mu * mg - mux * mgx
        # dL/dg = wr u + (a - wr <u x_hat>) x_hat + (b - wr <u>)
        d_dy, d_dy3 = _empty(dy, nhwc)
        _affine(centred, ((a - wr * mux) * r).to(dtype), (b - wr * mu).to(dtype), d_dy3)
        if u is not None:
            d_dy3.addcmul_(u3, wr.to(dtype))
        # dL/dx = alpha u + beta g + gamma x_hat + delta, from G's means <G>, <G x_hat>
        g_mean = -wr * (mu * mgx + mg * mux) + a * mg
        gx_mean = -wr * 2 * mux * mgx + a * mgx
        alpha = -wr * r * mgx
        beta = r * (a - wr * mux)
        gamma = -(r * gx_mean + r * wr * s)
        delta = -r * g_mean
        d_x, d_x3 = _empty(x, nhwc)
        _affine(centred, (gamma * r).to(dtype), delta.to(dtype), d_x3)
        d_x3.addcmul_(g3, beta.to(dtype))
        if u is not None:
            d_x3.addcmul_(u3, alpha.to(dtype))
        d_w = (m * r * s).sum(others) if u is not None else None
        return d_dy, d_x, d_w, None, None, None


def is_instance_norm(m: nn.Module) -> bool:
    """Whether ``m`` is a GroupNorm with one channel a group (an instance norm), which :func:`instance_norm` computes."""
    return isinstance(m, nn.GroupNorm) and m.num_groups == m.num_channels


def instance_norm(x: torch.Tensor, norm: nn.GroupNorm, *, twice: bool = True,
                  slope: float | None = None) -> torch.Tensor:
    """``norm(x)`` for an instance norm (:func:`is_instance_norm`) on a 4-D tensor, computed in ``x``'s
    layout (``channels_last`` or NCHW) and returned in it; other inputs go through ``norm``'s own forward.
    ``twice``: differentiable twice (what unrolled trainings need); False (candidate training's fast
    layout) saves a channels_last backward pass one element-wise op, and a second derivative raises.
    ``slope``: a leaky ReLU of that negative slope (0: a ReLU) applied to the result, inside the compiled
    kernel where :mod:`~nasdistill.training.fused_norm` applies (first-order, channels_last), else by
    PyTorch's kernels, forward and backward, as the activation module would."""
    if x.ndim != 4:
        y = nn.GroupNorm.forward(norm, x)
        return y if slope is None else rectify(y, slope)
    c = x.shape[1]
    weight = norm.weight if norm.affine else torch.ones(c, device=x.device)
    bias = norm.bias if norm.affine else torch.zeros(c, device=x.device)
    acc = torch.promote_types(accumulation_dtype(x), weight.dtype)  # float32 parameters, float64 ones kept
    return _Norm.apply(x, weight.to(acc), bias.to(acc), norm.eps, twice, slope)


@contextmanager
def written_out_instance_norms(model: nn.Module, *, twice: bool = True,
                               fuse_activations: bool = False) -> Iterator[None]:
    """Inside the block, ``model``'s instance norms run :func:`instance_norm` (``twice`` as there; also
    through ``torch.func.functional_call``); on exit their own forward again. A norm swapped by an
    enclosing block is left as that block set it.

    ``fuse_activations`` (first-order only): a ReLU or LeakyReLU that directly follows an instance norm
    in an ``nn.Sequential`` (DC's ConvNet blocks: conv, norm, act, pool) is computed by the norm
    (:func:`instance_norm`'s ``slope``, inside the compiled kernel where it applies) and passes its input
    through meanwhile; pairs with hooks, or with a module used twice in the model, are left apart."""
    pairs = _norm_activation_pairs(model) if fuse_activations and not twice else {}
    swapped, passed = [], []
    try:
        for m in model.modules():
            if is_instance_norm(m) and "forward" not in m.__dict__:
                act = pairs.get(m)
                m.forward = partial(_swapped_forward, m, twice, None if act is None else _slope(act))
                swapped.append(m)
                if act is not None:
                    act.forward = _identity
                    passed.append(act)
        yield
    finally:
        for m in swapped + passed:
            del m.forward


def _swapped_forward(norm, twice, slope, x):
    return instance_norm(x, norm, twice=twice, slope=slope)


def _identity(x):
    return x


def _slope(act: nn.Module) -> float | None:
    """The negative slope of a ReLU (0) or LeakyReLU; None for any other module. A subclass counts only
    when it declares ``plain_values`` (the parent's values, computed otherwise: nasdistill.spaces.activation)."""
    plain = lambda cls: type(act) is cls or (isinstance(act, cls) and getattr(type(act), "plain_values", False))  # noqa: E731
    if plain(nn.ReLU):
        return 0.0
    if plain(nn.LeakyReLU):
        return float(act.negative_slope)
    return None


def _norm_activation_pairs(model: nn.Module) -> dict[nn.Module, nn.Module]:
    """{instance norm: the ReLU / LeakyReLU right after it in an ``nn.Sequential``}, for modules that appear
    once in the model, carry no hooks and whose forward nothing swapped."""
    uses: dict[int, int] = {}
    for _, m in model.named_modules(remove_duplicate=False):
        uses[id(m)] = uses.get(id(m), 0) + 1
    plain = lambda m: (uses[id(m)] == 1 and "forward" not in m.__dict__  # noqa: E731
                       and not (m._forward_hooks or m._forward_pre_hooks))
    pairs = {}
    for seq in model.modules():
        if isinstance(seq, nn.Sequential):
            mods = list(seq)
            for norm, act in zip(mods, mods[1:]):
                if is_instance_norm(norm) and _slope(act) is not None and plain(norm) and plain(act):
                    pairs[norm] = act
    return pairs


__all__ = ["instance_norm", "is_instance_norm", "written_out_instance_norms"]
