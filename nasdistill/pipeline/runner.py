"""``nasdistill run``: distil -> compare with a random subset -> search -> validate, with its summary."""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import torch

from .._io import write_json, write_text
from .._seed import derive_seed
from ..data import ImageDataset
from ..data.proxy import PROXY_FILE
from ..defaults import (DEFAULT_N_BOOTSTRAP, DEFAULT_SPACE, DEFAULT_TOP_K, QUICKSTART_FULL_TRAIN,
                       QUICKSTART_N_ARCHS, QUICKSTART_PROXY_TRAIN, QUICKSTART_TRIALS, RUNS_DIR)
from ..distill import get_method
from ..errors import ConfigError
from ..spaces import get_space
from ..training import TrainConfig
from ..work.launch import torch_threads
from .compare import compare_with_random
from .data import DataSpec
from .distill import distill_step, method_settings
from .log import Log
from .report import report_step
from .search import check_backend, search_step
from .summary import summary_table
from .validate import validate_step


@dataclass
class RunConfig:
    """Settings of ``nasdistill run``. Defaults finish in a few minutes on 2 CPU cores with ``digits``."""

    name: str = "quickstart"
    data: DataSpec = field(default_factory=DataSpec)
    method: str = "dm"
    ipc: int = 10
    method_settings: dict = field(default_factory=dict)
    budget: str = "auto"
    space: str = DEFAULT_SPACE
    n_trials: int = QUICKSTART_TRIALS
    backend: str = "optuna"  # or "nni"
    sampler: str | None = None  # Optuna backend (None: tpe)
    strategy: str | None = None  # NNI backend (None: evolution)
    pruner: str = "none"
    storage: str | None = None
    study_name: str | None = None
    objectives: str = "accuracy"
    workers: int = 1
    retrain_top: int = 0
    proxy_train: TrainConfig = field(default_factory=lambda: QUICKSTART_PROXY_TRAIN.replace())
    full_train: TrainConfig = field(default_factory=lambda: QUICKSTART_FULL_TRAIN.replace())
    n_archs: int = QUICKSTART_N_ARCHS
    top_k: int | float | tuple = DEFAULT_TOP_K
    n_bootstrap: int = DEFAULT_N_BOOTSTRAP
    eval_seeds: int = 2
    seed: int = 0
    device: str = "cpu"
    out_root: str = str(RUNS_DIR)
    out: str | None = None  #: write into exactly this folder; None: ``out_root/name``
    store: str | None = None
    reference_store: str | None = None
    relabel: str | None = None  # a teacher architecture id: the proxy gets its soft labels
    teacher_epochs: int | None = None
    temperature: float = 1.0
    #: train the validation's full-data references in a background process (one thread, taken from
    #: this process's) while the proxy is distilled and searched; the same results. Off by default:
    #: on 2 cores it made the quick start slower (measured 71 s -> 93 s), as the main process already
    #: uses both; it pays where cores or a GPU sit idle beside the main process.
    prefetch: bool = False

    @property
    def out_dir(self) -> Path:
        """``out`` when given (exactly that folder, as ``--out`` for every command), else ``out_root/name``."""
        return Path(self.out) if self.out else Path(self.out_root) / self.name


@contextlib.contextmanager
def _prefetching(dataset: ImageDataset, validation: dict, config: "RunConfig", log: Log) -> Iterator[bool]:
    """With ``config.prefetch``, a background process trains the validation's full-data references
    while the block distils and searches (:func:`~nasdistill.validate.prefetch_references`), on one
    of this process's threads; yields whether it runs (not on one CPU core, nor with a store that
    cannot be shared), and stops it when the block ends."""
    group = None
    if config.prefetch and (os.cpu_count() or 1) >= 2:
        from ..validate import prefetch_references

        settings = {k: v for k, v in validation.items() if k != "reference_store"}
        try:
            group = prefetch_references(dataset, store=validation["reference_store"], **settings)
            log("training the validation's full-data references in a background process (--prefetch)")
        except ConfigError as e:
            log(f"references not trained in the background: {e}")
    # the cores are shared: OpenMP threads beyond them stall each other (measured ~4-10x)
    share = max(1, torch.get_num_threads() - 1) if group is not None else None
    try:
        with torch_threads(share):
            yield group is not None
    finally:
        if group is not None:
            group.stop()  # finished by now, unless the run failed
            group.close()


