"""Search on the reference table of record: does the proxy find as good an architecture for a fraction of the compute?

Issue 9, section 4, on the whole training split. The search space is the table's architectures
(``benchmarks/reference/<dataset>.json``: 48 of DC's ConvNets trained on the full split, 5 epochs,
two seeds), so every architecture an arm picks has its full-data test accuracy on record (no
retraining, no estimate). Each arm is an Optuna study (TPE, ``--seeds`` seeds) over that
categorical space whose objective is one contender's score of the candidate:

* ``full``: the full-data training itself (the table's seed-0 *validation* accuracy), costing the
  table's training FLOPs (5 epochs of 45,000 images);
* ``early-stop``, ``random subset`` and the distilled proxies: their scores on the **validation**
  split as :mod:`benchmarks.protocol` computed and stored them (the same trainings, read back from
  the results store; nothing is retrained when that run is complete), at their own cost;
* ``early-stop-recipe``: early-stopping with the recipe of protocol.py's ``RECIPE_OF``;
* ``chosen protocol``: of protocol.py's equal-cost protocols, the one whose scores order the
  table's ten best by full-data *validation* accuracy best (top-10 Spearman; test split unseen).

Compute is counted in training FLOPs (deterministic; wall times on this shared CPU are reported
beside). Every arm gets the same budget, ``--budget`` full-data trainings' worth of FLOPs; an
evaluation is charged each time TPE proposes it (a repeated architecture is retrained in a real
search too). Reported per arm, mean and 95% interval over seeds: the full-data test accuracy
(seed-0/1 mean) of the arm's best-scoring architecture within the budget, candidates evaluated,
and the FLOPs until the arm's incumbent first lies within 1 point of the table's best (the
target: the proxy arm within 1 point of the full-data arm's best with >= 10x less compute).

    python benchmarks/search_table.py                        # after benchmarks/protocol.py
    python benchmarks/search_table.py --budget 10 --seeds 20

Writes ``benchmarks/results/search-table.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
from _common import RESULTS, load_full, method_settings, table, write_results

from nasdistill.distill import distill
from nasdistill.validate import EarlyStopContender, ProxyContender, ReferenceStore, ReferenceTable, validate

from nasdistill.validate.metrics import topk_spearman
from protocol import PROTOCOLS, RECIPE_OF, load_teacher, protocol_contenders  # noqa: E402  (the scores this script searches over)


def arms_from_store(name: str, table: ReferenceTable, store: str, device: str) -> dict[str, dict]:
    """arm -> {"score", "flops", "wall"} arrays in table order, from the validation protocol.py ran."""
    ds = load_full(name)
    table.check_dataset(ds)
    with ReferenceStore(store) as st:
        table.seed_store(st)
    random10 = distill(ds, "random", ipc=10, seed=0, progress=None)
    default = ProxyContender(random10, name="random subset", train=PROTOCOLS["default"].train)
    dm = distill(ds, "dm", ipc=10, seed=0, progress=None, device=device, **method_settings("dm", "cpu"))
    contenders = [default, EarlyStopContender(default, name="early-stop"),
                  ProxyContender(dm, name="dm proxy", train=PROTOCOLS["default"].train)]
    # every equal-cost protocol (scored by protocol.py; stored): the one that orders the table's ten
    # best by *validation* accuracy best becomes the "chosen protocol" arm (the test split unseen)
    others = protocol_contenders(ds, {k: v for k, v in PROTOCOLS.items() if k != "default"},
                                 load_teacher(ds, device, log=lambda m: None))
    recipe = next(c for c in others if c.name == RECIPE_OF)  # early-stopping with that protocol's recipe
    others.append(EarlyStopContender(recipe, name="early-stop-recipe", recipe="proxy"))
    result = validate(contenders + others, data=ds, space=table.space, archs=table.archs, seed=0, split="val",
                      full_train=table.train_config(), top_k=(10,), n_bootstrap=100, store=store, device=device)
    row_of = {a: i for i, a in enumerate(result.arch_ids)}
    order = [row_of[a] for a in table.arch_ids]
    val = table.accuracies(0, split="val")
    by_name = {c.name: c for c in result.contenders}
    chosen = max((c.name for c in others if c.kind == "proxy"), key=lambda n: topk_spearman(np.asarray(by_name[n].scores)[order], val, 10))
    keep = [c for c in result.contenders if c.name in {default.name, "early-stop", "early-stop-recipe", "dm proxy",
                                                        chosen}]
    arms = {(f"chosen protocol ({c.name})" if c.name == chosen else c.name):
            {"score": np.asarray(c.scores)[order], "flops": np.asarray(c.flops)[order],
             "wall": np.asarray(c.wall_times)[order]} for c in keep}
    samples = table.train_config().total_steps(len(ds.y_train)) * table.train_config().batch_size
    arms["full"] = {"score": val,
                    "flops": np.array([r["train_flops"] for r in table.rows]) * samples,
                    "wall": np.array([r["results"]["0"]["wall_time"] for r in table.rows])}
    return arms


def search(arm: dict, truth: np.ndarray, budget: float, seed: int, within: float, best: float) -> dict:
    """One TPE study over the table's architectures with ``arm``'s objective until ``budget`` FLOPs."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    spent = wall = 0.0
    inc_score, inc = -math.inf, None
    reached = None
    n = 0
    while True:
        trial = study.ask()
        i = trial.suggest_categorical("arch", list(range(len(truth))))
        cost = float(arm["flops"][i])
        if spent + cost > budget:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            break
        spent += cost
        wall += float(arm["wall"][i])
        n += 1
        score = float(arm["score"][i])
        study.tell(trial, score if math.isfinite(score) else 0.0)
        if score > inc_score:
            inc_score, inc = score, i
        if reached is None and truth[inc] >= best - within:
            reached = spent
    return {"best_test": float(truth[inc]) if inc is not None else math.nan, "candidates": n,
            "flops_to_within": reached, "wall_s": wall, "best_index": inc}


