"""Training-free ("zero-cost") architecture scores: the baselines a proxy has to beat.

Each score is a function ``(model, x, y) -> float`` of a freshly initialised network and one real
mini-batch (``x`` images, ``y`` int labels); higher means "predicted to be better". None of them
changes the model it is given (each works on a copy). Registered by name in :data:`ZERO_COST`.

* ``synflow`` -- Tanaka et al., NeurIPS 2020 ("Pruning neural networks without any data by
  iteratively conserving synaptic flow"), as a NAS score in Abdelfattah et al., ICLR 2021
  ("Zero-Cost Proxies for Lightweight NAS"): every parameter replaced by its absolute value, the
  network run in double precision on a single all-ones input, ``R = sum(output)``, and the score
  ``sum |theta * dR/dtheta|`` over the weights of convolutional and linear layers. Normalisation
  layers (batch, group, layer, instance norm) are removed first, as Abdelfattah et al.'s
  ``synflow`` (their ``bn=False`` variant): with one constant input they would divide the flow by a
  zero or data-dependent scale. The batch only supplies the input shape.
* ``naswot`` -- Mellor et al., ICML 2021 ("Neural Architecture Search without Training"): for the
  batch, each image's binary code is which units of every activation layer are active (input
  ``> 0``); ``K_H[i, j]`` is the number of units on which images ``i`` and ``j`` agree (the number of
  units minus the Hamming distance), and the score is ``log |det K_H|``. Activations other than
  ReLU are binarised the same way, at pre-activation ``> 0`` (for LeakyReLU, ELU, GELU, SiLU this is
  exactly ReLU's code; for sigmoid it means output ``> 1/2``, for tanh output ``> 0``), so every
  activation layer contributes one bit a unit. Units are found by forward pre-hooks on activation
  modules (the input is read before an in-place activation overwrites it); a network whose
  activations are all functional calls has none and is refused. The network runs in training mode
  (normalisation uses the batch statistics, as in the authors' code) without gradients. ``-inf``
  when two images share a code (``K_H`` singular).
* ``gradnorm`` -- Abdelfattah et al., ICLR 2021: cross-entropy of the batch, one backward pass, and
  the sum over convolutional and linear layers of the L2 norm of the weight gradient (training mode).
"""

from __future__ import annotations

import copy
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .._registry import Registry
from ..errors import ConfigError

ZeroCostScore = Callable[[nn.Module, torch.Tensor, torch.Tensor], float]

ZERO_COST: Registry[ZeroCostScore] = Registry("zero-cost score")

#: Layers whose weights SynFlow and grad-norm sum over (Abdelfattah et al. score these).
WEIGHT_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
#: Normalisation layers SynFlow removes.
NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)
#: Activation modules whose input NASWOT binarises.
ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.CELU, nn.SELU, nn.GELU, nn.SiLU,
               nn.Mish, nn.Softplus, nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid)


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _strip_norms(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, NORM_LAYERS):
            setattr(module, name, nn.Identity())
        else:
            _strip_norms(child)


@ZERO_COST.register("synflow")
def synflow(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """SynFlow: ``sum |theta * dR/dtheta|`` with ``|theta|`` weights, an all-ones input, double precision."""
    net = copy.deepcopy(model)
    _strip_norms(net)
    net = net.double().eval()  # eval: dropout off (normalisation layers are gone)
    with torch.no_grad():
        for p in net.parameters():
            p.abs_()
    net.zero_grad(set_to_none=True)
    ones = torch.ones((1, *x.shape[1:]), dtype=torch.float64, device=_device(net))
    net(ones).sum().backward()
    total = torch.zeros((), dtype=torch.float64)
    for m in net.modules():
        if isinstance(m, WEIGHT_LAYERS) and m.weight.grad is not None:
            total += (m.weight * m.weight.grad).abs().sum().detach().cpu()
    return float(total)


@ZERO_COST.register("naswot")
def naswot(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """NASWOT: ``log |det K_H|`` of the batch's binary activation codes."""
    net = copy.deepcopy(model).train()
    codes: list[torch.Tensor] = []

    def hook(_module: nn.Module, inputs: tuple) -> None:
        codes.append((inputs[0].detach() > 0).flatten(1).to(torch.float64))

    handles = [m.register_forward_pre_hook(hook) for m in net.modules() if isinstance(m, ACTIVATIONS)]
    if not handles:
        raise ConfigError(f"NASWOT found no activation modules in {type(model).__name__}",
                          "build activations as nn.Module layers (e.g. nn.ReLU), or drop the naswot baseline")
    try:
        with torch.no_grad():
            net(x.to(_device(net)))
    finally:
        for h in handles:
            h.remove()
    c = torch.cat(codes, dim=1).cpu()
    k = c @ c.T + (1 - c) @ (1 - c).T
    return float(torch.linalg.slogdet(k).logabsdet)


@ZERO_COST.register("gradnorm")
def gradnorm(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """grad-norm: sum over conv/linear layers of ``||dL/dW||_2`` for the batch's cross-entropy."""
    net = copy.deepcopy(model).train()
    net.zero_grad(set_to_none=True)
    dev = _device(net)
    F.cross_entropy(net(x.to(dev)), y.to(dev)).backward()
    total = 0.0
    for m in net.modules():
        if isinstance(m, WEIGHT_LAYERS) and m.weight.grad is not None:
            total += float(m.weight.grad.detach().norm(2))
    return total


ZERO_COST.register("grad-norm", gradnorm)
ZERO_COST.register("grad_norm", gradnorm)

#: The scores ``--baseline zero-cost`` computes, in report order.
DEFAULT_ZERO_COST = ("synflow", "naswot", "gradnorm")

__all__ = ["ZERO_COST", "ZeroCostScore", "synflow", "naswot", "gradnorm", "DEFAULT_ZERO_COST"]
