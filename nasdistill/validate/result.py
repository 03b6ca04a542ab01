"""The outcome of a validation: one shared full-data reference and the contenders scored against it.

:class:`ValidationResult` is plain data. ``to_dict()`` (also ``validation.json``) is the stable
schema reports are built from (``schema: "nasdistill.validation/2"``); ``ValidationResult.load(path)``
(or ``from_dict``) reads it back::

    schema, nasdistill_version, wall_time_s, worker
    settings     space, n_archs, seed, split, top_k, regret_k, n_bootstrap, confidence,
                 pairwise_metric, proxy_train, full_train, zero_cost_batch, lease_s
    dataset      name, fingerprint, image_shape, num_classes, train, val, test
    archs        [{arch_id, arch, params, train_flops_per_sample}]          (sample order)
    reference    budget_key, train, n_trained, n_reused, scores {arch_id: acc},
                 wall_times {arch_id: s}, cost {...}
    contenders   [{name, kind, key, stored, description, scores {arch_id: score},
                   wall_times {arch_id: s}, flops {arch_id: FLOPs}, n_computed, n_reused,
                   n_nonfinite, metrics {...}, cost {...}}]                     (contender order)
    pairwise     [{a, b, metric, a_value, b_value, diff, diff_ci, prob_a_better, prob_b_better,
                   p_value, p_value_b, n_resamples, n_defined}]      (every unordered pair, in contender order)
    records      [{arch_id, params, full_acc, full_time, reference_reused, scores {name: score}}]

``metrics`` is :func:`~nasdistill.validate.metrics.ranking_metrics`: ``n, confidence, n_bootstrap``,
then ``spearman, kendall, spearman_top{k}..., regret@{k}...`` each with a ``*_ci`` [low, high].
``cost`` holds ``wall_time_s`` (mean seconds per candidate), ``wall_time_total_s``,
``flops_per_candidate`` (mean), ``samples_per_candidate`` (training images seen; null for zero-cost),
``speedup_wall`` and ``speedup_flops`` (reference cost / contender cost; 1 for the reference).
``pairwise`` (:func:`~nasdistill.validate.metrics.paired_bootstrap`): ``diff = a_value - b_value`` of
``metric`` with its bootstrap interval; ``prob_a_better`` / ``prob_b_better``: share of resamples where
``a`` / ``b`` is strictly better; ``p_value``: one-sided p-value of "a is no better than b"
(``p_value_b``: of "b is no better than a"). Undefined numbers (nan) are ``null`` in JSON.
"""

from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from .._io import to_jsonable, write_json, write_text
from ..errors import ConfigError

SCHEMA = "nasdistill.validation/2"
_SKIP_METRICS = ("n", "confidence", "n_bootstrap")


@dataclass
class ContenderResult:
    """One contender's scores (sample order), agreement with the reference, and cost."""

    name: str
    kind: str
    key: str
    stored: bool
    description: dict
    scores: np.ndarray
    wall_times: np.ndarray
    flops: np.ndarray
    samples: int | None
    metrics: dict
    cost: dict
    n_computed: int = 0
    n_reused: int = 0
    n_nonfinite: int = 0


