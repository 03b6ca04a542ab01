"""Spine benchmark: MNIST, ipc 10, ``dm`` vs ``random``.

For each proxy: test accuracy of DC's default ConvNet (depth 3, width 128, relu, instancenorm,
avgpool) trained on it, over 3 evaluation seeds; Spearman/Kendall of ``--archs`` sampled ConvNet
architectures (proxy-trained vs full-data-trained, both scored on the MNIST test split); wall times.

Full-data training is the expensive part on a CPU, so "full data" here is the first
``--full-per-class`` MNIST training images of each class (all of them with ``--full-per-class 0``).

    python benchmarks/spine.py                 # CPU budget, about an hour on 2 cores
    python benchmarks/spine.py --quick         # smoke run, a few minutes

Writes benchmarks/results/spine.json and prints a table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from _common import data_root, table, write_results

from nasdistill.data import load_dataset
from nasdistill.distill import distill
from nasdistill.spaces import get_space
from nasdistill.training import TrainConfig, fit_evaluate
from nasdistill.validate import RankingValidator


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--dm-iterations", type=int, default=300)
    ap.add_argument("--dm-batch-real", type=int, default=64)
    ap.add_argument("--eval-seeds", type=int, default=3)
    ap.add_argument("--eval-steps", type=int, default=300, help="steps of default-ConvNet training on a proxy")
    ap.add_argument("--archs", type=int, default=12)
    ap.add_argument("--arch-steps", type=int, default=200, help="steps of training each sampled arch on a proxy")
    ap.add_argument("--full-per-class", type=int, default=1000, help="MNIST train images per class for 'full' data")
    ap.add_argument("--full-epochs", type=int, default=3)
    ap.add_argument("--test-per-class", type=int, default=300)
    ap.add_argument("--quick", action="store_true", help="tiny budgets to check the script end to end")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.dm_iterations, args.eval_seeds, args.eval_steps = 20, 1, 30
        args.archs, args.arch_steps, args.full_per_class, args.full_epochs, args.test_per_class = 4, 20, 100, 1, 50

    t0 = time.perf_counter()
    root = data_root()
    full = None if args.full_per_class == 0 else args.full_per_class
    ds = load_dataset("mnist", root=root, train_per_class=full, test_per_class=args.test_per_class)
    space = get_space("convnet")
    arch = space.default_arch()
    print(f"MNIST: {len(ds.y_train)} train, {len(ds.y_test)} test; ipc {args.ipc}", flush=True)

    proxies = {
        "random": distill(ds, "random", ipc=args.ipc, seed=0, store=False),
        "dm": distill(ds, "dm", ipc=args.ipc, seed=0, iterations=args.dm_iterations,
                      batch_real=args.dm_batch_real, store=False),
    }
    rows = []
    proxy_cfg = TrainConfig(steps=args.arch_steps, augment="dsa")
    full_cfg = TrainConfig(epochs=args.full_epochs, batch_size=128, augment="dsa")
    for name, proxy in proxies.items():
        accs, times = [], []
        for s in range(args.eval_seeds):
            model = space.build_seeded(arch, ds.image_shape, ds.num_classes, s)
            acc, log = fit_evaluate(model, proxy.images, proxy.labels, ds.x_test, ds.y_test,
                                    TrainConfig(steps=args.eval_steps, augment="dsa", seed=s))
            accs.append(acc)
            times.append(log.wall_time)
        val = RankingValidator(space=space, n_archs=args.archs, seed=0, proxy_train=proxy_cfg, full_train=full_cfg,
                               top_k=5, n_bootstrap=1000).fit(ds, proxy)
        m = val.metrics_
        rows.append({
            "proxy": name,
            "acc_mean": statistics.mean(accs),
            "acc_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            "accs": accs,
            "distill_s": float(proxy.meta.get("wall_time_s", 0.0)),
            "eval_train_s": statistics.mean(times),
            "spearman": m["spearman"],
            "spearman_ci": tuple(m["spearman_ci"]),
            "kendall": m["kendall"],
            "validate_s": val.wall_time_,
            "full_trained": val.n_reference_trained_,
            "full_reused": val.n_reference_reused_,
            "records": val.records_,
        })
        print(f"{name}: acc {rows[-1]['acc_mean']:.4f}, Spearman {m['spearman']:.3f}", flush=True)

    payload = {"settings": vars(args), "dataset": ds.describe(), "arch": space.arch_id(arch), "rows": rows,
               "published": {"MNIST 10 ipc DM (ConvNet, paper budget)": 97.5, "MNIST 10 ipc random": 95.1},
               "total_s": time.perf_counter() - t0}
    path = write_results("spine" if not args.quick else "spine-quick", payload, args.out)
    print(table(rows, ["proxy", "acc_mean", "acc_std", "distill_s", "spearman", "spearman_ci", "kendall",
                       "validate_s", "full_trained", "full_reused"]))
    print(f"\nwritten: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
