"""Differentiable unrolled training with ``torch.func``, shared by bilevel methods (``dd``, ``mtt``).

A network's parameters are held as a dict of tensors outside the module; :func:`forward` runs the
module with them (``torch.func.functional_call``) and :func:`sgd_unroll` takes plain-SGD steps
whose result stays differentiable with respect to the data, the labels, the learning rate and the
starting parameters.

Instance norms (DC's default ConvNet's) run :func:`~nasdistill.training.instance_norm.instance_norm`
inside :func:`forward`, whose second derivative is written out: PyTorch's double backward of a group
norm is a composite of some thirty element-wise ops, a fifth of an fp32 unroll and a third of a bf16
one (where autocast also casts each norm's input to float32 and back). Values equal PyTorch's to
float rounding (bf16 rounding under bf16 autocast). Whole-map layer norms, training batch norms and group
norms take written-out derivatives too (:mod:`nasdistill.training.norms`). The forward pass runs inside
:func:`~nasdistill._second_order.differentiated_twice`: convolutions of the ConvNet space then take a
backward pass whose own derivative runs oneDNN's first-order kernels (:mod:`nasdistill.spaces.conv`).

A bf16 unroll of an instance-norm ConvNet on a CPU runs in ``channels_last`` (:func:`unroll_layout`,
``sgd_unroll(layout=...)``): oneDNN's bf16 convolutions are faster in NHWC, most of all a one-channel
(MNIST) first convolution, whose NCHW kernel is several times slower, and the instance norms' forward,
backward and second derivative then run :mod:`~nasdistill.training.fused_norm`'s compiled kernels in that
layout. On 2 threads of an AVX-512/AMX Xeon (2026-12-08, in place, alternating): ``dd``'s bf16 iteration
at the throughput benchmark's settings 1.19x faster (1.23x on CIFAR-10's 3 x 32 x 32), ``mtt``'s 1.26x;
float32 stays NCHW (0.97x on ``dd``).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import nn
from torch.func import functional_call

from .._second_order import differentiated_twice
from .._strides import channels_last
from ..training import soft_cross_entropy
from ..training.layout import channels_last_gradients, unroll_channels_last
from ..training.norms import written_out_norms

Params = dict[str, torch.Tensor]


def parameters(model: nn.Module, *, detach: bool = True) -> Params:
    """The module's parameters as a name -> tensor dict (detached copies by default)."""
    return {k: (v.detach().clone() if detach else v) for k, v in model.named_parameters()}


def buffers(model: nn.Module) -> Params:
    return {k: v for k, v in model.named_buffers()}


@contextmanager
def twice_differentiable(model: nn.Module) -> Iterator[None]:
    """Inside the block, ``model``'s forward passes are ones whose gradients will be differentiated again:
    its norms take their written-out second derivatives (:func:`~nasdistill.training.norms.written_out_norms`)
    and, inside :func:`~nasdistill._second_order.differentiated_twice`, its convolutions their fast ones.
    The unrolls' :func:`forward` and gradient matching's synthetic-image gradients run in it."""
    with differentiated_twice(), written_out_norms(model):
        yield


def _same(t: torch.Tensor) -> torch.Tensor:
    return t


@contextmanager
def unroll_layout(model: nn.Module, precision: str,
                  device: str | torch.device) -> Iterator[Callable[[torch.Tensor], torch.Tensor]]:
    """The memory layout of an unroll of ``model``: yields ``lay``, to apply to its starting parameters and
    its input batches (4-D tensors; others pass as they are). Where
    :func:`~nasdistill.training.layout.unroll_channels_last` says so (bf16 on a CPU, instance norms),
    ``lay`` makes them ``channels_last`` (one-channel ones included) and, inside the block, the gradients
    that come back to the model's feature maps through its flatten are made so too; the steps' parameters
    then stay in that layout. Elsewhere ``lay`` is the identity. Values equal the plain layout's to float
    rounding."""
    if not unroll_channels_last(model, precision, device):
        yield _same
        return
    with channels_last_gradients(model):
        yield channels_last


def forward(model: nn.Module, params: Params, x: torch.Tensor, bufs: Params | None = None) -> torch.Tensor:
    """``model(x)`` computed with ``params`` (and ``bufs``) instead of the module's own tensors, inside
    :func:`twice_differentiable` (see the module docstring)."""
    with twice_differentiable(model):
        return functional_call(model, {**(bufs or {}), **params}, (x,), strict=False)


def flatten(params: Params) -> torch.Tensor:
    return torch.cat([p.reshape(-1) for p in params.values()])


def sgd_unroll(model: nn.Module, params: Params, x: torch.Tensor, y: torch.Tensor, *, steps: int,
               lr: torch.Tensor | float, batch_size: int | None = None, generator: torch.Generator | None = None,
               augment: Callable[[torch.Tensor, torch.Generator | None], torch.Tensor] | None = None,
               create_graph: bool = True, loss_fn=soft_cross_entropy, momentum: float = 0.0,
               layout: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[Params, list[float]]:
    """Take ``steps`` SGD steps from ``params`` on (x, y); return the final params and the losses.

    ``momentum``: heavy-ball momentum as ``torch.optim.SGD`` (``v = m v + g``, ``p -= lr v``; 0: plain
    SGD), so an unroll can follow the optimiser candidates are trained with.

    With ``create_graph`` the result is differentiable with respect to ``x``, ``y`` (soft labels),
    ``lr`` and the starting ``params`` (back-propagation through the unroll). Mini-batches of
    ``batch_size`` are drawn with ``generator``; ``augment(xb, generator)`` is applied to each.
    ``layout`` (:func:`unroll_layout`'s ``lay``) is applied to the starting parameters, to each batch
    after its augmentation and to each step's parameters: a one-channel tensor's strides do not survive
    an augmentation or an update (its memory is both layouts').
    """
    lay = layout or _same
    names = list(params)
    cur = {k: lay(v) for k, v in params.items()}
    velocity: Params = {}
    losses: list[torch.Tensor] = []  # kept on the device, read once at the end (no host sync a step)
    n = len(x)
    for _ in range(steps):
        if batch_size and batch_size < n:
            idx = torch.randperm(n, generator=generator)[:batch_size].to(x.device)
            xb, yb = x[idx], y[idx]
        else:
            xb, yb = x, y
        if augment is not None:
            xb = augment(xb, generator)
        loss = loss_fn(forward(model, cur, lay(xb)).float(), yb)  # float: a no-op unless under bf16 autocast
        grads = torch.autograd.grad(loss, [cur[k] for k in names], create_graph=create_graph)
        if momentum:
            velocity = {k: (momentum * velocity[k] + g) if k in velocity else g for k, g in zip(names, grads)}
            grads = [velocity[k] for k in names]
        cur = {k: lay(cur[k] - lr * g) for k, g in zip(names, grads)}
        losses.append(loss.detach())
    return cur, torch.stack(losses).tolist() if losses else []
