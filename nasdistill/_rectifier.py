"""A ReLU (negative slope 0) or leaky ReLU and its backward pass from the output, for the compiled-norm
path (``training.instance_norm``) and the spaces' rectifiers (``spaces.activation``) alike: the kernels
autograd runs for ``nn.ReLU`` / ``nn.LeakyReLU``, so that the values are theirs bit for bit."""

from __future__ import annotations

import torch


def rectify(x: torch.Tensor, slope: float, inplace: bool = True) -> torch.Tensor:
    """ReLU (``slope == 0``) or leaky ReLU of ``x``, in place (the result is ``x``) or not."""
    if slope == 0:
        return torch.relu_(x) if inplace else torch.relu(x)
    return torch.nn.functional.leaky_relu(x, slope, inplace=inplace)


def rectify_backward(grad: torch.Tensor, out: torch.Tensor, slope: float) -> torch.Tensor:
    """:func:`rectify`'s backward from its output ``out`` (a ReLU's ``threshold_backward``: exact zeros,
    also for infinite gradients; a positive slope's ``leaky_relu_backward`` on the result)."""
    if slope == 0:
        return torch.ops.aten.threshold_backward(grad, out, 0)
    return torch.ops.aten.leaky_relu_backward(grad, out, slope, True)