@dataclass
class ValidationResult:
    """Settings, the sampled architectures, the reference, the contenders and their pairwise tests."""

    settings: dict
    dataset: dict
    archs: list[dict]
    reference: dict  #: budget_key, train, n_trained, n_reused, scores (array), wall_times (array), cost
    contenders: list[ContenderResult]
    pairwise: list[dict] = field(default_factory=list)
    wall_time: float = 0.0
    worker: str = ""

    # --- access ------------------------------------------------------------------------------------
    @property
    def arch_ids(self) -> list[str]:
        return [a["arch_id"] for a in self.archs]

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.contenders]

    @property
    def primary(self) -> ContenderResult:
        """The first contender (the first proxy, when proxies were given)."""
        return self.contenders[0]

    def why_undefined(self, name: str | None = None) -> str | None:
        """Why contender ``name``'s (default: the primary's) Spearman is undefined (nan), in a line with
        the fix; None when it is defined. A rank correlation needs both sides to vary: references all
        at one accuracy (e.g. chance, from too short a full-data budget) or equal proxy scores leave it
        without a value."""
        c = self.primary if name is None else self[name]
        if math.isfinite(c.metrics.get("spearman", math.nan)):
            return None
        full = np.asarray(self.reference["scores"], dtype=float)
        mine = c.scores[np.isfinite(c.scores)]
        chance = 1.0 / self.dataset["num_classes"] if self.dataset.get("num_classes") else None

        def same(values: np.ndarray, what: str, fix: str) -> str:
            v = float(values[0])
            at = f" ({v:.4f}{', chance' if chance and abs(v - chance) < 1e-6 else ''})"
            return f"Spearman is undefined: {what}{at}; {fix}"

        if len(mine) < 2:
            return (f"Spearman is undefined: {len(mine)} of {len(c.scores)} {c.name} scores are finite; "
                    "check the proxy's trainings (a diverging learning rate gives nan)")
        if np.ptp(full) == 0:
            return same(full, f"all {len(full)} full-data references score the same",
                        "train them longer (--full-epochs) or sample more architectures (--archs)")
        if np.ptp(mine) == 0:
            return same(mine, f"all {len(mine)} {c.name} scores are the same",
                        "train longer on the proxy (--proxy-epochs) or sample more architectures (--archs)")
        return None

    def __getitem__(self, name: str) -> ContenderResult:
        for c in self.contenders:
            if c.name == name:
                return c
        raise KeyError(name)

    def pair(self, a: str, b: str) -> dict:
        """The paired test of ``a`` against ``b``, seen from ``a``'s side whichever order it was stored in."""
        for row in self.pairwise:
            if (row["a"], row["b"]) == (a, b):
                return row
            if (row["a"], row["b"]) == (b, a):
                lo, hi = row["diff_ci"]
                p = row["prob_a_better"]
                return {**row, "a": a, "b": b, "a_value": row["b_value"], "b_value": row["a_value"],
                        "diff": -row["diff"], "diff_ci": (-hi, -lo), "prob_a_better": row["prob_b_better"],
                        "prob_b_better": p, "p_value": row["p_value_b"], "p_value_b": row["p_value"]}
        raise KeyError((a, b))

    # --- import ------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict) -> "ValidationResult":
        """The result :meth:`to_dict` described (``null`` numbers come back as nan); ConfigError for
        another schema (e.g. the single-proxy ``RankingValidator`` file)."""
        if not isinstance(d, dict) or d.get("schema") != SCHEMA:
            found = d.get("schema") if isinstance(d, dict) else type(d).__name__
            raise ConfigError(f"not a {SCHEMA} validation result (schema {found!r})",
                              "pass a validation.json written by validate() or 'nasdistill validate'")
        ids = [a["arch_id"] for a in d["archs"]]
        arr = lambda m: np.array([_num((m or {}).get(a)) for a in ids], dtype=float)  # noqa: E731
        ref = d["reference"]
        reference = {**{k: v for k, v in ref.items() if k not in ("scores", "wall_times", "reused")},
                     "scores": arr(ref["scores"]), "wall_times": arr(ref.get("wall_times")),
                     "reused": np.array([bool((ref.get("reused") or {}).get(a)) for a in ids])}
        contenders = [ContenderResult(
            name=c["name"], kind=c["kind"], key=c["key"], stored=c["stored"], description=c.get("description") or {},
            scores=arr(c["scores"]), wall_times=arr(c.get("wall_times")), flops=arr(c.get("flops")),
            samples=(c.get("cost") or {}).get("samples_per_candidate"), metrics=_nan_metrics(c["metrics"]),
            cost={k: _num(v) if k != "samples_per_candidate" else v for k, v in (c.get("cost") or {}).items()},
            n_computed=c.get("n_computed", 0), n_reused=c.get("n_reused", 0), n_nonfinite=c.get("n_nonfinite", 0),
        ) for c in d["contenders"]]
        return cls(settings=d["settings"], dataset=d["dataset"], archs=d["archs"], reference=reference,
                   contenders=contenders, pairwise=d.get("pairwise") or [], wall_time=d.get("wall_time_s") or 0.0,
                   worker=d.get("worker") or "")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ValidationResult":
        """Read ``validation.json`` (or the folder holding it) written by :meth:`save`."""
        import json

        path = Path(path)
        path = path / "validation.json" if path.is_dir() else path
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ConfigError(f"cannot read {path} ({type(e).__name__})",
                              "pass a validation.json written by validate() or 'nasdistill validate'") from e
        return cls.from_dict(d)

    # --- export ------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """The whole result as plain JSON values (schema in the module docstring)."""
        ids = self.arch_ids
        ref = self.reference
        per = lambda values: dict(zip(ids, np.asarray(values, dtype=float).tolist()))  # noqa: E731
        return to_jsonable({
            "schema": SCHEMA,
            "nasdistill_version": __version__,
            "settings": self.settings,
            "dataset": self.dataset,
            "worker": self.worker,
            "archs": self.archs,
            "reference": {**{k: v for k, v in ref.items() if k not in ("scores", "wall_times", "reused")},
                          "scores": per(ref["scores"]), "wall_times": per(ref["wall_times"]),
                          "reused": dict(zip(ids, (bool(r) for r in ref["reused"])))},
            "contenders": [{
                "name": c.name, "kind": c.kind, "key": c.key, "stored": c.stored, "description": c.description,
                "scores": per(c.scores), "wall_times": per(c.wall_times), "flops": per(c.flops),
                "n_computed": c.n_computed, "n_reused": c.n_reused, "n_nonfinite": c.n_nonfinite,
                "metrics": c.metrics, "cost": c.cost,
            } for c in self.contenders],
            "pairwise": self.pairwise,
            "records": [{
                "arch_id": aid, "params": a.get("params"), "full_acc": float(ref["scores"][i]),
                "full_time": float(ref["wall_times"][i]), "reference_reused": bool(ref["reused"][i]),
                "scores": {c.name: float(c.scores[i]) for c in self.contenders},
            } for i, (aid, a) in enumerate(zip(ids, self.archs))],
            "wall_time_s": round(self.wall_time, 3),
        })

    def rows(self) -> list[dict]:
        """One flat dict per contender: name, kind, every metric (``*_ci`` split into ``*_ci_low`` /
        ``*_ci_high``), the cost figures, ``n_computed`` and ``n_reused``. What :meth:`to_frame` and
        ``validation.csv`` hold."""
        out = []
        for c in self.contenders:
            row: dict[str, Any] = {"name": c.name, "kind": c.kind}
            for k, v in c.metrics.items():
                if k in _SKIP_METRICS:
                    continue
                if k.endswith("_ci"):
                    row[f"{k}_low"], row[f"{k}_high"] = v
                else:
                    row[k] = v
            row.update(c.cost)
            row.update(n_archs=c.metrics["n"], n_computed=c.n_computed, n_reused=c.n_reused)
            out.append(row)
        return out

    def to_frame(self):
        """A pandas DataFrame with one row per contender (:meth:`rows`); pandas is imported here."""
        try:
            import pandas as pd
        except ImportError as e:
            raise ConfigError("to_frame() needs pandas", "pip install pandas, or use to_dict() / rows()") from e
        return pd.DataFrame(self.rows())

    def save(self, out_dir: str | os.PathLike) -> Path:
        """Write ``validation.json`` (:meth:`to_dict`), ``validation.csv`` (:meth:`rows`, one line per
        contender) and ``validation_archs.csv`` (one line per architecture: reference and every
        contender's score) into ``out_dir``, each atomically."""
        out = Path(out_dir)
        write_json(out / "validation.json", self.to_dict())
        write_text(out / "validation.csv", _csv(self.rows()))
        arch_rows = []
        for rec in self.to_dict()["records"]:
            scores = rec.pop("scores")
            arch_rows.append({**rec, **{f"score:{k}": v for k, v in scores.items()}})
        write_text(out / "validation_archs.csv", _csv(arch_rows))
        return out

    def table(self) -> str:
        """A Markdown table: agreement with the reference (95% intervals for Spearman), regret, and cost."""
        ks = [k for k in self.contenders[0].metrics if k.startswith("spearman_top") and not k.endswith("_ci")] \
            if self.contenders else []
        regrets = [k for k in self.contenders[0].metrics if k.startswith("regret@") and not k.endswith("_ci")] \
            if self.contenders else []
        level = f"{100 * self.settings.get('confidence', 0.95):g}%"
        head = (["contender", f"Spearman ρ [{level} CI]", *[f"ρ {k[len('spearman_'):]}" for k in ks], "Kendall τ",
                 *regrets, "s / candidate", "GFLOPs / candidate", "speed-up (time)", "speed-up (FLOPs)"])
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        for c in self.contenders:
            m, cost = c.metrics, c.cost
            lo, hi = m["spearman_ci"]
            cells = [c.name, f"{_f(m['spearman'])} [{_f(lo)}, {_f(hi)}]", *[_f(m[k]) for k in ks], _f(m["kendall"]),
                     *[_f(m[k]) for k in regrets], _f(cost["wall_time_s"], 2), _f(cost["flops_per_candidate"] / 1e9, 3),
                     f"{_f(cost['speedup_wall'], 1)}×", f"{_f(cost['speedup_flops'], 1)}×"]
            lines.append("| " + " | ".join(cells) + " |")
        rc = self.reference["cost"]
        blanks = [""] * (2 + len(ks) + len(regrets))
        lines.append("| " + " | ".join(["full data (reference)", *blanks, _f(rc["wall_time_s"], 2),
                                         _f(rc["flops_per_candidate"] / 1e9, 3), "1×", "1×"]) + " |")
        return "\n".join(lines)

    def __repr__(self) -> str:
        if not self.contenders:
            return f"ValidationResult({len(self.archs)} architectures, no contender)"
        parts = [f"{c.name}: ρ {_f(c.metrics.get('spearman'))}" for c in self.contenders]
        return (f"ValidationResult({len(self.archs)} architectures of {self.settings.get('space')!r}; "
                f"{'; '.join(parts)})")

    def _repr_html_(self) -> str:
        """The validation table (:meth:`table`) as HTML, for Jupyter."""
        import html

        rows = [r.strip("|").split("|") for r in self.table().splitlines() if r.strip()]
        head, body = rows[0], rows[2:]
        cell = lambda tag, v: f"<{tag}>{html.escape(v.strip())}</{tag}>"  # noqa: E731
        return ("<table><caption>" + html.escape(f"{len(self.archs)} architectures of {self.settings.get('space')}; "
                                                   f"reference: {self.reference.get('n_trained')} trained, "
                                                   f"{self.reference.get('n_reused')} reused") + "</caption>"
                + "<thead><tr>" + "".join(cell("th", h) for h in head) + "</tr></thead><tbody>"
                + "".join("<tr>" + "".join(cell("td", v) for v in r) + "</tr>" for r in body) + "</tbody></table>")

    def summary(self) -> str:
        """The table with a line on the sample and the reference."""
        ref = self.reference
        return (f"{len(self.archs)} architectures of {self.settings['space']}; reference: {ref['n_trained']} trained "
                f"on the full data, {ref['n_reused']} reused from the store\n{self.table()}")


def _f(v: float | None, digits: int = 3) -> str:
    return "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _num(v) -> float:
    return math.nan if v is None else float(v)


def _nan_metrics(m: dict) -> dict:
    """JSON metrics with nulls back to nan and intervals back to tuples."""
    return {k: (tuple(_num(x) for x in v) if k.endswith("_ci") else _num(v) if k not in _SKIP_METRICS else v)
            for k, v in m.items()}


def _csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    fields: list[str] = []
    for r in rows:
        fields += [k for k in r if k not in fields]
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows([to_jsonable(r) for r in rows])
    return buf.getvalue()


__all__ = ["ValidationResult", "ContenderResult", "SCHEMA"]
