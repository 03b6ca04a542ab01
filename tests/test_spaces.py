"""Search spaces: the ConvNet space and user space files."""

from __future__ import annotations

import pytest
import torch

from nasdistill.errors import ConfigError, UnknownNameError
from nasdistill.spaces import get_space, space_names


@pytest.fixture(scope="module")
def convnet():
    return get_space("convnet")


def test_convnet_enumerates_720_distinct_ids_that_round_trip(convnet):
    archs = list(convnet.enumerate())
    ids = [convnet.arch_id(a) for a in archs]
    assert len(archs) == convnet.size() == 720 == len(set(ids))
    assert all(convnet.parse_id(i) == a for i, a in zip(ids, archs))
    assert "convnet" in space_names()


def test_sampling_is_seeded_and_distinct(convnet):
    a = convnet.sample(12, seed=3)
    assert a == convnet.sample(12, seed=3)
    assert a != convnet.sample(12, seed=4)
    assert len({convnet.arch_id(x) for x in a}) == 12
    with pytest.raises(ConfigError):
        convnet.sample(721)
    import numpy as np

    assert convnet.sample(np.int64(12), seed=np.int64(3)) == a  # counts from a NumPy grid
    for name in ("convnet", "macro"):  # macro samples its own way: the same checks
        for kwargs, match in [(dict(k=2.5), "k must be a whole number, got 2.5"), (dict(k=-1), "cannot sample -1"),
                              (dict(k=2, seed="3"), "seed must be a whole number, got '3'")]:
            with pytest.raises(ConfigError, match=match):  # NumPy errors, or for "3" a silent hash of the text
                get_space(name).sample(**kwargs)


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32)])
@pytest.mark.parametrize("arch", ["D4-W32-relu-layernorm-maxpool", "D4-W32-sigmoid-batchnorm-avgpool",
                                  "D1-W64-leakyrelu-groupnorm-none", "D3-W32-relu-instancenorm-avgpool"])
def test_builds_trains_any_shape(convnet, shape, arch):
    model = convnet.build_seeded(convnet.parse_id(arch), shape, 10, seed=0)
    x = torch.randn(4, *shape)
    out = model(x)
    assert out.shape == (4, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    assert model.embed(x).shape == (4, model.classifier.in_features)


def test_build_is_deterministic_per_seed(convnet):
    arch = convnet.default_arch()
    a = convnet.build_seeded(arch, (1, 8, 8), 10, seed=1).state_dict()
    b = convnet.build_seeded(arch, (1, 8, 8), 10, seed=1).state_dict()
    c = convnet.build_seeded(arch, (1, 8, 8), 10, seed=2).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_complexity_counts_params_and_flops(convnet):
    small = convnet.complexity(convnet.parse_id("D1-W32-relu-none-avgpool"), (1, 8, 8), 10)
    big = convnet.complexity(convnet.parse_id("D3-W128-relu-none-avgpool"), (1, 8, 8), 10)
    assert small["params"] == 32 * 9 + 32 + 32 * 16 * 10 + 10
    assert big["params"] > small["params"] and big["flops"] > small["flops"] > 0


def test_bad_arch_and_unknown_space(convnet):
    with pytest.raises(ConfigError, match="width=48"):
        convnet.validate({**convnet.default_arch(), "width": 48})
    with pytest.raises(ConfigError, match=r"for 'convnet' lacks \['act', 'norm', 'pool', 'width'\]; use the keys"):
        convnet.validate({"depth": 1})
    with pytest.raises(ConfigError, match=r"for 'convnet' has unknown keys \['extra'\]; use the keys"):
        convnet.validate({**convnet.default_arch(), "extra": 1})
    with pytest.raises(UnknownNameError):
        get_space("no_such_space")
    # a typo'd id says so (it was "unknown keys ['D9-W1']"); a well-formed one names the bad value
    with pytest.raises(ConfigError, match=r"'D9-W1' is not an architecture id of 'convnet'; use an id such as "
                                          r"'D3-W128-relu-instancenorm-avgpool'"):
        convnet.parse_id("D9-W1")
    with pytest.raises(ConfigError, match=r"depth=9 is not in the 'convnet' space"):
        convnet.parse_id("D9-W32-relu-none-none")


def test_user_space_file(tmp_path):
    path = tmp_path / "tiny.py"
    path.write_text(
        "from torch import nn\n"
        "from nasdistill.spaces import CategoricalSpace, Network\n"
        "class Net(Network):\n"
        "    def __init__(self, shape, k, hidden):\n"
        "        super().__init__()\n"
        "        self.body = nn.Sequential(nn.Flatten(), nn.Linear(shape[0]*shape[1]*shape[2], hidden), nn.ReLU())\n"
        "        self.classifier = nn.Linear(hidden, k)\n"
        "    def embed(self, x):\n"
        "        return self.body(x)\n"
        "class Tiny(CategoricalSpace):\n"
        "    name = 'tiny'\n"
        "    choices = {'hidden': [8, 16, 32]}\n"
        "    def build(self, arch, shape, k):\n"
        "        return Net(shape, k, arch['hidden'])\n"
        "space = Tiny()\n"
    )
    space = get_space(str(path))
    assert space.size() == 3
    assert space.parse_id(space.arch_id({"hidden": 16})) == {"hidden": 16}
    assert space.build({"hidden": 8}, (1, 8, 8), 10)(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    broken = tmp_path / "broken.py"
    broken.write_text("x = 1\n")
    with pytest.raises(ConfigError, match="defines no search space"):
        get_space(str(broken))


def test_flat_dimensions_round_trip_through_from_values(convnet):
    dims = convnet.dimensions()
    assert dims == {k: list(v) for k, v in convnet.choices.items()}
    for arch in convnet.sample(5, seed=0):
        assert convnet.from_values(arch) == arch
    with pytest.raises(ConfigError):
        convnet.from_values({**convnet.default_arch(), "width": 7})


def test_space_options_build_variants():
    small = get_space("nb201:cells_per_stage=1,channels=8")
    assert small.name == "nb201-c8-n1" and small.size() == 15625
    assert get_space("nb201:cells_per_stage=1,channels=8") is small
    with pytest.raises(ConfigError, match="takes"):
        get_space("nb201:colour=red")
