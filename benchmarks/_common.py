"""Shared helpers for benchmark scripts: data location, JSON output, tables."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"

# Benchmarks run for hours, usually detached with their output in a log file: show nasdistill's
# one-line progress records there (every $NASDISTILL_PROGRESS_EVERY s; bars on a terminal instead).
import logging as _logging  # noqa: E402

_logging.basicConfig(level=_logging.INFO, format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S")
for _noisy in ("optuna", "nni", "urllib3", "matplotlib", "PIL"):
    _logging.getLogger(_noisy).setLevel(_logging.WARNING)


def data_root() -> Path:
    root = Path(os.environ.get("NASDISTILL_DATA", REPO.parent / "shared" / "data")).expanduser()
    if not root.exists():
        raise SystemExit(f"benchmark data not found at {root}; set NASDISTILL_DATA")
    return root


def load_full(name: str):
    """``mnist`` or ``cifar10`` (the JPEG tree under the data root), whole: what the reference tables are computed on."""
    from nasdistill.data import load_dataset

    root = data_root()
    spec = "mnist" if name == "mnist" else f"imagefolder:{root / 'cifar10-jpeg'}"
    return load_dataset(spec, root=root)


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else :func:`platform.processor`)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def hardware_tag(device: str = "cpu") -> str:
    """A short name for what decides a benchmark's speed: ``cuda-<gpu>``, or the CPU's widest
    instruction set for tensor work: ``cpu-amx``, ``cpu-avx512bf16``, ``cpu-avx512``, ``cpu-avx2``, ``cpu``."""
    if str(device).startswith("cuda") and torch.cuda.is_available():
        return "cuda-" + "".join(c if c.isalnum() else "-" for c in torch.cuda.get_device_name(0).lower()).strip("-")
    probes = [("amx", "_is_amx_tile_supported"), ("avx512bf16", "_is_avx512_bf16_supported"),
              ("avx512", "_is_avx512_supported"), ("avx2", "_is_avx2_supported")]
    for tag, probe in probes:  # private probes: absent in some torch versions
        if getattr(torch.cpu, probe, lambda: False)():
            return f"cpu-{tag}"
    return "cpu"


def machine() -> dict:
    return {
        "cpu": cpu_model(),
        "hardware": hardware_tag("cuda" if torch.cuda.is_available() else "cpu"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def write_results(name: str, payload: dict, out: str | None = None) -> Path:
    from nasdistill._io import write_json

    path = Path(out) if out else RESULTS / f"{name}.json"
    write_json(path, {"benchmark": name, "machine": machine(), **payload})
    return path


def table(rows: list[dict], columns: list[str]) -> str:
    """A Markdown table of ``rows`` restricted to ``columns`` (floats with 4 significant digits)."""
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        if isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, float) for x in v):
            return f"[{v[0]:.3f}, {v[1]:.3f}]"
        return str(v)

    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = lambda vals: "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths)) + " |"  # noqa: E731
    return "\n".join([line(columns), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in cells])


def dumps(obj) -> str:
    return json.dumps(obj, indent=2, default=str)


def method_settings(method: str, budget: str = "cpu", iterations: int | None = None) -> dict:
    """A method's benchmark settings: its ``cpu`` preset (or its defaults), experts built on the way,
    iterations capped at ``iterations``. methods.py and fidelity.py both call it, so equal arguments
    give equal proxy keys and fidelity.py reuses the proxies methods.py stored."""
    from nasdistill.distill import method_class

    return method_class(method).preset(budget, iterations)


def width_subspace(widths: str):
    """DC's ConvNet space, or the part of it with the given widths (a comma list; its own name, so
    stored results of the two never mix when it is validated as a space)."""
    from search_spaces.convnet import ConvNetSpace

    if widths == "all":
        return ConvNetSpace()
    allowed = ConvNetSpace.choices["width"]
    chosen = sorted({w.strip() for w in widths.split(",")})
    if not set(chosen) <= {str(w) for w in allowed}:
        raise ValueError(f"--widths {widths!r}: not widths of DC's space; use some of {allowed} or 'all'")
    chosen = sorted(int(w) for w in chosen)

    class WidthSubspace(ConvNetSpace):
        name = "convnet-w" + "-".join(map(str, chosen))
        choices = {**ConvNetSpace.choices, "width": chosen}

    return WidthSubspace()
