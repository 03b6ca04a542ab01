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

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def _need(path: Path) -> Path:
    if path.exists():
        return path
    msg = f"real data not found at {path} (set NASDISTILL_DATA to the folder holding MNIST/ and cifar10-jpeg/)"
    if os.environ.get("NASDISTILL_REQUIRE_DATA") == "1":
        pytest.fail(msg + " and NASDISTILL_REQUIRE_DATA=1 forbids skipping", pytrace=False)
    pytest.skip(msg)


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
