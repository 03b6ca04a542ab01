"""The report's figures, drawn with matplotlib's Agg canvas (no display, no pyplot state).

* :func:`scatter_plot`: each contender's score against full-data accuracy, one panel per contender
  (their scales differ: accuracies, zero-cost scores), ρ in each legend;
* :func:`spearman_plot`: ρ over all architectures and over the top-k, per contender, with the
  bootstrap interval as whiskers;
* :func:`history_plot`: a search's trial values and best-so-far by trial number, pruned and failed
  trials marked.

Each writes a PNG atomically and returns its path.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from matplotlib.transforms import blended_transform_factory

from .._io import atomic_path
from ..validate.metrics import resolve_k, spearman
from .load import number

DPI = 110
#: Per-contender colours, shared by every figure (matplotlib's tab10, cycled).
COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
          "#17becf"]
_AXIS = {"proxy": "accuracy after training on the proxy", "early-stop": "accuracy after the early stop",
         "zero-cost": "zero-cost score (training-free)"}


def color(i: int) -> str:
    return COLORS[i % len(COLORS)]


def _save(fig: Figure, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight", facecolor="white")
    return path


def _fmt(v: float | None, digits: int = 3) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def _rho_label(name: str, metrics: dict) -> str:
    rho, ci = number(metrics.get("spearman")), metrics.get("spearman_ci") or [None, None]
    lo, hi = number(ci[0]), number(ci[1])
    span = f" [{_fmt(lo, 2)}, {_fmt(hi, 2)}]" if lo is not None and hi is not None else ""
    return f"{name}: ρ = {_fmt(rho)}{span}"


# --- proxy score vs full-data accuracy --------------------------------------------------------------
def scatter_plot(validation: dict | None, path: Path, retrain: Sequence[dict] | None = None,
                 title: str = "Proxy score vs full-data accuracy, one point per architecture") -> Path:
    """One panel per contender of ``validation`` (schema-2 dict), plus one for a search's retrained
    top architectures (``retrain.csv`` rows) when given."""
    panels = []
    split = "test"
    if validation is not None:
        split = validation.get("settings", {}).get("split", "test")
        ref = validation["reference"]["scores"]
        ids = [a["arch_id"] for a in validation["archs"]] or list(ref)
        for i, c in enumerate(validation["contenders"]):
            x = [number(ref.get(a)) for a in ids]
            y = [number(c["scores"].get(a)) for a in ids]
            panels.append({"title": c["name"], "x": x, "y": y, "label": _rho_label(c["name"], c.get("metrics", {})),
                           "ylabel": (f"{c['name']} score (training-free)" if c.get("kind") == "zero-cost"
                                      else _AXIS.get(c.get("kind"), "score")), "color": color(i),
                           "log": c.get("kind") == "zero-cost"})
    if retrain:
        x = [number(r.get("test_acc")) for r in retrain]
        y = [number(r.get("proxy_score")) for r in retrain]
        ok = [(a, b) for a, b in zip(x, y) if a is not None and b is not None]
        rho = spearman([b for _, b in ok], [a for a, _ in ok]) if len(ok) > 1 else math.nan
        panels.append({"title": f"search: top {len(retrain)} retrained", "x": x, "y": y,
                       "label": f"search top-{len(retrain)}: ρ = {_fmt(rho)}", "color": "#444444",
                       "ylabel": "validation accuracy after proxy training", "log": False, "xsplit": "test"})
    if not panels:
        raise ValueError("nothing to draw")
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(4.4 * ncols, 3.7 * nrows), layout="constrained")  # leaves room for the suptitle
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax, p in zip(axes.flat, panels):
        pts = [(a, b) for a, b in zip(p["x"], p["y"]) if a is not None and b is not None]
        xs, ys = np.array([a for a, _ in pts]), np.array([b for _, b in pts])
        ax.scatter(xs, ys, s=36, color=p["color"], edgecolor="black", linewidth=0.5, label=p["label"], zorder=3)
        if p["log"] and len(ys) and ys.min() > 0 and ys.max() / ys.min() > 1e3:
            ax.set_yscale("log")
        ax.set_title(p["title"], fontsize=10)
        ax.set_xlabel(f"full-data accuracy ({p.get('xsplit', split)})", fontsize=9)
        ax.set_ylabel(p["ylabel"], fontsize=9)
        ax.grid(True, alpha=0.3, zorder=0)
        ax.tick_params(labelsize=8)
        ax.legend(loc="best", fontsize=8, framealpha=0.85, handletextpad=0.3)
        if len(pts) < len(p["x"]):
            ax.text(0.99, 0.01, f"{len(p['x']) - len(pts)} undefined score(s) left out", transform=ax.transAxes,
                    ha="right", va="bottom", fontsize=7, color="#a00")
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=11)
    return _save(fig, path)


# --- Spearman bars ---------------------------------------------------------------------------------
_K = re.compile(r"^(spearman_top|regret@)(\d+(?:\.\d+)?)(pct)?$")


def _k(key: str) -> int | float | None:
    """``spearman_top5`` -> 5, ``regret@25pct`` -> 0.25, anything else -> None."""
    m = _K.match(key)
    if not m:
        return None
    return float(m.group(2)) / 100 if m.group(3) else int(m.group(2))


def metric_keys(metrics: dict, prefix: str) -> list[str]:
    """The ``spearman_top*`` or ``regret@*`` keys of ``metrics``: counts ascending, then fractions."""
    keys = [k for k in metrics if k.startswith(prefix) and _k(k) is not None]
    return sorted(keys, key=lambda k: (isinstance(_k(k), float), _k(k)))


def rho_keys(metrics: dict) -> tuple[list[str], list[str]]:
    """(``spearman`` and its top-k keys that differ from it, top-k keys equal to all for this sample)."""
    n = int(metrics.get("n") or 0)
    keys, same = ["spearman"], []
    for k in metric_keys(metrics, "spearman_top"):
        (same if n and resolve_k(_k(k), n, minimum=2) >= n else keys).append(k)
    return keys, same


def spearman_plot(validation: dict, path: Path) -> tuple[Path, list[str]]:
    """Grouped horizontal bars: per contender, ρ over all and over each distinct top-k, with the
    bootstrap interval. Returns the path and the top-k keys left out because they equal ρ over all."""
    contenders = validation["contenders"]
    keys, same = rho_keys(contenders[0].get("metrics", {}))
    level = validation.get("settings", {}).get("confidence", 0.95)
    shades = ["#2b5d8a", "#6aa2cf", "#a9cce8", "#d5e7f5", "#eef5fb"]
    group = 0.8
    h = group / len(keys)
    fig = Figure(figsize=(7.5, 1.3 + len(contenders) * max(0.55, 0.3 * len(keys))), layout="constrained")
    ax = fig.subplots()
    for j, key in enumerate(keys):
        label = "ρ, all" if key == "spearman" else "ρ, " + key[len("spearman_"):].replace("pct", "%")
        for i, c in enumerate(contenders):
            m = c.get("metrics", {})
            y = i - group / 2 + (j + 0.5) * h
            v = number(m.get(key))
            ci = m.get(f"{key}_ci") or [None, None]
            lo, hi = number(ci[0]), number(ci[1])
            if v is None:
                ax.text(0, y, " n/a", va="center", fontsize=7, color="#a00")
                continue
            err = None if lo is None or hi is None else [[max(0.0, v - lo)], [max(0.0, hi - v)]]
            ax.text(1.02, y, f"{v:.3f}", transform=blended_transform_factory(ax.transAxes, ax.transData),
                    va="center", fontsize=7.5, family="monospace")
            ax.barh(y, v, height=h * 0.9, color=shades[j % len(shades)], edgecolor="black", linewidth=0.4,
                    xerr=err, capsize=3, error_kw={"elinewidth": 1, "ecolor": "black"},
                    label=label if i == 0 else None, zorder=3)
    ax.set_yticks(range(len(contenders)))
    ax.set_yticklabels([c["name"] for c in contenders], fontsize=9)
    for tick, i in zip(ax.get_yticklabels(), range(len(contenders))):
        tick.set_color(color(i))
    ax.invert_yaxis()
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlim(-1.05, 1.05)
    ax.set_xlabel(f"Spearman ρ with full-data accuracy (whiskers: {100 * level:g}% bootstrap interval)", fontsize=9)
    ax.grid(True, axis="x", alpha=0.3, zorder=0)
    if ax.get_legend_handles_labels()[0]:  # none when every value is n/a (matplotlib warned)
        fig.legend(loc="outside lower center", ncol=len(keys), fontsize=8, frameon=False)
    n = contenders[0].get("metrics", {}).get("n")
    ax.set_title(f"Rank agreement with full-data training ({n} architectures)", fontsize=11)
    return _save(fig, path), same


# --- optimisation history --------------------------------------------------------------------------
def history_plot(trials: Sequence[dict], path: Path, *, maximize: bool = True, source: str = "") -> Path:
    """Trial value by trial number (complete: dots; pruned: crosses at their last reported value;
    failed: triangles on the bottom edge) and the best value so far among complete trials."""
    by_state: dict[str, list[dict]] = {}
    for t in sorted(trials, key=lambda t: t["number"]):
        by_state.setdefault(t["state"], []).append(t)
    fig = Figure(figsize=(7.5, 3.8))
    ax = fig.subplots()
    done = [t for t in by_state.get("COMPLETE", []) if t["value"] is not None]
    if done:
        ax.scatter([t["number"] for t in done], [t["value"] for t in done], s=22, color=color(0), zorder=3,
                   label=f"complete ({len(done)})")
        best, xs, ys = None, [], []
        for t in done:
            if best is None or (t["value"] > best if maximize else t["value"] < best):
                best = t["value"]
            xs.append(t["number"])
            ys.append(best)
        last = max(t["number"] for t in trials)
        ax.step(xs + [last], ys + [ys[-1]], where="post", color=color(3), linewidth=1.6, zorder=2,
                label=f"best so far ({_fmt(ys[-1], 4)})")
    pruned = [t for t in by_state.get("PRUNED", []) if t["value"] is not None]
    if pruned:
        ax.scatter([t["number"] for t in pruned], [t["value"] for t in pruned], marker="x", s=30, color=color(1),
                   zorder=3, label=f"pruned ({len(pruned)})")
    failed = by_state.get("FAIL", [])
    if failed:
        edge = blended_transform_factory(ax.transData, ax.transAxes)
        ax.scatter([t["number"] for t in failed], [0.03] * len(failed), marker="v", s=36, color="#c00000",
                   transform=edge, zorder=4, label=f"failed ({len(failed)})")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial number", fontsize=9)
    ax.set_ylabel("objective (val accuracy, proxy-trained)", fontsize=9)
    ax.grid(True, alpha=0.3, zorder=0)
    ax.tick_params(labelsize=8)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize=8, framealpha=0.9)
    ax.set_title("Search history" + (f" ({source})" if source else ""), fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


__all__ = ["scatter_plot", "spearman_plot", "history_plot", "rho_keys", "metric_keys", "color", "COLORS"]