def run(config: RunConfig, *, progress: bool | None = None, log: Log = print, callbacks: Sequence = ()) -> dict:
    """distil -> compare with a random subset -> search -> validate; write ``summary.json``/``summary.md``.

    ``callbacks``: :class:`~nasdistill.tracking.Callback` objects told of each step as it finishes
    (e.g. :class:`~nasdistill.tracking.MLflowTracker`)."""

    def tell(event: str, obj) -> None:
        for cb in callbacks:
            getattr(cb, event, lambda _obj: None)(obj)

    t0 = time.perf_counter()
    check_backend(config.backend, space=config.space, sampler=config.sampler, strategy=config.strategy,
                  pruner=config.pruner, storage=config.storage, workers=config.workers, objectives=config.objectives)
    out = config.out_dir
    timings: dict[str, float] = {}

    t = time.perf_counter()
    dataset = config.data.load()
    timings["load"] = time.perf_counter() - t
    # the method's settings, checked against the data before the run folder exists
    params = method_settings(config.method, config.method_settings, budget=config.budget, device=config.device)
    get_method(config.method, ipc=config.ipc, seed=config.seed, device=config.device, **params).check(dataset)
    get_space(config.space).check_input(dataset.image_shape)  # before the proxy is distilled
    out.mkdir(parents=True, exist_ok=True)
    log(f"data: {dataset.name} {tuple(dataset.image_shape)}, {len(dataset.y_train)} train / {len(dataset.y_val)} "
        f"val / {len(dataset.y_test)} test, fingerprint {dataset.fingerprint}")
    validation = dict(space=config.space, n_archs=config.n_archs, proxy_train=config.proxy_train,
                      full_train=config.full_train, reference_store=config.reference_store,
                      seed=derive_seed(config.seed, "validate") % 10**6, device=config.device)
    with _prefetching(dataset, validation, config, log) as prefetched:
        t = time.perf_counter()
        proxy = distill_step(dataset, config.method, ipc=config.ipc, settings=config.method_settings,
                             budget=config.budget, seed=config.seed, device=config.device, out_dir=out,
                             store=config.store, progress=progress, log=log, relabel=config.relabel,
                             teacher_epochs=config.teacher_epochs, temperature=config.temperature)
        timings["distill"] = time.perf_counter() - t
        tell("on_distill", proxy)

        t = time.perf_counter()
        comparison = compare_with_random(dataset, proxy, space=config.space, train=config.proxy_train,
                                         eval_seeds=config.eval_seeds, device=config.device, store=config.store)
        timings["compare"] = time.perf_counter() - t
        log(f"default architecture on the proxy: {comparison['proxy_acc']:.4f} test acc vs random subset "
            f"{comparison['random_acc']:.4f}")

        t = time.perf_counter()
        search = search_step(dataset, proxy, space=config.space, n_trials=config.n_trials, sampler=config.sampler,
                             pruner=config.pruner, storage=config.storage,
                             study_name=config.study_name or config.name, train=config.proxy_train,
                             seed=config.seed, device=config.device, out_dir=out, progress=progress, log=log,
                             objectives=config.objectives, workers=config.workers, retrain_top=config.retrain_top,
                             full_train=config.full_train, reference_store=config.reference_store,
                             backend=config.backend, strategy=config.strategy)
        timings["search"] = time.perf_counter() - t
        tell("on_search", search)

        t = time.perf_counter()
        val = validate_step(dataset, proxy, **validation, top_k=config.top_k, n_bootstrap=config.n_bootstrap,
                            out_dir=out, progress=progress, log=log, report=False,
                            workers=config.workers)  # the same processes as the search: its trainings shared
        timings["validate"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - t0
        tell("on_validate", val)

    summary = {
        "name": config.name,
        "dataset": dataset.describe(),
        "proxy": {"method": proxy.method, "ipc": proxy.ipc, "key": proxy.key, "reused": proxy.meta.get("reused"),
                  "path": str(out / PROXY_FILE)},
        "proxy_vs_random": comparison,
        "search": {"backend": config.backend, "study": config.study_name or config.name,
                   "trials": len(search.trials_),
                   "best_arch": search.best_arch_, "best_arch_id": search.best_id_,
                   "best_val_acc": search.best_value_, "retrain": search.retrain_},
        "validation": {"n_archs": config.n_archs, **val.primary.metrics},
        "cost": {"proxy": val.primary.cost, "full_data": val.reference["cost"],
                 "full_train_images": len(dataset.y_train), "proxy_images": len(proxy),
                 "references_in_background": prefetched},
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
        "config": asdict(config),
    }
    write_json(out / "summary.json", summary)
    table = summary_table(summary)
    write_text(out / "summary.md", f"# nasdistill run `{config.name}`\n\n{table}\n")
    log("\n" + table)
    report_step(out, log=log)
    tell("on_run", summary)
    return summary


__all__ = ["RunConfig", "run"]
