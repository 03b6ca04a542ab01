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
def seeded(seed: int) -> Iterator[None]:
    """Run a block with torch/numpy/random seeded from ``seed``, restoring global RNG state after.

    Used around module construction so a network's initial weights depend only on ``seed``.
    """
    np_state = np.random.get_state()
    py_state = random.getstate()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed) & ((1 << 63) - 1))
        np.random.seed(int(seed) % (2**32))
        random.seed(int(seed))
        try:
            yield
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)
