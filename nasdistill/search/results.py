"""The results files every search backend writes (JSON + CSV), and the top of a trials table.

* ``best_arch.json`` (:func:`write_results`): ``arch``, ``arch_id``, ``value``, ``metric``,
  ``trial``, ``study_name``, ``n_trials`` (finished trials), ``n_complete``, ``n_pruned``,
  ``n_failed``, plus backend extras.
* ``trials.csv``: one row per trial: ``number, state, value, arch_id, duration_s, reused,
  reused_from``, then one column per extra objective of a multi-objective study (``params``,
  ``flops``, ``latency``...), then ``params_<name>`` for every parameter.
* ``pareto.csv`` / ``pareto.json`` (multi-objective studies, :func:`write_pareto`): the Pareto front.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from .._io import to_jsonable, write_json, write_text

TRIAL_COLUMNS = ["number", "state", "value", "arch_id", "duration_s", "reused", "reused_from"]


def write_results(out_dir: str | os.PathLike, *, best: Mapping[str, Any], trials: Sequence[Mapping[str, Any]],
                  study_name: str, extra: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """Write ``best_arch.json`` and ``trials.csv`` into ``out_dir`` atomically; return their paths.

    ``best`` holds ``arch``, ``arch_id``, ``value`` and ``trial``; each trial is a dict with the
    :data:`TRIAL_COLUMNS` keys and ``params`` (a dict).
    """
    out = Path(out_dir)
    counts = {s: sum(1 for t in trials if t["state"] == s) for s in ("COMPLETE", "PRUNED", "FAIL")}
    summary = {
        "arch": dict(best["arch"]),
        "arch_id": best["arch_id"],
        "value": best["value"],
        "trial": best.get("trial"),
        "metric": best.get("metric", "val_accuracy"),
        "study_name": study_name,
        "n_trials": counts["COMPLETE"] + counts["PRUNED"],
        "n_complete": counts["COMPLETE"],
        "n_pruned": counts["PRUNED"],
        "n_failed": counts["FAIL"],
        **dict(extra or {}),
    }
    paths = {"best_arch": out / "best_arch.json", "trials": out / "trials.csv"}
    write_json(paths["best_arch"], summary)
    write_text(paths["trials"], trials_csv(trials))
    return paths


def trials_csv(trials: Sequence[Mapping[str, Any]]) -> str:
    """The trials table as CSV text (columns: :data:`TRIAL_COLUMNS`, the names in each trial's
    ``objectives`` dict (extra objectives of a multi-objective study), then ``params_<name>``)."""
    names = sorted({k for t in trials for k in (t.get("params") or {})})
    objectives = list(dict.fromkeys(k for t in trials for k in (t.get("objectives") or {})))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(TRIAL_COLUMNS + objectives + [f"params_{n}" for n in names])
    for t in trials:
        row = [_cell(t.get(c)) for c in TRIAL_COLUMNS]
        row += [_cell((t.get("objectives") or {}).get(n)) for n in objectives]
        row += [_cell((t.get("params") or {}).get(n)) for n in names]
        w.writerow(row)
    return buf.getvalue()


def write_pareto(out_dir: str | os.PathLike, *, front: Sequence[Mapping[str, Any]],
                 objectives: Sequence[Mapping[str, str]], study_name: str) -> dict[str, Path]:
    """Write the Pareto front of a multi-objective study as ``pareto.json`` and ``pareto.csv``.

    ``objectives``: ``{"name", "direction"}`` dicts in study order; each ``front`` entry holds
    ``trial``, ``arch_id``, ``arch`` and ``values`` (objective name -> value). The CSV has columns
    ``trial, arch_id``, one per objective, then ``arch_<key>`` for every architecture key.
    """
    out = Path(out_dir)
    names = [o["name"] for o in objectives]
    keys = sorted({k for p in front for k in (p.get("arch") or {})})
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["trial", "arch_id"] + names + [f"arch_{k}" for k in keys])
    for p in front:
        w.writerow([p["trial"], p["arch_id"]] + [_cell(p["values"][n]) for n in names]
                   + [_cell((p.get("arch") or {}).get(k)) for k in keys])
    paths = {"pareto_json": out / "pareto.json", "pareto_csv": out / "pareto.csv"}
    write_json(paths["pareto_json"], {"study_name": study_name, "objectives": list(objectives),
                                      "front": list(front)})
    write_text(paths["pareto_csv"], buf.getvalue())
    return paths


def top_rows(trials: Sequence[Mapping[str, Any]], k: int) -> list[Mapping[str, Any]]:
    """The ``k`` best distinct architectures among COMPLETE trials, by ``value`` (highest first, ties
    to the earliest trial); reused copies never displace the trial that trained the architecture."""
    best: dict[str, Mapping[str, Any]] = {}
    for t in sorted((t for t in trials if t["state"] == "COMPLETE" and t.get("value") is not None),
                    key=lambda t: (-t["value"], t["number"])):
        best.setdefault(t["arch_id"], t)
    return list(best.values())[:max(0, k)]


def _cell(v: Any) -> Any:
    v = to_jsonable(v)
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v)
    return v


__all__ = ["write_results", "trials_csv", "write_pareto", "top_rows", "TRIAL_COLUMNS"]
