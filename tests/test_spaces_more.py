"""The NAS-Bench-201 and MobileNet-style macro spaces, and what every shipped space must do."""

from __future__ import annotations

import collections
import itertools
import math

import numpy as np
import optuna
import pytest
import torch

import search_spaces.macro as macro_module
from nasdistill.errors import ConfigError
from nasdistill.spaces import get_space, space_names
from nasdistill.training import TrainConfig, evaluate, fit_evaluate, train
from search_spaces.macro import MacroSpace
from search_spaces.nb201 import EDGE_KEYS, OPS, NB201Space

NB201_SMALL = NB201Space(cells_per_stage=1)
ALL_NONE = "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"
ALL_CONV3 = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|"
#: Node 1's conv reaches the output only through ``none`` edges (its weights must still get gradients).
DEAD_NODE = "|nor_conv_3x3~0|+|none~0|none~1|+|skip_connect~0|none~1|nor_conv_1x1~2|"
#: The best CIFAR-10 cell of NAS-Bench-201 (its paper, Table 5 / the API's README).
BEST_CIFAR10 = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"


def _spaces() -> dict:
    return {"convnet": get_space("convnet"), "nb201": NB201_SMALL, "macro": get_space("macro")}


def _archs(name: str, space) -> list[dict]:
    """A few architectures per space: the default, the extremes and a random one."""
    if name == "convnet":
        return [space.default_arch(), space.parse_id("D2-W32-relu-batchnorm-maxpool")]
    if name == "nb201":
        return [space.default_arch(), space.parse_id(ALL_CONV3), space.parse_id(ALL_NONE), space.parse_id(DEAD_NODE),
                space.sample(1, seed=5)[0]]
    return [space.default_arch(), space.arch_at(0), space.arch_at(space.size() - 1), space.sample(1, seed=5)[0]]


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32)])
@pytest.mark.parametrize("name", ["convnet", "nb201", "macro"])
def test_every_space_builds_and_backprops_on_any_shape(name, shape):
    space = _spaces()[name]
    for arch in _archs(name, space):
        model = space.build_seeded(arch, shape, 7, seed=0)
        x = torch.randn(3, *shape)
        out = model(x)
        assert out.shape == (3, 7), (name, arch)
        out.sum().backward()
        assert all(p.grad is not None for p in model.parameters()), (name, arch)
        model.eval()
        with torch.no_grad():
            maps = model.feature_maps(x)
            emb = model.embed(x)
        assert emb.shape == (3, model.classifier.in_features)
        assert torch.allclose(maps[-1], emb)


def test_nb201_ids_round_trip_over_all_15625_cells():
    space = get_space("nb201")
    archs = list(space.enumerate())
    ids = [space.arch_id(a) for a in archs]
    assert len(archs) == space.size() == len(OPS) ** len(EDGE_KEYS) == 15625 == len(set(ids))
    assert all(space.parse_id(i) == a for i, a in zip(ids, archs))
    assert space.dimensions() == {k: list(OPS) for k in EDGE_KEYS}
    assert all(i.startswith("|") and i.endswith("|") and i.count("+") == 2 and i.count("~") == 6 for i in ids)
    assert {"nb201", "macro"} <= set(space_names())


def test_nb201_reads_hand_written_benchmark_strings():
    space = get_space("nb201")
    resnet = space.parse_id("|nor_conv_3x3~0|+|none~0|nor_conv_3x3~1|+|skip_connect~0|none~1|skip_connect~2|")
    assert resnet == {"edge_1_0": "nor_conv_3x3", "edge_2_0": "none", "edge_2_1": "nor_conv_3x3",
                      "edge_3_0": "skip_connect", "edge_3_1": "none", "edge_3_2": "skip_connect"}
    assert resnet == space.default_arch()
    best = space.parse_id(BEST_CIFAR10)
    assert best["edge_3_0"] == "skip_connect" and best["edge_2_1"] == "nor_conv_3x3"
    mixed = "|avg_pool_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|nor_conv_1x1~0|skip_connect~1|avg_pool_3x3~2|"
    arch = space.parse_id(mixed)
    assert (arch["edge_1_0"], arch["edge_2_1"], arch["edge_3_2"]) == ("avg_pool_3x3", "skip_connect", "avg_pool_3x3")
    for s in (BEST_CIFAR10, mixed, ALL_NONE):
        assert space.arch_id(space.parse_id(s)) == s
    # the generic key=value form is read too
    assert space.parse_id(",".join(f"{k}={v}" for k, v in best.items())) == best
    for bad in ("|nor_conv_3x3~0|+|none~0|none~1|",                                       # two nodes
                "|nor_conv_3x3~0|+|none~0|none~0|+|skip_connect~0|none~1|nor_conv_3x3~2|",  # wrong source
                "|conv_5x5~0|+|none~0|none~1|+|skip_connect~0|none~1|nor_conv_3x3~2|",      # unknown op
                "|nor_conv_3x3~0|+|none~0|+|skip_connect~0|none~1|nor_conv_3x3~2|"):        # missing edge
        with pytest.raises(ConfigError):
            space.parse_id(bad)


