"""Explicit seeding. Nothing in nasdistill takes a seed from the clock."""

from __future__ import annotations

import contextlib
import hashlib
import random
from typing import Iterator

import numpy as np
import torch


def derive_seed(*parts: object) -> int:
    """A 63-bit seed derived deterministically from ``parts`` (e.g. ``(seed, "init", step)``)."""
    h = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g


@contextlib.contextmanager
def seeded(seed: int, device: str | torch.device = "cpu") -> Iterator[None]:
    """Run a block with torch/numpy/random seeded from ``seed``, restoring global RNG state after
    (torch's CPU generator, and ``device``'s when it is a GPU).

    Used around module construction so a network's initial weights depend only on ``seed``, and
    around a training, whose random layers (dropout, stochastic depth: torchvision's backbones have
    them) draw from the global generator, not from one passed in: their draws then depend on the
    seed only, not on what ran before in the process.
    """
    device = torch.device(device)
    index = None
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
    np_state = np.random.get_state()
    py_state = random.getstate()
    with torch.random.fork_rng(devices=[] if index is None else [index]):
        torch.manual_seed(int(seed) & ((1 << 63) - 1))
        np.random.seed(int(seed) % (2**32))
        random.seed(int(seed))
        try:
            yield
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)
