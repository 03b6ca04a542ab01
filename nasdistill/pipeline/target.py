"""Distil to a fidelity target: method x ipc candidates, cheapest first, until one validates."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from ..data import ImageDataset
from ..defaults import DEFAULT_N_ARCHS, DEFAULT_N_BOOTSTRAP, DEFAULT_SPACE
from ..spaces import SearchSpace
from ..training import TrainConfig
from .distill import method_settings
from .log import Log, quiet
from .report import report_step


def target_step(dataset: ImageDataset, *, target: float, methods: Sequence[str], ipcs: Sequence[int],
                settings: dict | None = None, budget: str = "auto", metric: str | None = None,
                bound: str = "value", n_archs: int = DEFAULT_N_ARCHS, space: SearchSpace | str = DEFAULT_SPACE,
                proxy_train: TrainConfig | None = None, full_train: TrainConfig | None = None,
                n_bootstrap: int = DEFAULT_N_BOOTSTRAP, time_budget_s: float | None = None, max_candidates: int | None = None,
                seed: int = 0, device: str = "cpu", out_dir: str | os.PathLike | None = None,
                store: str | os.PathLike | None | bool = None, reference_store: str | None = None,
                progress: bool | None = None, log: Log = quiet):
    """Distil (method, ipc) candidates cheapest first until one's validated ``metric`` reaches
    ``target`` or the budget is spent (:class:`~nasdistill.target.FidelitySearch`); returns the
    :class:`~nasdistill.target.TargetResult`.

    ``settings`` (``--set``, ``--iterations``...) go to every method that takes them, over the
    ``budget`` preset (:func:`method_settings`). With ``out_dir``: the kept proxy
    (``proxy.safetensors``/``.json``/``.png``), its ``validation.*``, ``target.json`` and its report
    (:func:`report_step`).
    """
    from ..target import DEFAULT_METRIC, FidelitySearch, settings_by_method

    per_method = settings_by_method(methods, settings)
    params = {m: method_settings(m, per_method[m], budget=budget, device=device) for m in per_method}
    out = Path(out_dir) if out_dir else None
    search = FidelitySearch(target=target, methods=list(methods), ipcs=list(ipcs), metric=metric or DEFAULT_METRIC,
                            bound=bound, method_settings=params, seed=seed, n_archs=n_archs, space=space,
                            proxy_train=proxy_train, full_train=full_train, n_bootstrap=n_bootstrap,
                            time_budget_s=time_budget_s, max_candidates=max_candidates, device=device, store=store,
                            reference_store=reference_store, progress=progress,
                            checkpoint_dir=out / "checkpoints" if out else None)
    result = search.run(dataset, log=log)
    if out is not None:
        result.save(out)
        ckpt_dir = out / "checkpoints"
        if ckpt_dir.is_dir() and not any(ckpt_dir.iterdir()):
            ckpt_dir.rmdir()
        report_step(out, log=log)
    return result


__all__ = ["target_step"]
