"""Assemble the report of a run folder and write ``report.md``, ``report.html`` and the figures.

:func:`write_report` reads the folder (:func:`~nasdistill.report.load.load_run`), draws the figures
(:mod:`~nasdistill.report.plots`), builds one :class:`~nasdistill.report.render.Document` from
sections (:data:`SECTIONS`: run, contenders, architectures, search, proxy; each omitted when its
data is absent) and renders it to both files, every file written atomically.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Callable

from .. import __version__
from .._io import home_dir, write_text
from ..errors import NasDistillError
from . import plots
from .load import READERS, RunData, load_run, number
from .notes import archs_note, proxy_note, speedup_note
from .render import Document, Image, Note, Section, Table, Text, to_html, to_markdown

#: Figures the report owns (an old copy is removed when the data behind it is gone).
FIGURES = {"scatter": "report_scatter.png", "spearman": "report_spearman.png", "history": "report_history.png"}
#: Rows of the per-architecture and trials tables shown before the rest is left to the CSV files.
MAX_ROWS = 60


def _f(v, digits: int = 3) -> str:
    x = number(v)
    return "–" if x is None else f"{x:.{digits}f}"


def _undefined(v: dict) -> list[str]:
    """Why each contender whose Spearman is undefined has none (references at chance, equal scores),
    as the command line says it (:meth:`~nasdistill.validate.ValidationResult.why_undefined`)."""
    from ..validate import ValidationResult

    try:
        result = ValidationResult.from_dict(v)
    except (NasDistillError, KeyError, TypeError, ValueError):  # an older or partial file: no notes
        return []
    notes = []
    for c in result.contenders:
        why = result.why_undefined(c.name)
        if why:
            notes.append(why if len(result.contenders) == 1 else f"{c.name}: {why}")
    return notes


def _ci(m: dict, key: str, digits: int = 3) -> str:
    ci = m.get(f"{key}_ci") or [None, None]
    if number(ci[0]) is None or number(ci[1]) is None:
        return _f(m.get(key), digits)
    return f"{_f(m.get(key), digits)} [{_f(ci[0], digits)}, {_f(ci[1], digits)}]"


def _speedup(v) -> str:
    x = number(v)
    return "–" if x is None else f"{x:.1f}×"


class _Figures:
    """Draws figures into the run folder; remembers what was written and what went wrong."""

    def __init__(self, run: RunData):
        self.run, self.paths, self.notes = run, {}, []

    def draw(self, key: str, fn: Callable[[Path], object], filename: str | None = None) -> object | None:
        path = self.run.root / (filename or FIGURES.get(key, f"report_{key}.png"))
        try:
            out = fn(path)
        except Exception as e:  # a figure that cannot be drawn is left out, the report goes on
            self.notes.append(f"the figure {path.name} could not be drawn ({type(e).__name__}: {e})")
            return None
        self.paths[key] = path
        return out


# --- sections --------------------------------------------------------------------------------------
def run_section(run: RunData, figs: _Figures) -> Section | None:
    s = run.summary
    if not s:
        return None
    rows = []
    ds = s.get("dataset") or {}
    if ds:
        rows.append(["dataset", f"{ds.get('name')} ({ds.get('train')} train / {ds.get('val')} val / "
                                f"{ds.get('test')} test images)"])
    p = s.get("proxy") or {}
    if p:
        rows.append(["proxy", f"{p.get('method')}, ipc {p.get('ipc')}" + (" (reused)" if p.get("reused") else "")])
    c = s.get("proxy_vs_random") or {}
    if c:
        rows.append([f"default architecture `{c.get('arch_id')}` on the proxy (test acc)",
                     f"{_f(c.get('proxy_acc'), 4)} ± {_f(c.get('proxy_acc_std'), 4)}"])
        rows.append(["… on a random subset of equal size", f"{_f(c.get('random_acc'), 4)} ± "
                                                            f"{_f(c.get('random_acc_std'), 4)}"])
    sr = s.get("search") or {}
    if sr:
        rows.append(["best architecture found", f"`{sr.get('best_arch_id')}` (val acc {_f(sr.get('best_val_acc'), 4)}, "
                                                f"{sr.get('trials')} trials)"])
    v = s.get("validation") or {}
    if v:
        rows.append(["Spearman ρ (proxy vs full data)", f"{_ci(v, 'spearman')} ({v.get('n_archs')} archs)"])
        rows.append(["Kendall τ", _ci(v, "kendall")])
    t = s.get("timings_s") or {}
    if t:
        order = [k for k in ("load", "distill", "compare", "search", "validate") if k in t]
        order += [k for k in t if k not in order and k != "total"] + (["total"] if "total" in t else [])
        rows.append(["time", ", ".join(f"{k} {_f(t[k], 0)} s" for k in order)])
    notes = [Text(n) for n in (_note(proxy_note, s), _note(archs_note, s), _note(speedup_note, s)) if n]
    return Section(f"Run `{s.get('name', run.root.name)}`", [Table(["", "result"], rows), *notes])


def _note(note: Callable[[dict], str | None], summary: dict) -> str | None:
    """``note(summary)``, or None where a summary written by another version lacks a field it reads."""
    try:
        return note(summary)
    except (KeyError, TypeError):
        return None


def contenders_section(run: RunData, figs: _Figures) -> Section | None:
    v = run.validation
    if v is None:
        return None
    st, ref, cs = v.get("settings") or {}, v["reference"], v["contenders"]
    level = f"{100 * float(st.get('confidence') or 0.95):g}%"
    ds = v.get("dataset") or {}
    blocks: list = [Text(
        f"{len(v['archs'])} architectures of `{st.get('space', '?')}` sampled (seed {st.get('seed')}) and trained "
        f"on the full training split of `{ds.get('name', '?')}` as the reference ({ref.get('n_trained')} trained, "
        f"{ref.get('n_reused')} reused from the results store); every score is measured on the "
        f"{st.get('split', 'test')} split. Intervals: {level} bootstrap ({st.get('n_bootstrap')} resamples).")]
    m0 = cs[0].get("metrics", {})
    tops, regrets = plots.metric_keys(m0, "spearman_top"), plots.metric_keys(m0, "regret@")
    has_cost = any(c.get("cost") for c in cs)
    head = ["contender", "kind", f"Spearman ρ [{level} CI]", *[f"ρ {k[len('spearman_'):]}" for k in tops],
            f"Kendall τ [{level} CI]", *regrets]
    if has_cost:
        head += ["s / candidate", "GFLOPs / candidate", "images seen", "speed-up (time)", "speed-up (FLOPs)"]
    rows = []
    for c in cs:
        m, cost = c.get("metrics", {}), c.get("cost") or {}
        row = [c["name"], c.get("kind", ""), _ci(m, "spearman"), *[_f(m.get(k)) for k in tops], _ci(m, "kendall"),
               *[_f(m.get(k)) for k in regrets]]
        if has_cost:
            flops = number(cost.get("flops_per_candidate"))
            row += [_f(cost.get("wall_time_s"), 2), _f(flops / 1e9 if flops is not None else None),
                    "–" if cost.get("samples_per_candidate") is None else str(cost["samples_per_candidate"]),
                    _speedup(cost.get("speedup_wall")), _speedup(cost.get("speedup_flops"))]
        rows.append(row)
    if has_cost and ref.get("cost"):
        rc = ref["cost"]
        flops = number(rc.get("flops_per_candidate"))
        rows.append(["full data (reference)", "reference", *[""] * (2 + len(tops) + len(regrets)),
                     _f(rc.get("wall_time_s"), 2), _f(flops / 1e9 if flops is not None else None),
                     str(rc.get("samples_per_candidate") or "–"), "1×", "1×"])
    blocks.append(Table(head, rows, caption="Contenders"))
    blocks += [Note(why) for why in _undefined(v)]
    ci_keys = [*tops, *regrets]
    if ci_keys:
        blocks.append(Table(["contender", *[k.replace("spearman_", "ρ ") for k in ci_keys]],
                            [[c["name"], *[_ci(c.get("metrics", {}), k) for k in ci_keys]] for c in cs],
                            caption=f"Top-k ρ and regret with {level} intervals"))
    if not has_cost:
        blocks.append(Note("no cost figures recorded; the cost and speed-up columns are left out"))
    if figs.draw("scatter", lambda p: plots.scatter_plot(v, p)):
        blocks.append(Image(figs.paths["scatter"], "proxy score vs full-data accuracy",
                            "Each contender's score against full-data accuracy, one point per architecture."))
    same = figs.draw("spearman", lambda p: plots.spearman_plot(v, p))
    if same is not None:
        _, equal = same
        blocks.append(Image(figs.paths["spearman"], "Spearman rho per contender",
                            f"Spearman ρ per contender, over all architectures and over the top-k, with {level} "
                            "bootstrap intervals."))
        if equal:
            blocks.append(Note(f"{', '.join(k[len('spearman_'):] for k in equal)} cover every sampled architecture "
                               "here, so they equal ρ over all and are not drawn separately"))
    pairs = v.get("pairwise") or []
    if pairs:
        blocks.append(Table(
            ["a", "b", "statistic", "a − b [CI]", "P(a better)", "P(b better)", "p (H₀: a no better)"],
            [[p["a"], p["b"], p.get("metric", ""), f"{_f(p.get('diff'))} [{_f((p.get('diff_ci') or [None])[0])}, "
              f"{_f((p.get('diff_ci') or [None, None])[1])}]", _f(p.get("prob_a_better")),
              _f(p.get("prob_b_better")), _f(p.get("p_value"))] for p in pairs],
            caption="Paired bootstrap tests between contenders (same resamples of architectures)"))
    return Section("Contenders: how well each ranks architectures", blocks)


def archs_section(run: RunData, figs: _Figures) -> Section | None:
    v = run.validation
    if v is None:
        return None
    ref, cs = v["reference"]["scores"], v["contenders"]
    archs = v["archs"] or [{"arch_id": a} for a in ref]
    order = sorted(archs, key=lambda a: -(number(ref.get(a["arch_id"])) or -math.inf))
    rows = [[f"`{a['arch_id']}`", str(a.get("params") or "–"), _f(ref.get(a["arch_id"]), 4),
             *[_f(c["scores"].get(a["arch_id"]), 4) for c in cs]] for a in order[:MAX_ROWS]]
    blocks: list = [Table(["architecture", "params", "full-data acc", *[c["name"] for c in cs]], rows,
                          caption="Sampled architectures, best on the full data first")]
    if len(order) > MAX_ROWS:
        blocks.append(Note(f"{len(order) - MAX_ROWS} more architectures are in validation_archs.csv"))
    return Section("Architectures", blocks)


def search_section(run: RunData, figs: _Figures) -> Section | None:
    b, trials = run.best_arch, run.trials
    if b is None and trials is None and not run.pareto and not run.retrain:
        return None
    blocks: list = []
    if b:
        rows = [["best architecture", f"`{b.get('arch_id')}`"], [b.get("metric", "value"), _f(b.get("value"), 4)],
                ["trial", str(b.get("trial"))], ["study", str(b.get("study_name"))],
                ["trials", f"{b.get('n_trials')} finished ({b.get('n_complete')} complete, {b.get('n_pruned')} "
                           f"pruned), {b.get('n_failed')} failed"]]
        rows += [[k, str(b[k])] for k in ("backend", "sampler", "pruner", "storage") if b.get(k)]
        blocks.append(Table(["", "search"], rows))
    if trials:
        if figs.draw("history", lambda p: plots.history_plot(trials, p, maximize=run.maximize,
                                                             source=run.trials_source or "")):
            blocks.append(Image(figs.paths["history"], "search history",
                                f"Objective per trial and best so far, from {run.trials_source}."))
        done = sorted((t for t in trials if t["state"] == "COMPLETE" and t["value"] is not None),
                      key=lambda t: (-t["value"] if run.maximize else t["value"], t["number"]))
        if done:
            blocks.append(Table(["trial", "architecture", "value"],
                                [[str(t["number"]), f"`{t['arch_id']}`", _f(t["value"], 4)] for t in done[:10]],
                                caption=f"Best {min(10, len(done))} of {len(done)} complete trials"))
    elif b is not None:
        blocks.append(Note("no trials.csv or study.db: the search history is left out"))
    if run.pareto:
        head = list(run.pareto[0])
        blocks.append(Table(head, [[_cell(r.get(h)) for h in head] for r in run.pareto[:MAX_ROWS]],
                            caption=f"Pareto front ({len(run.pareto)} architectures)"))
    if run.retrain:
        cols = [c for c in ("rank", "trial", "arch_id", "proxy_score", "test_acc", "full_val_acc", "params",
                            "reused") if c in run.retrain[0]]
        blocks.append(Table(cols, [[_cell(r.get(c)) for c in cols] for r in run.retrain],
                            caption="The search's best architectures retrained on the full data"))
        if figs.draw("retrain", lambda p: plots.scatter_plot(None, p, retrain=run.retrain,
                                                             title="Retrained: proxy vs full data")):
            blocks.append(Image(figs.paths["retrain"], "retrained top architectures",
                                "Proxy validation accuracy against full-data test accuracy of the retrained "
                                "top architectures."))
    return Section("Search", blocks)


def proxy_section(run: RunData, figs: _Figures) -> Section | None:
    grids: list[tuple[str, Path]] = []
    meta = run.proxy_meta or {}
    if run.proxy_grid is not None:
        grids.append((f"{meta.get('method', 'proxy')}-ipc{meta.get('ipc', '?')}" if meta else "proxy",
                      run.proxy_grid))
    elif (run.root / "proxy.safetensors").is_file():
        if figs.draw("proxy_grid", lambda p: _grid(run.root / "proxy.safetensors", p), "report_proxy.png"):
            grids.append(("proxy", figs.paths["proxy_grid"]))
    shown = {meta.get("key")}
    missing = []
    for i, c in enumerate((run.validation or {}).get("contenders", [])):
        key = (c.get("description") or {}).get("proxy_key")
        if c.get("kind") != "proxy" or not key or key in shown:
            continue
        shown.add(key)
        stored = home_dir() / "proxies" / f"{key}.safetensors"
        if not stored.is_file():
            missing.append(c["name"])
            continue
        if figs.draw(f"proxy_grid:{c['name']}", lambda p, s=stored: _grid(s, p), f"report_proxy_{i}.png"):
            grids.append((c["name"], figs.paths[f"proxy_grid:{c['name']}"]))
    if not grids and not meta:
        return None
    blocks: list = []
    if meta:
        ds = meta.get("dataset") or {}
        settings = ", ".join(f"{k}={v}" for k, v in sorted((meta.get("settings") or {}).items()))
        blocks.append(Table(["", "proxy"], [
            ["method, ipc", f"{meta.get('method')}, {meta.get('ipc')} images per class"],
            ["dataset", f"{ds.get('name')} (fingerprint {ds.get('fingerprint')})"],
            ["seed, key", f"{meta.get('seed')}, {meta.get('key')}"],
            ["distillation time", f"{_f(meta.get('wall_time_s'), 1)} s"],
            ["settings", settings or "–"]]))
    for name, path in grids:
        blocks.append(Image(path, f"image grid of {name}", f"{name}: one row per class."))
    if missing:
        blocks.append(Note(f"the image grids of {', '.join(missing)} are left out: their proxies are not in the "
                           f"proxy store {home_dir() / 'proxies'}"))
    return Section("Proxy", blocks)


def _grid(safetensors: Path, out: Path) -> Path:
    from ..data import load_proxy

    return load_proxy(safetensors).save_grid(out)


def _cell(v) -> str:
    x = number(v)
    if x is not None and isinstance(v, str) and re.fullmatch(r"-?\d+\.\d{5,}(e-?\d+)?", v):
        return f"{x:.4f}"
    return "–" if v in (None, "") else str(v)


#: The report's sections in order; each returns None when its data is absent.
SECTIONS: list[Callable[[RunData, _Figures], Section | None]] = [
    run_section, contenders_section, search_section, proxy_section, archs_section,
]


# --- the entry point -------------------------------------------------------------------------------
def build_document(run: RunData, figs: _Figures) -> Document:
    sections = [s for s in (fn(run, figs) for fn in SECTIONS) if s is not None]
    notes = run.notes + figs.notes
    if run.validation is None:
        notes.append("no validation.json: the contenders table and the scatter and ρ figures are left out")
    if run.trials is None and run.best_arch is None:
        notes.append("no search results (trials.csv, study.db, best_arch.json): the search history is left out")
    if notes:
        sections.append(Section("Notes", [Note(n) for n in notes]))
    intro = [Text(f"Report of `{run.root.resolve()}`, regenerate it with `nasdistill report {run.root}` "
                  f"(nasdistill {__version__}).")]
    return Document(f"nasdistill report: {run.root.resolve().name}", intro, sections)


def write_report(run_dir: str | Path) -> dict[str, Path]:
    """Write ``report.md``, ``report.html`` and the ``report_*.png`` figures into ``run_dir``.

    Returns the paths written, by role: ``md``, ``html``, then each figure drawn (``scatter``,
    ``spearman``, ``history``, ``retrain``), ``proxy_grid`` (the folder's ``proxy.png``, or one drawn
    from its ``proxy.safetensors``) and ``proxy_grid:<contender>`` for other proxy contenders whose
    proxy is in the proxy store. Pieces the folder lacks are left out with a note in the report.
    Raises :class:`~nasdistill.errors.NasDistillError` when the folder does not exist or holds
    nothing to report.
    """
    root = Path(run_dir)
    if not root.is_dir():
        raise NasDistillError(f"no run folder at {root}",
                              "pass a folder written by nasdistill run, search or validate (e.g. runs/quickstart)")
    run = load_run(root)
    if run.empty:
        why = f" ({'; '.join(run.notes)})" if run.notes else ""
        raise NasDistillError(f"{root} holds nothing to report{why}",
                              f"pass a folder holding any of {', '.join(n for n, _ in READERS)}")
    figs = _Figures(run)
    doc = build_document(run, figs)
    for stale in root.glob("report_*.png"):
        if stale not in figs.paths.values():
            stale.unlink(missing_ok=True)
    paths = {"md": write_text(root / "report.md", to_markdown(doc)),
             "html": write_text(root / "report.html", to_html(doc)), **figs.paths}
    if run.proxy_grid is not None:
        paths["proxy_grid"] = run.proxy_grid
    return paths


__all__ = ["write_report", "build_document", "SECTIONS", "FIGURES"]
