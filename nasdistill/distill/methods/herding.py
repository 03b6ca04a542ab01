"""``herding``: the herding coreset baseline (Welling, ICML 2009, "Herding Dynamical Weights to
Learn"; used as a coreset baseline by iCaRL, Rebuffi et al., CVPR 2017, and by DC, Zhao et al.,
ICLR 2021).

Real training images are embedded by a network trained briefly on the real data (see
:mod:`nasdistill.distill.methods._coreset`). For each class, images are picked greedily, one at a time
and without repeats: the next pick is the image that brings the mean feature of the images picked
so far closest (in L2) to the mean feature of the whole class. The kept set therefore matches the
class's first moment as well as ``ipc`` real images can, as a running sum rather than a search.
"""

from __future__ import annotations

import torch

from ._coreset import CoresetDistiller
from ..registry import register


@register
class Herding(CoresetDistiller):
    name = "herding"
    summary = "herding coreset: real images whose running feature mean tracks the class mean (Welling)"
    cpu_budget = {"feature_epochs": 3, "feature_samples_per_class": 500}

    @staticmethod
    def select(features: torch.Tensor, k: int) -> torch.Tensor:
        target = features.mean(0)
        picked: list[int] = []
        total = torch.zeros_like(target)
        free = torch.ones(len(features), dtype=torch.bool)
        for i in range(k):
            gap = ((total + features) / (i + 1) - target).pow(2).sum(1)
            gap[~free] = float("inf")
            j = int(gap.argmin())
            picked.append(j)
            free[j] = False
            total += features[j]
        return torch.tensor(picked, dtype=torch.long)
