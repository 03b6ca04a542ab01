"""Relabelling with a teacher: soft labels that teach more than the hard ones, stored weights, clear errors."""

from __future__ import annotations

import pytest
import torch

from nasdistill.distill import get_method
from nasdistill.distill.relabel import Teacher, relabel
from nasdistill.errors import ConfigError, ProxyError
from nasdistill.training import TrainConfig
from nasdistill.training.loop import resolve_precision

TEACHER_TRAIN = TrainConfig(epochs=3, batch_size=128, schedule="cosine", precision=resolve_precision("auto"))


@pytest.fixture(scope="module")
def teacher(mnist_small, tmp_path_factory):
    return Teacher(arch="D3-W32-relu-instancenorm-avgpool", train=TEACHER_TRAIN,
                   store=tmp_path_factory.mktemp("teachers")).fit(mnist_small)


@pytest.mark.slow
@pytest.mark.shared_data
def test_soft_labels_beat_hard_labels_on_mnist(mnist_small, teacher, score_proxy):
    """The yardstick network trained on a random subset's images learns more from the teacher's
    soft labels than from the images' own labels, on each of two seeds' subsets."""
    assert teacher.test_acc_ > 0.8
    gains = []
    for seed in (0, 1):
        proxy = get_method("random", ipc=1, seed=seed).fit(mnist_small, progress=False).to_proxy()
        soft = relabel(proxy, teacher)
        assert soft.soft and soft.labels.shape == (10, 10)
        assert torch.allclose(soft.labels.sum(1), torch.ones(10), atol=1e-5)
        assert torch.equal(soft.images, proxy.images) and soft.key != proxy.key
        gains.append(score_proxy(soft.images, soft.labels, seed) - score_proxy(proxy.images, proxy.labels, seed))
    assert min(gains) > 0 and sum(gains) / 2 > 0.02, gains


@pytest.mark.slow
@pytest.mark.shared_data
def test_teacher_is_stored_and_reloaded(mnist_small, teacher):
    again = Teacher(arch="D3-W32-relu-instancenorm-avgpool", train=TEACHER_TRAIN, store=teacher.store)
    again.fit(mnist_small)
    assert again.reused_ and again.key_ == teacher.key_ and again.test_acc_ == teacher.test_acc_
    x = mnist_small.x_test[:64]
    assert torch.allclose(again.model_(x), teacher.model_(x))


def test_temperature_and_untrained_teacher_are_refused(digits):
    proxy = get_method("random", ipc=1).fit(digits, progress=False).to_proxy()
    with pytest.raises(ConfigError, match="temperature"):
        relabel(proxy, Teacher(), temperature=0)
    with pytest.raises(ConfigError, match="not trained"):
        relabel(proxy, Teacher())


@pytest.mark.slow
@pytest.mark.shared_data
def test_teacher_of_other_data_is_refused(digits, mnist_small, teacher):
    proxy = get_method("random", ipc=1).fit(digits, progress=False).to_proxy()
    with pytest.raises(ProxyError, match="teacher was trained on mnist"):
        relabel(proxy, teacher)
