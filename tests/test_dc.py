"""``dc`` (gradient matching) and ``dsa`` (gradient matching through siamese augmentation), on real data."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nasdistill._seed import generator
from nasdistill.distill import get_method, method_class
from nasdistill.distill.methods.dc import (PAPER_LOOPS, DifferentiableSiameseAugmentation, GradientMatching,
                                   gradient_distance, layer_distance, paper_loops)
from nasdistill.errors import ConfigError
from nasdistill.spaces import get_space

SMALL_NET = "D3-W32-relu-instancenorm-avgpool"
TINY_NET = "D1-W32-relu-instancenorm-avgpool"
#: A CPU test budget: 20 matching networks, 16 real images a class, a W32 matching ConvNet, real
#: init. The image lr is 10x the paper's 0.1, which assumes 1000 iterations (at 0.1 and 30
#: iterations dc still beats random, by about 0.13 instead of 0.3).
BEATS_RANDOM = dict(iterations=20, batch_real=16, lr_img=1.0, init="real", net=SMALL_NET)


def _gradients(net, x, y):
    return torch.autograd.grad(F.cross_entropy(net(x), y), list(net.parameters()))


@pytest.mark.slow
def test_dc_beats_random_on_mnist(beats_random):
    beats_random("dc", margin=0.1, **BEATS_RANDOM)


@pytest.mark.slow
def test_dsa_beats_random_on_mnist(beats_random):
    beats_random("dsa", margin=0.1, **BEATS_RANDOM)


def test_gradient_distance_is_zero_only_for_matching_gradients(digits):
    space = get_space("convnet")
    net = space.build_seeded(space.parse_id("D2-W32-relu-layernorm-avgpool"), digits.image_shape, 10, 0)
    by_class = digits.indices_by_class()
    a = _gradients(net, digits.x_train[by_class[3][:20]], torch.full((20,), 3))
    b = _gradients(net, digits.x_train[by_class[3][20:40]], torch.full((20,), 3))
    assert float(gradient_distance(a, a)) == pytest.approx(0.0, abs=1e-4)
    # per output node the distance ignores scale: a gradient scaled by 3 still matches
    assert float(gradient_distance([3 * g for g in a], a)) == pytest.approx(0.0, abs=1e-4)
    assert float(gradient_distance(a, b)) > 0.01
    # opposite gradients: 2 per output node of every matrix/conv/layernorm weight; biases are not matched
    nodes = sum(g.shape[0] for g in a if g.ndim > 1)
    assert float(gradient_distance([-g for g in a], a)) == pytest.approx(2 * nodes, rel=1e-4)
    bias = a[1]
    assert bias.ndim == 1 and float(layer_distance(-bias, bias)) == 0.0
    # a conv kernel is compared node by node: making one output channel opposite costs 2
    w = a[0].clone()
    w[0] = -w[0]
    assert float(layer_distance(w, a[0])) == pytest.approx(2.0, rel=1e-4)


def test_paper_loops_and_defaults():
    assert paper_loops(1) == (1, 1) and paper_loops(10) == (10, 50) and paper_loops(50) == (50, 10)
    assert set(PAPER_LOOPS) >= {1, 10, 50}
    assert paper_loops(100) == (50, 10) and paper_loops(6) == (10, 50)
    assert get_method("dc", ipc=10).loops() == (10, 50)
    assert get_method("dc", ipc=10, loop_scale=0.2).loops() == (2, 10)
    assert get_method("dc", ipc=1, loop_scale=0.2).loops() == (1, 1)
    assert get_method("dc", ipc=10, outer_loop=3, inner_loop=4, loop_scale=0.2).loops() == (3, 4)
    dc, dsa = get_method("dc"), get_method("dsa")
    assert isinstance(dc, GradientMatching) and isinstance(dsa, DifferentiableSiameseAugmentation)
    assert isinstance(dsa, GradientMatching)
    assert dc.augment is None and dsa.augment == "dsa" and dsa.init == "real"
    for d in (dc, dsa):
        assert (d.iterations, d.lr_img, d.momentum, d.batch_real, d.lr_net) == (1000, 0.1, 0.5, 256, 0.01)
    for name in ("dc", "dsa"):
        assert set(method_class(name).cpu_budget) <= set(method_class(name)._param_names())


@pytest.mark.parametrize("bad, match", [
    (dict(outer_loop=0), "dc's outer_loop must be >= 1, got 0"),
    (dict(inner_loop=-1), "dc's inner_loop must be >= 0, got -1"),
    (dict(lr_img=0.0), "dc's lr_img must be > 0, got 0.0"),
    (dict(batch_real=0), "dc's batch_real must be >= 1, got 0"),
    (dict(loop_scale=0), "dc's loop_scale must be > 0, got 0"),
    (dict(augment="crop_blur"), "unknown augmentation 'blur'"),
])
def test_settings_that_cannot_work_are_config_errors(digits, bad, match):
    with pytest.raises(ConfigError, match=match):
        get_method("dc", ipc=1, iterations=1, net=TINY_NET, **bad).fit(digits, progress=False)


def test_same_seed_same_result_and_resume_equals_uninterrupted(digits, tmp_path, monkeypatch):
    """Two matching steps and network training between them (outer_loop 2, inner_loop 2), DSA on."""
    kw = dict(ipc=2, iterations=4, batch_real=8, outer_loop=2, inner_loop=2, net=TINY_NET, checkpoint_every=2)
    a = get_method("dsa", seed=3, **kw).fit(digits, progress=False)
    b = get_method("dsa", seed=3, **kw).fit(digits, progress=False)
    c = get_method("dsa", seed=4, **kw).fit(digits, progress=False)
    assert torch.equal(a.images_, b.images_) and a.history_ == b.history_
    assert not torch.equal(a.images_, c.images_)
    assert a.images_.shape == (20, 1, 8, 8) and torch.bincount(a.labels_).tolist() == [2] * 10
    assert not torch.equal(a.images_, digits.x_train[a._select_real(digits)])  # the images moved

    real_step = DifferentiableSiameseAugmentation._step

    def crash_at_3(self, t, dataset, g):
        if t == 3:
            raise KeyboardInterrupt
        return real_step(self, t, dataset, g)

    monkeypatch.setattr(DifferentiableSiameseAugmentation, "_step", crash_at_3)
    with pytest.raises(KeyboardInterrupt):
        get_method("dsa", seed=3, **kw).fit(digits, checkpoint_dir=tmp_path, progress=False)
    monkeypatch.setattr(DifferentiableSiameseAugmentation, "_step", real_step)
    resumed = get_method("dsa", seed=3, **kw).fit(digits, checkpoint_dir=tmp_path, progress=False)
    assert resumed.resumed_from_ == 2
    assert resumed.history_ == pytest.approx(a.history_)
    assert torch.allclose(resumed.images_, a.images_, atol=1e-6)


def test_matching_space_draws_different_networks_each_iteration(digits, monkeypatch):
    from nasdistill.distill import NetworkSampler

    built: list[str] = []
    real_build = NetworkSampler.build

    def spy(self, seed, t, dataset, device):
        built.append(get_space("convnet").arch_id(self.arch_at(seed, t)))
        return real_build(self, seed, t, dataset, device)

    monkeypatch.setattr(NetworkSampler, "build", spy)
    d = get_method("dc", ipc=1, iterations=3, batch_real=8, init="real", matching_space="convnet", seed=0)
    d.fit(digits, progress=False)
    assert len(built) == 3 and len(set(built)) > 1
    assert len(d.history_) == 3 and all(h > 0 for h in d.history_)


def test_batchnorm_statistics_come_from_a_real_batch(digits):
    """BatchNorm networks: before matching, every BN layer holds the exact statistics of a real batch
    (16 images a class) and is frozen, so one synthetic image per class still gives a usable gradient."""
    d = get_method("dc", ipc=1, iterations=3, batch_real=8, outer_loop=2, inner_loop=1, init="real",
                   net="D2-W32-relu-batchnorm-avgpool", seed=0)
    d.fit(digits, progress=False)  # trains BN networks end to end
    assert len(d.history_) == 3
    net = d.nets.build(0, 0, digits, "cpu")
    d._freeze_batchnorm(net, digits, generator(7))
    g = generator(7)
    real = torch.cat([d._real(digits, c, 16, g) for c in range(10)])
    conv, bn = net.blocks[0][0], net.blocks[0][1]
    assert isinstance(bn, torch.nn.BatchNorm2d) and not bn.training
    with torch.no_grad():
        h = conv(real)
    assert torch.allclose(bn.running_mean, h.mean((0, 2, 3)), atol=1e-5)
    assert torch.allclose(bn.running_var, h.var((0, 2, 3)), rtol=1e-3)
    assert bn.momentum == 0.1  # restored after freezing
