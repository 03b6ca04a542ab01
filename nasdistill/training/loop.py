"""Train and evaluate any module on in-memory tensors: SGD + momentum, seeded, deterministic on CPU."""

from __future__ import annotations

import math
import numbers
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._hardware import cpu_bf16
from .._params import as_whole
from .._seed import derive_seed, generator, seeded
from ..errors import ConfigError
from .augment import DiffAugment, make_augment
from .layout import as_layout, fast_layout, wants_fast_layout
from .memory import keep_freed_memory

#: Numeric precisions of the forward pass in training (see :class:`TrainConfig`).
PRECISIONS = ("fp32", "bf16")

def check_precision(precision: str) -> None:
    """Refuse a precision that is not one of :data:`PRECISIONS` (one line, naming the choices)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}", f"use one of {', '.join(PRECISIONS)}")


def native_bf16(device: str | torch.device = "cpu") -> bool:
    """Whether ``device`` computes bfloat16 in hardware: a CUDA GPU that supports it, or a CPU with
    AMX or AVX512-BF16 (elsewhere bf16 is emulated and slower than float32)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return cpu_bf16()
    return False


def resolve_precision(precision: str, device: str | torch.device = "cpu") -> str:
    """``auto`` -> ``bf16`` where :func:`native_bf16` says the device runs it in hardware, else ``fp32``;
    a precision of :data:`PRECISIONS` is returned as it is (resolved before a :class:`TrainConfig` is
    made, so that stored results are keyed by the precision that ran)."""
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    check_precision(precision)
    return precision


#: Called after each epoch with (epoch, model); return True to stop early (e.g. an Optuna pruner).
EpochCallback = Callable[[int, nn.Module], "bool | None"]


@dataclass
class TrainConfig:
    """A training budget and optimiser settings (DC's evaluation protocol by default).

    Exactly one of ``epochs`` / ``steps`` sets the budget. ``schedule``: ``step`` (lr x0.1
    at half the budget, as DC), ``cosine`` or ``constant``. ``augment``: ``None``, ``"dsa"``
    (DSA's strategy for the data) or a strategy such as ``"crop_flip"``. ``precision``: ``fp32``, or
    ``bf16`` for bfloat16 autocast of the forward pass (weights, optimiser and loss stay float32) in
    the ``channels_last`` layout (:mod:`nasdistill.training.layout`): CPUs with AMX/AVX-512-BF16 and
    recent GPUs run it 1.4-4x faster on ConvNets.
    """

    epochs: int | None = None
    steps: int | None = None
    batch_size: int = 256
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "step"
    augment: str | None = None
    precision: str = "fp32"
    seed: int = 0

    def __post_init__(self) -> None:
        if (self.epochs is None) == (self.steps is None):
            raise ConfigError("a training budget needs exactly one of epochs or steps", "set one of them")
        for name in ("epochs", "steps", "batch_size"):
            if getattr(self, name) is not None:  # a NumPy integer as a plain int (budgets are keys, JSON)
                setattr(self, name, as_whole(getattr(self, name), name))
        for name in ("lr", "momentum", "weight_decay"):
            v = getattr(self, name)
            if not isinstance(v, numbers.Real) or isinstance(v, bool) or not math.isfinite(v):
                raise ConfigError(f"{name} must be a finite number, got {v!r}", f"pass {name} as a float")
            setattr(self, name, float(v))  # a NumPy float as a plain float (budgets are keys, JSON)
        self.seed = as_whole(self.seed, "seed")
        if (self.epochs or self.steps or 0) < 1:
            raise ConfigError("training budget must be at least 1", "pass a positive number of epochs or steps")
        if self.schedule not in ("step", "cosine", "constant"):
            raise ConfigError(f"unknown schedule {self.schedule!r}", "use step, cosine or constant")
        check_precision(self.precision)
        if self.batch_size < 1 or self.lr <= 0:
            raise ConfigError("batch_size and lr must be positive", "fix the training settings")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}", "pass e.g. momentum=0.9 (0: plain SGD)")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be 0 or more, got {self.weight_decay}", "pass e.g. weight_decay=5e-4")
        if isinstance(self.augment, str):
            make_augment(self.augment)  # an unknown augmentation fails here, not at the first training step

    def steps_per_epoch(self, n: int) -> int:
        """Optimiser steps in one pass over ``n`` images (a lone leftover image is skipped, see :func:`train`)."""
        bs = min(self.batch_size, n)
        return n // bs if n > bs and n % bs == 1 else math.ceil(n / bs)

    def total_steps(self, n: int) -> int:
        return self.steps if self.steps is not None else self.epochs * self.steps_per_epoch(n)

    def budget(self) -> dict:
        """The settings that change the trained model, for keys and reports (seed excluded)."""
        d = asdict(self)
        d.pop("seed")
        if d["precision"] == "fp32":  # the default is left out, so budgets stored before it existed keep their keys
            d.pop("precision")
        return d

    def replace(self, **changes) -> "TrainConfig":
        d = asdict(self)
        if "epochs" in changes and "steps" not in changes:
            d["steps"] = None
        if "steps" in changes and "epochs" not in changes:
            d["epochs"] = None
        d.update(changes)
        return TrainConfig(**d)


