"""A MobileNetV2-style macro space: blocks, widths, kernels and expansion ratios per stage.

The network is a stem (conv3x3 -> BN -> ReLU6, 16 channels, stride 1), three stages with strides
1, 2, 2, a head (conv1x1 to 256 channels -> BN -> ReLU6 -> global average pool) and a linear
classifier. Every block is an inverted residual (MBConv, Sandler et al. 2018): conv1x1 expansion by
``expand`` -> BN -> ReLU6 -> depthwise conv ``kernel`` x ``kernel`` -> BN -> ReLU6 -> conv1x1
projection -> BN, with an identity shortcut when shape allows; ``expand`` 1 drops the expansion
conv (a plain depthwise-separable block). The first block of a stage carries its stride.
Convolutions are nasdistill's drop-ins (:func:`nasdistill.spaces.dropin.fast_layers`: the same values,
faster where a gradient is differentiated again).

Choices, named as ``suggest`` asks for them (stages ``s1..s3``, blocks ``b1..b3``):

* ``s<i>_blocks`` in {1, 2, 3};
* ``s<i>_width`` in {16, 24, 32} / {32, 48, 64} / {64, 96, 128} for stages 1 / 2 / 3;
* ``s<i>_b<j>_kernel`` in {3, 5} and ``s<i>_b<j>_expand`` in {1, 3, 6}, asked only for
  ``j <= s<i>_blocks`` (conditional parameters).

A stage has 3 * (6 + 6**2 + 6**3) = 774 settings, so the space holds 774**3 = 463,684,824
architectures (:meth:`MacroSpace.size`, computed from the choices). That is too many to
enumerate; :meth:`MacroSpace.sample` draws uniformly over architectures by decoding random
indices (:meth:`MacroSpace.arch_at`). Ids look like ``24:k3e6+k5e1/48:k3e3/96:k3e1+k3e1+k5e6``
(one ``width:blocks`` group per stage).
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from nasdistill._seed import derive_seed
from nasdistill.errors import ConfigError
from nasdistill.spaces import Network, SearchSpace, sample_args
from nasdistill.spaces.dropin import fast_layers

#: Spaces up to this size may be enumerated (smaller custom variants of :class:`MacroSpace`).
ENUMERATE_LIMIT = 1_000_000


class MBConv(nn.Module):
    """Inverted residual block; ``expand == 1`` is a depthwise-separable block."""

    def __init__(self, c_in: int, c_out: int, kernel: int, expand: int, stride: int):
        super().__init__()
        hidden = c_in * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(c_in, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True)]
        layers += [nn.Conv2d(hidden, hidden, kernel, stride=stride, padding=kernel // 2, groups=hidden, bias=False),
                   nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True),
                   nn.Conv2d(hidden, c_out, 1, bias=False), nn.BatchNorm2d(c_out)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return x + out if self.residual else out


class MacroNetwork(Network):
    """Stem, one ``nn.Sequential`` of MBConv blocks per stage, conv1x1 head, linear classifier."""

    fp32_channels_last = True  # batch-norm networks: float32 CPU training 1.18x (nb201) / 1.35x (macro) in NHWC

    def __init__(self, stages: Sequence[tuple[int, int, Sequence[tuple[int, int]]]], input_shape: Sequence[int],
                 num_classes: int, stem_channels: int = 16, head_channels: int = 256):
        """``stages``: (stride, width, [(kernel, expand) per block]) for each stage."""
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(int(input_shape[0]), stem_channels, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(stem_channels), nn.ReLU6(inplace=True))
        c = stem_channels
        blocks = []
        for stride, width, cells in stages:
            layers = []
            for b, (kernel, expand) in enumerate(cells):
                layers.append(MBConv(c, width, kernel, expand, stride if b == 0 else 1))
                c = width
            blocks.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(blocks)
        self.head = nn.Sequential(nn.Conv2d(c, head_channels, 1, bias=False), nn.BatchNorm2d(head_channels),
                                  nn.ReLU6(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.feature_dim = head_channels
        self.classifier = nn.Linear(head_channels, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.head(x)

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Stem output, each stage's output, then the pooled embedding."""
        maps = [self.stem(x)]
        for stage in self.stages:
            maps.append(stage(maps[-1]))
        return maps + [self.head(maps[-1])]


