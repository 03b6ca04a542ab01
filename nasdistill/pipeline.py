"""distil -> search -> validate, as plain functions the CLI (and AutoML code) call.

Each step takes objects and settings, writes its outputs atomically under an output folder and
returns the fitted objects, so a pipeline can run one step, several, or all (:func:`run`).
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ._io import write_json, write_text
from ._seed import derive_seed
from .data import ImageDataset, Proxy, load_dataset
from .distill import distill, method_class
from .errors import ConfigError
from .search import OptunaSearch, ProxyEvaluator
from .spaces import SearchSpace, get_space
from .training import TrainConfig, fit_evaluate
from .validate import RankingValidator

Log = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def resolve_device(device: str | None) -> str:
    """``auto`` (or None) -> ``cuda`` when available, else ``cpu``; anything else is checked."""
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ConfigError(f"unknown device {device!r}", "use cpu, cuda, cuda:N or auto") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for but no CUDA GPU is available", "use --device cpu")
    return str(dev)


@dataclass
class DataSpec:
    """Which dataset, where it lives and how it is sliced and split."""

    name: str = "digits"
    root: str | None = None
    download: bool = False
    train_per_class: int | None = None
    test_per_class: int | None = None
    val_per_class: int | None = None
    seed: int = 0

    def load(self) -> ImageDataset:
        return load_dataset(self.name, root=self.root, download=self.download,
                            train_per_class=self.train_per_class, test_per_class=self.test_per_class,
                            val_per_class=self.val_per_class, seed=self.seed)


# --- distil ------------------------------------------------------------------------------------
def method_settings(method: str, settings: dict | None, *, budget: str = "auto", device: str = "cpu") -> dict:
    """The method's settings: its paper defaults, replaced by its CPU preset when ``budget`` is
    ``cpu`` (or ``auto`` on a CPU), then by explicit ``settings``."""
    cls = method_class(method)
    if budget not in ("auto", "cpu", "paper"):
        raise ConfigError(f"unknown budget {budget!r}", "use auto, cpu or paper")
    use_cpu = budget == "cpu" or (budget == "auto" and not str(device).startswith("cuda"))
    merged = dict(cls.cpu_budget) if use_cpu else {}
    merged.update({k: v for k, v in (settings or {}).items() if v is not None})
    return merged


def distill_step(dataset: ImageDataset, method: str, *, ipc: int, settings: dict | None = None,
                 budget: str = "auto", seed: int = 0, device: str = "cpu", out_dir: str | os.PathLike | None = None,
                 store: str | os.PathLike | None | bool = None, progress: bool | None = None,
                 log: Log = _quiet) -> Proxy:
    """Distil (or reuse) a proxy; copy it to ``out_dir/proxy.{safetensors,json,png}``."""
    params = method_settings(method, settings, budget=budget, device=device)
    out = Path(out_dir) if out_dir else None
    proxy = distill(dataset, method, ipc=ipc, seed=seed, device=device, store=store,
                    checkpoint_dir=out / "checkpoints" if out else None, progress=progress, log=log, **params)
    if not proxy.meta.get("reused"):
        log(f"distilled {method} proxy ({len(proxy)} images, ipc {ipc}) in {proxy.meta.get('wall_time_s', 0):.1f}s"
            + (f", resumed from iteration {proxy.meta['resumed_from_iteration']}"
               if proxy.meta.get("resumed_from_iteration") else ""))
    if out is not None:
        path = proxy.save(out / "proxy.safetensors")
        proxy.save_grid(out / "proxy.png")
        ckpt_dir = out / "checkpoints"
        if ckpt_dir.is_dir() and not any(ckpt_dir.iterdir()):
            ckpt_dir.rmdir()
        proxy.meta["out_path"] = str(path)
    return proxy


# --- proxy vs random -----------------------------------------------------------------------------
def compare_with_random(dataset: ImageDataset, proxy: Proxy, *, space: SearchSpace | str = "convnet",
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


# --- search ------------------------------------------------------------------------------------
def search_step(dataset: ImageDataset, proxy: Proxy, *, space: SearchSpace | str = "convnet", n_trials: int = 20,
                sampler: str = "tpe", pruner: str = "none", storage: str | None = None,
                study_name: str = "nasdistill", train: TrainConfig, seed: int = 0, device: str = "cpu",
                out_dir: str | os.PathLike, progress: bool | None = None, log: Log = _quiet) -> OptunaSearch:
    """Optuna search over ``space`` scored by training on the proxy, accuracy on real validation data."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    storage = storage or f"sqlite:///{out / 'study.db'}"
    evaluator = ProxyEvaluator(get_space(space), proxy, dataset, train, device=device, seed=seed)
    search = OptunaSearch(get_space(space), evaluator, n_trials=n_trials, sampler=sampler, pruner=pruner,
                          storage=storage, study_name=study_name, seed=seed, progress=progress).run()
    search.export(out)
    log(f"search: {len(search.trials_)} trials in study {study_name!r}; best {search.best_id_} "
        f"(val acc {search.best_value_:.4f})")
    return search


