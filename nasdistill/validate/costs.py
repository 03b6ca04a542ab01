"""What a contender costs per candidate: images seen in training, and FLOPs.

FLOPs are counted by :class:`torch.utils.flop_counter.FlopCounterMode` (matrix multiplications and
convolutions, forward and backward; element-wise work is not counted), so they compare
architectures and contenders on one footing whatever the hardware. Training FLOPs of a candidate
are ``(forward + backward FLOPs per image) x images seen``; evaluation passes are not counted.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..errors import ConfigError
from ..training import TrainConfig


def samples_seen(config: TrainConfig, n: int) -> int:
    """Images (with repeats) that :func:`nasdistill.training.train` feeds the network for ``config`` on ``n`` images.

    Exact: training walks a fresh permutation every epoch in batches of ``min(batch_size, n)``, the
    last batch of an epoch holding the remainder (skipped when it is a single image).
    """
    if n < 1:
        raise ConfigError("cannot train on an empty set", "pass at least one image")
    bs = min(config.batch_size, n)
    steps_per_epoch = config.steps_per_epoch(n)
    epochs, rest = divmod(config.total_steps(n), steps_per_epoch)
    return epochs * min(n, steps_per_epoch * bs) + rest * bs


def train_flops_per_sample(model: nn.Module, input_shape: tuple[int, ...], num_classes: int) -> float:
    """Forward + backward FLOPs of one training image through ``model`` (a copy is not needed: no step is taken).

    Measured on a batch of two zero images in training mode (normalisation layers need two values
    a channel) and halved; gradients are cleared afterwards.
    """
    was_training = model.training
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    model.train()
    x = torch.zeros((2, *input_shape), device=device)
    y = torch.zeros(2, dtype=torch.long, device=device)
    try:
        with FlopCounterMode(display=False) as counter:
            F.cross_entropy(model(x), y.clamp(max=num_classes - 1)).backward()
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return counter.get_total_flops() / 2


def count_flops(fn, *args, **kwargs) -> tuple[object, float]:
    """``fn(*args, **kwargs)`` and the FLOPs it ran (forward and backward)."""
    with FlopCounterMode(display=False) as counter:
        out = fn(*args, **kwargs)
    return out, float(counter.get_total_flops())


#: How an early-stop baseline's full-data budget matches a proxy's: the name -> steps on the full
#: data, given (proxy training config, proxy size, full-data batch size).
EARLY_STOP_MATCH = {
    # the same number of training images seen (steps x batch): equal training FLOPs for every architecture
    "samples": lambda cfg, n, bs: max(1, round(samples_seen(cfg, n) / bs)),
    # the same number of optimisation steps (Zhao et al.'s "early-stopping" baseline), at the full-data batch size
    "steps": lambda cfg, n, bs: cfg.total_steps(n),
}


def early_stop_config(proxy_train: TrainConfig, proxy_size: int, full_train: TrainConfig, n_full: int,
                      match: str = "samples") -> TrainConfig:
    """The full-data training budget that costs what training on the proxy costs.

    Optimiser, schedule (spread over the shortened run), augmentation and batch size are
    ``full_train``'s; the number of steps follows ``match`` (:data:`EARLY_STOP_MATCH`). With
    ``"samples"`` the images seen equal the proxy's to within half a batch.
    """
    if match not in EARLY_STOP_MATCH:
        raise ConfigError(f"unknown early-stop budget match {match!r}", f"use one of {', '.join(EARLY_STOP_MATCH)}")
    bs = min(full_train.batch_size, n_full)
    return full_train.replace(steps=int(EARLY_STOP_MATCH[match](proxy_train, proxy_size, bs)))


__all__ = ["samples_seen", "train_flops_per_sample", "count_flops", "early_stop_config", "EARLY_STOP_MATCH"]
