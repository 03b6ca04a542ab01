"""The search-space protocol.

A search space describes a family of networks. It can

* ``suggest(trial)``: draw an architecture through an Optuna-style trial (``suggest_categorical``,
  ``suggest_int``, ``suggest_float``), which is how Optuna, NNI and plain random sampling all drive it;
* ``build(arch, input_shape, num_classes)``: make a :class:`Network` for any input shape / class count;
* ``arch_id(arch)`` / ``parse_id(arch_id)``: a stable string id and back;
* ``enumerate()`` / ``size()`` when finite; ``sample(k, seed)`` always.

An architecture is a plain ``dict`` of JSON values.
"""

from __future__ import annotations

import itertools
import math
from abc import ABC, abstractmethod
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from .._params import as_whole
from .._seed import derive_seed, seeded
from ..errors import ConfigError

Arch = dict


class Network(nn.Module):
    """A model built by a search space: a feature extractor then a linear ``classifier``.

    Distillation methods use :meth:`embed` (penultimate features) and :meth:`feature_maps`
    (the output of every block), so any space whose networks follow this shape can serve
    as a matching network.
    """

    classifier: nn.Module

    #: Whether float32 training and evaluation on a CPU run this network in ``channels_last`` too (the
    #: bf16 fast layout's path, :mod:`nasdistill.training.layout`), as a space sets it where that
    #: measured faster (its batch-norm networks); the results then differ from NCHW ones by float rounding.
    fp32_channels_last: bool = False

    @abstractmethod
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features, flattened to (N, D)."""

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Intermediate activations, last one equal to ``embed(x)``. Default: only the embedding."""
        return [self.embed(x)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


class RandomTrial:
    """A stand-in for an Optuna trial that samples uniformly with a NumPy generator.

    Lets any space be sampled without Optuna: ``space.suggest(RandomTrial(seed))``.
    """

    def __init__(self, seed: int | np.random.Generator):
        self.rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        self.params: dict[str, Any] = {}

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        v = choices[int(self.rng.integers(len(choices)))]
        self.params[name] = v
        return v

    def suggest_int(self, name: str, low: int, high: int, step: int = 1, log: bool = False) -> int:
        if log:
            v = int(round(math.exp(self.rng.uniform(math.log(low), math.log(high)))))
            v = min(high, max(low, v))
        else:
            v = int(low + step * self.rng.integers((high - low) // step + 1))
        self.params[name] = v
        return v

    def suggest_float(self, name: str, low: float, high: float, step: float | None = None, log: bool = False) -> float:
        if log:
            v = float(math.exp(self.rng.uniform(math.log(low), math.log(high))))
        elif step:
            v = float(low + step * self.rng.integers(int(round((high - low) / step)) + 1))
        else:
            v = float(self.rng.uniform(low, high))
        self.params[name] = v
        return v


class DictTrial:
    """A trial stand-in that answers ``suggest_*`` calls from a dict of values (e.g. a backend's sample).

    ``space.suggest(DictTrial(values))`` turns flat values chosen by any tool into an architecture.
    Names absent from ``values`` fall back to the first choice / the lower bound.
    """

    def __init__(self, values: Mapping[str, Any]):
        self.values = dict(values)
        self.params: dict[str, Any] = {}

    def _get(self, name: str, default: Any) -> Any:
        v = self.values.get(name, default)
        self.params[name] = v
        return v

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        v = self._get(name, choices[0])
        if v not in choices:
            raise ConfigError(f"{name}={v!r} is not one of {list(choices)}", "pick a listed value")
        return v

    def suggest_int(self, name: str, low: int, high: int, step: int = 1, log: bool = False) -> int:
        return int(self._get(name, low))

    def suggest_float(self, name: str, low: float, high: float, step: float | None = None, log: bool = False) -> float:
        return float(self._get(name, low))


class SearchSpace(ABC):
    """Base class of every search space (see the module docstring for the protocol)."""

    name: str = "space"

    @abstractmethod
    def suggest(self, trial: Any) -> Arch:
        """Draw an architecture using ``trial.suggest_*`` calls."""

    @abstractmethod
    def build(self, arch: Mapping, input_shape: Sequence[int], num_classes: int) -> nn.Module:
        """A freshly initialised network for images shaped ``input_shape`` = (C, H, W)."""

    def check_input(self, input_shape: Sequence[int]) -> None:
        """Raise :class:`~nasdistill.errors.ConfigError` when no architecture of the space can take images
        shaped ``input_shape`` = (C, H, W). Searches and validations call it before any work; the
        default takes every shape."""
        return None

    # --- ids -----------------------------------------------------------------------------
    def arch_id(self, arch: Mapping) -> str:
        """Stable string id: ``key=value`` pairs in key order, joined by commas."""
        return ",".join(f"{k}={arch[k]}" for k in sorted(arch))

    def parse_id(self, arch_id: str) -> Arch:
        """Inverse of :meth:`arch_id`."""
        arch: Arch = {}
        for part in filter(None, arch_id.split(",")):
            k, eq, v = part.partition("=")
            if not eq:  # 'D9-W1', a typo'd id: not "unknown key 'D9-W1'"
                default = self.default_arch()
                example = self.arch_id(default) if default else "key=value,key=value"
                raise ConfigError(f"{arch_id!r} is not an architecture id of {self.name!r}",
                                  f"use an id such as {example!r}")
            arch[k] = _parse_scalar(v)
        return arch

    # --- finite spaces ---------------------------------------------------------------------
    def enumerate(self) -> Iterator[Arch]:
        """Every architecture, in a fixed order (finite spaces only)."""
        raise ConfigError(f"search space {self.name!r} is not finite", "sample it instead of enumerating it")

    def size(self) -> int | None:
        """Number of architectures, or None when infinite/unknown."""
        return None

    def default_arch(self) -> Arch | None:
        """A reference architecture (used to evaluate proxies), if the space has one."""
        return None

    # --- flat categorical view (grid search, NNI) -------------------------------------------------
    def dimensions(self) -> dict[str, list] | None:
        """Every ``suggest_*`` name with all its possible values, as flat categorical choices.

        Backends that need a static description of the space (grid search, NNI's model space) use
        this together with :meth:`from_values`. Conditional spaces list every name they may ask for
        (values of names a given architecture does not use are ignored). None when the space cannot
        be described this way.
        """
        return None

    def from_values(self, values: Mapping[str, Any]) -> Arch:
        """The architecture that flat ``values`` (one per :meth:`dimensions` name) describe."""
        return self.suggest(DictTrial(values))

    # --- sampling --------------------------------------------------------------------------
    def sample(self, k: int, seed: int = 0, unique: bool = True) -> list[Arch]:
        """``k`` architectures drawn uniformly with ``seed`` (distinct ones when ``unique``)."""
        k, seed = sample_args(k, seed)
        n = self.size()
        if n is not None and unique:
            if k > n:
                raise ConfigError(f"cannot sample {k} distinct architectures from {self.name!r} ({n} in all)",
                                  f"ask for at most {n}")
            rng = np.random.default_rng(derive_seed("sample", self.name, seed) % (2**63))
            picks = set(int(i) for i in rng.choice(n, size=k, replace=False))
            out = [a for i, a in enumerate(self.enumerate()) if i in picks]
            order = rng.permutation(k)
            return [out[i] for i in order]
        rng = np.random.default_rng(derive_seed("sample", self.name, seed) % (2**63))
        archs: list[Arch] = []
        seen: set[str] = set()
        for _ in range(max(100, 50 * k)):
            a = self.suggest(RandomTrial(rng))
            aid = self.arch_id(a)
            if unique and aid in seen:
                continue
            seen.add(aid)
            archs.append(a)
            if len(archs) == k:
                return archs
        raise ConfigError(f"could only draw {len(archs)} distinct architectures from {self.name!r}",
                          "ask for fewer or allow repeats")

    # --- building & measuring --------------------------------------------------------------
    def resolve(self, arch: Mapping | str) -> Arch:
        """``arch`` as a dict: a mapping as given, or an id (:meth:`arch_id`'s string) parsed; anything else
        is a one-line :class:`~nasdistill.errors.ConfigError` (it was a TypeError from inside the space)."""
        if isinstance(arch, str):
            return self.parse_id(arch)
        if isinstance(arch, Mapping):
            return dict(arch)
        default = self.default_arch()
        example = f", e.g. {self.arch_id(default)!r}" if default else ""
        raise ConfigError(f"an architecture of {self.name!r} is a dict of its choices or its id, got "
                          f"{type(arch).__name__} {arch!r}", f"pass a dict such as space.sample(1, seed=0)[0], or an "
                          f"id{example}")

    def build_seeded(self, arch: Mapping | str, input_shape: Sequence[int], num_classes: int, seed: int) -> nn.Module:
        """:meth:`build` with weights that depend only on ``seed`` (and the architecture, a dict or its id)."""
        arch = self.resolve(arch)
        with seeded(derive_seed("init", self.arch_id(arch), seed)):
            return self.build(arch, tuple(input_shape), num_classes)

    def complexity(self, arch: Mapping, input_shape: Sequence[int], num_classes: int) -> dict:
        """Parameter count and forward FLOPs for one image (``torch.utils.flop_counter``)."""
        from torch.utils.flop_counter import FlopCounterMode

        model = self.build_seeded(arch, input_shape, num_classes, 0).eval()
        params = sum(p.numel() for p in model.parameters())
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, *input_shape))
        return {"params": int(params), "flops": int(counter.get_total_flops())}

    def __repr__(self) -> str:
        n = self.size()
        return f"<{type(self).__name__} {self.name!r}{'' if n is None else f' ({n} architectures)'}>"


class CategoricalSpace(SearchSpace):
    """A space that is the product of independent categorical choices (e.g. DC's ConvNet space)."""

    #: name -> list of choices, in the order ids and enumeration use.
    choices: dict[str, list] = {}

    def suggest(self, trial: Any) -> Arch:
        return {k: trial.suggest_categorical(k, list(v)) for k, v in self.choices.items()}

    def dimensions(self) -> dict[str, list]:
        return {k: list(v) for k, v in self.choices.items()}

    def enumerate(self) -> Iterator[Arch]:
        keys = list(self.choices)
        for combo in itertools.product(*(self.choices[k] for k in keys)):
            yield dict(zip(keys, combo))

    def size(self) -> int:
        return math.prod(len(v) for v in self.choices.values())

    def validate(self, arch: Mapping) -> Arch:
        """Return ``arch`` as a dict after checking every key and value, else raise ConfigError."""
        unknown = set(arch) - set(self.choices)
        missing = set(self.choices) - set(arch)
        if unknown or missing:
            wrong = " and ".join(part for part in (f"has unknown keys {sorted(unknown)}" if unknown else "",
                                                   f"lacks {sorted(missing)}" if missing else "") if part)
            raise ConfigError(f"architecture for {self.name!r} {wrong}", f"use the keys {list(self.choices)}")
        for k, v in arch.items():
            if v not in self.choices[k]:
                raise ConfigError(f"{k}={v!r} is not in the {self.name!r} space", f"choose from {self.choices[k]}")
        return dict(arch)

    def parse_id(self, arch_id: str) -> Arch:
        raw = super().parse_id(arch_id)
        arch = {}
        for k, v in raw.items():
            match = [c for c in self.choices.get(k, []) if str(c) == str(v)]
            arch[k] = match[0] if match else v
        return self.validate(arch)


def sample_args(k: Any, seed: Any) -> tuple[int, int]:
    """``(k, seed)`` of :meth:`SearchSpace.sample` as ints, checked: k = 2.5 or -1 were NumPy errors, and a
    string seed was hashed silently (a typo'd seed gave another sample with no word)."""
    k, seed = as_whole(k, "k"), as_whole(seed, "seed")
    if k < 0:
        raise ConfigError(f"cannot sample {k} architectures", "ask for 0 or more")
    return k, seed


def _parse_scalar(v: str) -> Any:
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return {"True": True, "False": False, "None": None}.get(v, v)
