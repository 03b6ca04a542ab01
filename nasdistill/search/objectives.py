"""What a search optimises: proxy accuracy alone, or accuracy against the cost of the network.

``OBJECTIVES`` maps a name to an :class:`Objective`:

* ``accuracy`` (maximise): the evaluator's score, i.e. validation accuracy after proxy training.
  Always the first objective of a study.
* ``params`` (minimise): trainable parameters (:meth:`SearchSpace.complexity`).
* ``flops`` (minimise): forward FLOPs for one image (:meth:`SearchSpace.complexity`).
* ``latency`` (minimise): measured CPU forward time of one batch in milliseconds (see
  :func:`cpu_latency_ms`). It is a measurement, so it varies a little from run to run and between
  machines; compare latencies measured on one machine.

A study with more than one objective is multi-objective: Optuna keeps its Pareto front, and the
results add ``pareto.csv`` / ``pareto.json``. Register more with ``OBJECTIVES.register(name, Objective(...))``.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch

from .._registry import Registry
from .._seed import derive_seed, generator
from ..errors import ConfigError
from ..spaces import SearchSpace

#: Images in the batch whose forward pass ``latency`` times.
LATENCY_BATCH = 64
#: Untimed forward passes before timing (allocator and kernel warm-up).
LATENCY_WARMUP = 2
#: Timed forward passes; the median is reported.
LATENCY_REPEATS = 7


@dataclass(frozen=True)
class Objective:
    """One value a search optimises.

    ``measure(space, arch, input_shape, num_classes) -> float`` computes it from the architecture
    alone; ``None`` means the evaluator's score (``accuracy``).
    """

    name: str
    direction: str  #: ``"maximize"`` or ``"minimize"``
    measure: Callable[[SearchSpace, Mapping, Sequence[int], int], float] | None = None
    unit: str = ""
    description: str = ""


OBJECTIVES: Registry[Objective] = Registry("objective")


def _complexity(key: str) -> Callable[[SearchSpace, Mapping, Sequence[int], int], float]:
    def measure(space: SearchSpace, arch: Mapping, input_shape: Sequence[int], num_classes: int) -> float:
        return float(space.complexity(arch, tuple(input_shape), num_classes)[key])

    return measure


def cpu_latency_ms(model: torch.nn.Module, input_shape: Sequence[int], *, batch: int = LATENCY_BATCH,
                   warmup: int = LATENCY_WARMUP, repeats: int = LATENCY_REPEATS, seed: int = 0) -> float:
    """Median wall time in milliseconds of ``model``'s forward pass on a batch of ``batch`` seeded
    random images, on the CPU, in eval mode without autograd, with torch's current thread count."""
    model = model.to("cpu").eval()
    x = torch.randn(batch, *input_shape, generator=generator(derive_seed("latency", seed)))
    times = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            t0 = time.perf_counter()
            model(x)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    return 1000.0 * statistics.median(times)


def _latency(space: SearchSpace, arch: Mapping, input_shape: Sequence[int], num_classes: int) -> float:
    return cpu_latency_ms(space.build_seeded(arch, tuple(input_shape), num_classes, 0), input_shape)


OBJECTIVES.register("accuracy", Objective("accuracy", "maximize", None, "",
                                          "validation accuracy after training on the proxy"))
OBJECTIVES.register("params", Objective("params", "minimize", _complexity("params"), "parameters",
                                        "trainable parameters"))
OBJECTIVES.register("flops", Objective("flops", "minimize", _complexity("flops"), "FLOPs",
                                       "forward FLOPs for one image"))
OBJECTIVES.register("latency", Objective("latency", "minimize", _latency, "ms",
                                         f"median CPU forward time of a batch of {LATENCY_BATCH} images"))


def parse_objectives(spec: str | Sequence[str] | None) -> list[Objective]:
    """``"accuracy,params"`` (or a list of names) -> the objectives; ``accuracy`` must come first.

    None or an empty spec means ``accuracy`` alone.
    """
    if spec is None:
        names = ["accuracy"]
    elif isinstance(spec, str):
        names = [s.strip() for s in spec.split(",") if s.strip()] or ["accuracy"]
    else:
        names = [str(s).strip() for s in spec] or ["accuracy"]
    objectives = [OBJECTIVES.get(n) for n in names]
    if objectives[0].name != "accuracy":
        raise ConfigError(f"objectives {','.join(names)} do not start with accuracy",
                          "write e.g. --objectives accuracy,params")
    if len({o.name for o in objectives}) != len(objectives):
        raise ConfigError(f"objectives {','.join(names)} name one objective twice", "list each objective once")
    return objectives


def pareto_front(points: Sequence[Sequence[float]], directions: Sequence[str]) -> list[int]:
    """Indices of the points no other point dominates (at least as good everywhere, better somewhere)."""
    sign = [1.0 if d == "maximize" else -1.0 for d in directions]
    scored = [[s * v for s, v in zip(sign, p)] for p in points]

    def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
        return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))

    return [i for i, p in enumerate(scored) if not any(dominates(q, p) for j, q in enumerate(scored) if j != i)]


__all__ = ["Objective", "OBJECTIVES", "parse_objectives", "cpu_latency_ms", "pareto_front", "LATENCY_BATCH",
           "LATENCY_WARMUP", "LATENCY_REPEATS"]