def test_nb201_matches_the_benchmarks_published_size_and_flops():
    """NAS-Bench-201 reports (CIFAR-10, C=16, N=5) 0.073306 M params / 7.78305 M MACs for its smallest cell
    and 1.531546 M / 220.11969 M for the all-3x3-conv cell; CIFAR-100 smallest: 0.079156 M params."""
    space = get_space("nb201")
    for arch_id, k, params, mflops in ((ALL_NONE, 10, 0.073306, 7.78305), (ALL_CONV3, 10, 1.531546, 220.11969),
                                       (ALL_NONE, 100, 0.079156, 7.78890)):
        c = space.complexity(space.parse_id(arch_id), (3, 32, 32), k)
        assert c["params"] == round(params * 1e6)
        # our FLOPs are 2 x multiply-adds; the benchmark counts multiply-adds plus the classifier's bias adds
        assert c["flops"] // 2 + k == round(mflops * 1e6)


def test_complexity_grows_with_width_cells_and_blocks():
    nb = get_space("nb201")
    arch = nb.default_arch()
    sizes = [NB201Space(channels=c, cells_per_stage=n).complexity(arch, (3, 32, 32), 10)
             for c, n in ((8, 1), (16, 1), (16, 2))]
    for small, big in itertools.pairwise(sizes):
        assert big["params"] > small["params"] and big["flops"] > small["flops"]
    assert NB201Space(cells_per_stage=2).name == "nb201-n2" and NB201Space(channels=8).name == "nb201-c8"
    conv1, conv3 = (NB201_SMALL.complexity(NB201_SMALL.parse_id(ALL_CONV3.replace("3x3", k)), (1, 8, 8), 10)
                    for k in ("1x1", "3x3"))
    assert conv3["params"] > conv1["params"] and conv3["flops"] > conv1["flops"]

    mc = get_space("macro")
    base = mc.arch_at(0)  # one k3e1 block a stage at the smallest widths
    variants = [base, {**base, "s3_width": 128}, {**base, "s3_b1_expand": 6}, {**base, "s3_b1_kernel": 5},
                mc.from_values({**base, "s3_blocks": 3, "s3_width": 128})]
    sizes = [mc.complexity(a, (3, 32, 32), 10) for a in variants]
    assert all(s["params"] > sizes[0]["params"] and s["flops"] > sizes[0]["flops"] for s in sizes[1:])
    assert sizes[-1]["flops"] > sizes[1]["flops"]


def test_macro_size_is_the_documented_independent_count():
    mc = get_space("macro")
    # independent count: sum over every (blocks per stage) combination of widths x 6**blocks per stage
    count = sum(math.prod(len(w) * 6 ** n for w, n in zip(mc.widths, ns))
                for ns in itertools.product(mc.blocks, repeat=3))
    assert mc.size() == count == 774 ** 3
    assert f"{count:,}" in macro_module.__doc__
    with pytest.raises(ConfigError, match="too many to enumerate"):
        mc.enumerate()


def test_small_macro_variant_enumerates_exactly_what_the_flat_dimensions_describe():
    tiny = MacroSpace(widths=((8, 16), (16,)), strides=(1, 2), blocks=(1, 2), kernels=(3,), expansions=(1, 6))
    assert tiny.name.startswith("macro-") and MacroSpace().name == "macro"
    assert MacroSpace(head_channels=128).name not in (tiny.name, "macro")
    dims = tiny.dimensions()
    by_brute_force = {tiny.arch_id(tiny.from_values(dict(zip(dims, combo))))
                      for combo in itertools.product(*dims.values())}
    listed = [tiny.arch_id(a) for a in tiny.enumerate()]
    assert len(listed) == len(set(listed)) == tiny.size() == (2 * (2 + 4)) * (1 * (2 + 4)) == len(by_brute_force)
    assert set(listed) == by_brute_force
    assert all(tiny.parse_id(i) == tiny.arch_at(n) for n, i in enumerate(listed))


