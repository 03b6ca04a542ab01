"""Distil a dataset once, search architectures on the proxy with Optuna, retrain the best on the full data.

The whole point of nasdistill in three calls: ``distill`` condenses digits into a few synthetic
images per class; ``OptunaSearch`` trains every candidate on those images only (fast) and scores it
on the real validation split; ``retrain_top_archs`` trains the winners on the full training split
and measures them on the test split, so you can see whether the proxy picked well.

    python examples/distill_and_search.py            # digits, a few minutes on 2 CPU cores
    python examples/distill_and_search.py --quick    # tiny budgets, well under a minute (or NASDISTILL_QUICK=1)

Writes the proxy (``proxy.safetensors``, ``proxy.png``), the study (``study.db``, ``trials.csv``,
``best_arch.json``), ``retrain.csv`` and ``report.html`` / ``report.md`` into ``--out`` (default: a
new temporary folder) and ends with one ``RESULT`` line.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from nasdistill.api import (OptunaSearch, ProxyEvaluator, TrainConfig, distill, get_space, load_dataset,
                            retrain_top_archs, write_report)

BUDGETS = {
    # the search space (quick: a slice of small ConvNets, defined in examples/small_convnet.py), dm's settings
    # (the proxy is stored under $NASDISTILL_HOME/proxies and reused), proxy-training steps per candidate,
    # trials, and how many of the best are retrained for how many epochs on the full data.
    "quick": {"space": str(Path(__file__).with_name("small_convnet.py")), "ipc": 5,
              "distill": {"iterations": 30, "batch_real": 32, "net": "D1-W32-relu-instancenorm-avgpool"},
              "steps": 30, "trials": 6, "retrain": 2, "full_epochs": 5},
    "full": {"space": "convnet", "ipc": 10, "distill": {"iterations": 200, "batch_real": 64}, "steps": 150,
             "trials": 30, "retrain": 3, "full_epochs": 6},
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", default=os.environ.get("NASDISTILL_QUICK") == "1",
                   help="tiny budgets (also NASDISTILL_QUICK=1)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: a new temporary folder)")
    p.add_argument("--seed", type=int, default=0, help="seed of the proxy, the sampler and the trainings")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    b = BUDGETS["quick" if args.quick else "full"]
    out = args.out or Path(tempfile.mkdtemp(prefix="nasdistill-search-"))
    out.mkdir(parents=True, exist_ok=True)

    # 1. Distil once (stored under $NASDISTILL_HOME/proxies: the same call later returns it at once).
    ds = load_dataset("digits")
    proxy = distill(ds, "dm", ipc=b["ipc"], seed=args.seed, **b["distill"])
    proxy.save(out / "proxy.safetensors")
    proxy.save_grid(out / "proxy.png")
    print(f"proxy: {len(proxy)} synthetic images stand in for {len(ds.y_train)} training images")

    # 2. Search on the proxy: each trial trains a candidate on the proxy, scored on real validation images.
    space = get_space(b["space"])
    evaluate = ProxyEvaluator(space, proxy, ds, TrainConfig(steps=b["steps"], batch_size=64, augment="dsa"),
                              seed=args.seed)
    search = OptunaSearch(space, evaluate, n_trials=b["trials"], sampler="tpe", storage=f"sqlite:///{out / 'study.db'}",
                          study_name="distill-and-search", seed=args.seed, progress=False).run()
    search.export(out)
    print(f"search: {len(search.trials_)} trials; best {search.best_id_} (val acc {search.best_value_:.4f} after "
          f"{b['steps']} steps on the proxy)")

    # 3. Retrain the best architectures on the full training data; score them on the test split.
    retrained = retrain_top_archs(ds, search.trials_, b["retrain"], space=space, seed=args.seed, out_dir=out,
                                  full_train=TrainConfig(epochs=b["full_epochs"], batch_size=128), progress=False)
    for r in retrained:
        print(f"  {r['rank']}. {r['arch_id']:<36} proxy val acc {r['proxy_score']:.4f} -> "
              f"full-data test acc {r['test_acc']:.4f}")

    paths = write_report(out)
    best = retrained[0]
    print(f"report: {paths['html']}")
    print(f"RESULT best architecture {best['arch_id']}: full-data test acc {best['test_acc']:.4f} "
          f"(proxy val acc {best['proxy_score']:.4f}, {len(search.trials_)} trials)")
    return {"out": out, "search": search, "retrained": retrained, "report": paths}


if __name__ == "__main__":
    main()
