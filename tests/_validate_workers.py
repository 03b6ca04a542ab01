"""Shared pieces of the multi-contender validation tests, importable by spawned worker processes.

A test module imports this file; ``multiprocessing`` children (spawn) import it again by name, so
everything they run lives here: a tiny ConvNet space, random-subset proxies, the settings, and the
functions the worker processes run.
"""

from __future__ import annotations

import time

import torch

from nasdistill.data import Proxy
from nasdistill.training import TrainConfig
from nasdistill.validate import Contender, StoredScore, Validation, validate
from search_spaces.convnet import ConvNetSpace


class TinyConvNetSpace(ConvNetSpace):
    """DC's ConvNet family cut down to 1-2 narrow blocks, so a candidate trains in a fraction of a second."""

    name = "convnet-tiny"
    choices = {"depth": [1, 2], "width": [4, 8, 16], "act": ["sigmoid", "relu", "leakyrelu"],
               "norm": ["none", "batchnorm", "instancenorm"], "pool": ["none", "avgpool", "maxpool"]}


N_ARCHS = 6
#: 32 epochs of 20 images = 640 images seen; the early-stop baseline gets 5 steps of 128 = 640 too.
PROXY_TRAIN = TrainConfig(epochs=32, batch_size=256)
#: One pass over digits' 1,217 training images (the last batch holds 65).
FULL_TRAIN = TrainConfig(steps=10, batch_size=128, schedule="cosine")
SETTINGS = dict(space=TinyConvNetSpace(), n_archs=N_ARCHS, seed=0, proxy_train=PROXY_TRAIN, full_train=FULL_TRAIN,
                top_k=(3, 0.5), regret_k=(1, 3), n_bootstrap=100)
#: The run a test kills: longer references, so it is still busy when the test has seen three results.
RESUME_SETTINGS = {**SETTINGS, "full_train": TrainConfig(steps=40, batch_size=128, schedule="cosine")}


def random_proxy(dataset, ipc: int, seed: int) -> Proxy:
    """A class-balanced random subset of the training split, packed like a distilled proxy."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.cat([i[torch.randperm(len(i), generator=g)[:ipc]] for i in dataset.indices_by_class()])
    meta = {"method": "random", "ipc": ipc, "seed": seed, "key": f"test-random-{ipc}-{seed}",
            "dataset": {"name": dataset.name, "fingerprint": dataset.fingerprint, "num_classes": dataset.num_classes,
                        "image_shape": list(dataset.image_shape)}}
    return Proxy(dataset.x_train[idx].clone(), dataset.y_train[idx], meta)


def race(url: str, barrier, dataset, proxies: list, lease_s: float) -> None:
    """A worker process: wait until every worker is ready, then compute this validation's stored results."""
    torch.set_num_threads(1)
    barrier.wait(timeout=300)
    Validation(**SETTINGS, store=url, lease_s=lease_s, poll_s=0.2).work(dataset, proxies)


def full_run(url: str, dataset, proxies: list, lease_s: float) -> None:
    """A worker process running a whole validation (the one a test kills mid-way)."""
    torch.set_num_threads(1)
    validate(proxies, data=dataset, store=url, lease_s=lease_s, poll_s=0.2, **RESUME_SETTINGS)


class ThreadsContender(Contender):
    """Scores an architecture by the torch CPU threads of the process that scored it (the integer part;
    a fraction from the width keeps the ranking defined), slowly enough that a helper takes a share."""

    kind = "threads"
    stored = True

    def __init__(self, name: str = "threads", delay: float = 0.4):
        self.name, self.delay = name, delay

    def key(self, ctx) -> str:
        return "threads-test"

    def score(self, ctx, arch: dict) -> StoredScore:
        time.sleep(self.delay)
        return StoredScore(value=torch.get_num_threads() + arch["width"] / 100, wall_time=self.delay)
