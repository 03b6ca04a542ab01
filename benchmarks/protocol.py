"""The candidate-training protocol on the proxy, chosen on validation accuracies of a disjoint pool.

Issue 9 lists the protocol (steps, lr, schedule, augmentation, images per class) as a lever on
ranking fidelity, to be *chosen on the validation split, not tuned on the test reference*. This
script does that on the reference table of record (``benchmarks/reference/<dataset>.json``):

1. every protocol in :data:`PROTOCOLS` scores all the table's architectures on the **validation**
   split (a :class:`~nasdistill.validate.ProxyContender` each, one validation, scores in the
   results store; the test split is never seen by a proxy-trained network here);
   all protocols at ipc 10 see 10,000 images (22.5x fewer training FLOPs than the table's 5
   epochs of 45,000), except the ``cost`` curve's longer ones, which show what more budget buys;
2. two-fold selection: the table is split (seeded) into halves A and B; on A the protocol with
   the best top-10 Spearman against the table's full-data **validation** accuracies is chosen and
   scored on B against the full-data **test** accuracies, then the roles swap. Only equal-cost
   protocols take part in the selection; ``dm-default`` (the dm proxy at the default protocol),
   early-stopping at the default's cost (the table's recipe) and ``early-stop-recipe`` (the full
   data with :data:`RECIPE_OF`'s recipe, as many images seen) are scored beside them, not selected;
   a protocol is a random subset of ``ipc`` images a class, possibly relabelled with a full-data
   teacher's soft labels (``-soft``) or scored by the mean of seeded trainings (``-x2``);
3. the report: per protocol top-10 / overall Spearman on all architectures (test), the selected
   protocol per fold with its held-out figures beside the default protocol's and early-stopping's
   at the same cost, and the curve of top-10 Spearman against cost (``protocol-<dataset>.png``);
4. with ``--draws K``: the ``--draw-protocols`` and both early-stops scored K times, each draw with
   its own random subset, initialisations and batch orders, and Welch's and the paired t-test
   (draw d's contenders share its initialisations) over draws between them (does one rank *this* table better from run to run; the bootstrap over architectures asks
   whether it would on other architectures); ``--dm-protocols``: a protocol with the dm proxy of its
   ipc in place of the random subset.

    OMP_NUM_THREADS=1 python benchmarks/protocol.py                 # CIFAR-10 table
    python benchmarks/protocol.py --datasets mnist --no-curve

Writes ``benchmarks/results/protocol.json`` and ``benchmarks/results/protocol-<dataset>.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
from _common import RESULTS, load_full, method_settings, write_results

from nasdistill.distill import distill
from nasdistill.distill.relabel import Teacher, relabel
from nasdistill.training import TrainConfig
from nasdistill.validate import (EarlyStopContender, ProxyContender, ReferenceStore, ReferenceTable,
                                 paired_bootstrap, spearman, validate)
from nasdistill.validate.metrics import bootstrap_ci, regret_at_k, topk_spearman

class Protocol(NamedTuple):
    """How candidates train on the proxy: a random subset of ``ipc`` images per class, trained with
    ``train``, scored by the mean of ``repeats`` seeded trainings; ``soft``: the subset relabelled
    with the soft labels of the stored full-data teacher (:class:`~nasdistill.distill.relabel.Teacher`
    at its defaults, trained once per dataset, temperature 1)."""

    ipc: int
    train: TrainConfig
    repeats: int = 1
    soft: bool = False


_COSINE = dict(lr=0.03, schedule="cosine", augment="dsa")
_COSINE_HIGH = dict(_COSINE, lr=0.1)
#: Equal-cost protocols (10,000 training images seen, repeats included).
PROTOCOLS = {
    "default": Protocol(10, TrainConfig(steps=100, augment="dsa")),  # fidelity.py's: lr 0.01, x0.1 at half
    "lr0.03-cosine": Protocol(10, TrainConfig(steps=100, **_COSINE)),
    "lr0.1-cosine": Protocol(10, TrainConfig(steps=100, **_COSINE_HIGH)),
    "lr0.03-cosine-noaug": Protocol(10, TrainConfig(steps=100, lr=0.03, schedule="cosine")),
    "ipc50-lr0.03-cosine": Protocol(50, TrainConfig(steps=78, batch_size=128, **_COSINE)),
    # second round (session 4): soft labels, more images, seed ensembles, all at the same cost
    "lr0.03-cosine-soft": Protocol(10, TrainConfig(steps=100, **_COSINE), soft=True),
    "ipc50-lr0.03-cosine-soft": Protocol(50, TrainConfig(steps=78, batch_size=128, **_COSINE), soft=True),
    "ipc100-lr0.03-cosine": Protocol(100, TrainConfig(steps=78, batch_size=128, **_COSINE)),
    "ipc50-lr0.03-cosine-x2": Protocol(50, TrainConfig(steps=39, batch_size=128, **_COSINE), repeats=2),
    # third round: more images per class with soft labels (the two levers of round two together)
    "ipc100-lr0.03-cosine-soft": Protocol(100, TrainConfig(steps=78, batch_size=128, **_COSINE), soft=True),
    # fourth round (session 6): the larger learning rate (MNIST's best at ipc 10) with the round-three levers
    "lr0.1-cosine-soft": Protocol(10, TrainConfig(steps=100, **_COSINE_HIGH), soft=True),
    "ipc100-lr0.1-cosine": Protocol(100, TrainConfig(steps=78, batch_size=128, **_COSINE_HIGH)),
    "ipc100-lr0.1-cosine-soft": Protocol(100, TrainConfig(steps=78, batch_size=128, **_COSINE_HIGH), soft=True),
}
#: The cost curve: protocols with more steps (not selectable: they cost more).
CURVE = {
    "default-300": Protocol(10, TrainConfig(steps=300, augment="dsa")),
    "default-1000": Protocol(10, TrainConfig(steps=1000, augment="dsa")),
    # the best equal-cost protocol of round three at 2x and 4x its steps (MNIST's top-10 curve)
    "ipc100-lr0.03-cosine-soft-2x": Protocol(100, TrainConfig(steps=156, batch_size=128, **_COSINE), soft=True),
    "ipc100-lr0.03-cosine-soft-4x": Protocol(100, TrainConfig(steps=312, batch_size=128, **_COSINE), soft=True),
}


#: the protocol whose recipe (lr, schedule, augmentation, batch) early-stopping also gets on the full
#: data ("early-stop-recipe"): the same images seen, so any gap is the subset's, not the recipe's
RECIPE_OF = "ipc50-lr0.03-cosine"


def load_teacher(ds, device: str = "cpu", log=print) -> Teacher:
    """The full-data teacher every soft protocol is relabelled by (stored: trained once per dataset)."""
    teacher = Teacher(seed=0, device=device).fit(ds)
    log(f"teacher {teacher.arch_id_}: test {teacher.test_acc_:.4f}"
        + (" (stored)" if teacher.reused_ else f" (trained in {teacher.wall_time_:.0f}s)"))
    return teacher


def protocol_contenders(ds, protocols: dict, teacher: Teacher | None = None, *, draw: int = 0) -> list[ProxyContender]:
    """One :class:`ProxyContender` per protocol: the random subset of its ipc drawn with seed ``draw``,
    relabelled by ``teacher`` where it is a soft one (:func:`load_teacher`), trained from draw
    ``draw``'s initialisations and batch orders; named ``<protocol>@<draw>`` for draws after the
    first (the same keys every run: stored scores reused)."""
    if teacher is None and any(p.soft for p in protocols.values()):
        raise ValueError("soft protocols need the teacher (load_teacher)")
    proxies = {ipc: distill(ds, "random", ipc=ipc, seed=draw, progress=None)
               for ipc in sorted({p.ipc for p in protocols.values()})}
    suffix = f"@{draw}" if draw else ""
    return [ProxyContender(relabel(proxies[p.ipc], teacher) if p.soft else proxies[p.ipc], name=name + suffix,
                           train=p.train, repeats=p.repeats, draw=draw) for name, p in protocols.items()]


def dm_contender(ds, name: str, p: Protocol, teacher: Teacher | None, device: str = "cpu") -> ProxyContender:
    """``p`` with the dm proxy of its ipc (the CPU preset, seed 0, stored) in place of the random subset."""
    proxy = distill(ds, "dm", ipc=p.ipc, seed=0, progress=None, device=device, **method_settings("dm", "cpu"))
    return ProxyContender(relabel(proxy, teacher) if p.soft else proxy, name=f"dm-{name}", train=p.train,
                          repeats=p.repeats)


def draw_contenders(ds, protocols: dict, d: int, table_of: dict, teacher: Teacher | None, *,
                    recipe: bool = True) -> list:
    """Draw ``d`` of ``protocols`` (:func:`protocol_contenders` with ``draw=d``), of early-stopping
    at the default protocol's cost and (``recipe``) of early-stop-recipe."""
    out = protocol_contenders(ds, protocols, teacher, draw=d)
    default, = protocol_contenders(ds, {"default": table_of.get("default", PROTOCOLS["default"])}, draw=d)
    out.append(EarlyStopContender(default, name=f"early-stop@{d}"))
    if recipe:
        base, = protocol_contenders(ds, {RECIPE_OF: PROTOCOLS[RECIPE_OF]}, draw=d)
        out.append(EarlyStopContender(base, name=f"early-stop-recipe@{d}", recipe="proxy"))
    return out


