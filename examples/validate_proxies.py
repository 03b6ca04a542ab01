"""Compare two proxies, and the cheap alternatives to a proxy, on how well they rank architectures.

Distils digits twice (``dm`` and a random class-balanced subset of the same size), samples
architectures, trains each on every proxy, with the early-stop baseline (full data, as many images
seen as on the proxy) and scores it training-free (zero-cost: synflow, NASWOT, grad-norm), and
compares each ranking with full-data training: Spearman ρ (all and top-k), Kendall τ, regret, with
bootstrap intervals, cost per candidate and paired tests between contenders.

    python examples/validate_proxies.py            # digits, a few minutes on 2 CPU cores
    python examples/validate_proxies.py --quick    # tiny budgets, well under a minute (or NASDISTILL_QUICK=1)

Writes ``validation.json`` / ``.csv``, ``report.html`` / ``report.md`` and the report's figures into
``--out`` (default: a new temporary folder) and ends with one ``RESULT`` line.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from nasdistill.api import TrainConfig, distill, load_dataset, validate, write_report

BUDGETS = {
    # the search space (quick: a slice of small ConvNets, defined in examples/small_convnet.py), dm's settings,
    # architectures sampled, training on a proxy (steps) and on the full data (epochs), bootstrap resamples.
    "quick": {"space": str(Path(__file__).with_name("small_convnet.py")), "ipc": 5,
              "distill": {"iterations": 30, "batch_real": 32, "net": "D1-W32-relu-instancenorm-avgpool"},
              "archs": 6, "steps": 30, "full_epochs": 2, "bootstrap": 200},
    "full": {"space": "convnet", "ipc": 10, "distill": {"iterations": 200, "batch_real": 64},
             "archs": 16, "steps": 150, "full_epochs": 6, "bootstrap": 1000},
}
COLUMNS = ["name", "kind", "spearman", "spearman_ci_low", "spearman_ci_high", "kendall", "regret@1",
           "wall_time_s", "speedup_wall"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", default=os.environ.get("NASDISTILL_QUICK") == "1",
                   help="tiny budgets (also NASDISTILL_QUICK=1)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: a new temporary folder)")
    p.add_argument("--seed", type=int, default=0, help="seed of the proxies, the sample and the trainings")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    b = BUDGETS["quick" if args.quick else "full"]
    out = args.out or Path(tempfile.mkdtemp(prefix="nasdistill-validate-"))

    ds = load_dataset("digits")
    dm = distill(ds, "dm", ipc=b["ipc"], seed=args.seed, **b["distill"])
    subset = distill(ds, "random", ipc=b["ipc"], seed=args.seed)
    result = validate([dm, subset], data=ds, space=b["space"], baselines=["early-stop", "zero-cost"],
                      n_archs=b["archs"], seed=args.seed, n_bootstrap=b["bootstrap"],
                      proxy_train=TrainConfig(steps=b["steps"], batch_size=64, augment="dsa"),
                      full_train=TrainConfig(epochs=b["full_epochs"], batch_size=128))

    frame = result.to_frame()
    print(frame[COLUMNS].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    a, c = result.names[0], result.names[1]
    pair = result.pair(a, c)
    print(f"{a} vs {c}: Δρ = {pair['diff']:+.3f}, P({a} better) = {pair['prob_a_better']:.2f}")

    result.save(out)
    paths = write_report(out)
    print(f"report: {paths['html']} (also {paths['md'].name}, {paths['scatter'].name}, {paths['spearman'].name})")
    best = frame.loc[frame["spearman"].idxmax()]
    print(f"RESULT best contender {best['name']} (Spearman {best['spearman']:.3f} over {len(result.archs)} "
          f"architectures); report {paths['html']}")
    return {"out": out, "result": result, "frame": frame, "report": paths}


if __name__ == "__main__":
    main()
