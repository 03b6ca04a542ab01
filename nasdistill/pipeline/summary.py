"""The summaries a run and the ``--json`` commands print: tables, the speed-up note, JSON objects."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from ..report.notes import SMALL_SPEEDUP, archs_note, proxy_note, speedup_note

if TYPE_CHECKING:
    from ..search import SearchBackend
    from ..validate import ValidationResult


def summary_table(summary: dict) -> str:
    """A small Markdown table of what a run found (with :func:`proxy_note`, :func:`archs_note` and
    :func:`speedup_note` below it when they apply)."""
    c = summary["proxy_vs_random"]
    v = summary["validation"]
    s = summary["search"]
    lo, hi = v.get("spearman_ci", (float("nan"), float("nan")))
    rows = [
        ("dataset", f"{summary['dataset']['name']} ({summary['dataset']['train']} train images)"),
        ("proxy", f"{summary['proxy']['method']}, ipc {summary['proxy']['ipc']}"
                  + (" (reused)" if summary["proxy"].get("reused") else "")),
        ("proxy test acc (default arch)", f"{c['proxy_acc']:.4f} ± {c['proxy_acc_std']:.4f}"),
        ("random subset test acc", f"{c['random_acc']:.4f} ± {c['random_acc_std']:.4f}"),
        ("best architecture found", f"{s['best_arch_id']} (val acc {s['best_val_acc']:.4f}, {s['trials']} trials)"),
        ("Spearman ρ (proxy vs full data)", f"{v['spearman']:.3f}  95% CI [{lo:.3f}, {hi:.3f}] ({v['n_archs']} archs)"),
        ("Kendall τ", f"{v['kendall']:.3f}"),
    ]
    cost = summary.get("cost")
    if cost:
        p, f = cost["proxy"], cost["full_data"]
        rows.append(("speed-up per candidate", f"{p['speedup_wall']:.1f}× time, {p['speedup_flops']:.1f}× FLOPs "
                     f"(full-data training {f['wall_time_s']:.2f} s vs proxy training {p['wall_time_s']:.2f} s"
                     + ("; references timed in the background process, beside the search: read the FLOPs"
                        if cost.get("references_in_background") else "") + ")"))
    rows.append(("total time", f"{summary['timings_s']['total']:.0f} s"))
    w = max(len(r[0]) for r in rows)
    lines = [f"| {'':{w}} | result |", f"|{'-' * (w + 2)}|--------|"]
    lines += [f"| {k:{w}} | {val} |" for k, val in rows]
    notes = [n for n in (proxy_note(summary), archs_note(summary), speedup_note(summary)) if n]
    return "\n".join(lines) + "".join(f"\n\n{n}" for n in notes)


def search_summary(search: "SearchBackend", out_dir: str | os.PathLike | None = None) -> dict:
    """What ``nasdistill search --json`` prints: the best architecture, its score, the trials and where they are."""
    result = search.result_
    out = Path(out_dir) if out_dir is not None else None
    return {"best_arch": search.best_arch_, "best_arch_id": search.best_id_, "best_value": search.best_value_,
            "trials": len(result.trials), "where": search.where(), "pareto": result.pareto or None,
            "retrain": result.retrain or None,
            "files": None if out is None else {"best_arch": str(out / "best_arch.json"),
                                               "trials": str(out / "trials.csv")}}


def validation_summary(result: ValidationResult, out_dir: str | os.PathLike | None = None) -> dict:
    """What ``nasdistill validate --json`` prints: every contender's metrics and cost, and the reference."""
    ref = result.reference
    return {"n_archs": len(result.archs), "space": result.settings.get("space"),
            "contenders": [{"name": c.name, "kind": c.kind, "metrics": c.metrics, "cost": c.cost}
                           for c in result.contenders],
            "reference": {"n_trained": ref["n_trained"], "n_reused": ref["n_reused"], "cost": ref["cost"]},
            "files": None if out_dir is None else {"validation": str(Path(out_dir) / "validation.json")}}


__all__ = ["SMALL_SPEEDUP", "proxy_note", "speedup_note", "summary_table", "search_summary", "validation_summary"]
