"""NAS-Bench-201's cell space (Dong & Yang, ICLR 2020, "NAS-Bench-201: Extending the Scope of
Reproducible Neural Architecture Search").

The cell is a 4-node DAG (nodes 0..3, node 0 the cell input, node 3 its output) with an edge
``i -> j`` for every ``i < j`` (6 edges). Each edge is one of ``none`` (zero), ``skip_connect``
(identity), ``nor_conv_1x1`` / ``nor_conv_3x3`` (ReLU -> Conv -> BN), ``avg_pool_3x3`` (stride 1,
padding 1, padding excluded from the average): 5**6 = 15,625 cells. Node ``j`` is the sum over
``i < j`` of ``op_ij(node i)``.

The network is the benchmark's skeleton: stem conv3x3 + BN with ``C`` channels (default 16), three
stages of ``N`` cells (default 5) with C, 2C, 4C channels, a ResNet basic block (stride 2, channels
doubled, avg-pool + 1x1 conv shortcut) between stages, then BN -> ReLU -> global average pool ->
linear.

Convolutions and pools are nasdistill's drop-ins (:func:`nasdistill.spaces.dropin.fast_layers`: the same
values, faster where a gradient is differentiated again).

``get_space("nb201")`` is the benchmark's skeleton (C=16, N=5). For CPU searches use a smaller one,
e.g. ``NB201Space(cells_per_stage=1)`` (NB201-1), passed as an instance wherever a space is taken, or
from the command line through a space file holding
``from search_spaces.nb201 import NB201Space; space = NB201Space(cells_per_stage=1)``. A variant's
``name`` (``"nb201-n1"``, ``"nb201-c8-n2"``...) keeps studies and stores of different skeletons apart.

Architectures are dicts keyed by edge, ``edge_<to>_<from>`` in the benchmark's string order
(``edge_1_0, edge_2_0, edge_2_1, edge_3_0, edge_3_1, edge_3_2``); ids are NAS-Bench-201's strings,
e.g. ``|nor_conv_3x3~0|+|none~0|nor_conv_3x3~1|+|skip_connect~0|none~1|skip_connect~2|`` (the
benchmark's ResNet cell, node 3 = node 0 + conv(conv(node 0)): the default architecture).
:meth:`NB201Space.enumerate` runs over the edges in that order with the ops in :data:`OPS` order;
it is not the benchmark's own index order.

As in the benchmark's code, ``none`` multiplies its input by zero, so every parameter stays in the
graph (gets a gradient, possibly zero), even on edges that cannot reach the output; parameter and
FLOP counts match the benchmark's (C=16, N=5 on CIFAR-10: 0.073306 M params / 7.78 M multiply-adds
for cells without convolutions, 1.531546 M / 220.12 M for the all-3x3-conv cell). One change, which
leaves even sizes untouched: the reduction block's shortcut pools with ``ceil_mode=True`` so odd
sizes (MNIST's 7x7) work.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch
from torch import nn

from nasdistill.errors import ConfigError
from nasdistill.spaces import CategoricalSpace, Network
from nasdistill.spaces.dropin import fast_layers
from nasdistill.spaces.layers import AvgPool2d

#: The benchmark's operations, in its order.
OPS: tuple[str, ...] = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
NODES = 4
#: (to, from) of every edge, in the order of the benchmark's strings.
EDGES: tuple[tuple[int, int], ...] = tuple((j, i) for j in range(1, NODES) for i in range(j))
EDGE_KEYS: tuple[str, ...] = tuple(f"edge_{j}_{i}" for j, i in EDGES)

#: The benchmark's ResNet cell (two chained 3x3 convs plus a skip): the default architecture.
RESNET_CELL = "|nor_conv_3x3~0|+|none~0|nor_conv_3x3~1|+|skip_connect~0|none~1|skip_connect~2|"


class ReLUConvBN(nn.Sequential):
    """ReLU -> Conv (no bias) -> BN, the benchmark's ``nor_conv``."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1):
        super().__init__(nn.ReLU(inplace=False),
                         nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False),
                         nn.BatchNorm2d(c_out))


