"""``training.vectorized.train_seeds``: several seeded trainings of one architecture at once under
``torch.func.vmap``, equal to the one-at-a-time loop to float rounding, on 8x8 digits."""

from __future__ import annotations

import pytest
import torch

from nasdistill.errors import ConfigError
from nasdistill.spaces import get_space
from nasdistill.training import TrainConfig, evaluate, native_bf16, train
from nasdistill.training.vectorized import train_seeds

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks: see conftest.one_thread

SEEDS = (3, 4, 5)


@pytest.fixture(scope="module")
def proxy(digits):
    """Ten real digits a class (100 images), as a proxy would hold."""
    idx = torch.cat([i[:10] for i in digits.indices_by_class()])
    return digits.x_train[idx], digits.y_train[idx]


def _pair(space_name, arch, digits, seeds=SEEDS):
    space = get_space(space_name)
    arch = space.parse_id(arch) if isinstance(arch, str) else arch
    build = lambda: [space.build_seeded(arch, digits.image_shape, digits.num_classes, s) for s in seeds]  # noqa: E731
    return build(), build()


def _assert_same_models(a, b, atol=1e-4):
    for ma, mb in zip(a, b, strict=True):
        sa, sb = ma.state_dict(), mb.state_dict()
        assert sa.keys() == sb.keys()
        for k in sa:  # parameters and buffers (batch norm's running statistics and step counts)
            torch.testing.assert_close(sa[k], sb[k], rtol=1e-3, atol=atol, msg=lambda m, k=k: f"{k}: {m}")


@pytest.mark.parametrize("space_name, arch, augment", [
    ("convnet", "D2-W32-relu-instancenorm-avgpool", "dsa"),   # DC's block, DSA draws per member
    ("convnet", "D2-W32-relu-batchnorm-avgpool", None),       # running statistics updated per member
    ("convnet", "D1-W32-leakyrelu-groupnorm-maxpool", "crop_flip"),
])
def test_train_seeds_equals_one_training_per_seed(digits, proxy, space_name, arch, augment):
    x, y = proxy
    configs = [TrainConfig(epochs=6, batch_size=32, augment=augment, seed=s) for s in SEEDS]  # 4 steps an epoch,
    together, alone = _pair(space_name, arch, digits)                                      # lr x0.1 at step 12
    logs = train_seeds(together, x, y, configs)
    logs_alone = [train(m, x, y, c) for m, c in zip(alone, configs)]
    _assert_same_models(together, alone)
    for a, b in zip(logs, logs_alone):
        assert (a.steps, a.epochs) == (b.steps, b.epochs) == (24, 6)
        assert a.losses == pytest.approx(b.losses, rel=1e-4)
    # the members really are different trainings (their own weights and batches), and they learned
    accs = [evaluate(m, digits.x_test, digits.y_test) for m in together]
    assert len(set(accs)) == len(SEEDS) and min(accs) > 0.2  # chance: 0.1
    assert accs == pytest.approx([evaluate(m, digits.x_test, digits.y_test) for m in alone], abs=2e-3)


def test_train_seeds_soft_labels_and_a_cell_space(digits, proxy):
    x, _ = proxy
    soft = torch.softmax(torch.randn(len(x), digits.num_classes, generator=torch.Generator().manual_seed(0)), 1)
    configs = [TrainConfig(epochs=4, batch_size=50, schedule="cosine", seed=s) for s in SEEDS[:2]]
    together, alone = _pair("convnet", "D2-W32-relu-instancenorm-avgpool", digits, SEEDS[:2])
    train_seeds(together, x, soft, configs)
    for m, c in zip(alone, configs):
        train(m, x, soft, c)
    _assert_same_models(together, alone)
    # NB201: batch norm, zero edges, a pooling edge. One step: this cell's batch norms of near-constant
    # maps turn a 6e-8 change of the weights into a 1e-2 change of the next gradient, in the loop alone
    arch = get_space("nb201").sample(1, seed=1)[0]
    together, alone = _pair("nb201", arch, digits, SEEDS[:2])
    configs = [TrainConfig(steps=1, batch_size=50, seed=s) for s in SEEDS[:2]]
    train_seeds(together, x, soft, configs)
    for m, c in zip(alone, configs):
        train(m, x, soft, c)
    _assert_same_models(together, alone)


def test_train_seeds_refuses_what_it_cannot_vectorise(digits, proxy):
    x, y = proxy
    space = get_space("convnet")
    a = space.build_seeded(space.parse_id("D1-W32-relu-none-avgpool"), digits.image_shape, 10, 0)
    b = space.build_seeded(space.parse_id("D1-W64-relu-none-avgpool"), digits.image_shape, 10, 1)
    c = space.build_seeded(space.parse_id("D1-W32-relu-none-avgpool"), digits.image_shape, 10, 2)
    before = [p.clone() for p in a.parameters()]
    cfg = TrainConfig(steps=2)
    with pytest.raises(ConfigError, match="one architecture"):
        train_seeds([a, b], x, y, [cfg, cfg.replace(seed=1)])
    with pytest.raises(ConfigError, match="may differ only in seed"):
        train_seeds([a, c], x, y, [cfg, cfg.replace(lr=0.1, seed=1)])
    with pytest.raises(ConfigError, match="one config per model"):
        train_seeds([a, c], x, y, [cfg])
    # dropout draws random numbers, which vmap refuses by default: refused before any weight changes
    dropout = [_with_dropout(space.build_seeded(space.parse_id("D1-W32-relu-none-avgpool"), digits.image_shape, 10, s))
               for s in (0, 1)]
    dropout_before = [p.clone() for p in dropout[0].parameters()]
    with pytest.raises(ConfigError, match="cannot be trained under vmap.*random operation.*one at a time"):
        train_seeds(dropout, x, y, [cfg, cfg.replace(seed=1)])
    assert all(torch.equal(p, q) for p, q in zip(dropout[0].parameters(), dropout_before))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), before))


def _with_dropout(net):
    net.classifier = torch.nn.Sequential(torch.nn.Dropout(0.2), net.classifier)
    return net


#: Where bf16 is emulated (no AMX/AVX512-BF16: 5 s a case on a 2-core AVX2 CPU), the batch and layer
#: norm cases run with the slow tests only (CI runs them all; ``pytest -m "not slow"`` keeps one).
_SLOW_IF_EMULATED = () if native_bf16("cpu") else (pytest.mark.slow,)


@pytest.mark.parametrize("arch", ["D2-W32-relu-instancenorm-avgpool",
                                  pytest.param("D2-W32-relu-batchnorm-maxpool",  # bf16 batch norm: float input
                                               marks=_SLOW_IF_EMULATED),         # under vmap
                                  pytest.param("D2-W32-relu-layernorm-avgpool",  # bf16 layer norm: likewise
                                               marks=_SLOW_IF_EMULATED)])
def test_bf16_members_train_as_well_as_alone(digits, proxy, arch):
    """bf16 runs under autocast in the plain layout (the loop's fast layout rounds differently): the
    members reach the accuracy the loop's do."""
    x, y = proxy
    configs = [TrainConfig(epochs=20, batch_size=50, precision="bf16", seed=s) for s in SEEDS]
    together, alone = _pair("convnet", arch, digits)
    train_seeds(together, x, y, configs)
    for m, c in zip(alone, configs):
        train(m, x, y, c)
    acc = lambda ms: sum(evaluate(m, digits.x_test, digits.y_test) for m in ms) / len(ms)  # noqa: E731
    assert acc(together) == pytest.approx(acc(alone), abs=0.03) and acc(together) > 0.6
