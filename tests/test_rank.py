"""``rank``: rank-aware distillation orders its training pool as the pool's scores say."""

import pytest

from nasdistill.distill import get_method
from nasdistill.errors import ConfigError

#: The pool's scores deliberately invert what plain training on digits does (the sigmoid,
#: unnormalised net learns slowest): only images optimised for the ordering can satisfy it.
POOL = {"D1-W32-sigmoid-none-none": 0.9, "D1-W32-relu-instancenorm-avgpool": 0.5,
        "D2-W32-relu-batchnorm-maxpool": 0.2}
FAST = dict(inner_steps=5, batch_real=200, augment=None, lr_img=0.05, rank_weight=1.0, task_weight=0.0,
            temperature=0.02, focus=1.0)


@pytest.mark.slow
def test_rank_learns_the_pool_order(digits):
    m = get_method("rank", ipc=2, iterations=40, pool=POOL, **FAST).fit(digits, progress=False)
    before = m.pool_agreement(m.dataset_.x_train[m._select_real(m.dataset_)])
    after = m.pool_agreement()
    assert after > before, (before, after)
    assert after >= 2 / 3
    # the pairwise term does it: the same run with only the task term keeps the natural (inverted) order
    task_only = get_method("rank", ipc=2, iterations=40, pool=POOL, **{**FAST, "rank_weight": 0.0, "task_weight": 1.0})
    assert task_only.fit(digits, progress=False).pool_agreement() < after
    proxy = m.to_proxy()
    assert proxy.meta["pool"] == sorted(POOL) and proxy.images.shape == (20, 1, 8, 8)


# kill -9 and resume: tests/test_faults.py runs it for rank with every other iterative method


@pytest.mark.parametrize("pool, match", [
    (None, "needs pool"),
    ({"D1-W32-relu-none-none": 0.5}, "needs pool"),
    ({"D1-W32-relu-none-none": 0.5, "D1-W32-relu-none-maxpool": float("nan")}, "not a finite number"),
    ({"D1-W32-relu-none-none": 0.5, "D9-W32-relu-none-none": 0.4}, "depth"),
    ({"D1-W32-relu-none-none": 0.5, "D1-W32-relu-none-maxpool": 0.5}, "min_gap"),
])
def test_rank_rejects_an_unusable_pool(digits, pool, match):
    with pytest.raises(ConfigError, match=match):
        get_method("rank", ipc=1, pool=pool).check(digits)
