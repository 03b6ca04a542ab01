"""The fast memory layout of bfloat16 training and inference: ``channels_last`` with contiguous norms.

oneDNN (CPU, AMX / AVX-512-BF16) and cuDNN run bfloat16 convolutions fastest on NHWC tensors
(``torch.channels_last``), but PyTorch's CPU group norm is several times slower on them (an
instance norm, GroupNorm(C, C), ~10x in bf16). :func:`fast_layout` therefore turns a model's
convolutions to ``channels_last``, computes instance norms in that layout itself
(:mod:`nasdistill.training.instance_norm`: no copies), and wraps the other norm layers that are slow
on it (LocalResponseNorm, GroupNorm with 2-15 channels a group, LayerNorms over other dims) in a
hook that hands them a contiguous (NCHW) tensor and returns ``channels_last`` again. GroupNorm's NHWC
kernel is fast with 16 or more channels a group (GroupNorm(4, 128): 1.4x faster unhooked).

A LayerNorm over ``(C, H, W)`` (DC's ``layernorm``) needs no copy: its statistics are per image, over
all of the image's values, and a ``channels_last`` image is the contiguous ``(H, W, C)`` tensor its
``permute(0, 2, 3, 1)`` view is, so PyTorch's own layer norm runs on that view, over ``(H, W, C)``, with
the affine parameters permuted alike (:func:`layer_norm_channels_last`, on a CPU): the same values
to float rounding, forward and backward with the in-place ReLU that follows 1.6-2.1x faster than
copy + kernel + copy (bf16, 100-256 images of 128-256 channels at 8x8 to 28x28, 2 threads of an
AVX-512/AMX Xeon).

Mixed layouts are slow too: an element-wise op on one channels_last and one NCHW operand takes the
scalar path (a ReLU's backward in bf16, 100 x 256 x 8 x 8: 4.1 ms against 0.3 ms). The gradient a
model's own forward sends back through a flatten or reshape of its feature maps arrives NCHW, so the
gradients reaching its top-level children's 4-D outputs are made channels_last (one copy, where the
forward's flatten made one too). Together, on bf16 candidate trainings of the ConvNet space (A/B, best of
2, 100 images of 8x8 / 28x28, 80 / 20 steps): layernorm without pooling 1.26-1.79x (D1-W64, D2-W256),
D3-W128-relu-layernorm-avgpool 1.01x / 1.41x, batchnorm without pooling 1.12x / 1.08x, instance and
group norms with pooling unchanged (0.96-1.04x).

Batches go in through :func:`as_layout`, which gives a one-channel batch (MNIST) channels_last strides
as well (:func:`~nasdistill._strides.channels_last`; ``contiguous(memory_format=torch.channels_last)``
keeps the NCHW strides of a contiguous one, whose memory is both layouts'). The unrolled trainings
(``dd``, ``mtt``), differentiated twice through ``functional_call``, take the layout through
:func:`~nasdistill.distill.unroll.unroll_layout` where :func:`unroll_channels_last` says so, with this
module's gradient hooks (:func:`channels_last_gradients`) but their own twice-differentiable norms.

Measured on this project's CPU (one thread, one SGD step on 100 images, DC's ConvNet space,
bf16 autocast): 1.1-2.5x over bf16 in NCHW, 1.4-4x over float32, for every normalisation
(``benchmarks/throughput.py`` has the candidate-training figure). Float32 keeps the plain layout:
its results stay bit-identical to earlier releases, and NHWC float32 is not faster on every net (DC's
ConvNets with instance norms, ResNet-18 at 32 px: 0.96x). A network may ask for it in float32 on a CPU
(``fp32_channels_last``): the ``nb201`` and ``macro`` spaces' batch-norm networks, whose small-channel
convolutions run 1.15-1.4x faster in NHWC (2026-12-08, 2 threads of an AVX-512 Xeon, 10 training steps
of 100 images of 3 x 32 x 32 with DSA, in place, alternating: nb201's default network 1.18x in training
and 1.22x in evaluation, macro's 1.35x and 2.6x; the losses equal to float rounding).
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import partial
from typing import Iterator

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from .._strides import channels_last, nchw
from .instance_norm import accumulation_dtype, is_instance_norm, written_out_instance_norms

#: Layers given a contiguous input under :func:`fast_layout` (slow on channels_last tensors).
CONTIGUOUS_LAYERS = (nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)

#: GroupNorm's channels_last kernel is fast from this many channels a group on.
FAST_NHWC_GROUP = 16


def needs_contiguous(m: nn.Module) -> bool:
    """Whether layer ``m`` runs faster given a contiguous input than a channels_last one."""
    if isinstance(m, nn.GroupNorm):
        return m.num_channels // m.num_groups < FAST_NHWC_GROUP
    return isinstance(m, CONTIGUOUS_LAYERS)


def _to_contiguous(module, args):
    x = args[0]
    return (x.contiguous(), *args[1:]) if isinstance(x, torch.Tensor) else None


def _to_channels_last(module, args, out):
    if isinstance(out, torch.Tensor) and out.ndim == 4:
        return out.contiguous(memory_format=torch.channels_last)
    return None


def _channels_last_grad(grad: torch.Tensor) -> torch.Tensor:
    return grad.contiguous(memory_format=torch.channels_last)  # no copy when it already is


def _grads_channels_last(module, args, out):
    """Make the gradient that will reach ``module``'s 4-D channels_last output channels_last too (see the
    module docstring: it may come back NCHW from a flatten)."""
    if isinstance(out, torch.Tensor) and out.ndim == 4 and out.requires_grad and _spatial(out):
        out.register_hook(_channels_last_grad)


def _spatial(t: torch.Tensor) -> bool:
    return t.shape[-1] * t.shape[-2] > 1 and t.is_contiguous(memory_format=torch.channels_last)


def _image_layer_norm(m: nn.Module) -> bool:
    """Whether ``m`` is a LayerNorm over three dims, ``(C, H, W)`` of the images it sees."""
    return isinstance(m, nn.LayerNorm) and len(m.normalized_shape) == 3


class _LayerNormNHWC(torch.autograd.Function):
    """PyTorch's layer-norm kernels on the ``(N, H, W, C)`` view of a channels_last tensor, over
    ``(H, W, C)``. The output is written into a new channels_last tensor (``out=``), never returned as a
    view: a view would make the in-place ReLU that follows an autograd ``CopySlices``, slower than
    the copies saved. First-order (candidate training)."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        n, c, h, w = x.shape
        with torch.autocast(x.device.type, enabled=False):  # bf16 input, float32 parameters: the kernels take them
            hwc = lambda t: t.permute(1, 2, 0).contiguous() if t is not None else None  # noqa: E731
            wp, bp = hwc(weight), hwc(bias)
            y = torch.empty_like(x, memory_format=torch.channels_last)
            mean = torch.empty((n, 1, 1, 1), dtype=accumulation_dtype(x), device=x.device)
            rstd = torch.empty_like(mean)
            torch.ops.aten.native_layer_norm.out(x.permute(0, 2, 3, 1), [h, w, c], wp, bp, eps,
                                                 out0=y.permute(0, 2, 3, 1), out1=mean, out2=rstd)
        ctx.save_for_backward(x, wp, bp, mean, rstd)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x, wp, bp, mean, rstd = ctx.saved_tensors
        n, c, h, w = x.shape
        wants = [ctx.needs_input_grad[0], wp is not None and ctx.needs_input_grad[1],
                 bp is not None and ctx.needs_input_grad[2]]
        dx, dw, db = torch.ops.aten.native_layer_norm_backward(
            dy.permute(0, 2, 3, 1).contiguous(), x.permute(0, 2, 3, 1), [h, w, c], mean, rstd, wp, bp, wants)
        chw = lambda t, *order: t.permute(*order) if t is not None else None  # noqa: E731
        return chw(dx, 0, 3, 1, 2), chw(dw, 2, 0, 1), chw(db, 2, 0, 1), None


