"""``dd``: dataset distillation by back-propagating through unrolled training (Wang et al. 2018)."""

from __future__ import annotations

import statistics

import pytest
import torch

from nasdistill.distill import get_method
from nasdistill.errors import ConfigError

TINY_NET = "D1-W32-relu-instancenorm-avgpool"
#: Small settings on digits (8x8): 4 unrolled steps, each on one image per class.
SMALL = dict(ipc=2, inner_steps=4, inner_epochs=1, batch_real=64, lr_decay_every=None, net=TINY_NET, init="real")


@pytest.mark.slow
def test_dd_beats_random_on_mnist(beats_random):
    """DD at 1 image per class vs a random image per class (yardstick: DC's default ConvNet trained
    150 steps with DSA). Width-32 networks, a 5-step unroll and 30 outer steps fit a CPU test budget."""
    beats_random("dd", margin=0.05, iterations=30, init="real", inner_steps=5, inner_epochs=1, batch_real=128,
                 lr_img=0.03, lr_inner=0.1, lr_decay_every=None, net="D3-W32-relu-instancenorm-avgpool")


def test_dd_learns_positive_step_sizes_and_lowers_the_outer_loss(digits):
    d = get_method("dd", iterations=40, lr_img=0.05, seed=0, **SMALL).fit(digits, progress=False)
    h = d.history_
    assert len(h) == 40 and statistics.mean(h[-10:]) < statistics.mean(h[:10]) - 0.05
    lrs = d.learned_lrs_
    assert lrs.shape == (4,) and bool((lrs > 0).all())
    assert float((lrs - 0.02).abs().min()) > 1e-3  # every step size moved away from its initial value
    assert d.images_.shape == (20, 1, 8, 8) and torch.bincount(d.labels_).tolist() == [2] * 10
    proxy = d.to_proxy()
    assert proxy.meta["learned_lr"] == pytest.approx(lrs.tolist())
    assert proxy.meta["settings"]["inner_steps"] == 4 and not proxy.soft


def test_dd_per_step_batches_follow_the_paper():
    """ipc 10 with 10 steps: step k trains on image k of every class; ipc 1: every step on the whole set."""
    d = get_method("dd", ipc=10, inner_steps=10)
    groups = d._step_groups(num_classes=3)
    assert [g.tolist() for g in groups[:2]] == [[0, 10, 20], [1, 11, 21]]
    d1 = get_method("dd", ipc=1, inner_steps=10)
    assert all(g.tolist() == [0, 1, 2] for g in d1._step_groups(num_classes=3))
    d_all = get_method("dd", ipc=4, inner_steps=2, split_steps=False)
    assert all(len(g) == 12 for g in d_all._step_groups(num_classes=3))


def test_dd_interrupted_run_resumes_to_the_same_result(digits, tmp_path, monkeypatch):
    """The bilevel state (pixels, learned step sizes, Adam moments) survives a crash: resuming
    from the checkpoint gives exactly the uninterrupted run."""
    kw = dict(SMALL, iterations=12, lr_img=0.05, augment="dsa", seed=4, checkpoint_every=5)
    reference = get_method("dd", **kw).fit(digits, progress=False)

    from nasdistill.distill.methods.dd import DatasetDistillation

    real_step = DatasetDistillation._step

    def crash_at_8(self, t, dataset, g):
        if t == 8:
            raise KeyboardInterrupt
        return real_step(self, t, dataset, g)

    monkeypatch.setattr(DatasetDistillation, "_step", crash_at_8)
    with pytest.raises(KeyboardInterrupt):
        get_method("dd", **kw).fit(digits, checkpoint_dir=tmp_path, progress=False)
    assert len(list(tmp_path.glob("dd-*.ckpt"))) == 1
    monkeypatch.setattr(DatasetDistillation, "_step", real_step)
    resumed = get_method("dd", **kw).fit(digits, checkpoint_dir=tmp_path, progress=False)
    assert resumed.resumed_from_ == 5
    assert resumed.history_ == pytest.approx(reference.history_)
    assert torch.allclose(resumed.images_, reference.images_, atol=1e-6)
    assert torch.allclose(resumed.learned_lrs_, reference.learned_lrs_, atol=1e-7)


def test_dd_rejects_settings_that_cannot_work(digits):
    with pytest.raises(ConfigError, match="inner_steps >= 1"):
        get_method("dd", ipc=1, inner_steps=0).fit(digits)
    with pytest.raises(ConfigError, match="lr_inner must be > 0, got 0.0"):
        get_method("dd", ipc=1, lr_inner=0.0).fit(digits)