@dataclass
class TrainLog:
    steps: int = 0
    epochs: int = 0
    losses: list[float] = field(default_factory=list)
    wall_time: float = 0.0
    stopped_early: bool = False


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy for hard (int) or soft (float, (N, K)) targets."""
    if target.ndim == 1:
        return F.cross_entropy(logits, target)
    return -(target * F.log_softmax(logits, dim=1)).sum(1).mean()


def bf16_autocast(device: str | torch.device, precision: str):
    """``torch.autocast`` to bfloat16 for ``device``'s type, enabled only with ``precision="bf16"``."""
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16")


def optimizer_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, *,
                   precision: str = "fp32", nhwc: bool = False) -> torch.Tensor:
    """One step of ``opt`` on ``model``'s (soft) cross-entropy on (x, y); the loss, detached.

    The forward pass runs under bfloat16 autocast with ``precision="bf16"``; ``nhwc``: inside
    :func:`~nasdistill.training.layout.fast_layout` (the batch goes in ``channels_last``). The loss,
    the gradients and the update stay float32."""
    x = as_layout(x, nhwc)
    with bf16_autocast(x.device, precision):
        logits = model(x)
    loss = soft_cross_entropy(logits.float(), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: TrainConfig, *, device: str | torch.device = "cpu",
          callback: EpochCallback | None = None, log_every: int = 0) -> TrainLog:
    """Train ``model`` in place on (``x``, ``y``) for ``config``'s budget.

    Batches, augmentation and shuffling use generators seeded from ``config.seed`` only, and layers
    that draw from torch's global generator (dropout) draw from it seeded by ``config.seed`` (its state
    restored after), so the same inputs give the same model on CPU, whatever ran before. ``y`` may be
    int labels or (N, K) soft labels.

    ``x`` may also be a streamed split (:class:`~nasdistill.data.stream.MappedImages`, what
    ``--stream`` datasets hold): each mini-batch is then read from the memory-mapped cache when it
    is needed, so full-data training never holds the split in memory (the same batches, in the same
    order, as the in-RAM tensor would give).
    """
    x, y = _inputs(x, y, "train")
    device = torch.device(device)
    if device.type == "cpu":
        keep_freed_memory()  # each step's activations reuse the last step's memory (no page faults)
    model.to(device).train()
    y = y.to(device)
    if isinstance(x, torch.Tensor):
        x = x.to(device)
    else:  # streamed: batches are read (host side) and moved one at a time
        x = _Streamed(x, device)
    # random layers (dropout) draw from the global generator: seeded by the config's seed, restored after
    with (fast_layout(model, wants_fast_layout(model, config.precision, device)) as nhwc,
          seeded(derive_seed("global", config.seed), device)):
        return _train(model, x, y, config, device, callback, nhwc)


