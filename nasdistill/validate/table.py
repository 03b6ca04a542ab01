"""A reference table: full-data results of a fixed set of architectures, as a versioned data file.

A small NAS benchmark of its own: the architectures (explicit, so nothing is re-sampled), the
training protocol, the dataset's fingerprint and, per seed, each architecture's test and validation
accuracy. Computed once through the results store (:func:`reference_jobs`), saved as JSON
(:meth:`ReferenceTable.save`), loaded without executing code (:meth:`ReferenceTable.load`) and
reused by validations: :meth:`ReferenceTable.seed_store` puts its results into a results store under
the keys a :class:`~nasdistill.validate.Validation` of the same data, architectures, budget and seed
looks up, so that validation trains nothing on the full data.

The seed-to-seed agreement of the full-data trainings (:meth:`ReferenceTable.ceiling`) is the best
any proxy can be expected to do: a second full-data training ranks the architectures no better.

>>> table = ReferenceTable.load("benchmarks/reference/cifar10.json")
>>> table.accuracies(seed=0)           # test accuracy per architecture, in table order
>>> table.ceiling()["spearman_top10"]  # seed 0 vs seed 1
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .. import __version__
from .._io import write_json, write_text
from ..data import ImageDataset
from ..defaults import DEFAULT_PROXY_TRAIN
from ..errors import ConfigError, DatasetError
from ..spaces import get_space
from ..training import TrainConfig
from ..work import DEFAULT_LEASE_S, Job, Outcome, run_jobs, worker_id
from .contenders import Context, train_reference
from .metrics import ranking_metrics
from .reference import ReferenceKey, ReferenceResult, ReferenceStore, budget_key

FORMAT = "nasdistill.reference-table/1"
#: Top-k counts the ceiling and summaries report.
TABLE_TOP_K = (5, 10, 20)


def _context(dataset: ImageDataset, space: str, train: TrainConfig, seed: int, device: str) -> Context:
    return Context(dataset=dataset, space=get_space(space), seed=seed, proxy_train=DEFAULT_PROXY_TRAIN,
                   full_train=train.replace(seed=seed), device=device)


def reference_jobs(store: ReferenceStore, dataset: ImageDataset, archs: Sequence[dict], train: TrainConfig,
                   seed: int, *, space: str = "convnet", device: str = "cpu",
                   on_done: Callable[[Job, Outcome], None] | None = None, lease_s: float = DEFAULT_LEASE_S,
                   log: Callable[[str], None] | None = None) -> list[Outcome]:
    """Train (or reuse from ``store``) every architecture of ``archs`` on ``dataset``'s full training
    split for ``train`` with ``seed``; several processes on one store share the work.

    The keys are those of a :class:`~nasdistill.validate.Validation` of ``space`` with
    ``full_train=train`` and ``seed``, so such a validation reuses every result.
    """
    ctx = _context(dataset, space, train, seed, device)
    bkey = budget_key(ctx.full_train)
    jobs = []
    for arch in archs:
        aid = ctx.space.arch_id(arch)
        key = ReferenceKey(dataset.fingerprint, ctx.space.name, aid, bkey, seed)
        jobs.append(Job(key, lookup=lambda key=key: store.get(key),
                        compute=lambda arch=arch: train_reference(ctx, arch),
                        save=lambda r, w, t, key=key: store.put(key, r, worker=w, started=t),
                        label=f"reference {aid} seed {seed}"))
    return run_jobs(jobs, store, worker=worker_id(), lease_s=lease_s, on_done=on_done, log=log)


@dataclass
class ReferenceTable:
    """Full-data results of a fixed list of architectures (see the module docstring).

    ``rows``: one dict per architecture: ``arch_id``, ``arch``, ``params``, ``train_flops`` (forward +
    backward FLOPs per training image) and ``results``: seed (a string, as JSON keys are) -> ``test_acc``,
    ``val_acc``, ``wall_time``. A seed whose training has not finished is absent from ``results``.
    """

    dataset: dict  #: :meth:`ImageDataset.describe` of the data (``name``, ``fingerprint``, sizes)
    space: str  #: the space the ids belong to (the keys of the results store use it)
    train: dict  #: :meth:`TrainConfig.budget` of the full-data training
    seeds: list[int]
    rows: list[dict]
    sample: dict = field(default_factory=dict)  #: how the architectures were drawn, for people
    info: dict = field(default_factory=dict)  #: machine, versions, creation time

    # --- building --------------------------------------------------------------------------------
    @classmethod
    def from_store(cls, store: ReferenceStore, dataset: ImageDataset, archs: Sequence[dict], train: TrainConfig,
                   seeds: Sequence[int], *, space: str = "convnet", sample: dict | None = None,
                   device: str = "cpu") -> "ReferenceTable":
        """The table of what ``store`` holds for these architectures, budget and seeds (missing ones left out)."""
        from .costs import train_flops_per_sample

        ctx = _context(dataset, space, train, seeds[0], device)
        bkey = budget_key(ctx.full_train)
        rows = []
        for arch in archs:
            aid = ctx.space.arch_id(arch)
            results = {}
            for seed in seeds:
                r = store.get(ReferenceKey(dataset.fingerprint, ctx.space.name, aid, bkey, int(seed)))
                if r is not None:
                    results[str(seed)] = {"test_acc": r.test_acc, "val_acc": r.val_acc, "wall_time": r.wall_time}
            model = ctx.space.build(arch, dataset.image_shape, dataset.num_classes)
            rows.append({"arch_id": aid, "arch": dict(ctx.space.validate(arch)),
                         "params": sum(p.numel() for p in model.parameters()),
                         "train_flops": train_flops_per_sample(model, dataset.image_shape, dataset.num_classes),
                         "results": results})
        import torch

        info = {"nasdistill": __version__, "torch": torch.__version__, "threads": torch.get_num_threads(),
                "device": device, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        return cls(dataset=dataset.describe(), space=ctx.space.name, train=ctx.full_train.budget(),
                   seeds=[int(s) for s in seeds], rows=rows, sample=dict(sample or {}), info=info)

    # --- files -----------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"format": FORMAT, "dataset": self.dataset, "space": self.space, "train": self.train,
                "seeds": self.seeds, "sample": self.sample, "info": self.info, "rows": self.rows}

    def save(self, path: str | os.PathLike) -> Path:
        """Write the table as JSON (atomically)."""
        return write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ReferenceTable":
        """Read a table written by :meth:`save`; a malformed file gives one :class:`DatasetError` line."""
        path = Path(path)
        fix = "pass a file written by benchmarks/reference.py (nasdistill.reference-table/1)"
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DatasetError(f"no reference table at {path}", fix) from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DatasetError(f"cannot read the reference table {path} ({e})", fix) from None
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            found = d.get("format") if isinstance(d, dict) else type(d).__name__
            raise DatasetError(f"{path} is not a reference table (format {found!r}, expected {FORMAT!r})", fix)
        try:
            table = cls(dataset=dict(d["dataset"]), space=str(d["space"]), train=dict(d["train"]),
                        seeds=[int(s) for s in d["seeds"]], rows=list(d["rows"]), sample=dict(d.get("sample", {})),
                        info=dict(d.get("info", {})))
            TrainConfig(**table.train)
            for row in table.rows:
                str(row["arch_id"]), dict(row["arch"])
                for seed, r in dict(row["results"]).items():
                    if int(seed) not in table.seeds or not math.isfinite(float(r["test_acc"])):
                        raise ValueError(f"row {row['arch_id']}: bad result for seed {seed}")
            if not isinstance(table.dataset.get("fingerprint"), str):
                raise ValueError("dataset has no fingerprint")
        except (KeyError, TypeError, ValueError, ConfigError) as e:
            raise DatasetError(f"reference table {path} is malformed ({e})", fix) from None
        return table

    # --- reading ---------------------------------------------------------------------------------
    @property
    def arch_ids(self) -> list[str]:
        return [r["arch_id"] for r in self.rows]

    @property
    def archs(self) -> list[dict]:
        return [dict(r["arch"]) for r in self.rows]

    def train_config(self, seed: int = 0) -> TrainConfig:
        """The full-data training budget of the table, with ``seed``."""
        return TrainConfig(**self.train, seed=seed)

    def complete(self, seed: int | None = None) -> bool:
        """Whether every architecture has a result for ``seed`` (None: for every seed)."""
        seeds = self.seeds if seed is None else [seed]
        return all(str(s) in r["results"] for r in self.rows for s in seeds)

    def accuracies(self, seed: int | None = None, split: str = "test") -> np.ndarray:
        """Accuracy per architecture (table order) for ``seed``, or the mean over seeds (None); nan where missing."""
        field_ = {"test": "test_acc", "val": "val_acc"}.get(split)
        if field_ is None:
            raise ConfigError(f"unknown split {split!r}", "use test or val")
        seeds = self.seeds if seed is None else [seed]
        out = []
        for r in self.rows:
            vals = [r["results"][str(s)][field_] for s in seeds if str(s) in r["results"]]
            vals = [v for v in vals if v is not None]
            out.append(float(np.mean(vals)) if len(vals) == len(seeds) else math.nan)
        return np.asarray(out, dtype=float)

    def check_dataset(self, dataset: ImageDataset) -> None:
        """Refuse ``dataset`` unless it is the data the table was computed on (same fingerprint)."""
        if dataset.fingerprint != self.dataset.get("fingerprint"):
            raise DatasetError(f"the reference table was computed on {self.dataset.get('name')} "
                            f"(fingerprint {self.dataset.get('fingerprint')}), not on {dataset.name} "
                            f"(fingerprint {dataset.fingerprint})",
                            "load the same dataset with the same slices and validation split as the table")

    def ceiling(self, seeds: tuple[int, int] | None = None, *, n_bootstrap: int = 1000) -> dict:
        """Agreement of two seeds' full-data rankings (:func:`ranking_metrics`), over the architectures both have."""
        a, b = seeds or tuple(self.seeds[:2])
        x, y = self.accuracies(a), self.accuracies(b)
        ok = np.isfinite(x) & np.isfinite(y)
        if ok.sum() < 3:
            raise ConfigError(f"the table has {int(ok.sum())} architectures with both seeds {a} and {b}",
                              "finish the reference computation (benchmarks/reference.py)")
        k = tuple(k for k in TABLE_TOP_K if k <= ok.sum())
        return ranking_metrics(x[ok], y[ok], top_k=k, regret_k=(1, 5), n_bootstrap=n_bootstrap, seed=0)

    def seed_store(self, store: ReferenceStore) -> int:
        """Put the table's results into ``store`` under a validation's keys; returns how many were new there."""
        bkey = budget_key(self.train)
        fp, added = self.dataset["fingerprint"], 0
        for row in self.rows:
            for seed, r in row["results"].items():
                key = ReferenceKey(fp, self.space, row["arch_id"], bkey, int(seed))
                if store.get(key) is None:
                    store.put(key, ReferenceResult(test_acc=float(r["test_acc"]), val_acc=r.get("val_acc"),
                                                   wall_time=float(r.get("wall_time") or 0.0),
                                                   params=row.get("params"), budget=self.train))
                    added += 1
        return added

    # --- for people --------------------------------------------------------------------------------
    def summary(self) -> str:
        """A few lines: what the table holds, the accuracy range, and the seed-to-seed ceiling."""
        n = len(self.rows)
        done = {s: sum(str(s) in r["results"] for r in self.rows) for s in self.seeds}
        lines = [f"reference table: {self.dataset.get('name')} ({self.dataset.get('train')} train / "
                 f"{self.dataset.get('test')} test images), {n} architectures of {self.space}, "
                 f"budget {_budget_text(self.train)}",
                 "  results: " + ", ".join(f"seed {s}: {c}/{n}" for s, c in done.items())]
        acc = self.accuracies(self.seeds[0])
        if np.isfinite(acc).any():
            lines.append(f"  test accuracy (seed {self.seeds[0]}): {np.nanmin(acc):.4f} .. {np.nanmax(acc):.4f}, "
                         f"median {np.nanmedian(acc):.4f}")
        try:
            c = self.ceiling()
        except ConfigError:
            return "\n".join(lines)
        top = "  ".join(f"top-{k} {c[f'spearman_top{k}']:+.3f}" for k in TABLE_TOP_K if f"spearman_top{k}" in c)
        lines.append(f"  ceiling (seed {self.seeds[0]} vs {self.seeds[1]}, {c['n']} archs): Spearman "
                     f"{c['spearman']:+.3f} [{c['spearman_ci'][0]:+.2f}, {c['spearman_ci'][1]:+.2f}]  "
                     f"Kendall {c['kendall']:+.3f}  {top}  regret@1 {100 * c['regret@1']:.2f} pt")
        return "\n".join(lines)

    def write_report(self, folder: str | os.PathLike) -> Path:
        """``report.md`` (protocol, ceiling, one row per architecture) and ``seeds.png`` in ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        rows = sorted(self.rows, key=lambda r: -_mean_test(r))
        head = "| rank | architecture | params | MFLOP/img | " + " | ".join(f"test s{s}" for s in self.seeds) + \
            " | val (mean) | wall s |"
        lines = ["# Reference table", "", "```", self.summary(), "```", "",
                 f"Protocol: {_budget_text(self.train)}; trained on the training split less the validation "
                 f"split, scored on the whole test split. Sample: {json.dumps(self.sample)}. "
                 f"Machine: {json.dumps(self.info)}.", "", head,
                 "|" + "---|" * (6 + len(self.seeds))]
        for i, r in enumerate(rows, 1):
            res = r["results"]
            tests = " | ".join(f"{res[str(s)]['test_acc']:.4f}" if str(s) in res else "–" for s in self.seeds)
            vals = [v["val_acc"] for v in res.values() if v.get("val_acc") is not None]
            walls = [v["wall_time"] for v in res.values()]
            lines.append(f"| {i} | {r['arch_id']} | {r['params']:,} | {r['train_flops'] / 1e6:.1f} | {tests} | "
                         f"{np.mean(vals) if vals else math.nan:.4f} | {np.mean(walls) if walls else math.nan:.0f} |")
        write_text(folder / "report.md", "\n".join(lines) + "\n")
        self._plot(folder / "seeds.png")
        return folder

    def _plot(self, path: Path) -> None:
        if len(self.seeds) < 2:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from .._io import atomic_path

        a, b = self.accuracies(self.seeds[0]), self.accuracies(self.seeds[1])
        ok = np.isfinite(a) & np.isfinite(b)
        fig, ax = plt.subplots(figsize=(4.5, 4.5), layout="constrained")
        ax.scatter(100 * a[ok], 100 * b[ok], s=14)
        lo = 100 * min(a[ok].min(), b[ok].min()) if ok.any() else 0
        ax.plot([lo, 100], [lo, 100], color="grey", lw=0.8, ls="--")
        ax.set_xlabel(f"test accuracy, seed {self.seeds[0]} (%)")
        ax.set_ylabel(f"test accuracy, seed {self.seeds[1]} (%)")
        ax.set_title(f"{self.dataset.get('name')}: full-data seed vs seed ({int(ok.sum())} archs)", fontsize=9)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110)
        plt.close(fig)


def _mean_test(row: dict) -> float:
    vals = [r["test_acc"] for r in row["results"].values()]
    return float(np.mean(vals)) if vals else -math.inf


def _budget_text(train: dict) -> str:
    budget = f"{train['epochs']} epochs" if train.get("epochs") else f"{train['steps']} steps"
    return (f"{budget}, batch {train['batch_size']}, SGD lr {train['lr']} momentum {train['momentum']} "
            f"wd {train['weight_decay']}, {train['schedule']} schedule, augment {train.get('augment')}, "
            f"precision {train.get('precision', 'fp32')}")


__all__ = ["ReferenceTable", "reference_jobs", "FORMAT"]
