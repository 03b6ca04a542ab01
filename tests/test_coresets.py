"""Coreset baselines (herding, k-center): real images selected in a trained network's feature space."""

from __future__ import annotations

import pytest
import torch

from nasdistill.distill import get_method
from nasdistill.errors import ConfigError

DIGITS_NET = "D2-W32-relu-instancenorm-avgpool"
MNIST_NET = "D3-W32-relu-instancenorm-avgpool"
METHODS = ("herding", "kcenter")


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_coreset_beats_random_on_mnist(beats_random, method):
    """At 1 image per class both keep the image nearest the class mean in the feature space of a
    width-32 ConvNet trained for 3 epochs: a typical digit, which teaches far more than a random one."""
    beats_random(method, margin=0.1, feature_epochs=3, net=MNIST_NET)


@pytest.fixture(scope="module")
def digits_features(digits):
    """Features of the digits training images under the seed-0 feature network, and that setting."""
    kw = dict(feature_epochs=5, net=DIGITS_NET, seed=0)
    return get_method("herding", **kw).features(digits), kw


@pytest.mark.parametrize("method", METHODS)
def test_selection_is_real_balanced_and_seeded(digits, digits_features, method):
    feats, kw = digits_features
    d = get_method(method, ipc=3, **kw).fit(digits)
    assert torch.bincount(d.labels_).tolist() == [3] * 10
    assert len(set(d.indices_.tolist())) == 30
    assert torch.equal(d.images_, digits.x_train[d.indices_])
    assert torch.equal(d.labels_, digits.y_train[d.indices_])
    # the selection is the method's rule applied, class by class, to the seeded features
    expected = torch.cat([idx[d.select(feats[idx].double(), 3)] for idx in digits.indices_by_class()])
    assert torch.equal(d.indices_, expected)
    assert torch.equal(get_method(method, ipc=3, **kw).fit(digits).indices_, d.indices_)
    assert not torch.equal(get_method(method, ipc=3, **{**kw, "seed": 1}).fit(digits).indices_, d.indices_)
    # a subsample for the feature network is drawn with the seed too
    sub = get_method(method, ipc=3, feature_samples_per_class=40, **kw).fit(digits)
    assert torch.bincount(sub.labels_).tolist() == [3] * 10


def _random_picks(n: int, k: int, seed: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k]


def test_herding_tracks_the_class_mean(digits, digits_features):
    """The mean feature of herding's picks is nearer the class mean than that of random picks."""
    feats, _ = digits_features
    from nasdistill.distill.methods.herding import Herding

    def gap(f, picks):
        return float((f[picks].mean(0) - f.mean(0)).norm())

    for idx in digits.indices_by_class():
        f = feats[idx].double()
        herd = gap(f, Herding.select(f, 5))
        rand = min(gap(f, _random_picks(len(f), 5, s)) for s in range(20))
        assert herd < rand, (herd, rand)


def test_kcenter_spreads_its_picks(digits, digits_features):
    """k-center's picks are farther apart (minimum pairwise feature distance) than herding's or random ones."""
    feats, _ = digits_features
    from nasdistill.distill.methods.herding import Herding
    from nasdistill.distill.methods.kcenter import KCenter

    def spread(f, picks):
        d = torch.cdist(f[picks], f[picks])
        return float(d[~torch.eye(len(picks), dtype=torch.bool)].min())

    for idx in digits.indices_by_class():
        f = feats[idx].double()
        kc = spread(f, KCenter.select(f, 5))
        assert kc >= spread(f, Herding.select(f, 5))
        assert kc >= max(spread(f, _random_picks(len(f), 5, s)) for s in range(20))


@pytest.mark.parametrize("setting", [{"feature_epochs": 0}, {"feature_samples_per_class": 0},
                                     {"net": "D9-W32-relu-instancenorm-avgpool"}])
def test_settings_that_cannot_work_are_rejected(digits, setting):
    for method in METHODS:
        with pytest.raises(ConfigError):
            get_method(method, ipc=2, **setting).fit(digits)
