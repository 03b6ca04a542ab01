"""Search benchmark (issue 4's proof): the same wall-clock budget spent searching on a distilled proxy
vs with a full-data objective, on CIFAR-10 (``$NASDISTILL_DATA/cifar10-jpeg``).

Two Optuna studies over ``--space`` with ``--sampler``, each given ``--budget-s`` seconds:

* **proxy**: every candidate trains on the distilled proxy (``--method``, ``--ipc`` images a class,
  distilled once or reused from the proxy store) for ``--proxy-steps`` steps with DSA augmentation
  and is scored on the real validation split;
* **full**: every candidate trains on the full training data for ``--objective-epochs`` epochs
  (a fixed small budget) and is scored on the same validation split.

Only candidates that *finished* within the budget count (a trial still running when time is up is
left out, so neither arm gets more than its budget). Each arm's best architecture is then trained
on the full training data for ``--retrain-epochs`` epochs (same seeds, same settings for both) and
scored on the test split. Reported per arm: that test accuracy, the candidates evaluated (and how
many distinct), the search's wall time, the time per candidate; and the proxy's distillation time,
which the proxy arm does not pay inside its budget (it is paid once and reused by every search; pass
``--charge-distillation`` to take it out of the proxy arm's budget instead).

"Full data" on a CPU is a slice: the first ``--train-per-class`` CIFAR-10 training images of each
class (a class-balanced validation split is held out of it), so the full-data arm is cheaper here
than it would be on all 50,000 images, which favours it.

    python benchmarks/search.py --quick                      # end to end in a few minutes
    python benchmarks/search.py --budget-s 600               # 10 minutes a study on the CPU defaults

Writes benchmarks/results/search.json (or ``--out``) and prints a table.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from _common import RESULTS, data_root, table, write_results

from nasdistill.data import ImageDataset, load_dataset
from nasdistill.distill import distill
from nasdistill.pipeline import method_settings
from nasdistill.search import OptunaSearch, ProxyEvaluator
from nasdistill.spaces import SearchSpace, get_space
from nasdistill.training import TrainConfig, evaluate, train


class FullDataEvaluator:
    """The full-data objective: train the candidate on ``dataset``'s training split for ``config``
    and return its accuracy on the validation split (the proxy arm's yardstick too)."""

    def __init__(self, space: SearchSpace, dataset: ImageDataset, config: TrainConfig, *, seed: int = 0,
                 device: str = "cpu"):
        self.space, self.dataset, self.device, self.seed = space, dataset, device, seed
        self.config = config.replace(seed=seed)

    def __call__(self, arch) -> float:
        ds = self.dataset
        model = self.space.build_seeded(arch, ds.image_shape, ds.num_classes, self.seed)
        train(model, ds.x_train, ds.y_train, self.config, device=self.device)
        return evaluate(model, ds.x_val, ds.y_val, device=self.device)

    def describe(self) -> dict:
        return {"objective": "full-data", "dataset_fingerprint": self.dataset.fingerprint,
                "train": self.config.budget(), "seed": self.seed, "space": self.space.name}


class Timed:
    """Wraps an evaluator; remembers when the training of each architecture finished (seconds after
    :meth:`start`)."""

    def __init__(self, space: SearchSpace, evaluator):
        self.space, self.evaluator = space, evaluator
        self.finished: dict[str, float] = {}  # arch id -> finish time
        self.t0 = time.monotonic()

    def start(self) -> None:
        self.t0 = time.monotonic()

    def __call__(self, arch) -> float:
        value = self.evaluator(arch)
        self.finished[self.space.arch_id(arch)] = time.monotonic() - self.t0
        return value

    def describe(self) -> dict:
        return self.evaluator.describe()


def search_arm(name: str, space: SearchSpace, evaluator, args, budget_s: float) -> dict:
    """An in-memory Optuna study over ``space`` for ``budget_s`` seconds; the candidates that finished
    in time, the best of them and the wall time."""
    timed = Timed(space, evaluator)
    search = OptunaSearch(space, timed, n_trials=space.size() or 10**6, sampler=args.sampler, storage="memory",
                          study_name=name, seed=args.seed, timeout=max(budget_s, 1e-3), progress=args.progress)
    timed.start()
    search.run()
    wall = time.monotonic() - timed.t0
    # Trials that trained a network, in order; reused ones (an architecture proposed again) cost nothing.
    trained = [t for t in search.trials_ if t["state"] == "COMPLETE" and not t.get("reused")]
    in_time = [t for t in trained if timed.finished.get(t["arch_id"], float("inf")) <= budget_s]
    best = max(in_time, key=lambda t: (t["value"], -t["number"])) if in_time else None
    print(f"{name}: {len(in_time)} candidates in {budget_s:.0f}s ({len(trained) - len(in_time)} finished late, "
          f"{len(search.trials_)} trials in all); best {best['arch_id'] if best else None} "
          f"(val acc {best['value'] if best else float('nan'):.4f})", flush=True)
    return {"arm": name, "budget_s": budget_s, "wall_s": wall, "candidates": len(in_time),
            "distinct": len({t["arch_id"] for t in in_time}), "finished_late": len(trained) - len(in_time),
            "s_per_candidate": (sum(t["duration_s"] for t in in_time) / len(in_time)) if in_time else None,
            "best_arch_id": best["arch_id"] if best else None, "best_arch": best and (best.get("arch") or space.parse_id(best["arch_id"])),
            "best_val_acc": best["value"] if best else None,
            "trials": [{k: t[k] for k in ("number", "arch_id", "value", "duration_s")} for t in in_time]}


def final_test(space: SearchSpace, ds: ImageDataset, arch: dict, config: TrainConfig, seeds: int,
               device: str, cache: dict) -> dict:
    """Test accuracy of ``arch`` trained on the full training data, over ``seeds`` seeds (cached by id)."""
    aid = space.arch_id(arch)
    if aid not in cache:
        accs, t0 = [], time.perf_counter()
        for s in range(seeds):
            model = space.build_seeded(arch, ds.image_shape, ds.num_classes, s)
            train(model, ds.x_train, ds.y_train, config.replace(seed=s), device=device)
            accs.append(evaluate(model, ds.x_test, ds.y_test, device=device))
        t = torch.tensor(accs)
        cache[aid] = {"test_acc": float(t.mean()), "test_acc_std": float(t.std()) if seeds > 1 else 0.0,
                      "test_accs": accs, "retrain_s": time.perf_counter() - t0}
    return cache[aid]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget-s", type=float, default=600, help="wall-clock seconds of each study (default: 600)")
    ap.add_argument("--method", default="dm", help="distillation method of the proxy (default: dm)")
    ap.add_argument("--ipc", type=int, default=10, help="proxy images per class (default: 10)")
    ap.add_argument("--distill-iterations", type=int, default=None,
                    help="iterations of the method (default: its cpu budget preset)")
    ap.add_argument("--train-per-class", type=int, default=500,
                    help="CIFAR-10 training images a class used as the 'full data' (0: all) (default: 500)")
    ap.add_argument("--val-per-class", type=int, default=None,
                    help="of those, held out for validation (default: 10%%, at most 500)")
    ap.add_argument("--test-per-class", type=int, default=200, help="test images a class (0: all) (default: 200)")
    ap.add_argument("--space", default="convnet", help="search space (default: convnet)")
    ap.add_argument("--sampler", default="tpe", help="Optuna sampler of both studies (default: tpe)")
    ap.add_argument("--proxy-steps", type=int, default=50,
                    help="training steps of a candidate on the proxy (the whole proxy a step at ipc <= 25), DSA "
                         "augmentation; 50 steps on 100 images cost about one epoch of the 4,500-image slice "
                         "(default: 50)")
    ap.add_argument("--objective-epochs", type=int, default=1,
                    help="epochs of a candidate on the full data in the full-data study (default: 1)")
    ap.add_argument("--retrain-epochs", type=int, default=5,
                    help="epochs of the final full-data training of each study's best (default: 5)")
    ap.add_argument("--batch-size", type=int, default=128, help="batch size on the full data (default: 128)")
    ap.add_argument("--eval-seeds", type=int, default=1, help="final trainings per best architecture (default: 1)")
    ap.add_argument("--charge-distillation", action="store_true",
                    help="take the proxy's distillation time out of the proxy study's budget")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default: 1; more threads slow tiny trainings on a loaded machine)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--progress", action="store_true", help="show progress bars")
    ap.add_argument("--quick", action="store_true", help="tiny budgets to check the script end to end")
    ap.add_argument("--out", default=None, help="output JSON (default: benchmarks/results/search.json)")
    args = ap.parse_args(argv)
    if args.quick:
        args.budget_s, args.train_per_class, args.test_per_class = 40, 50, 20
        args.ipc, args.distill_iterations, args.proxy_steps, args.retrain_epochs = 2, 5, 10, 1
        args.out = args.out or str(RESULTS / "search-quick.json")
    torch.set_num_threads(args.threads)

    t_start = time.perf_counter()
    root = data_root()
    ds = load_dataset(f"imagefolder:{root / 'cifar10-jpeg'}", train_per_class=args.train_per_class or None,
                      test_per_class=args.test_per_class or None, val_per_class=args.val_per_class, seed=0)
    space = get_space(args.space)
    print(f"CIFAR-10: {len(ds.y_train)} train / {len(ds.y_val)} val / {len(ds.y_test)} test; space {space.name} "
          f"({space.size() or 'unbounded'} architectures); {args.budget_s:.0f}s a study", flush=True)

    settings = method_settings(args.method, {"iterations": args.distill_iterations}, budget="cpu")
    t = time.perf_counter()
    proxy = distill(ds, args.method, ipc=args.ipc, seed=args.seed, device=args.device, progress=args.progress,
                    **settings)
    distill_s = float(proxy.meta.get("wall_time_s") or time.perf_counter() - t)
    print(f"proxy: {args.method} ipc {args.ipc} ({len(proxy)} images), distilled in {distill_s:.0f}s"
          + (" (reused from the store)" if proxy.meta.get("reused") else ""), flush=True)

    proxy_train = TrainConfig(steps=args.proxy_steps, augment="dsa")
    full_objective = TrainConfig(epochs=args.objective_epochs, batch_size=args.batch_size)
    proxy_budget = args.budget_s - (distill_s if args.charge_distillation else 0.0)
    arms = [
        search_arm("proxy", space, ProxyEvaluator(space, proxy, ds, proxy_train, device=args.device, seed=args.seed),
                   args, proxy_budget),
        search_arm("full", space, FullDataEvaluator(space, ds, full_objective, seed=args.seed, device=args.device),
                   args, args.budget_s),
    ]

    final = TrainConfig(epochs=args.retrain_epochs, batch_size=args.batch_size)
    cache: dict = {}
    for arm in arms:
        if arm["best_arch"] is not None:
            arm.update(final_test(space, ds, arm["best_arch"], final, args.eval_seeds, args.device, cache))
            print(f"{arm['arm']}: {arm['best_arch_id']} -> full-data test acc {arm['test_acc']:.4f}", flush=True)

    payload = {
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "progress")},
        "dataset": ds.describe(),
        "proxy": {"method": args.method, "ipc": args.ipc, "images": len(proxy), "key": proxy.key,
                  "settings": settings, "distill_s": distill_s, "reused": bool(proxy.meta.get("reused")),
                  "charged_to_budget": args.charge_distillation},
        "objectives": {"proxy": proxy_train.budget(), "full": full_objective.budget(), "final": final.budget()},
        "arms": arms,
        "total_s": time.perf_counter() - t_start,
    }
    path = write_results("search", payload, args.out)
    rows = [{"objective": a["arm"], "candidates": a["candidates"], "distinct": a["distinct"],
             "s/candidate": a["s_per_candidate"], "search s": a["wall_s"], "best arch": a["best_arch_id"],
             "best val acc": a["best_val_acc"], "test acc (full-data retrain)": a.get("test_acc")} for a in arms]
    print()
    print(table(rows, list(rows[0])))
    print(f"\nproxy distillation: {distill_s:.0f}s ({'charged to' if args.charge_distillation else 'outside'} the "
          f"proxy study's budget); final training: {args.retrain_epochs} epochs on {len(ds.y_train)} images; "
          f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
