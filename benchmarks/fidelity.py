"""Ranking fidelity of every method's proxy, beside the cheaper alternatives.

On MNIST and on CIFAR-10 (``$NASDISTILL_DATA/cifar10-jpeg``): distil every available method's proxy
at ipc 10 (each method's CPU preset), then validate all of them together with the ``early-stop``
and ``zero-cost`` baselines on one seeded sample of ``--archs`` ConvNet architectures against one
full-data reference: Spearman (all, top-k), Kendall, regret, 95% bootstrap CIs, cost per candidate
and speed-up over full-data training.

CPU budget (default): architectures are sampled from DC's ConvNet space restricted to the widths in
``--widths`` (32 and 64: 360 of the 720 architectures; ``--widths all`` keeps widths 128 and 256, whose
unpooled members cost ~20 minutes a proxy training on one core), "full data" is the first
``--train-per-class`` training images of each class, the reference trains ``--full-epochs`` epochs,
proxies train ``--proxy-steps`` steps, test on ``--test-per-class`` images a class. Results
(references, scores) live in a results store, so an interrupted run resumes where it stopped.

    python benchmarks/fidelity.py                         # both datasets, all methods
    python benchmarks/fidelity.py --datasets mnist --methods random,dm,dc
    python benchmarks/fidelity.py --quick

Writes benchmarks/results/fidelity.json, and the validation with its report (report.md, report.html,
report_*.png) in benchmarks/results/fidelity-<dataset>/ (beside ``--out`` when given), and prints tables.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from _common import RESULTS, data_root, method_settings, width_subspace, write_results

from nasdistill.data import load_dataset
from nasdistill.distill import distill, method_names
from nasdistill.report import write_report
from nasdistill.training import TrainConfig
from nasdistill.validate import validate

#: Published anchors (CIFAR-10, DC's 720-ConvNet space): Spearman of proxy vs full-data ranking.
ANCHORS = {
    "DC, 10 ipc, all 720 ConvNets (Zhao et al. 2021)": 0.79,
    "random subset, 10 ipc (Zhao et al. 2021)": -0.2,
    "FTD, 50 ipc, top-10 (Du et al. 2023)": 0.68,
}


def load(name: str, args):
    root = data_root()
    spec = "mnist" if name == "mnist" else f"imagefolder:{root / 'cifar10-jpeg'}"
    return load_dataset(spec, root=root, train_per_class=args.train_per_class, test_per_class=args.test_per_class)


def convnet_space(widths: str):
    """DC's ConvNet space by name ('all'), or the part of it with the given widths."""
    if widths == "all":
        return "convnet"
    try:
        return width_subspace(widths)
    except ValueError as e:
        raise SystemExit(str(e)) from None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="mnist,cifar10")
    ap.add_argument("--methods", default=",".join(method_names()))
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--archs", type=int, default=16)
    ap.add_argument("--widths", default="32,64", help="ConvNet widths to sample from, or 'all' (DC's 720 space)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--train-per-class", type=int, default=500)
    ap.add_argument("--test-per-class", type=int, default=200)
    ap.add_argument("--proxy-steps", type=int, default=200)
    ap.add_argument("--full-epochs", type=int, default=3)
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--iterations", type=int, default=None,
                    help="cap every method's iterations (the same cap as benchmarks/methods.py --iterations "
                         "reuses its stored proxies)")
    ap.add_argument("--store", default=None, help="results store URL (default: benchmarks/results/fidelity.db)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.archs, args.train_per_class, args.test_per_class = 4, 40, 20
        args.proxy_steps, args.full_epochs, args.bootstrap, args.ipc = 10, 1, 100, 2
    name = "fidelity-quick" if args.quick else "fidelity"
    store = args.store or f"sqlite:///{RESULTS / (name + '.db')}"
    space = convnet_space(args.widths)
    proxy_train = TrainConfig(steps=args.proxy_steps, augment="dsa")
    full_train = TrainConfig(epochs=args.full_epochs, batch_size=128)

    payload: dict = {"settings": {k: v for k, v in vars(args).items() if k != "out"}, "anchors": ANCHORS,
                     "datasets": {}}
    for data_name in args.datasets.split(","):
        t0 = time.perf_counter()
        ds = load(data_name, args)
        proxies, distill_s = {}, {}
        for method in args.methods.split(","):
            settings = method_settings(method, "cpu", 2 if args.quick else args.iterations)
            print(f"[{data_name}] distilling {method} {settings}", flush=True)
            t = time.perf_counter()
            proxy = distill(ds, method, ipc=args.ipc, seed=0, progress=True, device=args.device, **settings)
            distill_s[method] = float(proxy.meta.get("wall_time_s") or time.perf_counter() - t)
            proxies[f"{method}-ipc{args.ipc}"] = proxy
        result = validate(proxies, data=ds, space=space, baselines=["early-stop", "zero-cost"],
                          n_archs=args.archs, seed=0, proxy_train=proxy_train, full_train=full_train,
                          n_bootstrap=args.bootstrap, store=store, device=args.device, log=print)
        out_dir = (Path(args.out).parent if args.out else RESULTS) / f"{name}-{data_name}"  # beside the JSON
        result.save(out_dir)
        write_report(out_dir)
        anchors = "\n".join(f"  {k}: {v:+.2f}" for k, v in ANCHORS.items())
        print(f"\n## {data_name}\n\n{result.table()}\n\npublished anchors (Spearman):\n{anchors}\n", flush=True)
        payload["datasets"][data_name] = {"dataset": ds.describe(), "distill_s": distill_s,
                                          "validation": result.to_dict(), "wall_s": time.perf_counter() - t0,
                                          "table": result.table()}
        path = write_results(name, payload, args.out)
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