def _named(text: str, table_of: dict, flag: str) -> list[str]:
    """The protocols a comma list names, each one run here."""
    names = [w for w in text.split(",") if w]
    unknown = [w for w in names if w not in table_of]
    if unknown:
        raise SystemExit(f"protocol.py: {flag} names a protocol not run here: {unknown[0]!r}")
    return names


def draw_report(contenders, test: np.ndarray, drawn: list[str], n_draws: int) -> dict:
    """Top-10 Spearman (test) of every drawn contender in each draw, and Welch's and the paired t-test
    between each drawn protocol and each baseline (early-stop, early-stop-recipe, and the other drawn protocols)
    over draws: whether one ranks *this table's* architectures better from run to run (the
    bootstrap over architectures asks the other question: whether it would on other architectures)."""
    from scipy.stats import ttest_ind, ttest_rel

    by_name = {c.name: c for c in contenders}
    per: dict = {}
    for base in [*drawn, "early-stop", "early-stop-recipe"]:
        names = [base] + [f"{base}@{d}" for d in range(1, n_draws)]
        if all(n in by_name for n in names):
            v = [topk_spearman(np.asarray(by_name[n].scores), test, 10) for n in names]
            per[base] = {"top10": v, "mean": float(np.mean(v)), "sd": float(np.std(v, ddof=1)),
                         "spearman": [spearman(np.asarray(by_name[n].scores), test) for n in names]}
    tests = {}
    for a in drawn:
        for b in per:
            if a in per and b != a and not (b in drawn and drawn.index(b) < drawn.index(a)):
                t, pv = ttest_ind(per[a]["top10"], per[b]["top10"], equal_var=False)
                # paired by draw: in draw d every contender trains each architecture from the same
                # initialisation (the draw's seed), so the pairs share that part of the noise
                tp, pp = ttest_rel(per[a]["top10"], per[b]["top10"])
                tests[f"{a} - {b}"] = {"diff": per[a]["mean"] - per[b]["mean"], "t": float(t), "p": float(pv),
                                       "paired_t": float(tp), "paired_p": float(pp)}
    return {"n": n_draws, "contenders": per, "tests": tests}


