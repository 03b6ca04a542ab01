"""A drop-in ``nn.Conv2d`` with two faster backward passes on a CPU: for few input channels, and where
the gradient itself is differentiated again.

**Few input channels.** A network's first convolution sees the image's 1 or 3 channels. oneDNN computes
that layer's forward pass well, but on a CPU its gradient with respect to the input (a transposed
convolution down to 1-3 channels) runs at a small fraction of the machine's speed: for 100 MNIST images
through DC's first layer (1 -> 128 channels, 3x3, 28x28) it took 11.5 ms on 2 threads of an AVX-512
Xeon, against 3 ms for the forward pass. Only the methods that move pixels need it (``dm``, ``dsa``,
``cafe``, ``krr``, and twice a student step in the unrolls of ``mtt`` and ``dd``: once through the
forward pass and once through the gradient's own derivative); training a candidate does not.

Written as matrix products, the same gradients cost little: the input's gradient is ``W^T @ dY``
per image (a batched matrix product with the (C_in*kh*kw) x C_out transposed weight), folded back
onto the pixels (``F.fold``, the adjoint of ``F.unfold``): 1.9 ms there; the weight's is
``dY @ unfold(X)^T`` summed over the batch. :class:`_ThinConv` keeps PyTorch's forward pass and
writes the backward pass with these differentiable ops, so that gradients of any order (the
unrolls' meta-gradients) take them too. Forward and backward together, against ``nn.Conv2d`` (2 threads
of that Xeon, 10-256 images, 16x16 and 32x32 maps): 1.1-2.1x for 1 input channel and 32-256 output
channels, 1.0-1.6x for 3 input channels and 128-256; with a second-order pass (gradient-matching style)
0.9-1.8x and 1.05-1.3x. With 3 input channels and 32-64 output channels the products lose (0.6-1.1x),
hence :func:`_thin`'s rule. In a whole ``mtt`` iteration in float32 (DC's ConvNet, 100 MNIST images,
30 student steps) it and :mod:`nasdistill.spaces.activation` together saved 4-7%.

**Differentiated twice.** PyTorch's derivative of a convolution's backward pass computes one of its
terms, the weight's gradient from the upstream gradient of the input's gradient, as a convolution of
the batch-transposed tensors (a 14x14 "kernel" over 128 "images" of 100 channels for DC's second
layer): oneDNN runs it at half the speed of its own weight-gradient kernel (2 threads of that Xeon,
100 images: 48 ms against 21 ms at 14x14, 257 ms against 82 ms at 28x28). Inside
:func:`nasdistill._second_order.differentiated_twice` (raised by the unrolls and by gradient matching),
every other convolution runs :class:`_Conv`, whose backward pass is two Functions, :class:`_InputGrad`
and :class:`_WeightGrad`, each computed by oneDNN's first-order kernels (``convolution_backward``) and
each differentiated by the three of them again, so every order of derivative takes oneDNN's fast
kernels. Where nothing is differentiated twice its backward is the very ``convolution_backward`` call
of ``nn.Conv2d`` (bit-identical); outside the flag it is not taken at all (a Python Function costs ~2%
on the smallest candidate trainings). A whole ``mtt`` iteration in float32 ran 1.11x faster with it (in place,
alternating), bfloat16 1.02x, ``dd`` 1.03x and 1.02x.

Both backward passes skip the gradients the running backward pass does not reach (an unroll's
``autograd.grad`` with respect to the parameters never asks for the input's gradient of the first
layer), as PyTorch's own nodes do. Values are equal to PyTorch's to float rounding (another order of
the same sums; ``gradcheck`` and ``gradgradcheck`` in float64 pass).

Everything else runs ``nn.Conv2d``'s own path: for the few-channel path, another stride, dilation or
grouping, non-float32 or non-contiguous inputs and autocast; for the other (which takes any stride,
dilation and grouping, and bfloat16 autocast, casting as autocast does), other dtypes; for both, padding
modes other than zeros, a string padding, a GPU, inputs that need no gradient, ``torch.func``
transforms and compiled regions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .._second_order import twice
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


#: The engine's "will this node run in the current backward pass" (private: may move); without it every
#: gradient an input requires is computed.
_WILL_RUN = getattr(torch._C, "_will_engine_execute_node", None)


def _note_tensors(ctx, *args) -> None:
    """Record which forward arguments are tensors: the node's ``next_functions`` has an entry for each
    of them only."""
    ctx.tensor_args = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]


def _wanted(ctx) -> list[bool]:
    """For each input of a Function's node, whether the running backward pass needs its gradient: it
    requires one and the engine will run the node it flows into (``ctx.needs_input_grad`` only says the
    first; PyTorch's own nodes check both)."""
    out = [bool(n) for n in ctx.needs_input_grad]
    if _WILL_RUN is None:
        return out
    for i, (node, _) in zip(ctx.tensor_args, ctx.next_functions):
        if out[i] and node is not None:
            try:
                out[i] = bool(_WILL_RUN(node))
            except RuntimeError:  # a leaf that autograd.grad() asked for: the engine cannot say; it is wanted
                pass
    return out


class _ThinConv(torch.autograd.Function):
    """PyTorch's stride-1 convolution forward; a backward pass of differentiable matrix products."""

    @staticmethod
    def forward(ctx, x, weight, bias, padding):
        ctx.save_for_backward(x, weight)
        _note_tensors(ctx, x, weight, bias, padding)
        ctx.padding = padding
        return F.conv2d(x, weight, bias, 1, padding)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b, _ = _wanted(ctx)
        grad = grad.contiguous()
        return (_input_grad(grad, weight, x.shape, ctx.padding) if need_x else None,
                _weight_grad(grad, x, weight.shape, ctx.padding) if need_w else None,
                grad.sum((0, 2, 3)) if need_b else None,
                None)


def _cpu_zero_padded(conv: nn.Conv2d, x: torch.Tensor) -> bool:
    """What both faster paths need: gradients on, a 4-D CPU tensor outside ``torch.func`` transforms and
    compiled regions, zero padding given as numbers."""
    return (torch.is_grad_enabled() and x.device.type == "cpu" and x.dim() == 4 and conv.padding_mode == "zeros"
            and not isinstance(conv.padding, str) and transformed(x) is False)


def _thin(conv: nn.Conv2d, x: torch.Tensor) -> bool:
    """Whether ``conv`` of ``x`` takes :class:`_ThinConv`: a plain stride-1 convolution of few inputs
    and many outputs per pixel, on a contiguous float32 CPU tensor whose gradient is wanted."""
    inputs = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
    return (x.requires_grad and x.dtype == torch.float32 and x.is_contiguous() and conv.groups == 1
            and conv.kernel_size != (1, 1)  # a 1x1 convolution's gradients are plain matrix products already
            and conv.stride == (1, 1) and conv.dilation == (1, 1)
            and inputs <= THIN_INPUTS and conv.out_channels >= THIN_RATIO * inputs
            and not torch.is_autocast_enabled("cpu") and _cpu_zero_padded(conv, x))


def _backward(p: nn.Conv2d, grad, x, weight, mask, bias_sizes=None):
    """oneDNN's first-order kernels: (input, weight, bias) gradients of ``conv(x, weight)`` at ``grad``,
    with ``p``'s stride, padding, dilation and groups."""
    return torch.ops.aten.convolution_backward(grad, x, weight, bias_sizes, p.stride, p.padding, p.dilation,
                                               False, [0, 0], p.groups, mask)


def _keep(ctx, p: nn.Conv2d, *tensors) -> None:
    """A gradient Function's forward bookkeeping: its tensor arguments (all saved, in order) and the
    convolution ``p`` (its stride, padding, dilation and groups)."""
    ctx.save_for_backward(*tensors)
    _note_tensors(ctx, *tensors, p)
    ctx.p = p


class _Conv(torch.autograd.Function):
    """PyTorch's convolution; its backward pass, where it is itself differentiated, is :class:`_InputGrad`
    and :class:`_WeightGrad`, and otherwise ``nn.Conv2d``'s own ``convolution_backward`` call."""

    @staticmethod
    def forward(ctx, x, weight, bias, p):
        ctx.save_for_backward(x, weight)
        _note_tensors(ctx, x, weight, bias, p)
        ctx.p = p
        return F.conv2d(x, weight, bias, p.stride, p.padding, p.dilation, p.groups)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b, _ = _wanted(ctx)
        if not torch.is_grad_enabled():  # first order only: nn.Conv2d's node makes this very call
            gx, gw, gb = _backward(ctx.p, grad, x, weight, [need_x, need_w, need_b],
                                   [weight.shape[0]] if need_b else None)
            return gx, gw, gb, None
        return (_InputGrad.apply(grad, weight, x.detach(), ctx.p) if need_x else None,
                _WeightGrad.apply(x, grad, weight.detach(), ctx.p) if need_w else None,
                grad.sum((0, 2, 3)) if need_b else None, None)


class _InputGrad(torch.autograd.Function):
    """The input's gradient of ``conv(x, weight)`` at ``grad`` (``x``, detached, gives only its shape)."""

    @staticmethod
    def forward(ctx, grad, weight, x, p):
        _keep(ctx, p, grad, weight, x)
        return _backward(p, grad, x, weight, [True, False, False])[0]

    @staticmethod
    def backward(ctx, u):  # the input's gradient is linear in grad (a convolution of u) and in weight
        grad, weight, x = ctx.saved_tensors
        need_g, need_w, _, _ = _wanted(ctx)
        return (_Conv.apply(u, weight, None, ctx.p) if need_g else None,
                _WeightGrad.apply(u, grad, weight.detach(), ctx.p) if need_w else None, None, None)


class _WeightGrad(torch.autograd.Function):
    """The weight's gradient of ``conv(x, weight)`` at ``grad`` (``weight``, detached, gives only its shape)."""

    @staticmethod
    def forward(ctx, x, grad, weight, p):
        _keep(ctx, p, x, grad, weight)
        return _backward(p, grad, x, weight, [False, True, False])[1]

    @staticmethod
    def backward(ctx, v):  # the weight's gradient is linear in x (an input's gradient at v) and in grad
        x, grad, weight = ctx.saved_tensors
        need_x, need_g, _, _ = _wanted(ctx)
        return (_InputGrad.apply(grad, v, x.detach(), ctx.p) if need_x else None,
                _Conv.apply(x, v, None, ctx.p) if need_g else None, None, None)


def _twice(conv: nn.Conv2d, x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether ``conv`` of ``x`` takes :class:`_Conv`: inside ``differentiated_twice``, a CPU tensor in
    float32 (or under bfloat16 autocast), a gradient wanted, zero padding given as numbers, no transform."""
    if not twice():  # the common case (candidate training): decided first
        return False
    if torch.is_autocast_enabled("cpu"):
        dtypes = torch.get_autocast_dtype("cpu") == torch.bfloat16 and x.dtype in (torch.float32, torch.bfloat16)
    else:
        dtypes = x.dtype == torch.float32 and weight.dtype == torch.float32
    return dtypes and (x.requires_grad or weight.requires_grad) and _cpu_zero_padded(conv, x)


def _autocast(*tensors):
    """The tensors as bfloat16 autocast hands them to a convolution (each cast recorded by autograd), or as
    they are outside autocast."""
    if not torch.is_autocast_enabled("cpu"):
        return tensors
    return tuple(None if t is None else t.to(torch.bfloat16) for t in tensors)


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` whose backward pass runs as matrix products for few input channels, and as oneDNN's
    first-order kernels to every order where it is differentiated twice (see the module docstring); the
    same parameters, state dict and values to float rounding."""

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if _thin(self, x):
            return _ThinConv.apply(x, weight, bias, self.padding)
        if _twice(self, x, weight):
            return _Conv.apply(*_autocast(x, weight, bias), self)
        return super()._conv_forward(x, weight, bias)
