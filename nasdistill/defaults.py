"""Every default the library and the ``nasdistill`` command share, defined once.

Training budgets, validation sizes and output folders. The Python API (:class:`~nasdistill.validate.Validation`,
:func:`~nasdistill.pipeline.search_step`, :class:`~nasdistill.pipeline.RunConfig`...) falls back on them, and
the command line takes its flag defaults from them, so a request made either way trains the same networks
the same way and finds the same stored results (the reference store is keyed by the budget).

>>> from nasdistill.defaults import DEFAULT_FULL_TRAIN
>>> DEFAULT_FULL_TRAIN.replace(epochs=5)    # a smaller full-data budget of the same protocol
"""

from __future__ import annotations

from pathlib import Path

from .training import TrainConfig

# --- training budgets ---------------------------------------------------------------------------------
#: DC's evaluation protocol for synthetic sets: 300 epochs, batch 256, SGD lr 0.01 (x0.1 at half), DSA
#: augmentation. A proxy of 10 images a class is 300 steps: about 2.5 min for DC's ConvNet on CPU with
#: MNIST (~200 images/s), 10 s with 8x8 digits; seconds on a GPU.
DEFAULT_PROXY_TRAIN = TrainConfig(epochs=300, batch_size=256, augment="dsa")
#: Full-data reference: 20 epochs, batch 128, SGD lr 0.01 (x0.1 at half), no augmentation; about
#: 8,600 steps on MNIST, 7,000 on CIFAR-10. The reference should approach each architecture's
#: plateau, so it is far costlier than the proxy: 1.5 h or more for DC's ConvNet on CPU with MNIST (use a
#: per-class slice there, or pass a smaller budget), minutes on a GPU. It is paid once per
#: (dataset, architecture, budget, seed) thanks to the reference store. The Python API,
#: ``nasdistill validate``, ``search --retrain-top`` and ``distill --target-spearman`` all use it (the
#: ``--full-*`` flags replace its fields), as do the examples and the fidelity benchmark with their
#: own epochs, so their stored references are found by each other.
DEFAULT_FULL_TRAIN = TrainConfig(epochs=20, batch_size=128)

# --- validation and search ----------------------------------------------------------------------------
#: Architectures a validation samples (seeded) from the search space.
DEFAULT_N_ARCHS = 12
#: Bootstrap resamples for intervals and pairwise tests.
DEFAULT_N_BOOTSTRAP = 1000
#: Images in the zero-cost contenders' batch (NASWOT's batch size).
DEFAULT_ZERO_COST_BATCH = 128
#: Spearman over the top 5, 10 and 20 architectures by full-data accuracy, and over the top 5% (the
#: dataset-condensation NAS experiments of Zhao et al. rank the top 5% of 720 ConvNets).
DEFAULT_TOP_K: tuple[int | float, ...] = (5, 10, 20, 0.05)
#: Full-data accuracy lost by trusting the contender's best pick, and its best five.
DEFAULT_REGRET_K: tuple[int | float, ...] = (1, 5)
#: The search space architectures are sampled from and searched in.
DEFAULT_SPACE = "convnet"
#: Finished trials a search wants.
DEFAULT_N_TRIALS = 20

# --- the quick start (``nasdistill run``, :class:`~nasdistill.pipeline.RunConfig`) --------------------
#: Proxy training of the quick start: 80 steps with DSA augmentation.
QUICKSTART_PROXY_TRAIN = TrainConfig(steps=80, augment="dsa")
#: Full-data training of the quick start: 6 epochs, batch 128 (minutes on 2 CPU cores with digits).
QUICKSTART_FULL_TRAIN = TrainConfig(epochs=6, batch_size=128)
#: Architectures the quick start validates.
QUICKSTART_N_ARCHS = 10
#: Trials the quick start's search runs.
QUICKSTART_TRIALS = 16

# --- output folders -----------------------------------------------------------------------------------
#: Where runs go when no output folder is given.
RUNS_DIR = Path("runs")


def distill_dir(method: str, ipc: int) -> Path:
    """Output folder of a distillation: ``runs/<method>-ipc<N>``."""
    return RUNS_DIR / f"{method}-ipc{ipc}"


def target_dir(method: str) -> Path:
    """Output folder of a distillation to a fidelity target: ``runs/<method>-target``."""
    return RUNS_DIR / f"{method}-target"


def proxy_dir(proxy_path: str | Path) -> Path:
    """Output folder of a search or validation of a proxy file: the folder holding it."""
    return Path(proxy_path).parent


__all__ = ["DEFAULT_PROXY_TRAIN", "DEFAULT_FULL_TRAIN", "DEFAULT_N_ARCHS", "DEFAULT_N_BOOTSTRAP", "DEFAULT_TOP_K",
           "DEFAULT_REGRET_K", "DEFAULT_SPACE", "DEFAULT_N_TRIALS", "QUICKSTART_PROXY_TRAIN", "QUICKSTART_FULL_TRAIN",
           "QUICKSTART_N_ARCHS", "QUICKSTART_TRIALS", "RUNS_DIR", "distill_dir", "target_dir", "proxy_dir"]