# --- validate ----------------------------------------------------------------------------------
def validate_step(dataset: ImageDataset, proxy: Proxy, *, space: SearchSpace | str = "convnet", n_archs: int = 12,
                  proxy_train: TrainConfig, full_train: TrainConfig, top_k: int = 5, n_bootstrap: int = 1000,
                  reference_store: str | None = None, seed: int = 0, device: str = "cpu",
                  out_dir: str | os.PathLike | None = None, progress: bool | None = None,
                  log: Log = _quiet) -> RankingValidator:
    """Rank ``n_archs`` sampled architectures by proxy training and by full-data training and compare."""
    val = RankingValidator(space=get_space(space), n_archs=n_archs, seed=seed, proxy_train=proxy_train,
                           full_train=full_train, top_k=top_k, n_bootstrap=n_bootstrap, device=device,
                           store=reference_store, progress=progress).fit(dataset, proxy)
    if out_dir is not None:
        val.save(out_dir)
    m = val.metrics_
    log(f"validation: Spearman {m['spearman']:.3f} [{m['spearman_ci'][0]:.3f}, {m['spearman_ci'][1]:.3f}] over "
        f"{n_archs} architectures ({val.n_reference_trained_} trained on full data, "
        f"{val.n_reference_reused_} reused)")
    return val


# --- everything --------------------------------------------------------------------------------
@dataclass
class RunConfig:
    """Settings of ``nasdistill run``. Defaults finish in a few minutes on 2 CPU cores with ``digits``."""

    name: str = "quickstart"
    data: DataSpec = field(default_factory=DataSpec)
    method: str = "dm"
    ipc: int = 10
    method_settings: dict = field(default_factory=dict)
    budget: str = "auto"
    space: str = "convnet"
    n_trials: int = 16
    sampler: str = "tpe"
    pruner: str = "none"
    storage: str | None = None
    study_name: str | None = None
    proxy_train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=80, augment="dsa"))
    full_train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=6, batch_size=128))
    n_archs: int = 10
    top_k: int = 5
    n_bootstrap: int = 1000
    eval_seeds: int = 2
    seed: int = 0
    device: str = "cpu"
    out_root: str = "runs"
    store: str | None = None
    reference_store: str | None = None

    @property
    def out_dir(self) -> Path:
        return Path(self.out_root) / self.name


def run(config: RunConfig, *, progress: bool | None = None, log: Log = print) -> dict:
    """distil -> compare with a random subset -> search -> validate; write ``summary.json``/``summary.md``."""
    t0 = time.perf_counter()
    out = config.out_dir
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    t = time.perf_counter()
    dataset = config.data.load()
    timings["load"] = time.perf_counter() - t
    log(f"data: {dataset.name} {tuple(dataset.image_shape)}, {len(dataset.y_train)} train / {len(dataset.y_val)} "
        f"val / {len(dataset.y_test)} test, fingerprint {dataset.fingerprint}")

    t = time.perf_counter()
    proxy = distill_step(dataset, config.method, ipc=config.ipc, settings=config.method_settings,
                         budget=config.budget, seed=config.seed, device=config.device, out_dir=out,
                         store=config.store, progress=progress, log=log)
    timings["distill"] = time.perf_counter() - t

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
                         seed=config.seed, device=config.device, out_dir=out, progress=progress, log=log)
    timings["search"] = time.perf_counter() - t

    t = time.perf_counter()
    val = validate_step(dataset, proxy, space=config.space, n_archs=config.n_archs, proxy_train=config.proxy_train,
                        full_train=config.full_train, top_k=config.top_k, n_bootstrap=config.n_bootstrap,
                        reference_store=config.reference_store, seed=derive_seed(config.seed, "validate") % 10**6,
                        device=config.device, out_dir=out, progress=progress, log=log)
    timings["validate"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0

    summary = {
        "name": config.name,
        "dataset": dataset.describe(),
        "proxy": {"method": proxy.method, "ipc": proxy.ipc, "key": proxy.key, "reused": proxy.meta.get("reused"),
                  "path": str(out / "proxy.safetensors")},
        "proxy_vs_random": comparison,
        "search": {"study": config.study_name or config.name, "trials": len(search.trials_),
                   "best_arch": search.best_arch_, "best_arch_id": search.best_id_,
                   "best_val_acc": search.best_value_},
        "validation": {"n_archs": config.n_archs, **{k: v for k, v in val.metrics_.items()}},
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
        "config": asdict(config),
    }
    write_json(out / "summary.json", summary)
    table = summary_table(summary)
    write_text(out / "summary.md", f"# nasdistill run `{config.name}`\n\n{table}\n")
    log("\n" + table)
    return summary


def summary_table(summary: dict) -> str:
    """A small Markdown table of what a run found."""
    c = summary["proxy_vs_random"]
    v = summary["validation"]
    s = summary["search"]
    lo, hi = v.get("spearman_ci", (float("nan"), float("nan")))
    rows = [
        ("dataset", f"{summary['dataset']['name']} ({summary['dataset']['train']} train images)"),
        ("proxy", f"{summary['proxy']['method']}, ipc {summary['proxy']['ipc']}"
                  + (" (reused)" if summary["proxy"].get("reused") else "")),
        ("proxy test acc (default arch)", f"{c['proxy_acc']:.4f} ± {c['proxy_acc_std']:.4f}"),
        ("random subset test acc", f"{c['random_acc']:.4f} ± {c['random_acc_std']:.4f}"),
        ("best architecture found", f"{s['best_arch_id']} (val acc {s['best_val_acc']:.4f}, {s['trials']} trials)"),
        ("Spearman ρ (proxy vs full data)", f"{v['spearman']:.3f}  95% CI [{lo:.3f}, {hi:.3f}] ({v['n_archs']} archs)"),
        ("Kendall τ", f"{v['kendall']:.3f}"),
        ("total time", f"{summary['timings_s']['total']:.0f} s"),
    ]
    w = max(len(r[0]) for r in rows)
    lines = [f"| {'':{w}} | result |", f"|{'-' * (w + 2)}|--------|"]
    lines += [f"| {k:{w}} | {val} |" for k, val in rows]
    return "\n".join(lines)
