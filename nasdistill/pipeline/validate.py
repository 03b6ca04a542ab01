"""Validate proxies' rankings against full-data training and write the results."""

from __future__ import annotations

import os
from typing import Sequence

from ..data import ImageDataset, Proxy
from ..defaults import DEFAULT_N_ARCHS, DEFAULT_N_BOOTSTRAP, DEFAULT_SPACE, DEFAULT_TOP_K
from ..spaces import SearchSpace
from ..training import TrainConfig
from ..validate import ValidationResult, validate
from .log import Log, quiet
from .report import report_step


def validate_step(dataset: ImageDataset, proxy: Proxy | Sequence[Proxy], *, space: SearchSpace | str = DEFAULT_SPACE,
                  n_archs: int = DEFAULT_N_ARCHS, proxy_train: TrainConfig | None = None,
                  full_train: TrainConfig | None = None, top_k: int | float | Sequence[int | float] = DEFAULT_TOP_K,
                  n_bootstrap: int = DEFAULT_N_BOOTSTRAP,
                  reference_store: str | None = None, seed: int = 0, device: str = "cpu",
                  out_dir: str | os.PathLike | None = None, progress: bool | None = None, log: Log = quiet,
                  baselines: Sequence[str] = (), workers: int = 1,
                  zero_cost_batch: int | None = None, report: bool = True, reference=None,
                  repeats: int = 1, vectorize: bool = False) -> ValidationResult:
    """Rank ``n_archs`` sampled architectures with each proxy (and each baseline: ``early-stop``,
    ``zero-cost``...) and by full-data training; compare, cost, test, and write ``validation.*``
    (and, unless ``report`` is False, ``report.html`` / ``report.md``: :func:`report_step`).
    Budgets left None are the library's (:mod:`nasdistill.defaults`), as for :func:`~nasdistill.validate.validate`.
    ``reference``: a reference table (or its path) whose architectures and full-data results are used.
    ``repeats`` > 1: each proxy scores an architecture by the mean of that many seeded trainings;
    ``vectorize``: those trainings run at once under ``torch.func.vmap`` (for GPUs; the same scores to
    float rounding)."""
    proxies = [proxy] if isinstance(proxy, Proxy) else list(proxy)
    if repeats != 1 or vectorize:
        from ..validate import ProxyContender

        proxies = [ProxyContender(p, repeats=repeats, vectorize=vectorize) for p in proxies]
    extra = {} if zero_cost_batch is None else {"zero_cost_batch": zero_cost_batch}
    if reference is not None:
        extra["reference"] = reference
    result = validate(proxies, data=dataset, space=space, baselines=baselines, n_archs=n_archs, seed=seed,
                      proxy_train=proxy_train, full_train=full_train, top_k=top_k, n_bootstrap=n_bootstrap,
                      store=reference_store, device=device, workers=workers, progress=progress, log=log, **extra)
    if out_dir is not None:
        result.save(out_dir)
    m, ref = result.primary.metrics, result.reference
    log(f"validation: Spearman {m['spearman']:.3f} [{m['spearman_ci'][0]:.3f}, {m['spearman_ci'][1]:.3f}] over "
        f"{len(result.archs)} architectures ({ref['n_trained']} trained on full data, {ref['n_reused']} reused)\n"
        + result.table())
    why = result.why_undefined()
    if why:
        log(f"note: {why}")
    if out_dir is not None and report:
        report_step(out_dir, log=log)
    return result


__all__ = ["validate_step"]