def layer_norm_channels_last(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """``norm(x)`` for a LayerNorm over ``(C, H, W)``, in ``x``'s ``channels_last`` layout without a copy
    (see the module docstring); other inputs go through a contiguous copy and back, as the other slow
    norm layers do."""
    if (x.device.type == "cpu" and x.ndim == 4 and tuple(x.shape[1:]) == tuple(norm.normalized_shape)
            and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)):
        # (CPU only: its kernels take bf16 inputs with float32 parameters; not measured elsewhere)
        return _LayerNormNHWC.apply(x, norm.weight, norm.bias, norm.eps)
    out = nn.LayerNorm.forward(norm, x.contiguous())
    return out.contiguous(memory_format=torch.channels_last) if out.ndim == 4 else out


def wants_fast_layout(model: nn.Module, precision: str, device: str | torch.device | None = None) -> bool:
    """Whether :func:`fast_layout` pays: bfloat16 on a model with 2-D convolutions; float32 too where the
    model asks for it (``fp32_channels_last``, :class:`nasdistill.spaces.Network`) and ``device`` is a CPU
    (candidate training and evaluation pass it; measured there only)."""
    if precision == "fp32":
        if device is None or torch.device(device).type != "cpu" or not getattr(model, "fp32_channels_last", False):
            return False
    elif precision != "bf16":
        return False
    return _has_conv2d(model)


