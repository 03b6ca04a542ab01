"""The ``nasdistill`` command: distill | search | validate | run | experts | report | dashboard | list.

Every user error prints one line (``nasdistill: error: <problem>; <fix>``) and exits with status 2;
an interrupt exits with 130 and says how to resume; ``distill --target-spearman`` exits with 3 when no
candidate met the target (the best one is still written).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__
from .errors import ConfigError, NasDistillError, os_error_line

if TYPE_CHECKING:
    from .training import TrainConfig

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_TARGET_NOT_MET = 3  #: distill --target-spearman: no candidate met the target (the best one is kept)

logger = logging.getLogger("nasdistill.cli")

OUT_RULE = "every command writes its outputs into exactly the --out folder (created if missing)"


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line (problem; where the fix is), like every other error."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {' '.join(message.split())}; see '{self.prog} --help'\n")


# --- argument groups -----------------------------------------------------------------------------
def _common(p: argparse.ArgumentParser, out_help: str) -> None:
    g = p.add_argument_group("common")
    g.add_argument("--seed", type=int, default=0, help="seed for every random choice (default: 0)")
    g.add_argument("--device", default="auto",
                   help="cpu, cuda, cuda:N, or auto = cuda when available else cpu (default: auto)")
    g.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help=f"write the outputs into exactly DIR: {out_help}")
    g.add_argument("--progress", dest="progress", action="store_true", default=None,
                   help="always show progress bars (default: a bar on a terminal or in Jupyter, otherwise one "
                        "progress line every $NASDISTILL_PROGRESS_EVERY seconds, default 10)")
    g.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bars and no progress lines")
    _logging(p, g)


def _logging(p: argparse.ArgumentParser, g=None) -> None:
    g = g or p.add_argument_group("common")
    g.add_argument("--log-file", type=Path, default=None, metavar="FILE",
                   help="also append every message, time-stamped, to FILE (and the progress lines, when no bar is shown)")
    g.add_argument("--log-level", default="info", type=str.lower,
                   choices=("debug", "info", "warning", "error"),
                   help="least severe messages shown, through Python's logging ('nasdistill' logger) "
                        "(default: info)")


def _tracking(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mlflow", default=None, metavar="URI",
                   help="also log settings, loss curves, trials and metrics to this MLflow tracking URI; a local "
                        'sqlite:///FILE needs no server (needs pip install "nasdistill[mlflow]")')


def _callbacks(args) -> list:
    """The tracking callbacks the flags ask for (``--mlflow``)."""
    if getattr(args, "mlflow", None) is None:
        return []
    from .tracking import MLflowTracker

    return [MLflowTracker(args.mlflow)]


def _tell(callbacks: list, event: str, obj) -> None:
    for cb in callbacks:
        getattr(cb, event)(obj)


def _json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true",
                   help="print the summary as one JSON object on stdout; every other message goes to stderr")


def _data(p: argparse.ArgumentParser, required: bool, stream: bool = False) -> None:
    g = p.add_argument_group("data")
    if stream:
        g.add_argument("--stream", action="store_true",
                       help="imagefolder:PATH or a torchvision name: decode the data once into a memory-mapped "
                            "uint8 cache ($NASDISTILL_HOME/datasets) and read batches from it (datasets larger "
                            "than RAM; the validation split is held out of it as in RAM; "
                            "every method draws its batches from it, and full-data training (references, "
                            "early-stopping, experts, teachers) reads each mini-batch from it)")
        g.add_argument("--resolution", type=int, default=None, metavar="PX",
                       help="with --stream: resize every image to PX x PX when the cache is built")
    g.add_argument("--data", default=None if not required else "digits", metavar="NAME",
                   help="digits, mnist, fashion_mnist, cifar10, cifar100, svhn, imagefolder:PATH or npz:PATH"
                        + (" (default: digits)" if required else
                           " (default: the dataset the proxy was distilled from)"))
    g.add_argument("--data-root", default=None, metavar="DIR",
                   help="folder holding torchvision datasets (default: $NASDISTILL_DATA or ./data)")
    g.add_argument("--download", action="store_true",
                   help="let torchvision download a missing dataset into --data-root (never done otherwise)")
    g.add_argument("--train-per-class", type=int, default=None, metavar="N",
                   help="keep only the first N training images of each class")
    g.add_argument("--test-per-class", type=int, default=None, metavar="N",
                   help="keep only the first N test images of each class")
    g.add_argument("--val-per-class", type=int, default=None, metavar="N",
                   help="training images of each class held out for validation "
                        "(default: 10%% of the smallest class, at most 500)")


def _method(p: argparse.ArgumentParser, default_method: str | None) -> None:
    g = p.add_argument_group("distillation")
    g.add_argument("--method", default=default_method, metavar="NAME",
                   help="distillation method (see 'nasdistill list methods')"
                        + (f" (default: {default_method})" if default_method else ""))
    g.add_argument("--ipc", type=int, default=10, help="synthetic images per class (default: 10)")
    g.add_argument("--iterations", type=int, default=None, metavar="N",
                   help="outer iterations of an iterative method (caps the work; default: the budget's)")
    g.add_argument("--init", choices=("real", "noise"), default=None,
                   help="start synthetic images from real images or noise (default: the method's)")
    g.add_argument("--matching-space", default=None, metavar="SPACE",
                   help="draw the matching network from this search space every iteration (dm)")
    g.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                   help="any other method setting, e.g. --set lr_img=0.5 (repeatable)")
    g.add_argument("--budget", choices=("auto", "cpu", "paper"), default="auto",
                   help="paper = the paper's settings; cpu = scaled for a CPU; auto = cpu unless on CUDA "
                        "(default: auto)")
    g.add_argument("--store", default=None, metavar="DIR",
                   help="proxy store: proxies are saved here and reused (default: $NASDISTILL_HOME/proxies)")
    g.add_argument("--relabel", default=None, metavar="TEACHER",
                   help="give the proxy the soft labels of this teacher architecture (a convnet id, e.g. "
                        "D3-W64-relu-instancenorm-avgpool), trained once on the full training split")
    g.add_argument("--teacher-epochs", type=int, default=None, metavar="N",
                   help="epochs of the --relabel teacher on the full training split (default: 10)")
    g.add_argument("--temperature", type=float, default=1.0,
                   help="softmax temperature of the --relabel soft labels (default: 1.0)")


def _proxy_training(p: argparse.ArgumentParser, preset: TrainConfig) -> None:
    """``--proxy-epochs``/``--proxy-steps``, ``--batch-size``, ``--lr``, ``--augment``: fields of ``preset`` (:func:`_train_config`)."""
    g = p.add_argument_group("proxy training (each candidate, on the proxy)")
    b = g.add_mutually_exclusive_group()
    b.add_argument("--proxy-epochs", type=int, default=None, metavar="N",
                   help="epochs of training on the proxy" + (f" (default: {preset.epochs})" if preset.epochs else ""))
    b.add_argument("--proxy-steps", type=int, default=None, metavar="N",
                   help="steps of training on the proxy instead of epochs"
                        + (f" (default: {preset.steps})" if preset.steps else ""))
    g.add_argument("--batch-size", type=int, default=preset.batch_size, help="batch size (default: %(default)s)")
    g.add_argument("--lr", type=float, default=preset.lr,
                   help=f"SGD learning rate, momentum {preset.momentum:g} (default: %(default)s)")
    g.add_argument("--schedule", choices=("step", "cosine", "constant"), default=preset.schedule,
                   help="learning-rate schedule on the proxy: step (x0.1 at half, DC's), cosine or constant "
                        "(default: %(default)s)")
    g.add_argument("--augment", default=preset.augment or "none",
                   help="dsa (DSA's differentiable augmentations), none, or a strategy like crop_flip "
                        "(default: %(default)s)")
    g.add_argument("--precision", choices=("fp32", "bf16", "auto"), default=preset.precision,
                   help="every candidate training's forward pass, on the proxy and on the full data (and, with "
                        "`run`, the method's own precision setting where it has one and --set gives none): fp32, bf16 "
                        "(bfloat16 autocast, channels_last; ~2x on CPUs with AMX), or auto = bf16 where the device "
                        "runs it in hardware (a CUDA GPU with bf16, a CPU with AMX or AVX512-BF16), else fp32; "
                        "stored results are keyed by the precision that ran (default: %(default)s)")
    p.set_defaults(proxy_preset=preset)


def _full_training(p: argparse.ArgumentParser, preset: TrainConfig, title: str) -> None:
    """``--full-epochs``, ``--full-batch-size``, ``--full-augment`` (fields of ``preset``, :func:`_full_config`)
    and ``--reference-store``: every command that trains on the full data takes this one group."""
    g = p.add_argument_group(title)
    g.add_argument("--full-epochs", type=int, default=preset.epochs, metavar="N",
                   help="epochs of full-data training per architecture (default: %(default)s)")
    g.add_argument("--full-batch-size", type=int, default=preset.batch_size,
                   help=f"batch size on the full data (default: %(default)s; SGD lr --lr, {preset.schedule} schedule)")
    g.add_argument("--full-augment", default=preset.augment or "none",
                   help="augmentation for full-data training: none, dsa or a strategy (default: %(default)s)")
    g.add_argument("--reference-store", default=None, metavar="URL",
                   help="where full-data results are kept and reused: SQLAlchemy URL or file "
                        "(default: $NASDISTILL_HOME/references.db)")
    p.set_defaults(full_preset=preset)


def _bootstrap(g) -> None:
    from .defaults import DEFAULT_N_BOOTSTRAP

    g.add_argument("--bootstrap", type=int, default=DEFAULT_N_BOOTSTRAP, metavar="N",
                   help="bootstrap resamples (default: %(default)s)")


def _validation(p: argparse.ArgumentParser, n_archs: int) -> None:
    """``--archs``, ``--top-k`` and ``--bootstrap`` of ``validate`` and ``run``."""
    from .defaults import DEFAULT_TOP_K

    g = p.add_argument_group("validation")
    g.add_argument("--archs", type=int, default=n_archs, metavar="K", help="architectures sampled (default: %(default)s)")
    g.add_argument("--top-k", type=_k_list, default=DEFAULT_TOP_K, metavar="LIST",
                   help="Spearman over the top-k architectures by full-data accuracy: counts and/or fractions, "
                        f"comma-separated (default: {','.join(map(str, DEFAULT_TOP_K))})")
    _bootstrap(g)


def _backend_names() -> list[str]:
    """The registered search backends (reading the registry imports no backend)."""
    from .search.backend import BACKENDS

    return BACKENDS.names()


def _search(p: argparse.ArgumentParser) -> None:
    from .defaults import DEFAULT_N_TRIALS, DEFAULT_SPACE

    g = p.add_argument_group("search")
    g.add_argument("--space", default=DEFAULT_SPACE,
                   help="search space name or path to a space .py file (default: %(default)s)")
    g.add_argument("--trials", type=int, default=DEFAULT_N_TRIALS,
                   help="finished trials wanted in the study; re-running continues up to this total "
                        "(default: %(default)s)")
    g.add_argument("--backend", choices=_backend_names(), default="optuna",
                   help="optuna (samplers, pruners, storages, workers) or nni (NNI 3.0 strategies in this process; "
                        'needs pip install "nasdistill[nni]") (default: optuna)')
    g.add_argument("--sampler", default=None,
                   help="Optuna sampler: tpe, random, grid or nsga2 (default: tpe; --backend optuna)")
    g.add_argument("--strategy", default=None,
                   help="NNI strategy: random, evolution, tpe or grid (default: evolution; --backend nni)")
    g.add_argument("--pruner", default="none", help="none, median or hyperband (default: none; --backend optuna)")
    g.add_argument("--storage", default=None, metavar="URL",
                   help="Optuna storage: sqlite:///FILE, postgresql://..., journal:FILE "
                        "(default: sqlite:///OUT/study.db)")
    g.add_argument("--study-name", default=None, help="study name; the same name continues the study")
    g.add_argument("--objectives", default="accuracy", metavar="LIST",
                   help="accuracy, or accuracy plus params, flops and/or latency (CPU ms), comma-separated: "
                        "a multi-objective study whose Pareto front goes to pareto.csv/json (use --sampler nsga2 "
                        "or tpe, --pruner none) (default: accuracy)")
    g.add_argument("--workers", type=int, default=1, metavar="N",
                   help="run the study in N local worker processes (other processes, here or on other machines, "
                        "join it by passing the same --study-name and --storage); 'run' shares its validation's "
                        "trainings between as many (default: 1)")
    g.add_argument("--worker-index", type=int, default=None, metavar="I",
                   help="a distinct index for each process joining one study by hand, so their samplers propose "
                        "different architectures (--workers sets it)")
    g.add_argument("--retrain-top", type=int, default=0, metavar="K",
                   help="after the search, train the K best architectures on the full training data and report "
                        "their test accuracy beside their proxy score (retrain.csv) (default: 0)")


def _target(p: argparse.ArgumentParser) -> None:
    from .defaults import DEFAULT_N_ARCHS, DEFAULT_SPACE

    g = p.add_argument_group(
        "fidelity target", "distil until the proxy ranks architectures well enough: candidates (method, ipc) are "
        "tried smallest ipc first, then in --target-methods order; each is validated on one seeded sample of "
        "architectures (full-data trainings done once, then reused) and the first that meets the target is kept. "
        "Exit status 3 when the budget or the ladder runs out first (the best candidate is kept). The proxy and "
        "full-data training flags apply to this validation.")
    g.add_argument("--target-spearman", type=float, default=None, metavar="R",
                   help="the value, in [-1, 1], --target-metric must reach; writes the kept proxy, its "
                        "validation.json and target.json (every candidate tried)")
    g.add_argument("--target-metric", default=None, metavar="NAME",
                   help="spearman_topK (K architectures best on the full data; K a count, or e.g. 25pct), "
                        "spearman or kendall (default: spearman_top5)")
    g.add_argument("--target-bound", choices=("value", "ci-low"), default=None,
                   help="what must reach the target: the metric's value or the low end of its 95%% bootstrap "
                        "interval (default: value)")
    g.add_argument("--validate-archs", type=int, default=None, metavar="K",
                   help="architectures sampled once (seeded) and validated for every candidate "
                        f"(default: {DEFAULT_N_ARCHS})")
    g.add_argument("--target-methods", default=None, metavar="LIST",
                   help="methods to try at each ipc, cheapest first, comma-separated "
                        "(default: --method, then dm and dsa)")
    g.add_argument("--target-ipcs", default=None, metavar="LIST",
                   help="images per class to try, comma-separated (default: --ipc, then the rungs of 1,2,5,10,20,50 "
                        "above it, up to the smallest class)")
    g.add_argument("--target-budget", type=float, default=None, metavar="SECONDS",
                   help="start no new candidate after this many seconds (the first always runs; default: no limit)")
    g.add_argument("--target-max-candidates", type=int, default=None, metavar="N",
                   help="try at most N candidates (default: no limit)")
    g.add_argument("--space", default=None,
                   help=f"search space the architectures are sampled from (default: {DEFAULT_SPACE})")
    _bootstrap(g)


def build_parser() -> argparse.ArgumentParser:
    from .defaults import (DEFAULT_FULL_TRAIN, DEFAULT_PROXY_TRAIN, DEFAULT_SPACE, QUICKSTART_FULL_TRAIN,
                           QUICKSTART_N_ARCHS, QUICKSTART_PROXY_TRAIN, QUICKSTART_TRIALS, DEFAULT_N_ARCHS)
    from .distill import method_names
    from .validate.contenders import DEFAULT_ZERO_COST_BATCH

    methods = ", ".join(method_names())
    parser = _Parser(
        prog="nasdistill",
        description="Neural architecture search on distilled proxy datasets: distil once, search cheaply, "
                    "validate the proxy's ranking.",
        epilog=f"--out: {OUT_RULE}. Messages and progress go through Python's logging ('nasdistill' logger): "
               "--log-file FILE, --log-level LEVEL.",
    )
    parser.add_argument("--version", action="version", version=f"nasdistill {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("distill", help="condense a dataset into a proxy artifact",
                       description="Distil a dataset into a proxy (.safetensors + .json + .png grid). "
                                   f"Methods: {methods}. The same dataset, method, settings and seed reuse the "
                                   "stored proxy; an interrupted run resumes from its last checkpoint.",
                       epilog=_methods_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    _data(p, required=True, stream=True)
    _method(p, default_method="dm")
    _target(p)
    _proxy_training(p, DEFAULT_PROXY_TRAIN)
    _full_training(p, DEFAULT_FULL_TRAIN, "full-data training (the --target-spearman validation)")
    _common(p, "proxy.safetensors/.json/.png and checkpoints/ (default: runs/<method>-ipc<N>; "
               "with --target-spearman: runs/<method>-target)")
    _tracking(p)

    p = sub.add_parser("search", help="search architectures on a proxy with Optuna or NNI",
                       description="Search (Optuna, or NNI with --backend nni): each candidate is trained on the "
                                   "proxy and scored on the real validation split. Re-running an Optuna study "
                                   "with the same name continues it.")
    p.add_argument("--proxy", required=True, type=Path, help="proxy .safetensors written by 'nasdistill distill'")
    _data(p, required=False, stream=True)
    _search(p)
    _proxy_training(p, DEFAULT_PROXY_TRAIN)
    _full_training(p, DEFAULT_FULL_TRAIN, "full-data training of --retrain-top")
    _common(p, "best_arch.json, trials.csv and study.db (default: the proxy's folder)")
    _json(p)
    _tracking(p)

    p = sub.add_parser("validate", help="check how well proxies rank architectures, beside the alternatives",
                       description="Train K sampled architectures on each proxy, on the full training split (the "
                                   "reference, kept in the results store) and with each baseline; report Spearman "
                                   "(all, top-k), Kendall and regret with bootstrap CIs, cost per candidate and "
                                   "paired bootstrap tests between contenders. Re-running resumes; processes that "
                                   "share --reference-store share the work.")
    p.add_argument("--proxy", required=True, type=Path, action="append",
                   help="proxy .safetensors written by 'nasdistill distill' (repeat to compare several)")
    p.add_argument("--baseline", action="append", default=[], metavar="NAME",
                   help="also rank with: early-stop (full data, as many training images as the proxy; "
                        "early-stop:steps = as many steps), zero-cost (synflow, naswot and gradnorm) or "
                        "zero-cost:NAME (repeatable)")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="share the trainings between N local processes (others join through the same "
                        "--reference-store) (default: 1)")
    p.add_argument("--proxy-repeats", type=int, default=1, metavar="K",
                   help="score each architecture by the mean of K trainings on the proxy from different seeded "
                        "initialisations (K times the cost; early-stop is matched to it) (default: 1)")
    p.add_argument("--vectorize-repeats", action="store_true",
                   help="train the K proxy trainings of an architecture at once under torch.func.vmap (the same "
                        "scores to float rounding; for GPUs: slower on a CPU)")
    p.add_argument("--zero-cost-batch", type=int, default=DEFAULT_ZERO_COST_BATCH, metavar="N",
                   help="real training images the zero-cost scores see (default: %(default)s)")
    p.add_argument("--reference", type=Path, default=None, metavar="TABLE",
                   help="rank the architectures of a reference table (e.g. benchmarks/reference/cifar10.json) "
                        "against its full-data results: nothing is trained on the full data for its seeds; the "
                        "data must be the table's (--data, with no slices)")
    _data(p, required=False, stream=True)
    p.add_argument("--space", default=DEFAULT_SPACE, help="search space to sample from (default: %(default)s)")
    _proxy_training(p, DEFAULT_PROXY_TRAIN)
    _validation(p, DEFAULT_N_ARCHS)
    _full_training(p, DEFAULT_FULL_TRAIN, "full-data training (the reference)")
    _common(p, "validation.json/.csv and the report (default: the first proxy's folder)")
    _json(p)
    _tracking(p)

    p = sub.add_parser("run", help="distil -> search -> validate in one go (quick start: digits, offline)",
                       description="The whole pipeline. With no flags it runs offline on scikit-learn's digits in a "
                                   "few minutes on 2 CPU cores and writes runs/quickstart/. --out DIR writes into "
                                   "exactly DIR; --out-root ROOT writes into ROOT/<name>/.")
    p.add_argument("--name", default="quickstart",
                   help="run name: the study's name and the title of the summary; without --out the folder is "
                        "<out-root>/<name> (default: quickstart)")
    p.add_argument("--out-root", type=Path, default=None, metavar="ROOT",
                   help="write into ROOT/<name>/ instead of exactly --out (default: runs)")
    _data(p, required=True)
    _method(p, default_method="dm")
    _search(p)
    _proxy_training(p, QUICKSTART_PROXY_TRAIN)
    _validation(p, QUICKSTART_N_ARCHS)
    _full_training(p, QUICKSTART_FULL_TRAIN, "full-data training (the reference and --retrain-top)")
    p.set_defaults(trials=QUICKSTART_TRIALS)
    p.add_argument("--eval-seeds", type=int, default=2,
                   help="trainings averaged when comparing the proxy with a random subset (default: 2)")
    p.add_argument("--prefetch", action="store_true",
                   help="train the validation's full-data references in a background process (one thread of "
                        "this one's) while the proxy is distilled and searched; the same results. Pays where "
                        "cores or a GPU sit idle beside the main process (on 2 CPU cores it is slower)")
    _common(p, "proxy, study, validation, summary and report (default: <out-root>/<name>, i.e. "
               "runs/quickstart)")
    _json(p)
    _tracking(p)

    p = sub.add_parser("experts", help="train (or reuse) the expert trajectories that mtt matches",
                       description="Train networks on the real training data with plain SGD and record their "
                                   "parameters after every epoch (Cazenavette et al.), for 'nasdistill distill "
                                   "--method mtt'. The buffer is kept under $NASDISTILL_HOME/experts/<key>/ (or "
                                   "--out) and reused; an interrupted build keeps its finished experts. Unset "
                                   "settings take mtt's values for --budget, so the same budget finds this buffer.")
    _data(p, required=True)
    g = p.add_argument_group("experts")
    g.add_argument("--method", default="mtt", metavar="NAME",
                   help="the method whose expert trajectories to build (its prepare step; default: mtt)")
    g.add_argument("--num-experts", type=int, default=None, metavar="N",
                   help="networks to train (default: mtt's num_experts for the budget: 100 paper, fewer on cpu)")
    g.add_argument("--train-epochs", type=int, default=None, metavar="E",
                   help="epochs each expert trains; it keeps E+1 checkpoints (default: mtt's train_epochs: 50 paper)")
    g.add_argument("--net", default=None, metavar="ARCH_ID",
                   help="expert architecture in --space, e.g. D3-W128-relu-instancenorm-avgpool "
                        "(default: mtt's net: DC's default ConvNet, width 32 on the cpu budget)")
    g.add_argument("--space", default=None, help="search space of --net (default: convnet)")
    g.add_argument("--lr", type=float, default=None,
                   help="SGD learning rate, no momentum (mtt's lr_teacher; default: 0.01)")
    g.add_argument("--batch-size", type=int, default=None, help="real images per step (mtt's batch_train; default: 256)")
    g.add_argument("--augment", default=None, help="dsa, none or a DSA strategy (default: dsa)")
    g.add_argument("--budget", choices=("auto", "cpu", "paper"), default="auto",
                   help="whose defaults fill unset settings: paper, cpu (mtt's CPU preset) or auto = cpu unless on "
                        "CUDA (default: auto)")
    g.add_argument("--store", type=Path, default=None, metavar="DIR",
                   help="expert store: the buffer goes to DIR/<key>/, where mtt looks with --set experts_dir=DIR "
                        "(default: $NASDISTILL_HOME/experts)")
    _common(p, "experts.json: where the buffer is and the settings mtt matches it with (default: none)")

    p = sub.add_parser("report", help="(re)write report.html and report.md of a run folder",
                       description="Read what a run folder holds (validation.json, summary.json, trials.csv or "
                                   "study.db, best_arch.json, pareto.csv, retrain.csv, proxy.png) and write "
                                   "report.md, a self-contained report.html and report_*.png figures into it. "
                                   "'run' and 'validate' write it themselves; this regenerates it.")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR",
                   help="folder written by run, search or validate; the report is written into it")
    _logging(p)

    p = sub.add_parser("dashboard", help="serve a run's search study in optuna-dashboard (live history)",
                       description="The search study is a plain Optuna study: this serves RUN_DIR/study.db (or "
                                   "--storage) with optuna-dashboard on a local address until Ctrl-C, the same as "
                                   "'optuna-dashboard sqlite:///RUN_DIR/study.db --host 127.0.0.1 --port 8080'. "
                                   'Needs pip install "nasdistill[dashboard]".')
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="folder written by run or search")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    p.add_argument("--port", type=int, default=8080, help="port to listen on (default: %(default)s)")
    p.add_argument("--storage", default=None, metavar="URL",
                   help="the study's storage when it is not RUN_DIR/study.db (e.g. postgresql://...)")
    _logging(p)

    p = sub.add_parser("list", help="list datasets, methods, spaces, samplers, backends")
    p.add_argument("what", choices=("datasets", "methods", "spaces", "samplers", "backends"), help="what to list")
    _logging(p)
    return parser


def _methods_epilog() -> str:
    import inspect

    from .distill import method_class, method_names

    lines = ["method settings (pass with --set KEY=VALUE; defaults are the paper's):"]
    for name in method_names():
        cls = method_class(name)
        sig = inspect.signature(cls.__init__)
        params = [f"{k}={v.default!r}" for k, v in sig.parameters.items()
                  if k not in ("self", "ipc", "seed", "device")]
        lines.append(f"  {name:8} {cls.summary}")
        if params:
            lines.append(f"           {', '.join(params)}")
        if cls.cpu_budget:
            lines.append(f"           cpu budget: {', '.join(f'{k}={v}' for k, v in cls.cpu_budget.items())}")
    return "\n".join(lines)


# --- helpers -----------------------------------------------------------------------------------
def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return {"none": None, "true": True, "false": False}.get(text.lower(), text)


def _settings(args, methods: list[str] | None = None, *, note: bool = True) -> dict:
    """The ``--set`` settings (typed by the method's constructor when one method is named) and the
    method flags given (``--iterations``, ``--init``, ``--matching-space``). A setting given both
    ways, or one that has its own flag (``--ipc``, ``--seed``, ``--device``), is refused. A method flag
    that none of ``methods`` takes gets a one-line note and is dropped; unknown ``--set`` keys are refused."""
    from .checks import FLAG_SETTINGS, OWN_FLAGS, parse_setting
    from .distill import method_class

    single = getattr(args, "target_spearman", None) is None and getattr(args, "method", None)
    cls = method_class(single) if single else None
    settings = {}
    for item in args.settings:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ConfigError(f"--set {item!r} is not KEY=VALUE", "write e.g. --set lr_img=0.5")
        if key in OWN_FLAGS:
            raise ConfigError(f"--set {key}=... repeats {OWN_FLAGS[key]}", f"use {OWN_FLAGS[key]} only")
        if key in settings:
            raise ConfigError(f"--set {key} is given twice", "give each setting once")
        settings[key] = parse_setting(cls, key, value) if cls is not None else _parse_value(value.strip())
    for key, flag in FLAG_SETTINGS.items():
        if getattr(args, key, None) is not None:
            if methods and not _taken_by(key, methods):
                if note:
                    _say(f"note: {flag} does not apply to {', '.join(methods)} (not an iterative method); ignored")
                continue
            if key in settings:
                raise ConfigError(f"--set {key}=... and {flag} are both given", f"use {flag} only")
            settings[key] = getattr(args, key)
    return settings


def _taken_by(key: str, methods: list[str]) -> bool:
    """Whether any of ``methods`` has the setting ``key`` (an unknown method is left to be refused later)."""
    from .distill import method_class, method_names

    known = [m for m in methods if m in method_names()]
    return len(known) < len(methods) or any(key in method_class(m)._param_names() for m in known)


def _data_spec(args, proxy=None):
    """The ``data`` flags as a :class:`~nasdistill.pipeline.DataSpec`; with ``proxy``, unset ones come from it."""
    from .pipeline import DataSpec

    given = {"root": args.data_root, "download": args.download, "train_per_class": args.train_per_class,
             "test_per_class": args.test_per_class, "val_per_class": args.val_per_class}
    if getattr(args, "stream", False) or getattr(args, "resolution", None) is not None:
        given.update(stream=bool(args.stream), resolution=args.resolution)
    return DataSpec(name=args.data, **given) if proxy is None else DataSpec.from_proxy(proxy, name=args.data, **given)


def _augment(text: str):
    return None if text == "none" else text


def _train_config(args) -> TrainConfig:
    """The proxy-training flags over their preset (:mod:`nasdistill.defaults`)."""
    changes = {"batch_size": args.batch_size, "lr": args.lr, "schedule": args.schedule,
               "augment": _augment(args.augment), "precision": _precision(args)}
    if args.proxy_epochs is not None:
        changes["epochs"] = args.proxy_epochs
    elif args.proxy_steps is not None:
        changes["steps"] = args.proxy_steps
    return args.proxy_preset.replace(**changes)


def _full_config(args) -> TrainConfig:
    """The full-data flags over their preset (:data:`~nasdistill.defaults.DEFAULT_FULL_TRAIN`, or the quick start's)."""
    return args.full_preset.replace(epochs=args.full_epochs, batch_size=args.full_batch_size, lr=args.lr,
                                    augment=_augment(args.full_augment), precision=_precision(args))


def _precision(args) -> str:
    """``--precision``, with ``auto`` resolved for the run's device (:func:`~nasdistill.training.resolve_precision`)."""
    from .pipeline import resolve_device
    from .training import resolve_precision

    return resolve_precision(args.precision, resolve_device(args.device))


def _k_list(text: str) -> tuple:
    """``"5,10,0.05"`` -> ``(5, 10, 0.05)`` (integers are counts, decimals fractions)."""
    try:
        return tuple(float(t) if "." in t else int(t) for t in (t.strip() for t in text.split(",")) if t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of counts and fractions") from None


def _load_proxy(path: Path):
    from .data import load_proxy

    return load_proxy(path)


def _say(msg: str) -> None:
    """A message of the command: an INFO record of the ``nasdistill.cli`` logger (:func:`_logging_to`)."""
    logger.info(msg)


def _emit_json(obj) -> None:
    """The ``--json`` summary: one line of strict JSON on the real stdout."""
    from ._io import to_jsonable

    _JSON_OUT[0].write(json.dumps(to_jsonable(obj), sort_keys=True) + "\n")
    _JSON_OUT[0].flush()


_JSON_OUT: list = [sys.stdout]  #: where --json writes (the stdout main() found)


class _Formatter(logging.Formatter):
    """Plain messages on the console; time-stamped, with level and logger, in a file."""

    def __init__(self, stamped: bool):
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s" if stamped else "%(message)s")


@contextlib.contextmanager
def _logging_to(args):
    """Route the ``nasdistill`` logger for one command: messages to stdout (stderr with ``--json``, whose
    stdout holds only the JSON), at ``--log-level``, and to ``--log-file`` when given."""
    root = logging.getLogger("nasdistill")
    level = getattr(logging, getattr(args, "log_level", "info").upper())
    as_json = getattr(args, "json", False)
    console = logging.StreamHandler(sys.stderr if as_json else sys.stdout)
    console.setFormatter(_Formatter(stamped=False))
    handlers: list[logging.Handler] = [console]
    log_file = getattr(args, "log_file", None)
    if log_file is not None:
        try:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
        except OSError as e:
            raise ConfigError(f"cannot write the log file {log_file} ({e.strerror or e})",
                              "pass a writable --log-file path") from None
        handlers[-1].setFormatter(_Formatter(stamped=True))
    for h in handlers:
        h.setLevel(level)
        root.addHandler(h)
    saved = root.level, root.propagate
    root.setLevel(level)
    root.propagate = False
    _JSON_OUT[0] = sys.stdout
    redirect = contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext()
    try:
        with redirect:
            yield
    finally:
        from .progress import close_all

        close_all()
        for h in handlers:
            root.removeHandler(h)
            h.close()
        root.setLevel(saved[0])
        root.propagate = saved[1]


def _check_backend(args) -> None:
    """One line, before any work, when the search flags do not fit ``--backend`` (or NNI is missing)."""
    from .pipeline import check_backend

    check_backend(args.backend, space=args.space, sampler=args.sampler, strategy=args.strategy, pruner=args.pruner,
                  storage=args.storage, workers=args.workers, worker_index=getattr(args, "worker_index", None),
                  objectives=args.objectives)


#: Integer flags and their lowest value, checked before any work (None: not given).
_COUNTS = {"ipc": 1, "iterations": 0, "train_per_class": 1, "test_per_class": 1, "val_per_class": 0, "trials": 1,
           "workers": 1, "worker_index": 0, "retrain_top": 0, "archs": 2, "bootstrap": 1, "eval_seeds": 1,
           "zero_cost_batch": 1, "validate_archs": 2, "target_max_candidates": 1, "num_experts": 1,
           "train_epochs": 1, "batch_size": 1, "full_epochs": 1, "full_batch_size": 1, "proxy_epochs": 1,
           "proxy_steps": 1, "proxy_repeats": 1}


def _preflight(args) -> None:
    """Every flag of ``args`` checked before any work: counts, numbers, training configs, method
    settings, and that the places written (``--out``, ``$NASDISTILL_HOME``, the stores) can be.
    Nothing is created here."""
    from .checks import check_augment, check_count, check_home, check_number, check_out_dir, check_store_url, \
        check_train

    from .work.claims import check_grace_env

    check_grace_env()
    for name, low in _COUNTS.items():
        if name in vars(args):
            check_count(getattr(args, name), f"--{name.replace('_', '-')}", low)
    if getattr(args, "target_spearman", None) is not None:
        check_number(args.target_spearman, "--target-spearman", low=-1.0, high=1.0, strict=False)
    check_number(getattr(args, "target_budget", None), "--target-budget", low=0.0)
    if "lr" in vars(args):
        check_number(args.lr, "--lr", low=0.0)
    if getattr(args, "top_k", None) is not None:
        if not args.top_k or any(isinstance(k, bool) or not (k >= 1 if isinstance(k, int) else 0 < k <= 1)
                                 for k in args.top_k):
            raise ConfigError(f"--top-k {','.join(map(str, args.top_k)) or '(empty)'} is not a list of counts >= 1 "
                              "and fractions in (0, 1]", "write e.g. --top-k 5,10,0.1")
    if "proxy_preset" in vars(args):
        check_train(_train_config(args))
    if "full_preset" in vars(args):
        check_train(_full_config(args), "full-")
        check_store_url(args.reference_store)
    if args.command == "experts":
        check_augment(args.augment)
    if args.command in ("search", "run"):
        _check_search_flags(args)
    if args.command in ("distill", "run") and "settings" in vars(args):
        _check_method_flags(args)
    if args.command in ("distill", "run", "experts", "search", "validate") and getattr(args, "out", None) is not None:
        check_out_dir(args.out)
    if getattr(args, "store", None) is not None:
        check_out_dir(args.store, "--store")
    elif args.command in ("distill", "run") or (args.command == "experts" and args.out is None):
        check_home()


def _check_search_flags(args) -> None:
    """The search flags of ``search``/``run`` by name (sampler, pruner, storage URL), before any work."""
    from .search.storage import check_storage_url

    if args.backend == "optuna":
        from .search.samplers import PRUNERS, SAMPLERS

        if args.sampler is not None:
            SAMPLERS.get(args.sampler)
        PRUNERS.get(args.pruner or "none")
    check_storage_url(args.storage)


def _check_method_flags(args) -> None:
    """The method, budget and settings of ``distill``/``run``, as the pipeline will merge them."""
    from .checks import check_method_settings
    from .distill import method_class

    if getattr(args, "target_spearman", None) is not None:
        _settings(args)
        return  # target_step splits the settings between its methods and checks each
    settings = _settings(args, [args.method], note=False)  # the command itself says what it drops
    check_method_settings(method_class(args.method), settings)


# --- commands ----------------------------------------------------------------------------------
#: ``distill`` flags that only mean something with ``--target-spearman``.
_TARGET_ONLY = ("target_metric", "target_bound", "validate_archs", "target_methods", "target_ipcs", "target_budget",
                "target_max_candidates", "space")


def _list(text: str, flag: str, cast=str) -> list:
    try:
        return [cast(t) for t in (t.strip() for t in text.split(",")) if t]
    except ValueError:
        raise ConfigError(f"{flag} {text!r} is not a comma-separated list of integers", f"write e.g. {flag} 1,2,5,10") \
            from None


def cmd_distill_target(args) -> int:
    from .defaults import DEFAULT_N_ARCHS, DEFAULT_SPACE, target_dir
    from .pipeline import resolve_device, target_step
    from .target import default_methods, ipc_ladder

    if args.mlflow is not None:
        raise ConfigError("--mlflow is not taken with --target-spearman",
                          "drop --mlflow, and log the kept proxy's validation with nasdistill validate --mlflow URI")
    if args.relabel is not None:
        raise ConfigError("--relabel does not apply with --target-spearman", "drop --relabel, or --target-spearman")
    device = resolve_device(args.device)
    dataset = _data_spec(args).load()
    methods = (_list(args.target_methods, "--target-methods") if args.target_methods is not None
               else default_methods(args.method))
    ipcs = (_list(args.target_ipcs, "--target-ipcs", int) if args.target_ipcs is not None
            else ipc_ladder(args.ipc, min(dataset.class_counts())))
    out = args.out or target_dir(args.method)
    result = target_step(dataset, target=args.target_spearman, methods=methods, ipcs=ipcs,
                         settings=_settings(args, methods),
                         budget=args.budget, metric=args.target_metric, bound=args.target_bound or "value",
                         n_archs=DEFAULT_N_ARCHS if args.validate_archs is None else args.validate_archs,
                         space=args.space or DEFAULT_SPACE, proxy_train=_train_config(args), full_train=_full_config(args),
                         n_bootstrap=args.bootstrap, time_budget_s=args.target_budget,
                         max_candidates=args.target_max_candidates, seed=args.seed, device=device, out_dir=out,
                         store=args.store, reference_store=args.reference_store, progress=args.progress, log=_say)
    _say(f"proxy: {out / 'proxy.safetensors'} ({result.chosen.name}); validation: {out / 'validation.json'}; "
         f"candidates tried: {out / 'target.json'}")
    if not result.met:
        print(f"nasdistill: {result.message()}", file=sys.stderr)
        return EXIT_TARGET_NOT_MET
    return 0


def cmd_distill(args) -> int:
    from .pipeline import resolve_device

    if args.target_spearman is not None:
        return cmd_distill_target(args)
    given = [f"--{k.replace('_', '-')}" for k in _TARGET_ONLY if getattr(args, k) is not None]
    if given:
        raise ConfigError(f"{given[0]} only applies with --target-spearman", "add --target-spearman R, or drop it")
    from .distill.parallel import init_from_env, shutdown

    device = resolve_device(args.device)
    distributed = init_from_env(device)  # under torchrun: join the process group (data-parallel distillation)
    try:
        return _distill(args, device)
    finally:
        if distributed:
            shutdown()


def _distill(args, device) -> int:
    from .defaults import distill_dir
    from .distill.parallel import is_writer
    from .pipeline import distill_step

    callbacks = _callbacks(args)
    spec = _data_spec(args)
    dataset = spec.load()
    out = args.out or distill_dir(args.method, args.ipc)
    proxy = distill_step(dataset, args.method, ipc=args.ipc, settings=_settings(args, [args.method]),
                         budget=args.budget,
                         seed=args.seed, device=device, out_dir=out, store=args.store, progress=args.progress,
                         log=_say, relabel=args.relabel, teacher_epochs=args.teacher_epochs,
                         temperature=args.temperature)
    if is_writer():
        _say(f"proxy: {out / 'proxy.safetensors'} (key {proxy.key}; grid {out / 'proxy.png'})")
        _tell(callbacks, "on_distill", proxy)
    return 0


def cmd_search(args) -> int:
    from .defaults import proxy_dir
    from .pipeline import search_step, resolve_device

    device = resolve_device(args.device)
    _check_backend(args)
    callbacks = _callbacks(args)
    proxy = _load_proxy(args.proxy)
    dataset = _data_spec(args, proxy).load()
    out = args.out or proxy_dir(args.proxy)
    search = search_step(dataset, proxy, space=args.space, n_trials=args.trials, sampler=args.sampler,
                         backend=args.backend, strategy=args.strategy,
                         pruner=args.pruner, storage=args.storage, study_name=args.study_name or "nasdistill",
                         train=_train_config(args), seed=args.seed, device=device, out_dir=out,
                         progress=args.progress, log=_say, objectives=args.objectives, workers=args.workers,
                         worker_index=args.worker_index, retrain_top=args.retrain_top, full_train=_full_config(args),
                         reference_store=args.reference_store)
    _say(f"best architecture: {search.best_id_} -> {out / 'best_arch.json'}; trials: {out / 'trials.csv'}")
    _tell(callbacks, "on_search", search)
    if args.json:
        from .pipeline import search_summary

        _emit_json(search_summary(search, out))
    return 0


def cmd_validate(args) -> int:
    from .defaults import DEFAULT_FULL_TRAIN, proxy_dir
    from .pipeline import resolve_device, validate_step

    if args.vectorize_repeats and args.proxy_repeats < 2:
        raise ConfigError("--vectorize-repeats vectorises the trainings of --proxy-repeats K, which is 1",
                          "add --proxy-repeats K with K of 2 or more, or drop --vectorize-repeats")
    device = resolve_device(args.device)
    callbacks = _callbacks(args)
    proxies = [_load_proxy(p) for p in args.proxy]
    dataset = _data_spec(args, proxies[0]).load()
    out = args.out or proxy_dir(args.proxy[0])
    full_train = _full_config(args)
    if args.reference is not None and full_train == DEFAULT_FULL_TRAIN:
        full_train = None  # the table's budget
    result = validate_step(dataset, proxies, space=args.space, n_archs=args.archs, proxy_train=_train_config(args),
                  full_train=full_train, top_k=args.top_k, n_bootstrap=args.bootstrap, reference=args.reference,
                  reference_store=args.reference_store, seed=args.seed, device=device, out_dir=out,
                  progress=args.progress, log=_say, baselines=args.baseline, workers=args.workers,
                  zero_cost_batch=args.zero_cost_batch, repeats=args.proxy_repeats,
                  vectorize=args.vectorize_repeats)
    _say(f"results: {out / 'validation.json'}, {out / 'validation.csv'} (one line per contender), "
         f"{out / 'validation_archs.csv'} (one line per architecture)")
    _tell(callbacks, "on_validate", result)
    if args.json:
        from .pipeline import validation_summary

        _emit_json(validation_summary(result, out))
    return 0


def _run_method_settings(args) -> dict:
    """``run``'s method settings: :func:`_settings`, plus ``--precision`` (resolved) as the method's own
    ``precision`` when it takes one and ``--set`` gives neither it nor ``compile=true`` (fp32 only)."""
    from .distill import method_class

    settings = _settings(args, [args.method])
    if ("precision" in method_class(args.method)._param_names() and "precision" not in settings
            and not settings.get("compile")):
        settings["precision"] = _precision(args)
    return settings


def cmd_run(args) -> int:
    from .defaults import RUNS_DIR
    from .pipeline import RunConfig, resolve_device, run

    device = resolve_device(args.device)
    if args.out is not None and args.out_root is not None:
        raise ConfigError("--out and --out-root both given", "pass --out DIR (exactly DIR) or --out-root ROOT "
                          "(ROOT/<name>)")
    config = RunConfig(  # run() checks the backend's flags before any work
        name=args.name, data=_data_spec(args), method=args.method, ipc=args.ipc,
        method_settings=_run_method_settings(args),
        budget=args.budget, space=args.space, n_trials=args.trials, backend=args.backend, sampler=args.sampler,
        strategy=args.strategy, pruner=args.pruner,
        storage=args.storage, study_name=args.study_name, objectives=args.objectives, workers=args.workers,
        retrain_top=args.retrain_top, proxy_train=_train_config(args),
        full_train=_full_config(args), n_archs=args.archs, top_k=args.top_k, n_bootstrap=args.bootstrap,
        eval_seeds=args.eval_seeds, seed=args.seed, device=device, out_root=str(args.out_root or RUNS_DIR),
        out=None if args.out is None else str(args.out), store=args.store, reference_store=args.reference_store,
        relabel=args.relabel, teacher_epochs=args.teacher_epochs, temperature=args.temperature,
        prefetch=args.prefetch,
    )
    summary = run(config, progress=args.progress, log=_say, callbacks=_callbacks(args))
    _say(f"outputs: {config.out_dir}/")
    if args.json:
        _emit_json(summary)
    return 0


def cmd_experts(args) -> int:
    from .pipeline import experts_step, resolve_device

    device = resolve_device(args.device)
    dataset = _data_spec(args).load()
    buffer = experts_step(dataset, method=args.method, num_experts=args.num_experts, train_epochs=args.train_epochs,
                          net=args.net, space=args.space, lr=args.lr, batch_size=args.batch_size, augment=args.augment,
                          budget=args.budget, seed=args.seed, device=device, root=args.store, progress=args.progress,
                          log=_say)
    sets = " ".join(f"--set {k}={'none' if v is None else v}" for k, v in buffer.mtt_settings().items())
    command = f"nasdistill distill --method {args.method} --data {dataset.name} {sets}"
    _say(f"expert buffer: {buffer.dir_} ({args.method} matches it with: {command})")
    if args.out is not None:
        from ._io import write_json

        path = write_json(args.out / "experts.json", {
            "dir": str(buffer.dir_), "method": args.method, "num_experts": buffer.num_experts,
            "train_epochs": buffer.train_epochs, "arch_id": buffer.arch_id, "trained": buffer.trained_,
            "reused": buffer.reused_, "settings": buffer.mtt_settings(), "command": command})
        _say(f"experts: {path}")
    return 0


def cmd_report(args) -> int:
    from .report import write_report

    paths = write_report(args.run_dir)
    for role, path in paths.items():
        _say(f"{role}: {path}")
    return 0


def cmd_dashboard(args) -> int:
    from .dashboard import serve

    serve(args.run_dir, host=args.host, port=args.port, storage=args.storage, log=_say)
    return 0


def cmd_list(args) -> int:
    if args.what == "datasets":
        from .data import dataset_names

        items = dataset_names()
    elif args.what == "methods":
        from .distill import method_class, method_names

        items = [f"{n:10} {method_class(n).summary}" for n in method_names()]
    elif args.what == "spaces":
        from .spaces import get_space, space_names

        items = [f"{n:10} {get_space(n).size() or 'unbounded'} architectures" for n in space_names()]
    elif args.what == "backends":
        from .search.backend import BACKENDS, backend_class

        items = [f"{n:10} {_first_sentence(backend_class(n))}" for n in BACKENDS.names()]
    else:
        from .search.backend import BACKENDS, backend_class

        backends = [backend_class(n) for n in ("optuna", "nni")]
        backends += [backend_class(n) for n in BACKENDS.names() if n not in ("optuna", "nni")]
        items = [f"{n:10} {b.name:7} {_first_sentence(obj)}" for b in backends for n, obj in b.choices()]
        how = "; ".join(f"{b.name}: {b.choice_flag}" for b in backends if b.choice_flag)
        items = [f"{'name':10} {'backend':7} ({how})", *items]
    print("\n".join(items))
    return 0


def _first_sentence(obj) -> str:
    """The first sentence of ``obj``'s docstring, without reST markup."""
    import re

    doc = " ".join((obj.__doc__ or "").strip().split("\n\n")[0].split())
    doc = re.sub(r":\w+:`([^`]*)`", r"\1", doc).replace("``", "").replace("`", "")
    return re.split(r"(?<=\.)\s+(?=[A-Z])", doc)[0]


COMMANDS = {"distill": cmd_distill, "search": cmd_search, "validate": cmd_validate, "run": cmd_run,
            "experts": cmd_experts, "report": cmd_report, "dashboard": cmd_dashboard, "list": cmd_list}


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Print a :class:`~nasdistill.errors.NasDistillWarning` as one line; others as Python does."""
    from .errors import NasDistillWarning

    if issubclass(category, NasDistillWarning):
        print(f"nasdistill: warning: {message}", file=sys.stderr, flush=True)
    else:
        print(warnings.formatwarning(message, category, filename, lineno, line), end="", file=file or sys.stderr)


def main(argv: list[str] | None = None) -> int:
    code = _main(argv)
    from .distill.parallel import exit_now

    exit_now(code)  # a rank under torchrun ends here, past Python's finalisation (see exit_now)
    return code


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, or a usage error (one line, already printed)
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    if not args.command:
        parser.print_help()
        return EXIT_USAGE
    try:
        with _logging_to(args), warnings.catch_warnings():
            warnings.showwarning = _show_warning
            if args.command != "list":
                _preflight(args)
            return COMMANDS[args.command](args)
    except NasDistillError as e:
        print(f"nasdistill: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as e:  # a full disk, a vanished folder, a permission refused: one line, no traceback
        print(f"nasdistill: error: {os_error_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("nasdistill: interrupted; run the same command again to resume from the last checkpoint",
              file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
