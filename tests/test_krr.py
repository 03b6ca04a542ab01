"""``krr``: kernel ridge regression on the features of a trained model pool (KIP / FRePo)."""

from __future__ import annotations

import statistics

import pytest
import torch

from nasdistill.distill import get_method
from nasdistill.distill.methods.krr import LABEL_INIT_CONFIDENCE, kernel_ridge_predict
from nasdistill.errors import ConfigError

TINY_NET = "D1-W32-relu-instancenorm-avgpool"
SMALL = dict(ipc=2, batch_real=64, pool_size=3, reset_every=6, lr_img=0.03, lr_label=0.03, net=TINY_NET)


@pytest.mark.slow
def test_krr_beats_random_on_mnist(beats_random):
    """KRR at 1 image per class vs a random image per class (yardstick: DC's default ConvNet).
    Width-32 pool networks and 40 outer steps fit a CPU test budget."""
    beats_random("krr", margin=0.1, iterations=40, batch_real=256, lr_img=0.03, lr_label=0.03,
                 net="D3-W32-relu-instancenorm-avgpool")


def test_ridge_solve_matches_a_hand_computed_case():
    # K_ss = diag(1, 4), tr/N = 2.5; reg 0.4 adds 1.0: K = diag(2, 5); K_ts = [1, 2]
    # pred = 1 * (1/2) + 2 * (-1/5) = 0.1
    feat_s = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    y_s = torch.tensor([[1.0], [-1.0]])
    pred = kernel_ridge_predict(feat_s, y_s, torch.tensor([[1.0, 1.0]]), reg=0.4)
    assert pred.item() == pytest.approx(0.1, abs=1e-6)


def test_ridge_interpolates_the_synthetic_set_as_reg_vanishes():
    g = torch.Generator().manual_seed(0)
    feat_s, y_s = torch.randn(6, 20, generator=g), torch.randn(6, 3, generator=g)
    assert torch.allclose(kernel_ridge_predict(feat_s, y_s, feat_s, reg=1e-9), y_s, atol=1e-4)
    # a large ridge shrinks the predictions towards zero
    assert kernel_ridge_predict(feat_s, y_s, feat_s, reg=1e3).abs().max() < 0.01 * y_s.abs().max()


def test_krr_learns_valid_soft_labels_and_lowers_its_loss(digits):
    d = get_method("krr", iterations=40, seed=0, **SMALL).fit(digits, progress=False)
    y = d.labels_
    assert y.dtype == torch.float32 and y.shape == (20, 10)
    assert bool((y >= 0).all()) and torch.allclose(y.sum(1), torch.ones(20), atol=1e-5)
    classes = torch.arange(10).repeat_interleave(2)
    assert torch.equal(y.argmax(1), classes)
    assert float((y[torch.arange(20), classes] - LABEL_INIT_CONFIDENCE).abs().max()) > 1e-3  # labels were learned
    h = d.history_
    assert statistics.mean(h[-10:]) < statistics.mean(h[:10])
    assert d.to_proxy().soft

    hard = get_method("krr", iterations=3, learn_labels=False, seed=0, **SMALL).fit(digits, progress=False)
    assert hard.labels_.dtype == torch.int64 and torch.equal(hard.labels_, classes)


def test_krr_pool_is_trained_online_and_reset(digits):
    d = get_method("krr", iterations=30, seed=1, **SMALL)
    d.fit(digits, progress=False)
    assert int(d.generations.sum()) > 0  # some pool networks were re-initialised
    assert bool((d.ages <= d.reset_every).all())
    for i in range(d.pool_size):  # a network with online steps behind it differs from its initialisation
        fresh = d.nets.build(d.seed, ("pool", i, int(d.generations[i])), digits, "cpu")
        same = all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), d.pool[i].state_dict().values()))
        assert same == (int(d.ages[i]) == 0)


def test_krr_interrupted_run_resumes_to_the_same_result(digits, tmp_path, monkeypatch):
    """Pool networks, their optimisers, ages and the learned labels are all checkpointed."""
    # pool networks of architectures drawn from the space: the restore must rebuild them first
    kw = dict(SMALL, iterations=10, pool_size=2, reset_every=4, seed=3, checkpoint_every=4, matching_space="convnet")
    kw.pop("net")
    reference = get_method("krr", **kw).fit(digits, progress=False)

    from nasdistill.distill.methods.krr import KernelRidgeRegression

    real_step = KernelRidgeRegression._step

    def crash_at_9(self, t, dataset, g):
        if t == 9:
            raise KeyboardInterrupt
        return real_step(self, t, dataset, g)

    monkeypatch.setattr(KernelRidgeRegression, "_step", crash_at_9)
    with pytest.raises(KeyboardInterrupt):
        get_method("krr", **kw).fit(digits, checkpoint_dir=tmp_path, progress=False)
    monkeypatch.setattr(KernelRidgeRegression, "_step", real_step)
    resumed = get_method("krr", **kw).fit(digits, checkpoint_dir=tmp_path, progress=False)
    assert resumed.resumed_from_ == 8
    assert int(resumed.generations.sum()) > 0  # a network was re-drawn before the checkpoint
    assert resumed.history_ == pytest.approx(reference.history_, rel=1e-5)
    assert torch.allclose(resumed.images_, reference.images_, atol=1e-5)
    assert torch.allclose(resumed.labels_, reference.labels_, atol=1e-6)


def test_krr_rejects_settings_that_cannot_work(digits):
    with pytest.raises(ConfigError, match="positive ridge"):
        get_method("krr", ipc=1, reg=0.0).fit(digits)
    with pytest.raises(ConfigError, match="unknown krr loss"):
        get_method("krr", ipc=1, loss="hinge").fit(digits)
    with pytest.raises(ConfigError, match="pool_size must be >= 1, got 0"):
        get_method("krr", ipc=1, pool_size=0).fit(digits)
