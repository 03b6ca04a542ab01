"""Training and evaluation of any module on tensors, with differentiable (DSA-style) augmentation."""

from .augment import DEFAULT_STRATEGY, AugParams, DiffAugment, default_strategy, make_augment
from .loop import (EpochCallback, TrainConfig, TrainLog, evaluate, fit_evaluate, native_bf16, predict,
                   resolve_precision, soft_cross_entropy, train)
from .memory import keep_freed_memory

__all__ = ["DEFAULT_STRATEGY", "AugParams", "DiffAugment", "default_strategy", "make_augment", "EpochCallback",
           "TrainConfig", "TrainLog", "evaluate", "fit_evaluate", "native_bf16", "predict", "resolve_precision",
           "soft_cross_entropy", "train", "keep_freed_memory"]
