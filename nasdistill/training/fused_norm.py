"""The channels_last instance norm's first-order passes as two fused kernels each (``torch.compile``).

bf16 candidate training, dm's real-image embeddings and dsa's passes run DC's ConvNet in ``channels_last``
(:mod:`nasdistill.training.layout`), where :mod:`~nasdistill.training.instance_norm` computes the norm
from per-(image, channel) reductions over the pixels. Written with PyTorch's element-wise ops, that is
five passes over the activation forward (sum, centre, square, sum, scale) and five backward, each
reading and writing bf16 and converting it: on AMX, where the convolutions themselves became cheap,
the norm's passes were half of a bf16 candidate training (a profile of DC's ConvNet on 100 MNIST
images). Compiled, each direction is one reduction pass and one element-wise pass with float32
arithmetic in registers: 1.9-2.1x faster per call (100 x 128 x 28 x 28 bf16, 2 threads of an
AVX-512/AMX Xeon: forward 4.7 -> 2.3 ms, backward 6.0 -> 3.1 ms) and closer to the exact values
(every intermediate in float32 instead of bf16). The forward kernel also applies a ReLU or leaky ReLU
that follows the norm (:func:`~nasdistill.training.layout.fast_layout` fuses DC's ``norm -> act``
pairs), and the backward kernel its backward: one pass over the activation instead of two each way
(100 x 128 x 28 x 28: forward 2.5 ms against 3.9 ms for the norm's kernel and PyTorch's ReLU, backward
4.3 ms against 7.5 ms).

:func:`double_backward` is the unrolls' second derivative (mtt, dd, dc/dsa's synthetic-image gradient:
``instance_norm._Backward.backward``'s formulas) in two passes instead of some twenty element-wise ops,
for float32 and bf16 CPU tensors: in place, alternating in one process, mtt's iteration 1.21x faster in
bf16 and 1.08x in float32, dd's 1.09x and 1.05x (NCHW norms; the same values to float rounding: tests).
The bf16 unrolls of instance-norm ConvNets run in channels_last on a CPU
(:func:`~nasdistill.distill.unroll.unroll_layout`): there :func:`forward` and :func:`backward` (no
activation) serve their twice-differentiable norms too, and :func:`double_backward` takes that layout.

The kernels compile on first use in a process (a few seconds; ``torch.compile(dynamic=True)``: new
batch and image sizes reuse them; inductor's on-disk cache shortens later processes' compiles) and
only where they were measured: bf16 CPU tensors (float32 ones too for :func:`double_backward`) outside
``torch.func`` transforms and outside a compiled region. If compiling fails (a machine without a C++
compiler) the eager ops run instead, with one warning. ``NASDISTILL_FUSED_NORM=0`` turns the kernels
off (read at each call).
"""

from __future__ import annotations

import logging
import os
import warnings
from contextlib import contextmanager
from typing import Callable, Iterator

import torch

from .._transforms import transformed

_compiled: dict[str, Callable] = {}
_slopes: dict[tuple, torch.Tensor] = {}
_broken: list[str] = []  # the first compile failure's message, once one happened


def forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float, slope: torch.Tensor):
    """``(y, mean, rstd)`` of an (N, C, H, W) tensor normalised per (image, channel) over its pixels, then
    passed through a leaky ReLU of negative ``slope`` (a 0-d float tensor: 0 is a ReLU, 1 no activation;
    a tensor, so that one compiled kernel serves all three); ``weight`` and ``bias`` float (1, C, 1, 1);
    ``mean`` and ``rstd`` float (N, C, 1, 1); ``y`` in x's dtype and layout."""
    m = x.shape[2] * x.shape[3]
    xf = x.float()
    mean = xf.sum((2, 3), keepdim=True) / m
    centred = xf - mean
    rstd = torch.rsqrt((centred * centred).sum((2, 3), keepdim=True) / m + eps)
    z = centred * (rstd * weight) + bias
    return torch.where(z > 0, z, z * slope).to(x.dtype), mean, rstd


def backward(dy: torch.Tensor, x: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor, weight: torch.Tensor,
             out: torch.Tensor, slope: torch.Tensor):
    """``(dx, dw, db)`` of :func:`forward` for the incoming gradient ``dy``: first through the leaky ReLU,
    whose signs come from :func:`forward`'s output ``out`` (pass ``dy`` itself with slope 1 for none),
    ``g = dy`` where ``out > 0`` else ``slope * dy``, then through the norm:
    ``dx = w r (g - <g> - x_hat <g x_hat>)``, ``dw = sum g x_hat``, ``db = sum g`` (``<.>``: pixel means).
    (The signs from the saved output: recomputing the pre-activation here compiled to slower loops.)"""
    m = x.shape[2] * x.shape[3]
    g = dy.float()
    g = torch.where(out > 0, g, g * slope)
    x_hat = (x.float() - mean) * rstd
    sum_g = g.sum((2, 3), keepdim=True)
    sum_gx = (g * x_hat).sum((2, 3), keepdim=True)
    dx = ((g - sum_g / m - x_hat * (sum_gx / m)) * (rstd * weight)).to(dy.dtype)
    return dx, sum_gx.sum((0, 2, 3)), sum_g.sum((0, 2, 3))