class Zero(nn.Module):
    """The ``none`` edge: zeros shaped like the input, still attached to the graph (as the benchmark's)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mul(0.0)


#: op name -> factory(channels) for a stride-1 edge.
OP_FACTORIES: dict[str, Callable[[int], nn.Module]] = {
    "none": lambda c: Zero(),
    "skip_connect": lambda c: nn.Identity(),
    "nor_conv_1x1": lambda c: ReLUConvBN(c, c, 1),
    "nor_conv_3x3": lambda c: ReLUConvBN(c, c, 3),
    "avg_pool_3x3": lambda c: nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False),
}


class Cell(nn.Module):
    """One NAS-Bench-201 cell with fixed ops: ``ops[k]`` sits on edge ``EDGES[k]``."""

    def __init__(self, ops: Sequence[str], channels: int):
        super().__init__()
        self.ops = tuple(ops)
        self.edges = nn.ModuleDict()
        for (j, i), op in zip(EDGES, self.ops):
            self.edges[f"{j}_{i}"] = OP_FACTORIES[op](channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nodes = [x]
        for j in range(1, NODES):
            node = self.edges[f"{j}_0"](nodes[0])
            for i in range(1, j):
                node = node + self.edges[f"{j}_{i}"](nodes[i])
            nodes.append(node)
        return nodes[-1]


class ResNetBlock(nn.Module):
    """The benchmark's reduction block: two ReLU-Conv3x3-BN (the first with stride 2) plus an
    avg-pool + 1x1-conv shortcut."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv_a = ReLUConvBN(c_in, c_out, 3, stride=2)
        self.conv_b = ReLUConvBN(c_out, c_out, 3)
        self.downsample = nn.Sequential(AvgPool2d(2, stride=2, ceil_mode=True),
                                        nn.Conv2d(c_in, c_out, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsample(x) + self.conv_b(self.conv_a(x))


class NB201Network(Network):
    """Stem, three stages of ``cells_per_stage`` cells split by reduction blocks, BN-ReLU-GAP head."""

    fp32_channels_last = True  # batch-norm networks: float32 CPU training 1.18x (nb201) / 1.35x (macro) in NHWC

    def __init__(self, ops: Sequence[str], input_shape: Sequence[int], num_classes: int,
                 channels: int = 16, cells_per_stage: int = 5):
        super().__init__()
        c_in = int(input_shape[0])
        self.stem = nn.Sequential(nn.Conv2d(c_in, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels))
        stages = []
        c = channels
        for s in range(3):
            layers: list[nn.Module] = []
            if s > 0:
                layers.append(ResNetBlock(c, 2 * c))
                c *= 2
            layers.extend(Cell(ops, c) for _ in range(cells_per_stage))
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)
        self.lastact = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(inplace=True))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = c
        self.classifier = nn.Linear(c, num_classes)

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.lastact(x)).flatten(1)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self._head(x)

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Stem output, each stage's output, then the pooled embedding."""
        maps = [self.stem(x)]
        for stage in self.stages:
            maps.append(stage(maps[-1]))
        return maps + [self._head(maps[-1])]


class NB201Space(CategoricalSpace):
    """NAS-Bench-201's 15,625 cells on its macro skeleton.

    Args:
        channels: stem / first-stage channels ``C`` (the benchmark: 16).
        cells_per_stage: cells ``N`` in each of the three stages (the benchmark: 5; use 1 or 2 on CPU).
    """

    choices = {key: list(OPS) for key in EDGE_KEYS}

    def __init__(self, channels: int = 16, cells_per_stage: int = 5):
        if channels < 1 or cells_per_stage < 0:
            raise ConfigError(f"NB201Space needs channels >= 1 and cells_per_stage >= 0, got {channels}, "
                              f"{cells_per_stage}", "pass positive sizes")
        self.channels = int(channels)
        self.cells_per_stage = int(cells_per_stage)
        suffix = ("" if self.channels == 16 else f"-c{self.channels}") + \
                 ("" if self.cells_per_stage == 5 else f"-n{self.cells_per_stage}")
        self.name = "nb201" + suffix

    def default_arch(self) -> dict:
        """The benchmark's ResNet cell (:data:`RESNET_CELL`)."""
        return self.parse_id(RESNET_CELL)

    def arch_id(self, arch: Mapping) -> str:
        """NAS-Bench-201's string, ``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|``."""
        a = self.validate(arch)
        return "+".join("|" + "|".join(f"{a[f'edge_{j}_{i}']}~{i}" for i in range(j)) + "|"
                        for j in range(1, NODES))

    def parse_id(self, arch_id: str) -> dict:
        """Inverse of :meth:`arch_id`; also reads the generic ``edge_1_0=...,...`` form."""
        s = arch_id.strip()
        if not s.startswith("|"):
            return super().parse_id(s)
        nodes = s.split("+")
        fix = "write it as NAS-Bench-201 does, e.g. " + RESNET_CELL
        if len(nodes) != NODES - 1:
            raise ConfigError(f"{arch_id!r} has {len(nodes)} nodes, not {NODES - 1}", fix)
        arch = {}
        for j, node in enumerate(nodes, start=1):
            if not (node.startswith("|") and node.endswith("|")):
                raise ConfigError(f"node {j} of {arch_id!r} is not enclosed in '|'", fix)
            edges = node[1:-1].split("|")
            if len(edges) != j:
                raise ConfigError(f"node {j} of {arch_id!r} has {len(edges)} inputs, not {j}", fix)
            for i, edge in enumerate(edges):
                op, _, src = edge.partition("~")
                if src != str(i):
                    raise ConfigError(f"edge {edge!r} of node {j} in {arch_id!r} should come from node {i}", fix)
                arch[f"edge_{j}_{i}"] = op
        return self.validate(arch)

    def build(self, arch: Mapping, input_shape: Sequence[int], num_classes: int) -> NB201Network:
        a = self.validate(arch)
        return fast_layers(NB201Network([a[k] for k in EDGE_KEYS], input_shape, num_classes,
                                        channels=self.channels, cells_per_stage=self.cells_per_stage))


space = NB201Space()
