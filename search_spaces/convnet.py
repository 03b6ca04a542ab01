"""DC's ConvNet space (Zhao et al., ICLR 2021, "Dataset Condensation with Gradient Matching").

depth {1,2,3,4} x width {32,64,128,256} x activation {sigmoid, relu, leakyrelu} x
normalisation {none, batchnorm, layernorm, instancenorm, groupnorm} x pooling {none, maxpool, avgpool}
= 720 architectures. Each block is conv3x3 -> norm -> act -> pool; a linear head follows.

Small inputs: a 2x2 pool is applied only while the feature map is at least 2x2, so pooling
stops at 1x1 instead of failing (8x8 digits through four pooled blocks: 8 -> 4 -> 2 -> 1 -> 1).
Normalisations follow DC's code: ``instancenorm`` is GroupNorm(C, C), ``groupnorm`` is
GroupNorm(4, C), ``layernorm`` normalises over (C, H, W).
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch
from torch import nn

from nasdistill.spaces import CategoricalSpace, Network
from nasdistill.spaces.activation import LeakyReLU, ReLU
from nasdistill.spaces.conv import Conv2d
from nasdistill.spaces.layers import AvgPool2d, MaxPool2d

NORMS: dict[str, Callable[[int, int, int], nn.Module] | None] = {
    "none": None,
    "batchnorm": lambda c, h, w: nn.BatchNorm2d(c),
    "layernorm": lambda c, h, w: nn.LayerNorm([c, h, w]),
    "instancenorm": lambda c, h, w: nn.GroupNorm(c, c, affine=True),
    "groupnorm": lambda c, h, w: nn.GroupNorm(4, c, affine=True),
}
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "sigmoid": nn.Sigmoid,
    "relu": lambda: ReLU(inplace=True),  # nn.ReLU; its gradient's derivative skips a tensor of zeros
    "leakyrelu": lambda: LeakyReLU(0.01, inplace=True),  # likewise nn.LeakyReLU (nasdistill.spaces.activation)
}
POOLS: dict[str, Callable[[], nn.Module] | None] = {
    "none": None,
    "maxpool": lambda: MaxPool2d(2, 2),  # nn.MaxPool2d, faster on CPU (nasdistill.spaces.layers)
    "avgpool": lambda: AvgPool2d(2, 2),  # nn.AvgPool2d, faster on CPU (nasdistill.spaces.layers)
}


class ConvNet(Network):
    """conv3x3 -> norm -> act -> pool, ``depth`` times, then a linear classifier."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, depth: int = 3, width: int = 128,
                 act: str = "relu", norm: str = "instancenorm", pool: str = "avgpool"):
        super().__init__()
        c, h, w = (int(v) for v in input_shape)
        blocks = []
        for _ in range(depth):
            layers: list[nn.Module] = [Conv2d(c, width, kernel_size=3, padding=1)]  # nn.Conv2d, faster backward to 1-3 channels
            if NORMS[norm] is not None:
                layers.append(NORMS[norm](width, h, w))
            layers.append(ACTIVATIONS[act]())
            if POOLS[pool] is not None and h >= 2 and w >= 2:
                layers.append(POOLS[pool]())
                h, w = h // 2, w // 2
            blocks.append(nn.Sequential(*layers))
            c = width
        self.blocks = nn.Sequential(*blocks)
        self.feature_dim = c * h * w
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x).flatten(1)

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps = []
        for block in self.blocks:
            x = block(x)
            maps.append(x)
        return maps[:-1] + [x.flatten(1)]


class ConvNetSpace(CategoricalSpace):
    name = "convnet"
    choices = {
        "depth": [1, 2, 3, 4],
        "width": [32, 64, 128, 256],
        "act": list(ACTIVATIONS),
        "norm": list(NORMS),
        "pool": list(POOLS),
    }

    def default_arch(self) -> dict:
        """DC's default ConvNet: depth 3, width 128, relu, instancenorm, avgpool."""
        return {"depth": 3, "width": 128, "act": "relu", "norm": "instancenorm", "pool": "avgpool"}

    def arch_id(self, arch: Mapping) -> str:
        a = self.validate(arch)
        return f"D{a['depth']}-W{a['width']}-{a['act']}-{a['norm']}-{a['pool']}"

    def parse_id(self, arch_id: str) -> dict:
        parts = arch_id.split("-")
        if len(parts) != 5 or not parts[0][1:].isdigit() or not parts[1][1:].isdigit():
            return super().parse_id(arch_id)  # the generic key=value form
        d, w, act, norm, pool = parts
        return self.validate({"depth": int(d[1:]), "width": int(w[1:]), "act": act, "norm": norm, "pool": pool})

    def build(self, arch: Mapping, input_shape: Sequence[int], num_classes: int) -> ConvNet:
        a = self.validate(arch)
        return ConvNet(input_shape, num_classes, **a)


space = ConvNetSpace()
