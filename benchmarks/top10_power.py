"""Would a larger reference table make top-10 differences significant over architectures?

The protocol study's paired bootstrap over the 48 table architectures cannot tell top-10 orderings
apart even where draws can (``benchmarks/protocol.py``). Computing more architectures costs hours a
dataset, so first ask the stored scores: take sub-tables of ``n`` architectures (drawn without
replacement, seeded) for growing ``n``, run the same paired bootstrap on each, and see whether the
spread of the top-10 difference shrinks with ``n`` (then a larger table would help) or not (a top-10
Spearman is always ten points: its spread is set by ten architectures, not by the table).

    python benchmarks/top10_power.py                 # after protocol.py, from its stored scores

Writes ``benchmarks/results/top10-power.json`` and prints a table; computes no training.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np
from _common import RESULTS, table, write_results

from nasdistill.validate import ReferenceTable, paired_bootstrap

PAIRS = "ipc100-lr0.03-cosine-soft:early-stop,ipc100-lr0.03-cosine-soft:default,lr0.1-cosine:early-stop"


def power(scores: dict, test: np.ndarray, a: str, b: str, sizes, subtables: int, n_boot: int) -> list[dict]:
    """Per sub-table size: mean difference, mean bootstrap sd of the difference, mean one-sided p."""
    rng = np.random.default_rng(0)
    rows = []
    for n in sizes:
        picks = [np.arange(len(test))] if n >= len(test) else [rng.choice(len(test), n, replace=False)
                                                                  for _ in range(subtables)]
        res = []
        for idx in picks:
            r = paired_bootstrap(scores[a][idx], scores[b][idx], test[idx], statistic="spearman_top10",
                                 n_resamples=n_boot, seed=0)
            res.append((r["diff"], (r["diff_ci"][1] - r["diff_ci"][0]) / 3.92, r["p_value"]))
        rows.append({"pair": f"{a} - {b}", "archs": int(min(n, len(test))), "sub_tables": len(picks),
                     "diff": statistics.mean(x[0] for x in res), "ci_width/3.92": statistics.mean(x[1] for x in res),
                     "p": statistics.mean(x[2] for x in res)})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="cifar10,mnist")
    ap.add_argument("--pairs", default=PAIRS, help="comma list of a:b contender pairs (names in protocol.json)")
    ap.add_argument("--sizes", default="16,24,32,40,48")
    ap.add_argument("--sub-tables", type=int, default=8, help="random sub-tables per size")
    ap.add_argument("--bootstrap", type=int, default=500)
    ap.add_argument("--protocol", default=str(RESULTS / "protocol.json"))
    ap.add_argument("--reference", default=str(Path(__file__).parent / "reference"))
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    stored = json.loads(Path(args.protocol).read_text())["datasets"]
    sizes = [int(s) for s in args.sizes.split(",")]
    out, rows = {}, []
    for name in args.datasets.split(","):
        records = stored[name]["validation"]["records"]
        ref = ReferenceTable.load(Path(args.reference) / f"{name}.json")
        row_of = {a: i for i, a in enumerate(ref.arch_ids)}
        test = ref.accuracies(0)[[row_of[r["arch_id"]] for r in records]]  # as protocol.py: seed 0's test
        scores = {k: np.array([r["scores"][k] for r in records]) for k in records[0]["scores"]}
        out[name] = []
        for pair in args.pairs.split(","):
            a, b = pair.split(":")
            if a in scores and b in scores:
                out[name] += power(scores, test, a, b, sizes, args.sub_tables, args.bootstrap)
        rows += [{"dataset": name, **r} for r in out[name]]
    print(table(rows, ["dataset", "pair", "archs", "sub_tables", "diff", "ci_width/3.92", "p"]))
    path = write_results("top10-power", {"settings": vars(args), "datasets": out}, args.out)
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
