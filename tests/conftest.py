"""Shared fixtures.

Real datasets are found through one setting: ``NASDISTILL_DATA`` (default ``../shared/data``
beside the repository). Tests that need them use the ``data_root`` fixture: without the data they
are skipped with a visible reason, or fail when ``NASDISTILL_REQUIRE_DATA=1`` (set by ``.ci/run``,
so CI cannot pass with those tests skipped).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("NASDISTILL_DATA", REPO.parent / "shared" / "data")).expanduser()


def _threads() -> int:
    """Torch threads for this test process: ``OMP_NUM_THREADS`` when set, else its share of the cores
    among pytest-xdist's workers, at most two (tiny networks gain nothing from more; oversubscribed
    OpenMP threads spin, 10-50x slower)."""
    if os.environ.get("OMP_NUM_THREADS"):
        return int(os.environ["OMP_NUM_THREADS"])
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
    return max(1, min(2, (os.cpu_count() or 1) // workers))


#: Most test processes ``-n auto`` starts (pyproject's addopts): each imports torch and its own
#: copies of the session's datasets, which many-core machines would multiply for little gain.
MAX_WORKERS = 8


def pytest_xdist_auto_num_workers(config) -> int:
    return max(1, min(os.cpu_count() or 1, MAX_WORKERS))


torch.set_num_threads(_threads())
if os.environ.get("PYTEST_XDIST_WORKER"):  # the processes tests start share this worker's cores too
    os.environ["OMP_NUM_THREADS"] = str(torch.get_num_threads())


def _need(path: Path) -> Path:
    if path.exists():
        return path
    msg = f"real data not found at {path} (set NASDISTILL_DATA to the folder holding MNIST/ and cifar10-jpeg/)"
    if os.environ.get("NASDISTILL_REQUIRE_DATA") == "1":
        pytest.fail(msg + " and NASDISTILL_REQUIRE_DATA=1 forbids skipping", pytrace=False)
    pytest.skip(msg)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny networks (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    as fast as two on them, and on a busy 2-core machine two threads waiting on each other made such
    trainings 10-100x slower. The previous count is restored after the module."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True, scope="session")
def _isolated_home(tmp_path_factory):
    """Keep caches, proxy stores and reference stores of the test run out of the user's home."""
    old = {k: os.environ.get(k) for k in ("NASDISTILL_HOME", "NASDISTILL_PROGRESS")}
    os.environ["NASDISTILL_HOME"] = str(tmp_path_factory.mktemp("nasdistill-home"))
    os.environ["NASDISTILL_PROGRESS"] = "0"
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def data_root() -> Path:
    return _need(DATA)


@pytest.fixture(scope="session")
def mnist_root(data_root) -> Path:
    _need(data_root / "MNIST" / "raw")
    return data_root


@pytest.fixture(scope="session")
def cifar_jpeg(data_root) -> Path:
    return _need(data_root / "cifar10-jpeg")


@pytest.fixture(scope="session")
def digits():
    from nasdistill.data import load_dataset

    return load_dataset("digits")


@pytest.fixture(scope="session")
def mnist_small(mnist_root):
    """200 training images a class (20 held out for validation), 100 test images a class."""
    from nasdistill.data import load_dataset

    return load_dataset("mnist", root=mnist_root, train_per_class=200, test_per_class=100, val_per_class=20)


@pytest.fixture(scope="session")
def cifar_small(cifar_jpeg):
    from nasdistill.data import load_dataset

    return load_dataset(f"imagefolder:{cifar_jpeg}", train_per_class=100, test_per_class=50, val_per_class=10)


# --- the yardstick for distillation methods ------------------------------------------------------
#: Method tests distil MNIST (``mnist_small``) at this many images per class, once per seed.
METHOD_IPC = 1
METHOD_SEEDS = (0, 1)


@pytest.fixture(scope="session")
def score_proxy(mnist_small):
    """``score(images, labels, seed)``: MNIST test accuracy of DC's default ConvNet (depth 3, width 128,
    instancenorm, avgpool) trained on the given images for 150 steps with DSA augmentation."""
    from nasdistill.spaces import get_space
    from nasdistill.training import TrainConfig, fit_evaluate

    space = get_space("convnet")

    def score(images, labels, seed: int) -> float:
        model = space.build_seeded(space.default_arch(), mnist_small.image_shape, mnist_small.num_classes, seed)
        acc, _ = fit_evaluate(model, images, labels, mnist_small.x_test, mnist_small.y_test,
                              TrainConfig(steps=150, augment="dsa", seed=seed))
        return acc

    return score


@pytest.fixture(scope="session")
def random_baseline(mnist_small, score_proxy) -> dict:
    """Accuracy of the yardstick network on a random class-balanced subset, per seed and on average."""
    from nasdistill.distill import get_method

    accs = [score_proxy(*_fit(get_method("random", ipc=METHOD_IPC, seed=s), mnist_small), s) for s in METHOD_SEEDS]
    return {"accs": accs, "mean": sum(accs) / len(accs)}


def _fit(distiller, dataset):
    distiller.fit(dataset, progress=False)
    return distiller.images_, distiller.labels_


@pytest.fixture(scope="session")
def beats_random(mnist_small, score_proxy, random_baseline):
    """``check(method, margin=0.03, **settings)``: distil ``mnist_small`` with ``method`` at
    ``METHOD_IPC`` for each seed in ``METHOD_SEEDS``, train the yardstick network on each proxy, and
    assert that the mean accuracy beats the random subset's by ``margin``. Returns the accuracies."""
    from nasdistill.distill import get_method

    def check(method: str, margin: float = 0.03, **settings) -> dict:
        accs = [score_proxy(*_fit(get_method(method, ipc=METHOD_IPC, seed=s, **settings), mnist_small), s)
                for s in METHOD_SEEDS]
        mean = sum(accs) / len(accs)
        result = {"method": method, "accs": accs, "mean": mean, "random": random_baseline}
        assert mean > random_baseline["mean"] + margin, result
        return result

    return check
