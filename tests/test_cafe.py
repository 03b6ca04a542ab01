"""CAFE: layer-wise feature alignment + discrimination with a network kept and trained on the proxy."""

from __future__ import annotations

import shutil
import statistics

import pytest
import torch

from nasdistill.distill import get_method
from nasdistill.distill.methods.cafe import CAFE
from nasdistill.errors import ConfigError

TINY_NET = "D1-W32-relu-instancenorm-avgpool"


@pytest.mark.slow
def test_cafe_beats_random_on_mnist(beats_random):
    """CAFE at 1 image per class vs a random image per class (yardstick: DC's default ConvNet).
    The matching networks are width-32 ConvNets, trained 5 steps on the proxy after each outer step
    and re-initialised every 10, to fit a CPU test budget."""
    beats_random("cafe", margin=0.2, iterations=40, batch_real=32, inner_steps=5,
                 net="D3-W32-relu-instancenorm-avgpool")


def test_cafe_loss_decreases_and_images_move(digits):
    d = get_method("cafe", ipc=2, iterations=40, batch_real=32, inner_steps=5, reinit_every=10, net=TINY_NET,
                   seed=0).fit(digits, progress=False)
    h = d.history_
    assert len(h) == 40 and statistics.mean(h[-10:]) < 0.5 * statistics.mean(h[:10])
    assert d.images_.shape == (20, 1, 8, 8) and torch.bincount(d.labels_).tolist() == [2] * 10
    start = get_method("cafe", ipc=2, iterations=0, net=TINY_NET, seed=0).fit(digits, progress=False)
    assert torch.equal(start.images_, digits.x_train[start._select_real(digits)])
    assert not torch.allclose(d.images_, start.images_)


@pytest.mark.parametrize("setting", [{"reinit_every": 0}, {"batch_real": 0}, {"inner_steps": -1},
                                     {"temperature": 0.0}, {"lambda_discrimination": -1.0}, {"lr_net": 0.0},
                                     {"augment": "blur"}, {"net": "D9-W32-relu-instancenorm-avgpool"}])
def test_settings_that_cannot_work_are_rejected(digits, setting):
    with pytest.raises(ConfigError):
        get_method("cafe", ipc=1, iterations=2, **setting).fit(digits, progress=False)


def test_resume_restores_the_kept_network(digits, tmp_path, monkeypatch):
    """A run interrupted mid-round resumes to exactly the uninterrupted result, because the kept
    network (its architecture drawn from the space, its trained weights) and its optimiser are
    checkpointed; resuming with a freshly initialised network of that round would diverge."""
    kw = dict(ipc=2, iterations=12, batch_real=16, inner_steps=3, reinit_every=4, momentum_net=0.9,
              matching_space="convnet", seed=4, checkpoint_every=5)
    reference = get_method("cafe", **kw).fit(digits, progress=False)

    real_step = CAFE._step

    def crash_at_8(self, t, dataset, g):
        if t == 8:
            raise KeyboardInterrupt
        return real_step(self, t, dataset, g)

    monkeypatch.setattr(CAFE, "_step", crash_at_8)
    with pytest.raises(KeyboardInterrupt):
        get_method("cafe", **kw).fit(digits, checkpoint_dir=tmp_path / "run", progress=False)
    monkeypatch.setattr(CAFE, "_step", real_step)
    shutil.copytree(tmp_path / "run", tmp_path / "control")

    resumed = get_method("cafe", **kw).fit(digits, checkpoint_dir=tmp_path / "run", progress=False)
    assert resumed.resumed_from_ == 5
    assert resumed.history_ == pytest.approx(reference.history_)
    assert torch.allclose(resumed.images_, reference.images_, atol=1e-6)

    monkeypatch.setattr(CAFE, "_extra_state", lambda self: {"opt": self.opt})  # forget the network
    control = get_method("cafe", **kw).fit(digits, checkpoint_dir=tmp_path / "control", progress=False)
    assert control.resumed_from_ == 5 and control.history_[:5] == pytest.approx(reference.history_[:5])
    assert control.history_[5] != pytest.approx(reference.history_[5])


def test_matching_space_draws_a_network_per_round(digits):
    d = get_method("cafe", ipc=1, iterations=6, batch_real=8, inner_steps=2, reinit_every=2,
                   matching_space="convnet", seed=0)
    d.fit(digits, progress=False)
    assert len(d.history_) == 6 and d.kept.round == 2
    space = d.nets.matching_space
    assert len({space.arch_id(d.nets.arch_at(0, r)) for r in range(3)}) > 1
    last = space.build(d.nets.arch_at(0, 2), digits.image_shape, digits.num_classes)
    assert [p.shape for p in d.kept.model.parameters()] == [p.shape for p in last.parameters()]
