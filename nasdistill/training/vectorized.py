"""Several seeded trainings of one architecture at once: ``torch.func.vmap`` over the seeds.

:func:`train_seeds` trains ``R`` networks of one architecture (different initial weights) on the same
images, each with its own :class:`~nasdistill.training.TrainConfig` seed (batch order, augmentation
draws), as ``R`` calls of :func:`~nasdistill.training.train` would: the same batches, the same
augmentation draws, the same SGD with momentum and weight decay (``torch.optim.SGD`` on the stacked
parameters, so its per-element arithmetic is the loop's) and the same schedule. Only the forward and
backward passes differ: each step runs all ``R`` members as one computation
(``torch.func.functional_call`` + ``grad`` under ``vmap``; a convolution becomes one grouped
convolution), so results equal the loop's to float rounding (``tests/test_vectorized.py``).

It is built for a GPU, where one small network on a 100-image proxy leaves the device idle and ``R``
members cost one set of kernel launches (the issue's "several candidates in flight": ``vmap`` over
seeds of the same architecture). On a CPU it is slower than the loop (the grouped convolutions and
PyTorch's plain pooling kernels instead of the space's fast ones; ``benchmarks/throughput.py --parts
seeds`` measures it), so nothing uses it unless asked: ``ProxyContender(repeats=R, vectorize=True)``,
``nasdistill validate --proxy-repeats R --vectorize-repeats``.

Not covered: streamed splits, per-epoch callbacks (pruning), layers that draw random numbers while
they train (dropout: ``vmap`` refuses them, and the loop's draws come from the global generator,
one member after another) and the ``channels_last`` fast layout (bf16 runs under autocast in the
plain layout; batch and layer norms take their input in float32 there, :class:`_FloatInputNorm`).
"""

from __future__ import annotations

import copy
import time
from typing import Sequence

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, stack_module_state, vmap

from .._seed import derive_seed, generator
from ..errors import ConfigError
from .loop import TrainConfig, TrainLog, _epochs, bf16_autocast, soft_cross_entropy
from .memory import keep_freed_memory


def _signature(model: nn.Module) -> list:
    return [type(model)] + [(k, tuple(v.shape), v.dtype) for k, v in
                            [*model.named_parameters(), *model.named_buffers()]]


def _check(models: list, configs: list, x) -> None:
    if not models or len(models) != len(configs):
        raise ConfigError(f"train_seeds needs one config per model, got {len(models)} models and {len(configs)} "
                          "configs", "pass as many configs as models (they may differ only in seed)")
    if any(c.budget() != configs[0].budget() for c in configs):
        raise ConfigError("train_seeds trains one budget: its configs may differ only in seed",
                          "train members with different budgets one at a time with train()")
    if any(_signature(m) != _signature(models[0]) for m in models[1:]):
        raise ConfigError("train_seeds needs models of one architecture (the same parameters and buffers)",
                          "train different architectures one at a time with train()")
    if not isinstance(x, torch.Tensor):
        raise ConfigError("train_seeds needs the images in memory (not a streamed split)",
                          "train on a streamed split with train()")


class _FloatInputNorm:
    """Mixed into a batch norm class: normalise the input in float32 and return the input's dtype.

    Under bf16 autocast a batch or layer norm gets bf16 activations and float32 parameters; its kernel
    takes the two mixed and returns bf16, but its vmap rule does not ("expected scalar type BFloat16
    but found Float"). Casting the input up is exact, the statistics are float32 either way, and the
    output is rounded to bf16 as the kernel's is."""

    def forward(self, x):
        return super().forward(x.float()).to(x.dtype)


def _vmap_ready(base: nn.Module, precision: str) -> nn.Module:
    """``base`` with each batch and layer norm of a bf16 training given :class:`_FloatInputNorm`'s forward."""
    if precision == "bf16":
        for m in base.modules():
            if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm)):
                m.__class__ = type(f"FloatInput{type(m).__name__}", (_FloatInputNorm, type(m)), {})
    return base


def train_seeds(models: Sequence[nn.Module], x: torch.Tensor, y: torch.Tensor, configs: Sequence[TrainConfig], *,
                device: str | torch.device = "cpu") -> list[TrainLog]:
    """Train each of ``models`` in place on (``x``, ``y``) with its config, all at once under ``vmap``.

    ``models``: networks of one architecture (their own initial weights); ``configs``: one each, equal
    but for ``seed``. Returns one :class:`TrainLog` per model; each member's ``wall_time`` is its share
    (the joint run's time over ``R``). Same results as ``train(models[r], x, y, configs[r])`` for every
    ``r`` to float rounding (module docstring)."""
    models, configs = list(models), list(configs)
    _check(models, configs, x)
    device = torch.device(device)
    if device.type == "cpu":
        keep_freed_memory()
    for m in models:
        m.to(device).train()
    x, y = x.to(device), y.to(device)
    config = configs[0]
    params, buffers = stack_module_state(models)  # stacked copies: (R, ...) leaves
    base = _vmap_ready(copy.deepcopy(models[0]).to("meta"), config.precision)  # the architecture, no tensors

    def loss(p, b, xb, yb):
        return soft_cross_entropy(functional_call(base, (p, b), (xb,)).float(), yb)

    # buffers (batch norm's running statistics) are updated in place, member by member
    step_fn = vmap(grad_and_value(loss), in_dims=(0, 0, 0, 0))
    opt = torch.optim.SGD(list(params.values()), lr=config.lr, momentum=config.momentum,
                          weight_decay=config.weight_decay, foreach=True)
    logs = _run(step_fn, opt, params, buffers, x, y, config, configs, device)
    with torch.no_grad():  # back into the members
        for r, m in enumerate(models):
            for k, v in [*m.named_parameters(), *m.named_buffers()]:
                v.copy_((params if k in params else buffers)[k][r])
    return logs


def _run(step_fn, opt, params, buffers, x, y, config, configs, device) -> list[TrainLog]:
    gens = [generator(derive_seed("batches", c.seed)) for c in configs]  # each member's, as train()'s
    logs = [TrainLog() for _ in configs]
    t0 = time.perf_counter()
    steps = 0
    epoch_loss = torch.zeros(len(configs), dtype=torch.float64, device=device)  # read once per epoch
    for epoch in _epochs(config, x, y, gens, device):  # train()'s batches and draws, member by member
        epoch_loss.zero_()
        nb = 0
        for lr, batches in epoch:
            for group in opt.param_groups:
                group["lr"] = lr
            xs, ys = zip(*batches)
            try:
                # no_grad: no graph back to the stacked leaves (grad() differentiates inside regardless)
                with torch.no_grad(), bf16_autocast(device, config.precision):
                    grads, losses = step_fn(params, buffers, torch.stack(xs), torch.stack(ys))
            except RuntimeError as e:
                raise ConfigError(f"this architecture cannot be trained under vmap ({str(e).splitlines()[0]})",
                                  "train its seeds one at a time (vectorize=False)") from e
            for k, p in params.items():
                p.grad = grads[k]
            opt.step()
            epoch_loss += losses.detach().double()
            nb += 1
        steps += nb
        for log, value in zip(logs, (epoch_loss / max(1, nb)).tolist()):
            log.epochs += 1
            log.losses.append(value)
    share = (time.perf_counter() - t0) / len(configs)
    for log in logs:
        log.steps, log.wall_time = steps, share
    return logs


__all__ = ["train_seeds"]
