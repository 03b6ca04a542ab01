"""The reference table of record: full-data results of a seeded sample of DC's ConvNets, two seeds each.

Every architecture of the sample is trained on the **whole** training split (MNIST: 55,000 images,
CIFAR-10 from ``$NASDISTILL_DATA/cifar10-jpeg``: 45,000; 500 a class of the 60,000 / 50,000 are
held out as the validation split) and scored on the whole test split (10,000), once per seed. The
seed-to-seed agreement of those trainings is the ceiling every fidelity table shows.

CPU protocol (default, stated in the table): 48 architectures sampled with seed 0 from DC's space
restricted to width 32 (``--widths``; 180 of the 720), 5 epochs, batch 128, SGD lr 0.01 momentum
0.9 weight decay 5e-4, cosine decay, no augmentation, bfloat16 autocast of the forward pass
(``--precision``), seeds 0 and 1. On a GPU, ``--widths all --epochs 50`` approaches DC's protocol.

Every result goes through the results store (``--store``), so the run resumes where it stopped and
several processes (or machines, with a PostgreSQL URL) share the work, each result computed once:

    python benchmarks/reference.py                              # compute (resumable), then export
    python benchmarks/reference.py --export-only                # write the table from what is stored

Jobs run seed 0 of every dataset first, then seed 1. Results already in the committed tables are put
into the store first, so a run on a fresh machine (whose store is empty) resumes where the tables stop. The table (``benchmarks/reference/<dataset>.json``,
format ``nasdistill.reference-table/1``, loaded by :class:`nasdistill.validate.ReferenceTable` and by
``nasdistill validate --reference FILE``) is rewritten after every finished result, so a partial
run still leaves a usable (partial) table; ``report.md`` and a seed-vs-seed plot go beside it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from _common import REPO, load_full, width_subspace

from nasdistill.training import TrainConfig
from nasdistill.validate import ReferenceStore
from nasdistill.validate.table import ReferenceTable, reference_jobs

OUT = REPO / "benchmarks" / "reference"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="cifar10,mnist")
    ap.add_argument("--archs", type=int, default=48)
    ap.add_argument("--widths", default="32", help="ConvNet widths to sample from (comma list), or 'all'")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--store", default=None, help="results store URL (default: benchmarks/results/reference.db)")
    ap.add_argument("--out", default=str(OUT), help="folder of the tables (default: benchmarks/reference)")
    ap.add_argument("--export-only", action="store_true", help="write the tables from the store; train nothing")
    ap.add_argument("--first", default=None, metavar="DATASET:SEED",
                    help="compute this dataset and seed first (e.g. cifar10:1, the ceiling), then the rest in order")
    args = ap.parse_args(argv)
    try:
        subspace = width_subspace(args.widths)
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError as e:
        raise SystemExit(f"reference.py: {e}") from None
    store = ReferenceStore(args.store or f"sqlite:///{REPO / 'benchmarks' / 'results' / 'reference.db'}")
    train = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, schedule="cosine",
                        precision=args.precision)
    archs = subspace.sample(args.archs, 0)
    datasets = {name: load_full(name) for name in args.datasets.split(",")}
    out = Path(args.out)

    def export(name: str) -> ReferenceTable:
        table = ReferenceTable.from_store(store, datasets[name], archs, train, seeds, sample={
            "space": "convnet", "widths": args.widths, "n_archs": args.archs, "seed": 0}, device=args.device)
        table.save(out / f"{name}.json")
        table.write_report(out / name)
        return table

    for name in datasets:  # a fresh machine resumes from the committed tables (the store is not committed)
        committed = out / f"{name}.json"
        if committed.is_file():
            table = ReferenceTable.load(committed)
            if table.dataset.get("fingerprint") == datasets[name].fingerprint and table.train == train.budget():
                added = table.seed_store(store)
                if added:
                    print(f"{name}: {added} results taken from {committed} into the store", flush=True)

    if not args.export_only:
        plan = [(name, seed) for seed in seeds for name in datasets]  # seed 0 everywhere first
        if args.first:
            name, _, seed = args.first.partition(":")
            first = (name, int(seed)) if seed.isdigit() else None
            if first not in plan:
                raise SystemExit(f"reference.py: --first {args.first}: not one of "
                                 f"{', '.join(f'{n}:{s}' for n, s in plan)}")
            plan.remove(first)
            plan.insert(0, first)
        total, t0 = len(plan) * len(archs), time.time()
        count = {"done": 0, "computed": 0}

        def on_done(job, outcome, name=None):
            count["done"] += 1
            count["computed"] += outcome.computed
            r = outcome.result
            left = total - count["done"]
            eta = (time.time() - t0) / count["computed"] * left / 60 if count["computed"] else float("nan")
            print(f"[{time.strftime('%H:%M:%S')}] {count['done']}/{total} {job.label}: test {r.test_acc:.4f} "
                  f"({'trained' if outcome.computed else 'stored'}, {r.wall_time:.0f} s); ETA {eta:.0f} min "
                  f"(this worker alone)", flush=True)
            if outcome.computed:
                export(name)

        for name, seed in plan:
            reference_jobs(store, datasets[name], archs, train, seed, device=args.device,
                           on_done=lambda j, o, name=name: on_done(j, o, name), log=print)
    for name in datasets:
        table = export(name)
        print(table.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