def _has_conv2d(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def as_layout(x: torch.Tensor, enabled: bool) -> torch.Tensor:
    """A batch of images in ``channels_last`` when ``enabled`` (:func:`~nasdistill._strides.channels_last`: a
    one-channel batch too), else in plain NCHW (:func:`~nasdistill._strides.nchw`: a one-channel batch with
    NHWC strides would run the network in channels_last); other tensors as they are."""
    if x.ndim != 4:
        return x
    return channels_last(x) if enabled else nchw(x)


@contextmanager
def channels_last_gradients(model: nn.Module) -> Iterator[None]:
    """Inside the block, the gradient that reaches a 4-D ``channels_last`` output of one of ``model``'s
    top-level children is made ``channels_last`` too: those outputs meet the model's own ops (a flatten),
    whose backward sends the gradient back NCHW (see the module docstring)."""
    handles = [m.register_forward_hook(_grads_channels_last) for m in model.children()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _norm_layers(model: nn.Module) -> Iterator[nn.Module]:
    norms = (*CONTIGUOUS_LAYERS, nn.modules.batchnorm._NormBase)  # every norm layer of torch.nn
    return (m for m in model.modules() if isinstance(m, norms))


def unroll_channels_last(model: nn.Module, precision: str, device: str | torch.device) -> bool:
    """Whether an unrolled training of ``model`` (``dd``, ``mtt``: differentiated twice, through
    ``torch.func.functional_call``) runs in ``channels_last``: in bf16 on a CPU, for a model with 2-D
    convolutions whose norms are all instance norms (DC's ConvNets; their second derivative then runs
    :mod:`~nasdistill.training.fused_norm`'s compiled kernels in that layout). Measured there only (other
    norms keep the plain layout). On 2 threads of an AVX-512/AMX Xeon, ``dd``'s bf16 iteration at the
    throughput benchmark's settings (DC's ConvNet D3-W128, MNIST, 30 steps of 10 images) ran 1.19x faster
    and ``mtt``'s (30 steps of 100 images) 1.26x: the convolutions' bf16 kernels are faster in NHWC, and the
    one-channel first convolution's NCHW one several times slower (:func:`~nasdistill._strides.channels_last`).
    Float32 unrolls stay NCHW (``dd``: 0.97x in channels_last)."""
    return (precision == "bf16" and torch.device(device).type == "cpu"
            and _has_conv2d(model) and all(is_instance_norm(m) for m in _norm_layers(model)))


@contextmanager
def fast_layout(model: nn.Module, enabled: bool = True) -> Iterator[bool]:
    """Run ``model`` in ``channels_last`` (norm layers contiguous) inside the block; yields ``enabled``.

    On exit the parameters are contiguous again and the hooks are gone: the model, its
    ``state_dict`` and anything saved from it look as if the block never ran. Feed it inputs
    through :func:`as_layout`.
    """
    if not enabled:
        yield False
        return
    handles, swapped = [], []
    try:
        model.to(memory_format=torch.channels_last)
        # instance norms computed in channels_last (nasdistill.training.instance_norm: no copies),
        # first-order as training passes are, a ReLU / LeakyReLU right after one computed with it
        with written_out_instance_norms(model, twice=False, fuse_activations=True):
            for m in model.modules():
                if _image_layer_norm(m) and "forward" not in m.__dict__:  # on the NHWC view, no copies
                    m.forward = partial(layer_norm_channels_last, m)
                    swapped.append(m)
                elif needs_contiguous(m) and not is_instance_norm(m):  # (instance norms: swapped above)
                    handles.append(m.register_forward_pre_hook(_to_contiguous))
                    handles.append(m.register_forward_hook(_to_channels_last))
            with channels_last_gradients(model):
                yield True
    finally:
        for h in handles:
            h.remove()
        for m in swapped:
            del m.forward
        model.to(memory_format=torch.contiguous_format)


__all__ = ["fast_layout", "as_layout", "wants_fast_layout", "channels_last_gradients", "unroll_channels_last",
           "needs_contiguous", "layer_norm_channels_last", "CONTIGUOUS_LAYERS"]
