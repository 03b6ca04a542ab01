"""``random``: a class-balanced random subset of the real training images (the baseline)."""

from __future__ import annotations

from ..base import Distiller
from ..registry import register


@register
class RandomSubset(Distiller):
    name = "random"
    summary = "class-balanced random subset of real images (baseline)"

    def __init__(self, ipc: int = 10, seed: int = 0, device: str = "cpu"):
        super().__init__(ipc=ipc, seed=seed, device=device)

    def _fit(self, dataset, ctx):
        idx = self._select_real(dataset, "subset")
        self.indices_ = idx
        return dataset.x_train[idx].clone(), dataset.y_train[idx].clone()
