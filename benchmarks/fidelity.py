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

On the reference table of record (``benchmarks/reference/<dataset>.json``, written by
``benchmarks/reference.py``): the whole training split, the table's architectures and full-data
budget, its seed-to-seed agreement shown as the ceiling; ``--relabel`` adds each proxy relabelled by a
teacher trained on the full data (:mod:`nasdistill.distill.relabel`):

    python benchmarks/fidelity.py --reference benchmarks/reference --ipc 10,50 --relabel

``--rank N`` (with ``--reference``) adds rank-aware distillation (:mod:`nasdistill.distill.methods.rank`):
the table's architectures are split (seeded) into a training pool of N, whose full-data *validation*
accuracies (seed 0) the ``rank`` proxy is optimised to reproduce, and the held-out rest, on which
every contender is then validated (so no contender is scored on an architecture ``rank`` saw):

    python benchmarks/fidelity.py --reference benchmarks/reference --datasets cifar10 --rank 24

Writes benchmarks/results/fidelity.json, and the validation with its report (report.md, report.html,
report_*.png) in benchmarks/results/fidelity-<dataset>/ (``<out stem>-<dataset>/`` beside ``--out``), and prints tables.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from _common import RESULTS, data_root, load_full, method_settings, width_subspace, write_results

from nasdistill.data import load_dataset
from nasdistill.distill import distill, method_class, method_names
from nasdistill.distill.relabel import Teacher, relabel
from nasdistill.report import write_report
from nasdistill.training import TrainConfig
from nasdistill.validate import ProxyContender, ReferenceStore, ReferenceTable, paired_bootstrap_all, validate

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


