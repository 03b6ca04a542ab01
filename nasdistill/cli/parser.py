"""The ``nasdistill`` command line: its parser, one argument group per concern (data, method, proxy
training, full-data training, validation, search, target), and each command's flags."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from .. import __version__
from .codes import EXIT_USAGE

if TYPE_CHECKING:
    from ..training import TrainConfig


OUT_RULE = "every command writes its outputs into exactly the --out folder (created if missing)"


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line (problem; where the fix is), like every other error."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {' '.join(message.split())}; see '{self.prog} --help'\n")


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


def _json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true",
                   help="print the summary as one JSON object on stdout; every other message goes to stderr")


def _data(p: argparse.ArgumentParser, required: bool) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--stream", action="store_true",
                   help="imagefolder:PATH or a torchvision name: decode the data once into a memory-mapped "
                        "uint8 cache ($NASDISTILL_HOME/datasets) and read batches from it (datasets larger "
                        "than RAM; the validation split is held out of it as in RAM; "
                        "every method draws its batches from it, and full-data training (references, "
                        "early-stopping, experts, teachers) reads each mini-batch from it)")
    g.add_argument("--resolution", type=int, default=None, metavar="PX",
                   help="resize every image to PX x PX (bilinear) as it is read, so an ImageFolder tree "
                        "of mixed sizes loads (with --stream: when the cache is built)")
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
    from ..defaults import DEFAULT_N_BOOTSTRAP

    g.add_argument("--bootstrap", type=int, default=DEFAULT_N_BOOTSTRAP, metavar="N",
                   help="bootstrap resamples (default: %(default)s)")


def _validation(p: argparse.ArgumentParser, n_archs: int) -> None:
    """``--archs``, ``--top-k`` and ``--bootstrap`` of ``validate`` and ``run``."""
    from ..defaults import DEFAULT_TOP_K

    g = p.add_argument_group("validation")
    g.add_argument("--archs", type=int, default=n_archs, metavar="K", help="architectures sampled (default: %(default)s)")
    g.add_argument("--top-k", type=_k_list, default=DEFAULT_TOP_K, metavar="LIST",
                   help="Spearman over the top-k architectures by full-data accuracy: counts and/or fractions, "
                        f"comma-separated (default: {','.join(map(str, DEFAULT_TOP_K))})")
    _bootstrap(g)


def _backend_names() -> list[str]:
    """The registered search backends (reading the registry imports no backend)."""
    from ..search.backend import BACKENDS

    return BACKENDS.names()


def _search(p: argparse.ArgumentParser) -> None:
    from ..defaults import DEFAULT_N_TRIALS, DEFAULT_SPACE

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
                   help="Optuna sampler: tpe, gp (Gaussian process), random, grid or nsga2 (default: tpe; --backend optuna)")
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
    from ..defaults import DEFAULT_N_ARCHS, DEFAULT_SPACE

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


#: Each command's one-line help, for the command list of ``nasdistill --help``.
COMMAND_HELP = {
    "distill": "condense a dataset into a proxy artifact",
    "search": "search architectures on a proxy with Optuna or NNI",
    "validate": "check how well proxies rank architectures, beside the alternatives",
    "run": "distil -> search -> validate in one go (quick start: digits, offline)",
    "experts": "train (or reuse) the expert trajectories that mtt matches",
    "report": "(re)write report.html and report.md of a run folder",
    "dashboard": "serve a run's search study in optuna-dashboard (live history)",
    "list": "list datasets, methods, spaces, samplers, backends",
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``nasdistill`` parser. ``command``: build only that command's flags (the others are names
    with their help, enough for the command list and its errors), so ``nasdistill --help`` and
    ``--version`` (``command=""``) import no torch; None builds every command's (tests, docs)."""
    parser = _Parser(
        prog="nasdistill",
        description="Neural architecture search on distilled proxy datasets: distil once, search cheaply, "
                    "validate the proxy's ranking.",
        epilog=f"--out: {OUT_RULE}. Messages and progress go through Python's logging ('nasdistill' logger): "
               "--log-file FILE, --log-level LEVEL.",
    )
    parser.add_argument("--version", action="version", version=f"nasdistill {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, build in _COMMANDS.items():
        if command is None or command == name:
            build(sub)
        else:
            sub.add_parser(name, help=COMMAND_HELP[name])
    parser.commands = sub.choices  # name -> its parser, for errors found after parsing (see parse)
    return parser


def command_in(argv: list[str] | None) -> str:
    """The command ``argv`` names (its first word that is not a flag), or "" when it names none."""
    import sys

    words = [a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("-")]
    return words[0] if words and words[0] in COMMAND_HELP else ""


def _distill_command(sub) -> None:
    from ..defaults import DEFAULT_FULL_TRAIN, DEFAULT_PROXY_TRAIN
    from ..distill import method_names

    methods = ", ".join(method_names())
    p = sub.add_parser("distill", help=COMMAND_HELP["distill"],
                       description="Distil a dataset into a proxy (.safetensors + .json + .png grid). "
                                   f"Methods: {methods}. The same dataset, method, settings and seed reuse the "
                                   "stored proxy; an interrupted run resumes from its last checkpoint.",
                       epilog=_methods_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    _data(p, required=True)
    _method(p, default_method="dm")
    _target(p)
    _proxy_training(p, DEFAULT_PROXY_TRAIN)
    _full_training(p, DEFAULT_FULL_TRAIN, "full-data training (the --target-spearman validation)")
    _common(p, "proxy.safetensors/.json/.png and checkpoints/ (default: runs/<method>-ipc<N>; "
               "with --target-spearman: runs/<method>-target)")
    _tracking(p)


def _search_command(sub) -> None:
    from ..defaults import DEFAULT_FULL_TRAIN, DEFAULT_PROXY_TRAIN

    p = sub.add_parser("search", help=COMMAND_HELP["search"],
                       description="Search (Optuna, or NNI with --backend nni): each candidate is trained on the "
                                   "proxy and scored on the real validation split. Re-running an Optuna study "
                                   "with the same name continues it.")
    p.add_argument("--proxy", required=True, type=Path,
                   help="proxy .safetensors written by 'nasdistill distill' (or the --out folder it wrote)")
    _data(p, required=False)
    _search(p)
    _proxy_training(p, DEFAULT_PROXY_TRAIN)
    _full_training(p, DEFAULT_FULL_TRAIN, "full-data training of --retrain-top")
    _common(p, "best_arch.json, trials.csv and study.db (default: the proxy's folder)")
    _json(p)
    _tracking(p)


def _validate_command(sub) -> None:
    from ..defaults import (DEFAULT_FULL_TRAIN, DEFAULT_N_ARCHS, DEFAULT_PROXY_TRAIN, DEFAULT_SPACE, DEFAULT_ZERO_COST_BATCH)

    p = sub.add_parser("validate", help=COMMAND_HELP["validate"],
                       description="Train K sampled architectures on each proxy, on the full training split (the "
                                   "reference, kept in the results store) and with each baseline; report Spearman "
                                   "(all, top-k), Kendall and regret with bootstrap CIs, cost per candidate and "
                                   "paired bootstrap tests between contenders. Re-running resumes; processes that "
                                   "share --reference-store share the work.")
    p.add_argument("--proxy", required=True, type=Path, action="append",
                   help="proxy .safetensors written by 'nasdistill distill', or its --out folder (repeat to "
                        "compare several)")
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
    _data(p, required=False)
    p.add_argument("--space", default=DEFAULT_SPACE, help="search space to sample from (default: %(default)s)")
    _proxy_training(p, DEFAULT_PROXY_TRAIN)
    _validation(p, DEFAULT_N_ARCHS)
    _full_training(p, DEFAULT_FULL_TRAIN, "full-data training (the reference)")
    _common(p, "validation.json/.csv and the report (default: the first proxy's folder)")
    _json(p)
    _tracking(p)


def _run_command(sub) -> None:
    from ..defaults import QUICKSTART_FULL_TRAIN, QUICKSTART_N_ARCHS, QUICKSTART_PROXY_TRAIN, QUICKSTART_TRIALS

    p = sub.add_parser("run", help=COMMAND_HELP["run"],
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


def _experts_command(sub) -> None:
    p = sub.add_parser("experts", help=COMMAND_HELP["experts"],
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


def _report_command(sub) -> None:
    p = sub.add_parser("report", help=COMMAND_HELP["report"],
                       description="Read what a run folder holds (validation.json, summary.json, trials.csv or "
                                   "study.db, best_arch.json, pareto.csv, retrain.csv, proxy.png) and write "
                                   "report.md, a self-contained report.html and report_*.png figures into it. "
                                   "'run' and 'validate' write it themselves; this regenerates it.")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", nargs="?", default=None,
                   help="folder written by run, search or validate; the report is written into it")
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="the same folder, as the other commands name theirs (give RUN_DIR or --out)")
    _logging(p)


def _dashboard_command(sub) -> None:
    p = sub.add_parser("dashboard", help=COMMAND_HELP["dashboard"],
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


def _list_command(sub) -> None:
    p = sub.add_parser("list", help=COMMAND_HELP["list"])
    p.add_argument("what", choices=("datasets", "methods", "spaces", "samplers", "backends"), help="what to list")
    _logging(p)


_COMMANDS = {"distill": _distill_command, "search": _search_command, "validate": _validate_command, "run": _run_command, "experts": _experts_command, "report": _report_command, "dashboard": _dashboard_command, "list": _list_command}


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """``parser.parse_args``, except that flags the command does not take are refused by the
    command's own parser, so the line names its ``--help`` (``nasdistill report --help``), not the
    top level's."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        where = parser.commands.get(args.command, parser) if args.command else parser
        where.error(f"unrecognized arguments: {' '.join(extra)}{_did_you_mean(where, extra)}")
    if args.command == "report":
        if args.run_dir is not None and args.out is not None and args.run_dir != args.out:
            where = parser.commands["report"]
            where.error(f"RUN_DIR {args.run_dir} and --out {args.out} name two folders; give one of them")
        args.run_dir = args.run_dir if args.run_dir is not None else args.out
        if args.run_dir is None:
            parser.commands["report"].error("the following arguments are required: RUN_DIR (or --out DIR)")
    return args


def _did_you_mean(parser: argparse.ArgumentParser, extra: list[str]) -> str:
    """`` (did you mean --archs?)`` for the first unknown flag close to one the parser takes (the
    API's names, such as ``--n-archs`` for ``n_archs``, are a likely slip)."""
    import difflib

    flags = [o for action in parser._actions for o in action.option_strings if o.startswith("--")]
    for word in extra:
        if word.startswith("--"):
            name = word.split("=", 1)[0]
            close = difflib.get_close_matches(name, flags, n=1, cutoff=0.75)
            if close:
                return f" (did you mean {close[0]}?)"
    return ""


def _k_list(text: str) -> tuple:
    """``"5,10,0.05"`` -> ``(5, 10, 0.05)`` (integers are counts, decimals fractions)."""
    try:
        return tuple(float(t) if "." in t else int(t) for t in (t.strip() for t in text.split(",")) if t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of counts and fractions") from None


def _methods_epilog() -> str:
    import inspect

    from ..distill import method_class, method_names

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