@pytest.mark.parametrize("name", ["nb201", "macro"])
def test_sampling_is_seeded_distinct_and_round_trips(name):
    space = get_space(name)
    a = space.sample(25, seed=3)
    assert a == space.sample(25, seed=3)
    assert a != space.sample(25, seed=4)
    ids = [space.arch_id(x) for x in a]
    assert len(set(ids)) == 25
    assert [space.parse_id(i) for i in ids] == a
    dims = space.dimensions()
    for arch in a:
        assert all(k in dims and v in dims[k] for k, v in arch.items())
        assert space.from_values(arch) == arch
    repeats = space.sample(3, seed=0, unique=False)
    assert len(repeats) == 3 and all(space.from_values(r) == r for r in repeats)


def test_macro_from_full_flat_values_keeps_only_the_blocks_used():
    mc = get_space("macro")
    dims = mc.dimensions()
    assert len(dims) == 3 * (2 + 2 * max(mc.blocks))
    rng = np.random.default_rng(0)
    for _ in range(20):
        values = {k: v[int(rng.integers(len(v)))] for k, v in dims.items()}
        arch = mc.from_values(values)
        assert set(arch) <= set(dims) and all(arch[k] == values[k] for k in arch)
        assert sum(k.endswith("_kernel") for k in arch) == sum(arch[f"s{s}_blocks"] for s in (1, 2, 3))
        assert mc.parse_id(mc.arch_id(arch)) == arch
    with pytest.raises(ConfigError, match="does not use"):
        mc.validate({**mc.arch_at(0), "s1_b3_kernel": 5})
    with pytest.raises(ConfigError, match="lacks"):
        mc.validate({k: v for k, v in mc.default_arch().items() if k != "s2_b2_expand"})
    with pytest.raises(ConfigError):
        mc.parse_id("24:k3e6/48:k3e6")


def test_macro_samples_uniformly_over_architectures_and_suggests_through_optuna():
    mc = get_space("macro")
    archs = mc.sample(300, seed=1)
    blocks = collections.Counter(a[f"s{s}_blocks"] for a in archs for s in (1, 2, 3))
    # uniform over architectures: a stage has 3 blocks in 216 of its 258 block settings
    assert blocks[3] / 900 == pytest.approx(216 / 258, abs=0.06)
    assert blocks[1] > 0 and blocks[2] > 0

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(15):
        trial = study.ask()
        arch = mc.suggest(trial)
        assert trial.params == arch and mc.validate(arch) == arch
        seen.add(mc.arch_id(arch))
        study.tell(trial, 0.0)
    assert len(seen) == 15


def test_all_none_nb201_cell_builds_and_trains(digits):
    arch = NB201_SMALL.parse_id(ALL_NONE)
    model = NB201_SMALL.build_seeded(arch, digits.image_shape, digits.num_classes, seed=0)
    log = train(model, digits.x_train[:128], digits.y_train[:128], TrainConfig(steps=5, batch_size=32, seed=0))
    assert log.steps == 5
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert 0.0 <= evaluate(model, digits.x_test, digits.y_test) <= 1.0
    model.eval()
    with torch.no_grad():
        out = model(digits.x_test[:4])
    assert torch.isfinite(out).all() and torch.allclose(out, out[:1].expand_as(out))  # constant output


def test_small_nb201_network_learns_digits(digits):
    model = NB201_SMALL.build_seeded(NB201_SMALL.default_arch(), digits.image_shape, digits.num_classes, seed=0)
    acc, _ = fit_evaluate(model, digits.x_train[:400], digits.y_train[:400], digits.x_test, digits.y_test,
                          TrainConfig(steps=30, batch_size=64, lr=0.05, seed=0))
    assert acc > 0.5  # chance is 0.1


def test_backbones_space_builds_torchvision_models_that_take_their_weight_files():
    import torchvision

    from nasdistill.errors import ConfigError

    space = get_space("backbones")
    assert space.size() == len(space.choices["model"]) and space.parse_id("resnet18") == {"model": "resnet18"}
    assert [space.arch_id(a) for a in space.enumerate()] == space.choices["model"]
    net = space.build({"model": "resnet18"}, (3, 32, 32), 10)
    net.load_state_dict(torchvision.models.resnet18(num_classes=10).state_dict())  # torchvision's own keys
    gray = space.build({"model": "mobilenet_v3_small"}, (1, 28, 28), 7).eval()
    assert gray(torch.randn(2, 1, 28, 28)).shape == (2, 7)
    with pytest.raises(ConfigError, match="unknown backbone"):
        space.parse_id("vgg99")
    with pytest.raises(ConfigError, match="at least 17 px"):
        space.build({"model": "resnet18"}, (1, 8, 8), 10)