def rank_split(table: ReferenceTable, n: int) -> tuple[dict[str, float], list[dict]]:
    """The table's architectures split (seeded) into a training pool of ``n`` (id -> seed-0 validation
    accuracy, what ``rank`` learns from) and the held-out rest (what every contender is validated on)."""
    import numpy as np

    archs, ids = table.archs, table.arch_ids
    if not 2 <= n <= len(archs) - 10:
        raise SystemExit(f"fidelity.py: --rank {n}: the pool needs 2 or more architectures and leaves at least 10 "
                         f"of the table's {len(archs)} held out")
    val = table.accuracies(seed=0, split="val")
    order = np.random.default_rng(0).permutation(len(archs))
    pool = {ids[i]: float(val[i]) for i in order[:n]}
    return pool, [archs[i] for i in sorted(order[n:])]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="mnist,cifar10")
    ap.add_argument("--methods", default=",".join(m for m in method_names() if not method_class(m).requires))
    ap.add_argument("--ipc", default="10", help="images per class, a comma list (default: 10)")
    ap.add_argument("--reference", default=None, metavar="DIR",
                    help="validate on the reference tables DIR/<dataset>.json (whole splits, the table's archs)")
    ap.add_argument("--relabel", action="store_true",
                    help="also validate each proxy relabelled by a teacher trained on the full data")
    ap.add_argument("--rank", type=int, default=None, metavar="N",
                    help="with --reference: distil 'rank' on N of the table's architectures, validate on the rest")
    ap.add_argument("--repeats", type=int, default=1, metavar="K",
                    help="also score with each proxy seed-averaged over K trainings (K times the cost)")
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
        args.proxy_steps, args.full_epochs, args.bootstrap, args.ipc = 10, 1, 100, "2"
    if args.rank is not None and not args.reference:
        raise SystemExit("fidelity.py: --rank needs --reference (the table's results are the training pool)")
    name = "fidelity-quick" if args.quick else "fidelity-table" if args.reference else "fidelity"
    ipcs = [int(v) for v in str(args.ipc).split(",")]
    store = args.store or f"sqlite:///{RESULTS / (name + '.db')}"
    space = convnet_space(args.widths)
    proxy_train = TrainConfig(steps=args.proxy_steps, augment="dsa")
    full_train = TrainConfig(epochs=args.full_epochs, batch_size=128)

    payload: dict = {"settings": {k: v for k, v in vars(args).items() if k != "out"}, "anchors": ANCHORS,
                     "datasets": {}}
    for data_name in args.datasets.split(","):
        t0 = time.perf_counter()
        table = ReferenceTable.load(Path(args.reference) / f"{data_name}.json") if args.reference else None
        ds = load_full(data_name) if table else load(data_name, args)
        sample: dict = {"n_archs": args.archs}
        if table is not None:
            table.check_dataset(ds)
            with ReferenceStore(store) as st:
                table.seed_store(st)
            sample = {"archs": table.archs, "n_archs": len(table.archs)}
            space, full_train = table.space, table.train_config()
            if args.rank is not None:
                pool, held_out = rank_split(table, args.rank)
                sample = {"archs": held_out, "n_archs": len(held_out)}
        teacher = None
        if args.relabel:
            teacher = Teacher(device=args.device)
            print(f"[{data_name}] teacher {teacher.arch} {teacher.train.budget()}", flush=True)
            teacher.fit(ds)
            print(f"[{data_name}] teacher test acc {teacher.test_acc_:.4f} "
                  f"({'stored' if teacher.reused_ else f'{teacher.wall_time_:.0f} s'})", flush=True)
        proxies, distill_s = {}, {}
        for ipc in ipcs:
            for method in args.methods.split(","):
                settings = method_settings(method, "cpu", 2 if args.quick else args.iterations)
                print(f"[{data_name}] distilling {method} ipc {ipc} {settings}", flush=True)
                t = time.perf_counter()
                proxy = distill(ds, method, ipc=ipc, seed=0, progress=None, device=args.device, **settings)
                distill_s[f"{method}-ipc{ipc}"] = float(proxy.meta.get("wall_time_s") or time.perf_counter() - t)
                proxies[f"{method}-ipc{ipc}"] = proxy
                if teacher is not None:
                    proxies[f"{method}-ipc{ipc}-relabel"] = relabel(proxy, teacher)
            if args.rank is not None:
                settings = {**method_settings("rank", "cpu", 2 if args.quick else args.iterations), "pool": pool}
                print(f"[{data_name}] distilling rank ipc {ipc} on a pool of {len(pool)} "
                      f"(validated on the other {len(held_out)})", flush=True)
                proxy = distill(ds, "rank", ipc=ipc, seed=0, progress=None, device=args.device, **settings)
                distill_s[f"rank-ipc{ipc}"] = float(proxy.meta.get("wall_time_s") or 0.0)
                proxies[f"rank-ipc{ipc}"] = proxy
        if args.repeats > 1:
            for pname, p in list(proxies.items()):
                proxies[f"{pname}-x{args.repeats}"] = ProxyContender(p, name=f"{pname}-x{args.repeats}",
                                                                     repeats=args.repeats)
        result = validate(proxies, data=ds, space=space, baselines=["early-stop", "zero-cost"],
                          seed=0, proxy_train=proxy_train, full_train=full_train, top_k=(5, 10, 20),
                          n_bootstrap=args.bootstrap, store=store, device=args.device, log=print, **sample)
        # beside the JSON, named after it: results/<out stem>-<dataset>/
        out_dir = (Path(args.out).parent / f"{Path(args.out).stem}-{data_name}" if args.out
                   else RESULTS / f"{name}-{data_name}")
        result.save(out_dir)
        write_report(out_dir)
        anchors = "\n".join(f"  {k}: {v:+.2f}" for k, v in ANCHORS.items())
        ceiling = table.ceiling(n_bootstrap=args.bootstrap) if table is not None and table.complete() else None
        ceiling_text = "" if ceiling is None else (
            f"\nceiling (full-data seed 0 vs seed 1): Spearman {ceiling['spearman']:+.3f}, "
            f"top-10 {ceiling['spearman_top10']:+.3f}, regret@1 {100 * ceiling['regret@1']:.2f} pt\n")
        print(f"\n## {data_name}\n\n{result.table()}\n{ceiling_text}\npublished anchors (Spearman):\n{anchors}\n",
              flush=True)
        # paired tests of the figure of merit, top-10 Spearman (the validation's own tests compare rho over all)
        full = result.reference["scores"]
        full = [full[a] for a in result.arch_ids] if isinstance(full, dict) else list(full)
        pairwise_top10 = paired_bootstrap_all({r.name: r.scores for r in result.contenders}, full,
                                              statistic="spearman_top10", n_resamples=args.bootstrap, seed=0)
        payload["datasets"][data_name] = {"dataset": ds.describe(), "distill_s": distill_s,
                                          "pairwise_top10": pairwise_top10,
                                          "validation": result.to_dict(), "wall_s": time.perf_counter() - t0,
                                          "table": result.table(), "ceiling": ceiling,
                                          "teacher": None if teacher is None else {
                                              "arch": teacher.arch_id_, "test_acc": teacher.test_acc_,
                                              "train": teacher.train.budget(), "wall_s": teacher.wall_time_}}
        path = write_results(name, payload, args.out)
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