class MacroSpace(SearchSpace):
    """Stages of MBConv blocks with searched depth, width, kernel and expansion (see the module docstring).

    Args:
        widths: width choices of each stage (their count sets the number of stages).
        strides: stride of each stage's first block.
        blocks: choices for the number of blocks of a stage.
        kernels: depthwise kernel choices.
        expansions: expansion-ratio choices.
        stem_channels, head_channels: fixed widths of the stem and of the conv1x1 head.
        name: the space's name. By default ``"macro"`` for the default choices and
            ``"macro-<digest of the choices>"`` otherwise, so studies and stores of different
            variants never mix.
    """

    def __init__(self, widths: Sequence[Sequence[int]] = ((16, 24, 32), (32, 48, 64), (64, 96, 128)),
                 strides: Sequence[int] = (1, 2, 2), blocks: Sequence[int] = (1, 2, 3),
                 kernels: Sequence[int] = (3, 5), expansions: Sequence[int] = (1, 3, 6),
                 stem_channels: int = 16, head_channels: int = 256, name: str | None = None):
        if len(widths) != len(strides) or not widths:
            raise ConfigError(f"MacroSpace got {len(widths)} width lists and {len(strides)} strides",
                              "give one list of widths and one stride per stage")
        if any(not w for w in widths) or not blocks or not kernels or not expansions or min(blocks) < 1:
            raise ConfigError("MacroSpace needs non-empty choices and at least one block a stage",
                              "fix the MacroSpace arguments")
        self.widths = [list(w) for w in widths]
        self.strides = list(strides)
        self.blocks = sorted(set(blocks))
        self.kernels = list(kernels)
        self.expansions = list(expansions)
        self.stem_channels = int(stem_channels)
        self.head_channels = int(head_channels)
        config = (self.widths, self.strides, self.blocks, self.kernels, self.expansions,
                  self.stem_channels, self.head_channels)
        if name is None:
            default = ([[16, 24, 32], [32, 48, 64], [64, 96, 128]], [1, 2, 2], [1, 2, 3], [3, 5], [1, 3, 6], 16, 256)
            name = "macro" if config == default else f"macro-{derive_seed(*config) % 16**8:08x}"
        self.name = name
        self._block_choices = list(itertools.product(self.kernels, self.expansions))

    @property
    def num_stages(self) -> int:
        return len(self.widths)

    # --- choices ---------------------------------------------------------------------------
    def suggest(self, trial: Any) -> dict:
        arch: dict = {}
        for s in range(1, self.num_stages + 1):
            n = arch[f"s{s}_blocks"] = trial.suggest_categorical(f"s{s}_blocks", self.blocks)
            arch[f"s{s}_width"] = trial.suggest_categorical(f"s{s}_width", self.widths[s - 1])
            for b in range(1, n + 1):
                arch[f"s{s}_b{b}_kernel"] = trial.suggest_categorical(f"s{s}_b{b}_kernel", self.kernels)
                arch[f"s{s}_b{b}_expand"] = trial.suggest_categorical(f"s{s}_b{b}_expand", self.expansions)
        return arch

    def dimensions(self) -> dict[str, list]:
        """Every name :meth:`suggest` may ask for (block choices of every possible block)."""
        dims: dict[str, list] = {}
        for s in range(1, self.num_stages + 1):
            dims[f"s{s}_blocks"] = list(self.blocks)
            dims[f"s{s}_width"] = list(self.widths[s - 1])
            for b in range(1, max(self.blocks) + 1):
                dims[f"s{s}_b{b}_kernel"] = list(self.kernels)
                dims[f"s{s}_b{b}_expand"] = list(self.expansions)
        return dims

    def validate(self, arch: Mapping) -> dict:
        """``arch`` as a dict after checking it has exactly the keys its block counts imply."""
        a = dict(arch)
        expected = self.suggest(_Strict(a, self.dimensions()))
        extra = sorted(set(a) - set(expected))
        if extra:
            raise ConfigError(f"architecture for {self.name!r} has keys it does not use: {extra}",
                              "drop the choices of blocks beyond s<i>_blocks")
        return expected

    def default_arch(self) -> dict:
        """Two blocks a stage at the middle widths, kernel 3 and expansion 6 (MobileNetV2's block)."""
        values: dict = {}
        for s in range(1, self.num_stages + 1):
            w = self.widths[s - 1]
            values[f"s{s}_blocks"] = 2 if 2 in self.blocks else self.blocks[0]
            values[f"s{s}_width"] = w[len(w) // 2]
            for b in range(1, max(self.blocks) + 1):
                values[f"s{s}_b{b}_kernel"] = 3 if 3 in self.kernels else self.kernels[0]
                values[f"s{s}_b{b}_expand"] = 6 if 6 in self.expansions else self.expansions[-1]
        return self.from_values(values)

    # --- counting, decoding, sampling ------------------------------------------------------------
    def _stage_count(self, s: int) -> int:
        return len(self.widths[s]) * sum(len(self._block_choices) ** n for n in self.blocks)

    def size(self) -> int:
        """Exact number of architectures: the product over stages of widths x sum over block counts
        ``n`` of (kernels x expansions) ** n."""
        return math.prod(self._stage_count(s) for s in range(self.num_stages))

    def arch_at(self, index: int) -> dict:
        """The architecture with number ``index`` in ``[0, size())`` (stage 1 varies slowest)."""
        if not 0 <= index < self.size():
            raise ConfigError(f"architecture index {index} is outside [0, {self.size()})", "pass a valid index")
        arch: dict = {}
        per_stage = []
        for s in reversed(range(self.num_stages)):
            index, r = divmod(index, self._stage_count(s))
            per_stage.append(r)
        for s, r in enumerate(reversed(per_stage), start=1):
            m = len(self._block_choices)
            w, r = divmod(r, self._stage_count(s - 1) // len(self.widths[s - 1]))
            for n in self.blocks:
                if r < m ** n:
                    break
                r -= m ** n
            arch[f"s{s}_blocks"] = n
            arch[f"s{s}_width"] = self.widths[s - 1][w]
            for b in range(n, 0, -1):
                r, c = divmod(r, m)
                arch[f"s{s}_b{b}_kernel"], arch[f"s{s}_b{b}_expand"] = self._block_choices[c]
        return self.validate(arch)

    def enumerate(self) -> Iterator[dict]:
        """Every architecture in :meth:`arch_at` order; only for variants up to ``ENUMERATE_LIMIT``."""
        n = self.size()
        if n > ENUMERATE_LIMIT:
            raise ConfigError(f"search space {self.name!r} has {n:,} architectures, too many to enumerate",
                              "sample it instead (space.sample(k, seed))")
        return (self.arch_at(i) for i in range(n))

    def sample(self, k: int, seed: int = 0, unique: bool = True) -> list[dict]:
        """``k`` architectures drawn uniformly over the whole space with ``seed`` (distinct when ``unique``)."""
        k, seed = sample_args(k, seed)
        n = self.size()
        if unique and k > n:
            raise ConfigError(f"cannot sample {k} distinct architectures from {self.name!r} ({n} in all)",
                              f"ask for at most {n}")
        rng = np.random.default_rng(derive_seed("sample", self.name, seed) % (2**63))
        picks: list[int] = []
        seen: set[int] = set()
        while len(picks) < k:
            i = _randbelow(rng, n)
            if unique and i in seen:
                continue
            seen.add(i)
            picks.append(i)
        return [self.arch_at(i) for i in picks]

    # --- ids and building ----------------------------------------------------------------------
    def arch_id(self, arch: Mapping) -> str:
        """``width:k<kernel>e<expand>+...`` per stage, stages joined by ``/``."""
        a = self.validate(arch)
        return "/".join(f"{a[f's{s}_width']}:" + "+".join(f"k{a[f's{s}_b{b}_kernel']}e{a[f's{s}_b{b}_expand']}"
                                                        for b in range(1, a[f"s{s}_blocks"] + 1))
                        for s in range(1, self.num_stages + 1))

    def parse_id(self, arch_id: str) -> dict:
        """Inverse of :meth:`arch_id`."""
        fix = ("write it as width:k<kernel>e<expand>+... per stage, stages joined by '/', "
               "e.g. 24:k3e6+k5e1/48:k3e3/96:k3e1")
        stages = arch_id.strip().split("/")
        if len(stages) != self.num_stages:
            raise ConfigError(f"{arch_id!r} has {len(stages)} stages, not {self.num_stages}", fix)
        arch: dict = {}
        try:
            for s, text in enumerate(stages, start=1):
                width, _, blocks = text.partition(":")
                cells = blocks.split("+")
                arch[f"s{s}_blocks"] = len(cells)
                arch[f"s{s}_width"] = int(width)
                for b, cell in enumerate(cells, start=1):
                    kernel, _, expand = cell.removeprefix("k").partition("e")
                    arch[f"s{s}_b{b}_kernel"], arch[f"s{s}_b{b}_expand"] = int(kernel), int(expand)
        except ValueError:
            raise ConfigError(f"cannot read the architecture id {arch_id!r}", fix) from None
        return self.validate(arch)

    def build(self, arch: Mapping, input_shape: Sequence[int], num_classes: int) -> MacroNetwork:
        a = self.validate(arch)
        stages = [(self.strides[s - 1], a[f"s{s}_width"],
                   [(a[f"s{s}_b{b}_kernel"], a[f"s{s}_b{b}_expand"]) for b in range(1, a[f"s{s}_blocks"] + 1)])
                  for s in range(1, self.num_stages + 1)]
        return fast_layers(MacroNetwork(stages, input_shape, num_classes, self.stem_channels, self.head_channels))


class _Strict:
    """A trial that answers from ``values`` and fails on a missing name or a value outside the choices."""

    def __init__(self, values: Mapping[str, Any], dims: Mapping[str, list]):
        self.values, self.dims = values, dims

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        if name not in self.values:
            raise ConfigError(f"the architecture lacks {name!r}", f"set it to one of {list(choices)}")
        v = self.values[name]
        if v not in choices:
            raise ConfigError(f"{name}={v!r} is not in the space", f"choose from {list(choices)}")
        return v


def _randbelow(rng: np.random.Generator, n: int) -> int:
    """A uniform integer in [0, n), also for n beyond 64 bits."""
    if n < 2**62:
        return int(rng.integers(n))
    bits = n.bit_length()
    while True:
        v = int.from_bytes(rng.bytes((bits + 7) // 8), "little") & ((1 << bits) - 1)
        if v < n:
            return v


space = MacroSpace()