def fold_split(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[: n // 2]), np.sort(order[n // 2:])


def figures(scores: np.ndarray, full: np.ndarray, n_boot: int) -> dict:
    lo, hi = bootstrap_ci(lambda p, f: topk_spearman(p, f, 10), scores, full, n_resamples=n_boot, seed=0)
    return {"spearman": spearman(scores, full), "spearman_top10": topk_spearman(scores, full, 10),
            "spearman_top10_ci": [lo, hi], "regret@1": regret_at_k(scores, full, 1)}


def plot(path: Path, rows: list[dict], ceiling: float | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        ax.scatter(r["flops_ratio"], r["all"]["spearman_top10"], color="C1" if r["selectable"] else "C0")
        ax.annotate(r["name"], (r["flops_ratio"], r["all"]["spearman_top10"]), fontsize=7)
    if ceiling is not None:
        ax.axhline(ceiling, color="k", ls="--", lw=1, label=f"ceiling (seed vs seed) {ceiling:.2f}")
    ax.axhline(0.85, color="C3", ls=":", lw=1, label="target 0.85")
    ax.axvline(20, color="C2", ls=":", lw=1, label="20x cheaper")
    ax.set_xscale("log")
    ax.invert_xaxis()
    ax.set_xlabel("reference FLOPs / candidate FLOPs")
    ax.set_ylabel("top-10 Spearman (test, all archs)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_draws(path: Path, draws: dict, ceiling: float | None) -> None:
    """Top-10 Spearman of every draw of every drawn contender (dots) and their mean (bar)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(draws["contenders"])
    fig, ax = plt.subplots(figsize=(6, 0.5 * len(names) + 1.5))
    for i, n in enumerate(names):
        v = draws["contenders"][n]["top10"]
        ax.scatter(v, [i] * len(v), color="C0", s=18)
        ax.plot([np.mean(v)] * 2, [i - 0.3, i + 0.3], color="C3", lw=2)
    if ceiling is not None:
        ax.axvline(ceiling, color="k", ls="--", lw=1, label=f"ceiling (seed vs seed) {ceiling:.2f}")
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xlabel(f"top-10 Spearman (test, all archs), {draws['n']} draws; bar: mean")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def merged(payload: dict, out: str | None) -> dict:
    """``payload`` with the other datasets' entries of the results file already there (each
    dataset's run writes its own entry, so MNIST and CIFAR-10 can run apart, even at once)."""
    path = Path(out) if out else RESULTS / "protocol.json"
    try:
        old = json.loads(path.read_text()).get("datasets", {})
    except (OSError, ValueError):
        old = {}
    return {**payload, "datasets": {**{k: v for k, v in old.items() if k not in payload["datasets"]},
                                    **payload["datasets"]}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="cifar10")
    ap.add_argument("--reference", default=str(Path(__file__).parent / "reference"))
    ap.add_argument("--no-curve", dest="curve", action="store_false", help="skip the longer (costlier) protocols")
    ap.add_argument("--protocols", default=None, help="comma list of protocol names (default: all)")
    ap.add_argument("--no-dm", dest="dm", action="store_false", help="leave out the dm proxy at the default protocol")
    ap.add_argument("--no-recipe-early-stop", dest="recipe_early_stop", action="store_false",
                    help=f"leave out early-stopping with {RECIPE_OF}'s recipe")
    ap.add_argument("--draws", type=int, default=1,
                    help="score --draw-protocols and both early-stops this many times, each draw with its own "
                         "random subset, initialisations and batch orders (draw 0 is the main run)")
    ap.add_argument("--draw-protocols", default="ipc100-lr0.03-cosine-soft,ipc100-lr0.03-cosine",
                    help="comma list of the protocols repeated over --draws")
    ap.add_argument("--dm-protocols", default="",
                    help="comma list of protocols also scored with the dm proxy (CPU preset) of their ipc in place "
                         "of the random subset (relabelled the same way where soft), named dm-<protocol>")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--store", default=f"sqlite:///{RESULTS / 'fidelity-table.db'}")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    table_of = {**PROTOCOLS, **(CURVE if args.curve else {})}
    if args.protocols:
        wanted = args.protocols.split(",")
        unknown = [w for w in wanted if w not in table_of]
        if unknown:
            raise SystemExit(f"protocol.py: unknown protocol {unknown[0]!r}; known: {', '.join(table_of)}")
        table_of = {k: table_of[k] for k in wanted}
    payload: dict = {"settings": {k: v for k, v in vars(args).items() if k != "out"},
                     "protocols": {k: {"ipc": v.ipc, "train": v.train.budget(), "repeats": v.repeats, "soft": v.soft}
                                   for k, v in table_of.items()},
                     "datasets": {}}
    path = None
    for name in args.datasets.split(","):
        t0 = time.perf_counter()
        table = ReferenceTable.load(Path(args.reference) / f"{name}.json")
        ds = load_full(name)
        table.check_dataset(ds)
        with ReferenceStore(args.store) as st:
            table.seed_store(st)
        drawn = _named(args.draw_protocols, table_of, "--draw-protocols") if args.draws > 1 else []
        dm_protocols = _named(args.dm_protocols, table_of, "--dm-protocols")
        teacher = (load_teacher(ds, args.device, log=lambda m, name=name: print(f"[{name}] {m}", flush=True))
                   if any(p.soft for p in table_of.values()) else None)  # the drawn and dm ones are among them
        contenders = protocol_contenders(ds, table_of, teacher)
        default = next((c for c in contenders if c.name == "default"), contenders[0])
        contenders.append(EarlyStopContender(default, name="early-stop"))
        recipe = next((c for c in contenders if c.name == RECIPE_OF), None)
        if recipe is not None and args.recipe_early_stop:  # the best recipe's early-stop: the recipe without the subset
            contenders.append(EarlyStopContender(recipe, name="early-stop-recipe", recipe="proxy"))
        for d in range(1, args.draws):
            contenders += draw_contenders(ds, {w: table_of[w] for w in drawn}, d, table_of, teacher,
                                          recipe=args.recipe_early_stop)
        contenders += [dm_contender(ds, w, table_of[w], teacher, args.device) for w in dm_protocols]
        if args.dm:  # the stored dm proxy fidelity.py scores, at the default protocol
            contenders.append(dm_contender(ds, "default", PROTOCOLS["default"], teacher, args.device))
        result = validate(contenders, data=ds, space=table.space, archs=table.archs, seed=0, split="val",
                          full_train=table.train_config(), top_k=(10,), n_bootstrap=args.bootstrap,
                          store=args.store, device=args.device, log=print)
        ids = result.arch_ids
        row_of = {a: i for i, a in enumerate(table.arch_ids)}
        order = [row_of[a] for a in ids]
        test, val = table.accuracies(0)[order], table.accuracies(None, split="val")[order]
        ceiling = table.ceiling(n_bootstrap=args.bootstrap)["spearman_top10"] if table.complete() else None
        by_name = {c.name: c for c in result.contenders}
        rows = []
        for c in result.contenders:
            cost = c.cost.get("speedup_flops")
            rows.append({"name": c.name, "selectable": c.name in PROTOCOLS,
                         "flops_ratio": cost, "all": figures(np.asarray(c.scores), test, args.bootstrap)})
        paired = {}  # every contender against early-stopping and the default protocol, on all archs (test)
        for c in result.contenders:
            for other in ("early-stop", "early-stop-recipe", default.name):
                if c.name == other or other not in by_name:
                    continue
                for stat in ("spearman_top10", "spearman"):
                    paired[f"{c.name} - {other} {stat}"] = paired_bootstrap(
                        np.asarray(c.scores), np.asarray(by_name[other].scores), test, statistic=stat,
                        n_resamples=args.bootstrap, seed=0)
        folds = []
        a, b = fold_split(len(ids))
        for sel, held in ((a, b), (b, a)):
            choice = max((n for n in PROTOCOLS if n in by_name),
                         key=lambda n: topk_spearman(np.asarray(by_name[n].scores)[sel], val[sel], 10))
            fold = {"selection_archs": [ids[i] for i in sel], "chosen": choice,
                    "selection_top10_val": {n: topk_spearman(np.asarray(by_name[n].scores)[sel], val[sel], 10)
                                            for n in PROTOCOLS if n in by_name},
                    "held_out": {n: figures(np.asarray(by_name[n].scores)[held], test[held], args.bootstrap)
                                 for n in {choice, default.name, "early-stop"}}}
            folds.append(fold)
            print(f"[{name}] fold: chose {choice} on validation accuracies; held out top-10 "
                  + ", ".join(f"{n} {v['spearman_top10']:+.3f}" for n, v in fold["held_out"].items()), flush=True)
        png = RESULTS / f"protocol-{name}.png" if not args.out else Path(args.out).with_name(
            f"{Path(args.out).stem}-{name}.png")
        plot(png, [r for r in rows if r["flops_ratio"] and "@" not in r["name"]], ceiling)
        draws = draw_report(result.contenders, test, drawn, args.draws) if drawn else None
        if draws:
            draws["plot"] = png.with_name(png.stem + "-draws.png").name
            plot_draws(png.with_name(draws["plot"]), draws, ceiling)
            print(f"[{name}] over {args.draws} draws (top-10 rho, test):", flush=True)
            for n, v in draws["contenders"].items():
                print(f"  {n:28s} mean {v['mean']:+.3f} sd {v['sd']:.3f}  {[round(x, 3) for x in v['top10']]}")
            for n, v in draws["tests"].items():
                print(f"  {n:48s} diff {v['diff']:+.3f} Welch t {v['t']:+.2f} p {v['p']:.3g}; "
                      f"paired t {v['paired_t']:+.2f} p {v['paired_p']:.3g}", flush=True)
        print(f"\n## {name}\n\n{result.table()}\nceiling top-10: {ceiling}\n", flush=True)
        payload["datasets"][name] = {"protocols": payload["protocols"], "rows": rows, "folds": folds, "paired_all_test": paired, "ceiling_top10": ceiling, "plot": png.name,
                                     "draws": draws, "validation": result.to_dict(), "wall_s": time.perf_counter() - t0}
        path = write_results("protocol", merged(payload, args.out), args.out)
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
