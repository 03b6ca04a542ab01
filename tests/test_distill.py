"""Distillation methods, the proxy store and resumable checkpoints, on real data."""

from __future__ import annotations

import statistics

import pytest
import torch

from nasdistill.distill import ProxyStore, distill, get_method, method_names
from nasdistill.errors import ConfigError, UnknownNameError
from nasdistill.spaces import get_space

TINY_NET = "D1-W32-relu-instancenorm-avgpool"


def test_builtin_methods_are_found_by_name():
    assert {"random", "dm"} <= set(method_names())
    with pytest.raises(UnknownNameError, match="did you mean 'dm'"):
        get_method("dmm")
    with pytest.raises(ConfigError, match="no setting 'lr'"):
        get_method("dm", lr=0.1)


def test_random_subset_is_class_balanced_real_and_seeded(digits):
    r = get_method("random", ipc=3, seed=1).fit(digits)
    assert torch.bincount(r.labels_).tolist() == [3] * 10
    assert torch.equal(r.images_, digits.x_train[r.indices_])
    assert torch.equal(r.labels_, digits.y_train[r.indices_])
    assert torch.equal(get_method("random", ipc=3, seed=1).fit(digits).indices_, r.indices_)
    assert not torch.equal(get_method("random", ipc=3, seed=2).fit(digits).indices_, r.indices_)


def test_ipc_above_smallest_class_is_rejected(digits):
    smallest = min(digits.class_counts())
    with pytest.raises(ConfigError, match=f"use --ipc {smallest} or less"):
        get_method("random", ipc=smallest + 1).fit(digits)


@pytest.mark.parametrize("method, setting, bad, message", [
    ("dc", "batch_real", 0, "dc's batch_real must be >= 1, got 0"),
    ("dc", "inner_loop", True, "dc's inner_loop must be an integer or none, got True"),
    ("dc", "lr_img", float("nan"), "dc's lr_img must be a finite number, got nan"),
    ("cafe", "inner_steps", -1, "cafe's inner_steps must be >= 0, got -1"),
    ("krr", "online_lr", 0.0, "krr's online_lr must be > 0, got 0.0"),
    ("mtt", "batch_syn", 2.5, "mtt's batch_syn must be an integer or none, got 2.5"),
    ("herding", "feature_epochs", "3", "herding's feature_epochs must be an integer, got '3'"),
])
def test_bad_settings_fail_before_any_work_naming_setting_and_fix(digits, method, setting, bad, message):
    m = get_method(method, ipc=1, **{setting: bad})
    with pytest.raises(ConfigError) as info:
        m.fit(digits)
    assert str(info.value).startswith(message) and f"pass e.g. {setting}=" in str(info.value)
    assert not hasattr(m, "images_")


def test_optional_settings_accept_none(digits):
    for method, setting in [("dc", "outer_loop"), ("mtt", "batch_syn"), ("kcenter", "feature_samples_per_class")]:
        get_method(method, ipc=1, **{setting: None}).check(digits)


@pytest.mark.slow
def test_dm_beats_random_on_mnist(beats_random):
    """DM at 1 image per class vs a random image per class (yardstick: DC's default ConvNet).
    The matching networks are width-32 ConvNets to fit a CPU test budget."""
    beats_random("dm", margin=0.1, iterations=60, batch_real=32, net="D3-W32-relu-instancenorm-avgpool")


def test_dm_loss_decreases_and_images_move(digits):
    d = get_method("dm", ipc=2, iterations=40, batch_real=32, net=TINY_NET, seed=0).fit(digits, progress=False)
    h = d.history_
    assert len(h) == 40 and statistics.mean(h[-10:]) < statistics.mean(h[:10])
    assert d.images_.shape == (20, 1, 8, 8) and torch.bincount(d.labels_).tolist() == [2] * 10


def test_store_reuses_and_keys_on_settings(digits, tmp_path):
    store = ProxyStore(tmp_path / "store")
    messages: list[str] = []
    kw = dict(ipc=2, iterations=5, batch_real=16, net=TINY_NET, store=store, log=messages.append)
    first = distill(digits, "dm", **kw)
    assert not first.meta["reused"] and len(store.keys()) == 1
    assert (tmp_path / "store" / f"{first.key}.png").is_file()
    second = distill(digits, "dm", **kw)
    assert second.meta["reused"] and "reusing stored proxy" in messages[-1]
    assert torch.equal(first.images, second.images)
    third = distill(digits, "dm", **{**kw, "iterations": 6})
    assert third.key != first.key and not third.meta["reused"]
    # device is a runtime setting: it does not change the key
    assert get_method("dm", device="cpu").key(digits) == get_method("dm", device="cuda").key(digits)


def test_interrupted_distillation_resumes_from_checkpoint(digits, tmp_path, monkeypatch):
    kw = dict(ipc=2, iterations=12, batch_real=16, net=TINY_NET, seed=4, checkpoint_every=5)
    reference = get_method("dm", **kw).fit(digits, progress=False)

    from nasdistill.distill.methods.dm import DistributionMatching

    real_step = DistributionMatching._step

    def crash_at_8(self, t, dataset, g):
        if t == 8:
            raise KeyboardInterrupt
        return real_step(self, t, dataset, g)

    monkeypatch.setattr(DistributionMatching, "_step", crash_at_8)
    with pytest.raises(KeyboardInterrupt):
        get_method("dm", **kw).fit(digits, checkpoint_dir=tmp_path, progress=False)
    assert len(list(tmp_path.glob("dm-*.ckpt"))) == 1
    monkeypatch.setattr(DistributionMatching, "_step", real_step)
    resumed = get_method("dm", **kw).fit(digits, checkpoint_dir=tmp_path, progress=False)
    assert resumed.resumed_from_ == 5
    assert resumed.history_ == pytest.approx(reference.history_)
    assert torch.allclose(resumed.images_, reference.images_, atol=1e-6)


def test_matching_space_draws_different_networks(digits):
    from nasdistill.distill import NetworkSampler

    sampler = NetworkSampler("convnet", None, "convnet")
    archs = [get_space("convnet").arch_id(a) for a in sampler.iter_archs(seed=0, n=5)]
    assert len(set(archs)) > 1
    d = get_method("dm", ipc=1, iterations=3, batch_real=8, matching_space="convnet", seed=0).fit(digits, progress=False)
    assert len(d.history_) == 3
