"""One architecture trained on the proxy against the same on a random class-balanced subset of equal size."""

from __future__ import annotations

import os

import torch

from ..data import ImageDataset, Proxy
from ..defaults import DEFAULT_SPACE
from ..distill import distill
from ..errors import ConfigError
from ..spaces import SearchSpace, get_space
from ..training import TrainConfig, fit_evaluate


def compare_with_random(dataset: ImageDataset, proxy: Proxy, *, space: SearchSpace | str = DEFAULT_SPACE,
                        arch: dict | None = None, train: TrainConfig, eval_seeds: int = 1, device: str = "cpu",
                        store: str | os.PathLike | None | bool = None) -> dict:
    """Test accuracy of one architecture trained on the proxy vs on a random class-balanced subset
    of equal size, averaged over ``eval_seeds`` trainings."""
    space = get_space(space)
    arch = arch or space.default_arch()
    if arch is None:
        raise ConfigError(f"space {space.name!r} has no default architecture", "pass an architecture")
    seed = int(proxy.meta.get("seed", 0))
    subset = distill(dataset, "random", ipc=proxy.ipc, seed=seed, store=store)
    out: dict = {"arch_id": space.arch_id(arch), "ipc": proxy.ipc, "eval_seeds": eval_seeds}
    for label, p in (("proxy", proxy), ("random", subset)):
        accs = []
        for s in range(eval_seeds):
            model = space.build_seeded(arch, dataset.image_shape, dataset.num_classes, s)
            acc, _ = fit_evaluate(model, p.images, p.labels, dataset.x_test, dataset.y_test, train.replace(seed=s),
                                  device=device)
            accs.append(acc)
        t = torch.tensor(accs)
        out[f"{label}_acc"] = float(t.mean())
        out[f"{label}_acc_std"] = float(t.std()) if len(accs) > 1 else 0.0
        out[f"{label}_accs"] = accs
    return out


__all__ = ["compare_with_random"]
