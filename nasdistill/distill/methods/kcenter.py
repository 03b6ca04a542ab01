"""``kcenter``: the greedy k-center coreset baseline (Sener & Savarese, ICLR 2018, "Active
Learning for Convolutional Neural Networks: A Core-Set Approach"; a coreset baseline of DC,
Zhao et al., ICLR 2021).

Real training images are embedded by a network trained briefly on the real data (see
:mod:`nasdistill.distill.methods._coreset`). For each class the first centre is the image nearest the
class's mean feature; every further centre is the image farthest (in L2) from its nearest chosen
centre. This greedy rule 2-approximates the minimax facility location problem: the kept images
cover the class's feature space, outliers and rare modes included, rather than its typical images.
"""

from __future__ import annotations

import torch

from ._coreset import CoresetDistiller
from ..registry import register


@register
class KCenter(CoresetDistiller):
    name = "kcenter"
    summary = "greedy k-center coreset: real images covering each class's feature space (Sener & Savarese)"
    cpu_budget = {"feature_epochs": 3, "feature_samples_per_class": 500}

    @staticmethod
    def select(features: torch.Tensor, k: int) -> torch.Tensor:
        first = int((features - features.mean(0)).pow(2).sum(1).argmin())
        picked = [first]
        nearest = (features - features[first]).pow(2).sum(1)  # squared distance to the nearest centre
        nearest[first] = -float("inf")  # never picked twice, even among duplicate images
        for _ in range(1, k):
            j = int(nearest.argmax())
            picked.append(j)
            nearest = torch.minimum(nearest, (features - features[j]).pow(2).sum(1))
            nearest[j] = -float("inf")
        return torch.tensor(picked, dtype=torch.long)