def summarise(values: list[float]) -> dict:
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if len(v) == 0:
        return {"mean": None, "ci": [None, None], "n": 0}
    se = v.std(ddof=1) / math.sqrt(len(v)) if len(v) > 1 else 0.0
    return {"mean": float(v.mean()), "ci": [float(v.mean() - 1.96 * se), float(v.mean() + 1.96 * se)], "n": len(v)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="cifar10")
    ap.add_argument("--reference", default=str(Path(__file__).parent / "reference"))
    ap.add_argument("--budget", type=float, default=10.0, help="budget in full-data trainings of FLOPs (default: 10)")
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--within", type=float, default=0.01, help="'as good' = within this of the table's best (0.01)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--store", default=f"sqlite:///{RESULTS / 'fidelity-table.db'}")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    payload: dict = {"settings": {k: v for k, v in vars(args).items() if k != "out"}, "datasets": {}}
    path = None
    for name in args.datasets.split(","):
        tab = ReferenceTable.load(Path(args.reference) / f"{name}.json")
        arms = arms_from_store(name, tab, args.store, args.device)
        truth = tab.accuracies(None)  # full-data test accuracy, mean over seeds
        best = float(np.nanmax(truth))
        unit = float(np.mean(arms["full"]["flops"]))  # one full-data training, on average
        budget = args.budget * unit
        rows, runs = [], {}
        for arm, data in arms.items():
            res = [search(data, truth, budget, s, args.within, best) for s in range(args.seeds)]
            runs[arm] = res
            reach = [math.inf if r["flops_to_within"] is None else r["flops_to_within"] for r in res]
            hit = [x for x in reach if math.isfinite(x)]
            median_reach = float(np.median(reach))  # inf when half the seeds or more never got there
            rows.append({"arm": arm, "best test acc": summarise([r["best_test"] for r in res])["mean"],
                         "best test acc CI": summarise([r["best_test"] for r in res])["ci"],
                         "gap to table best (pt)": 100 * (best - summarise([r["best_test"] for r in res])["mean"]),
                         "candidates": summarise([r["candidates"] for r in res])["mean"],
                         f"reached within {100 * args.within:g} pt": f"{len(hit)}/{len(res)}",
                         "median FLOPs to within (full trainings)": (median_reach / unit
                                                                     if math.isfinite(median_reach) else None),
                         "wall s (replayed)": summarise([r["wall_s"] for r in res])["mean"]})
        full_reach = next(r for r in rows if r["arm"] == "full")["median FLOPs to within (full trainings)"]
        for r in rows:
            mine = r["median FLOPs to within (full trainings)"]
            r["compute saving vs full"] = (full_reach / mine) if (mine and full_reach) else None
        print(f"\n## {name}: table best {best:.4f}, budget {args.budget:g} full-data trainings of FLOPs, "
              f"{args.seeds} TPE seeds\n")
        print(table(rows, list(rows[0])))
        payload["datasets"][name] = {"rows": rows, "runs": runs, "table_best": best, "unit_flops": unit,
                                     "arch_ids": tab.arch_ids}
        path = write_results("search-table", payload, args.out)
    print(f"\nwritten: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