def double_backward(u: torch.Tensor, a: torch.Tensor, b: torch.Tensor, dy: torch.Tensor, x: torch.Tensor,
                    weight: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor):
    """The gradients ``(d_dy, d_x, d_w)`` of ``L = sum u dx + a . dw + b . db`` through the norm's first
    derivative (``instance_norm._Backward.backward``'s formulas, one reduction pass and one element-wise
    pass): NCHW ``u``, ``dy``, ``x``; ``a``, ``b``, ``weight`` (C,); ``mean``, ``rstd`` (N, C, 1, 1)."""
    m = x.shape[2] * x.shape[3]
    g, uf = dy.float(), u.float()
    centred = x.float() - mean.float()
    r, w = rstd, weight.view(1, -1, 1, 1)
    a4, b4 = a.float().view(1, -1, 1, 1), b.float().view(1, -1, 1, 1)
    wr = w * r
    mg = g.sum((2, 3), keepdim=True) / m                                  # <g>
    mgx = r * (g * centred).sum((2, 3), keepdim=True) / m                 # <g x_hat>
    mu = uf.sum((2, 3), keepdim=True) / m                                 # <u>
    mux = r * (uf * centred).sum((2, 3), keepdim=True) / m                # <u x_hat>
    mug = (uf * g).sum((2, 3), keepdim=True) / m                          # <u g>
    s = mug - mu * mg - mux * mgx
    d_dy = centred * ((a4 - wr * mux) * r) + (b4 - wr * mu) + uf * wr
    g_mean = -wr * (mu * mgx + mg * mux) + a4 * mg
    gx_mean = -wr * 2 * mux * mgx + a4 * mgx
    gamma = -(r * gx_mean + r * wr * s)
    d_x = centred * (gamma * r) - r * g_mean + g * (r * (a4 - wr * mux)) + uf * (-wr * r * mgx)
    return d_dy.to(dy.dtype), d_x.to(x.dtype), (m * r * s).sum((0, 2, 3))


def slope_tensor(slope: float, device: torch.device) -> torch.Tensor:
    """The 0-d float32 tensor :func:`forward` takes for ``slope`` (cached: one per value and device)."""
    key = (float(slope), str(device))
    if key not in _slopes:
        with torch.inference_mode(False):  # a normal tensor, also when first asked for under inference_mode
            _slopes[key] = torch.tensor(float(slope), dtype=torch.float32, device=device)
    return _slopes[key]


def enabled() -> bool:
    return os.environ.get("NASDISTILL_FUSED_NORM", "1") != "0" and not _broken


def applies(x: torch.Tensor, dtypes: tuple = (torch.bfloat16,)) -> bool:
    """Whether the compiled kernels take ``x`` (see the module docstring); ``dtypes``: the ones allowed."""
    if x.device.type != "cpu" or x.dtype not in dtypes or x.ndim != 4 or not enabled():
        return False
    # not a torch.func transform's tensor; unknown (None) includes dynamo tracing: inside a compiled model
    # the eager ops are traced and fused there, no kernel
    return transformed(x) is False


@contextmanager
def _quiet() -> Iterator[None]:
    """The first compile without the C++ toolchain's notes (e.g. "No CUDA runtime is found, using
    CUDA_HOME=..." on a CPU machine with a CUDA folder): nothing a user of a CPU training acts on."""
    log = logging.getLogger("torch.utils.cpp_extension")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def run(name: str, *args):
    """``name`` (a function of this module) compiled, on ``args``; None when compiling it failed (the caller
    then runs its eager ops; later calls skip the attempt)."""
    fn = _compiled.get(name)
    first = fn is None
    if first:
        fn = _compiled[name] = torch.compile({"forward": forward, "backward": backward,
                                              "double_backward": double_backward}[name], dynamic=True)
    try:
        if first:
            with _quiet():
                return fn(*args)
        return fn(*args)
    except Exception as e:  # noqa: BLE001 -- any compiler failure: the eager path is always there
        _broken.append(f"{type(e).__name__}: {e}".splitlines()[0][:300])
        warnings.warn(f"nasdistill: compiling the channels_last instance norm failed ({_broken[0]}); running its "
                      "eager ops instead (NASDISTILL_FUSED_NORM=0 skips the attempt)", RuntimeWarning, stacklevel=2)
        return None


__all__ = ["forward", "backward", "double_backward", "applies", "enabled", "run", "slope_tensor"]