def _inputs(x, y, where: str):
    """(``x``, ``y``) as tensors (NumPy arrays and lists converted), or a one-line :class:`ConfigError`
    for what would otherwise fail deep inside the loop: unequal lengths, no images, raw pixels."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(y, torch.Tensor):
        y = torch.as_tensor(np.asarray(y))
    if len(x) == 0:
        what = "train on" if where == "train" else "evaluate on"
        raise ConfigError(f"cannot {what} an empty split", "hold out at least one image per class")
    if len(x) != len(y):
        raise ConfigError(f"{where} got {len(x)} images but {len(y)} labels", "pass one label (or label row) per image")
    if isinstance(x, torch.Tensor) and not x.is_floating_point():
        raise ConfigError(f"{where} got {x.dtype} images; it takes normalised float images (N, C, H, W)",
                          "pass an ImageDataset's x_train / x_val / x_test (load_dataset or ImageDataset.from_arrays)")
    if y.is_floating_point() and y.ndim != 2 or not y.is_floating_point() and y.ndim != 1:
        raise ConfigError(f"{where} got {y.dtype} labels shaped {tuple(y.shape)}",
                          "pass int class indices (N,) or soft label rows (N, K)")
    return x, y


class _Streamed:
    """A streamed split indexed by device index tensors: reads the batch on the host, moves it."""

    def __init__(self, images, device: torch.device):
        self.images, self.device = images, device
        self.shape = images.shape

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, idx: torch.Tensor) -> torch.Tensor:
        return self.images[idx.cpu()].to(self.device, non_blocking=True)


def _epochs(config: TrainConfig, x, y: torch.Tensor, generators: list, device: torch.device):
    """The budget's mini-batches as :func:`train` draws them, for one generator or several (one per
    member of :func:`~nasdistill.training.vectorized.train_seeds`): an iterator of epochs, each an
    iterator of steps ``(lr, [(xb, yb) for each generator])``. Every generator draws its epoch's
    permutation when the epoch starts and its augmentation at each step, lazily: a caller that stops
    after an epoch draws nothing more."""
    n = len(x)
    bs = min(config.batch_size, n)
    steps_per_epoch, total = config.steps_per_epoch(n), config.total_steps(n)
    aug = make_augment(config.augment, x.shape[1])

    def epoch(perms, start):
        for i in range(min(steps_per_epoch, total - start)):
            batches = []
            for perm, g in zip(perms, generators):
                idx = perm[i * bs:(i + 1) * bs]  # a lone leftover image is never reached: batch norm
                xb = x[idx]                       # cannot train on one value per channel
                batches.append((aug(xb, generator=g) if aug is not None else xb, y[idx]))
            yield _lr(config, start + i, total), batches

    step = 0
    while step < total:
        yield epoch([torch.randperm(n, generator=g).to(device) for g in generators], step)
        step += min(steps_per_epoch, total - step)


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: TrainConfig, device: torch.device,
           callback: EpochCallback | None, nhwc: bool) -> TrainLog:
    # foreach: one multi-tensor update per step instead of a Python loop over the parameters (same math)
    opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                          weight_decay=config.weight_decay, foreach=True)
    log = TrainLog()
    t0 = time.perf_counter()
    # the epoch's loss is summed on the device, in float64 (the sum a Python float would give), and
    # read once per epoch: no host sync per step
    epoch_loss = torch.zeros((), dtype=torch.float64, device=device)
    for epoch in _epochs(config, x, y, [generator(derive_seed("batches", config.seed))], device):
        epoch_loss.zero_()
        nb = 0
        for lr, [(xb, yb)] in epoch:
            for group in opt.param_groups:
                group["lr"] = lr
            epoch_loss += optimizer_step(model, opt, xb, yb, precision=config.precision, nhwc=nhwc)
            nb += 1
        log.steps += nb
        log.epochs += 1
        log.losses.append(float(epoch_loss) / max(1, nb))
        if callback is not None and callback(log.epochs, model):
            log.stopped_early = True
            break
    log.wall_time = time.perf_counter() - t0
    return log


def _lr(config: TrainConfig, step: int, total: int) -> float:
    if config.schedule == "step":
        return config.lr * (0.1 if step >= total // 2 and total > 1 else 1.0)
    if config.schedule == "cosine":
        return config.lr * 0.5 * (1 + math.cos(math.pi * step / total))
    return config.lr


def _logits(model: nn.Module, x: torch.Tensor, device: torch.device, batch_size: int, precision: str):
    """Yield (start, logits) over ``x`` in batches, in eval mode under ``torch.inference_mode``
    (``bf16``: autocast in the fast layout, as :func:`train`)."""
    check_precision(precision)
    batch_size = batch_size or EVAL_BATCH[precision]
    was_training = model.training
    model.to(device).eval()
    try:
        with fast_layout(model, wants_fast_layout(model, precision, device)) as nhwc, torch.inference_mode(), \
                bf16_autocast(device, precision):
            for i in range(0, len(x), batch_size):
                yield i, model(as_layout(x[i:i + batch_size].to(device, non_blocking=True), nhwc))
    finally:
        model.train(was_training)


#: Inference batch by precision: fp32 keeps 1,024 (its results are what earlier releases stored); bf16
#: in channels_last runs faster in batches of 256 on a CPU (1.1-1.9x over 1,024, measured on DC's ConvNets).
EVAL_BATCH = {"fp32": 1024, "bf16": 256}


def predict(model: nn.Module, x: torch.Tensor, *, device: str | torch.device = "cpu",
            batch_size: int | None = None, precision: str = "fp32") -> torch.Tensor:
    """Logits (float32) for ``x``, computed in eval mode in batches under ``torch.inference_mode``;
    ``precision="bf16"`` runs the forward pass as :func:`train` does in bf16."""
    out = [logits.float().cpu() for _, logits in _logits(model, x, torch.device(device), batch_size, precision)]
    return torch.cat(out) if out else torch.zeros(0)


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, device: str | torch.device = "cpu",
             batch_size: int | None = None, precision: str = "fp32") -> float:
    """Top-1 accuracy of ``model`` on (``x``, ``y``) (soft labels are compared by argmax);
    ``precision="bf16"`` runs the forward pass as :func:`train` does in bf16."""
    x, y = _inputs(x, y, "evaluate")
    y = y.argmax(1) if y.ndim == 2 else y
    device = torch.device(device)
    # compared on the device: only the top-1 hits travel, and one number is read at the end
    hits = [logits.argmax(1) == y[i:i + len(logits)].to(device, non_blocking=True)
            for i, logits in _logits(model, x, device, batch_size, precision)]
    return float(torch.cat(hits).float().mean())


def fit_evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_eval: torch.Tensor, y_eval: torch.Tensor,
                 config: TrainConfig, *, device: str | torch.device = "cpu",
                 callback: EpochCallback | None = None) -> tuple[float, TrainLog]:
    """Train on (x, y), then return accuracy on (x_eval, y_eval) (in the config's precision) and the training log."""
    log = train(model, x, y, config, device=device, callback=callback)
    return evaluate(model, x_eval, y_eval, device=device, precision=config.precision), log


__all__ = ["TrainConfig", "PRECISIONS", "check_precision", "bf16_autocast", "optimizer_step", "TrainLog", "train",
           "evaluate", "predict", "fit_evaluate", "soft_cross_entropy",
           "DiffAugment", "EpochCallback"]
