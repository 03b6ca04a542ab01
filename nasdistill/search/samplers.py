"""Sampler and pruner registries for the Optuna backend.

``SAMPLERS`` maps a name to a factory ``(seed, space) -> optuna.samplers.BaseSampler``;
``PRUNERS`` maps a name to a factory ``(epochs) -> optuna.pruners.BasePruner``, where ``epochs`` is
the evaluator's proxy-training budget in epochs (the pruning resource) or None when unknown.
Register more with ``SAMPLERS.register("name", factory)``; :func:`make_sampler` /
:func:`make_pruner` also accept ready-made Optuna objects.
"""

from __future__ import annotations

from typing import Callable

import optuna

from .._registry import Registry
from ..errors import ConfigError
from ..spaces import CategoricalSpace, SearchSpace

SamplerFactory = Callable[[int, SearchSpace], optuna.samplers.BaseSampler]
PrunerFactory = Callable[["int | None"], optuna.pruners.BasePruner]

SAMPLERS: Registry[SamplerFactory] = Registry("sampler")
PRUNERS: Registry[PrunerFactory] = Registry("pruner")


@SAMPLERS.register("tpe")
def tpe_sampler(seed: int, space: SearchSpace) -> optuna.samplers.BaseSampler:
    """Optuna's TPE with its 5.0 defaults (multivariate, constant liar for parallel workers,
    10 random start-up trials)."""
    return optuna.samplers.TPESampler(seed=seed)


@SAMPLERS.register("random")
def random_sampler(seed: int, space: SearchSpace) -> optuna.samplers.BaseSampler:
    """Uniform random sampling."""
    return optuna.samplers.RandomSampler(seed=seed)


@SAMPLERS.register("gp")
def gp_sampler(seed: int, space: SearchSpace) -> optuna.samplers.BaseSampler:
    """Optuna's Gaussian-process Bayesian optimisation (``GPSampler``: a GP over the encoded choices,
    log expected improvement; one or several objectives) after 10 random start-up trials. Choices a
    space asks for only in some architectures (the macro space's optional blocks) are drawn at random."""
    return optuna.samplers.GPSampler(seed=seed, warn_independent_sampling=False)


@SAMPLERS.register("grid")
def grid_sampler(seed: int, space: SearchSpace) -> optuna.samplers.BaseSampler:
    """Every architecture of a finite categorical space once, in a seeded order."""
    if not isinstance(space, CategoricalSpace):
        raise ConfigError(f"the grid sampler needs a finite categorical space, and {space.name!r} is not one",
                          "use --sampler tpe or random, or define the space as a CategoricalSpace")
    return optuna.samplers.GridSampler({k: list(v) for k, v in space.choices.items()}, seed=seed)


#: Population of each NSGA-II generation. Smaller than Optuna's 50 because proxy searches run tens
#: of trials, not thousands: with 50, a 20-trial study would never leave its random first generation.
NSGA2_POPULATION = 10


@SAMPLERS.register("nsga2")
def nsga2_sampler(seed: int, space: SearchSpace) -> optuna.samplers.BaseSampler:
    """NSGA-II, the evolutionary multi-objective sampler (e.g. ``--objectives accuracy,params``):
    generations of {population} architectures, the next bred from the Pareto-best."""
    return optuna.samplers.NSGAIISampler(population_size=NSGA2_POPULATION, seed=seed)


# what 'nasdistill list samplers' shows: the population's size, not the constant's name
nsga2_sampler.__doc__ = nsga2_sampler.__doc__.format(population=NSGA2_POPULATION)


@PRUNERS.register("none")
def no_pruner(epochs: int | None) -> optuna.pruners.BasePruner:
    """Never prune: every candidate trains for the full budget (no intermediate evaluations)."""
    return optuna.pruners.NopPruner()


@PRUNERS.register("median")
def median_pruner(epochs: int | None) -> optuna.pruners.BasePruner:
    """Stop a trial whose accuracy at an epoch is below the median of earlier trials at that epoch
    (after 5 start-up trials, Optuna's default)."""
    return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0)


@PRUNERS.register("hyperband")
def hyperband_pruner(epochs: int | None) -> optuna.pruners.BasePruner:
    """Hyperband over proxy-training epochs (from 1 epoch up to the full budget), halving by 3."""
    return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs or "auto", reduction_factor=3)


def make_sampler(sampler: str | optuna.samplers.BaseSampler, seed: int,
                 space: SearchSpace) -> optuna.samplers.BaseSampler:
    """A sampler by registry name (seeded with ``seed``), or ``sampler`` itself if already one."""
    if isinstance(sampler, optuna.samplers.BaseSampler):
        return sampler
    return SAMPLERS.get(sampler)(seed, space)


def make_pruner(pruner: str | optuna.pruners.BasePruner | None, epochs: int | None) -> optuna.pruners.BasePruner:
    """A pruner by registry name (None means ``none``), or ``pruner`` itself if already one."""
    if isinstance(pruner, optuna.pruners.BasePruner):
        return pruner
    return PRUNERS.get(pruner or "none")(epochs)


__all__ = ["SAMPLERS", "PRUNERS", "make_sampler", "make_pruner", "SamplerFactory", "PrunerFactory",
           "NSGA2_POPULATION"]
