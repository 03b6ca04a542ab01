"""Score architectures on a distilled proxy from any loop: a plain for-loop, your own Optuna
objective (with pruning), and NNI.

``ProxyEvaluator(space, proxy, dataset, train_config)`` is a callable: give it an architecture (a
dict), it trains that network on the proxy and returns its accuracy on the real validation split.
Pass ``report=`` to hear the accuracy every few epochs and to stop training early.

    python examples/evaluator_loop.py            # digits, a few minutes on 2 CPU cores
    python examples/evaluator_loop.py --quick    # tiny budgets, well under a minute (or NASDISTILL_QUICK=1)

Writes ``evaluator_loop.json`` (every architecture scored by each loop) into ``--out`` (default: a
new temporary folder) and ends with one ``RESULT`` line.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import tempfile
from pathlib import Path

import optuna

from nasdistill.api import ProxyEvaluator, TrainConfig, distill, get_space, load_dataset

BUDGETS = {
    # the search space (quick: a slice of small ConvNets, defined in examples/small_convnet.py), dm's settings
    # (the proxy is stored under $NASDISTILL_HOME/proxies and reused by the other examples), proxy-training
    # steps per candidate, and how many candidates each loop scores.
    "quick": {"space": str(Path(__file__).with_name("small_convnet.py")), "ipc": 5,
              "distill": {"iterations": 30, "batch_real": 32, "net": "D1-W32-relu-instancenorm-avgpool"},
              "steps": 30, "loop": 4, "optuna": 5, "nni": 4},
    "full": {"space": "convnet", "ipc": 10, "distill": {"iterations": 200, "batch_real": 64}, "steps": 150,
             "loop": 10, "optuna": 20, "nni": 12},
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", default=os.environ.get("NASDISTILL_QUICK") == "1",
                   help="tiny budgets (also NASDISTILL_QUICK=1)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: a new temporary folder)")
    p.add_argument("--seed", type=int, default=0, help="seed of the proxy, the samples and the trainings")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    b = BUDGETS["quick" if args.quick else "full"]
    out = args.out or Path(tempfile.mkdtemp(prefix="nasdistill-evaluator-"))
    out.mkdir(parents=True, exist_ok=True)

    ds = load_dataset("digits")
    proxy = distill(ds, "dm", ipc=b["ipc"], seed=args.seed, **b["distill"])
    space = get_space(b["space"])
    evaluate = ProxyEvaluator(space, proxy, ds, TrainConfig(steps=b["steps"], batch_size=64, augment="dsa"),
                              seed=args.seed)
    print(f"proxy: {proxy.method}, {len(proxy)} images; each {space.name} candidate trains {b['steps']} steps on it")
    results: dict[str, list[dict]] = {}

    # 1. A plain for-loop over sampled architectures.
    rows = []
    for arch in space.sample(b["loop"], seed=args.seed):
        rows.append({"arch_id": space.arch_id(arch), "val_acc": evaluate(arch)})
        print(f"  for-loop  {rows[-1]['arch_id']:<40} {rows[-1]['val_acc']:.4f}")
    results["for-loop"] = rows

    # 2. Your own Optuna objective; the evaluator's report callback feeds Optuna's pruner.
    def objective(trial: optuna.Trial) -> float:
        arch = space.suggest(trial)
        trial.set_user_attr("arch_id", space.arch_id(arch))
        stopped = []

        def report(epoch: int, acc: float) -> bool:
            trial.report(acc, epoch)
            if trial.should_prune():
                stopped.append(epoch)
                return True  # stop training this candidate now
            return False

        acc = evaluate(arch, report=report)
        if stopped:
            raise optuna.TrialPruned(f"pruned at epoch {stopped[0]} with val acc {acc:.4f}")
        return acc

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=args.seed),
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=2))
    study.optimize(objective, n_trials=b["optuna"])
    rows = [{"arch_id": t.user_attrs["arch_id"], "val_acc": t.value, "state": t.state.name} for t in study.trials]
    for r in rows:
        print(f"  optuna    {r['arch_id']:<40} {r['val_acc'] if r['val_acc'] is not None else float('nan'):.4f}"
              + ("  (pruned)" if r["state"] == "PRUNED" else ""))
    results["optuna"] = rows

    # 3. NNI's regularised evolution, through nasdistill's NNI backend (only if NNI is installed).
    if importlib.util.find_spec("nni") is not None:
        from nasdistill.api import NNISearch

        search = NNISearch(space, evaluate, n_trials=b["nni"], strategy="evolution", seed=args.seed,
                           population_size=max(2, b["nni"] // 2), sample_size=2, progress=False).run()
        rows = [{"arch_id": t["arch_id"], "val_acc": t["value"]} for t in search.trials_]
        for r in rows:
            print(f"  nni       {r['arch_id']:<40} {r['val_acc']:.4f}")
        results["nni"] = rows
    else:
        print("  nni       skipped: NNI is not installed (pip install 'nasdistill[nni]')")

    best = {name: max((r for r in rows if r.get("val_acc") is not None), key=lambda r: r["val_acc"])
            for name, rows in results.items()}
    overall = max(best.values(), key=lambda r: r["val_acc"])
    (out / "evaluator_loop.json").write_text(json.dumps({"results": results, "best": best}, indent=2) + "\n")
    print(f"results: {out / 'evaluator_loop.json'}")
    print(f"RESULT best architecture {overall['arch_id']} (val acc {overall['val_acc']:.4f}); best per loop: "
          + ", ".join(f"{name} {r['val_acc']:.4f}" for name, r in best.items()))
    return {"out": out, "results": results, "best": best}


if __name__ == "__main__":
    main()
