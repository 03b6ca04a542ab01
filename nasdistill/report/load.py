"""Read what a run folder holds into one :class:`RunData`, piece by piece.

Every piece is optional. A piece that is absent is simply ``None``; one that is present but cannot
be read (corrupt JSON, unknown schema, an unreadable study) is ``None`` too, with a line in
``RunData.notes`` saying why, so a report can still be written from the rest.

Pieces, each read by one function in :data:`READERS`:

* ``validation.json``: :class:`~nasdistill.validate.result.ValidationResult`'s schema
  (``nasdistill.validation/2``);
* ``summary.json`` (``nasdistill run``), ``best_arch.json``, ``trials.csv`` (or, without it, the
  trials of the Optuna study in ``study.db``), ``pareto.csv``, ``retrain.csv``, ``proxy.json``;
* ``proxy.png``: the proxy's image grid (drawn from ``proxy.safetensors`` when only that is there).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..validate.result import SCHEMA


@dataclass
class RunData:
    """What a run folder holds; ``None`` for every piece that is absent or unreadable."""

    root: Path
    validation: dict | None = None  #: the ``nasdistill.validation/2`` document
    summary: dict | None = None
    best_arch: dict | None = None
    trials: list[dict] | None = None  #: number, state, value (float or None), arch_id
    trials_source: str | None = None
    maximize: bool = True
    pareto: list[dict] | None = None
    retrain: list[dict] | None = None
    proxy_meta: dict | None = None
    proxy_grid: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        """True when nothing reportable was found."""
        return all(v is None for v in (self.validation, self.summary, self.best_arch, self.trials, self.pareto,
                                       self.retrain, self.proxy_meta, self.proxy_grid))


# --- small readers ---------------------------------------------------------------------------------
def _json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _csv_rows(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as f:
        return [dict(r) for r in csv.DictReader(f)]


def number(v: Any) -> float | None:
    """A CSV or JSON cell as a float; None for blanks, nulls and text."""
    if v is None or v == "":
        return None
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) else x


# --- validation.json -------------------------------------------------------------------------------
def read_validation(run: RunData, path: Path) -> None:
    d = _json(path)
    if not isinstance(d, dict):
        raise ValueError("not a JSON object")
    if d.get("schema") != SCHEMA:
        raise ValueError(f"unknown schema {d.get('schema')!r} (this version reads {SCHEMA}, written by validate() "
                         "and 'nasdistill validate')")
    run.validation = d
    if not run.validation["contenders"]:
        run.validation = None
        raise ValueError("it lists no contenders")


# --- search ----------------------------------------------------------------------------------------
def read_trials(run: RunData, path: Path) -> None:
    rows = _csv_rows(path)
    run.trials = [{"number": int(r["number"]), "state": r.get("state") or "", "value": number(r.get("value")),
                   "arch_id": r.get("arch_id") or ""} for r in rows if (r.get("number") or "").strip().isdigit()]
    run.trials_source = path.name


def read_study(run: RunData, path: Path) -> None:
    """The trials of the study in ``study.db`` (only when there is no ``trials.csv``)."""
    if run.trials is not None:
        return
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = f"sqlite:///{path.resolve()}"
    names = optuna.study.get_all_study_names(url)
    if not names:
        raise ValueError("it holds no study")
    wanted = (run.best_arch or {}).get("study_name")
    name = wanted if wanted in names else names[0]
    if len(names) > 1 and wanted not in names:
        run.notes.append(f"study.db holds {len(names)} studies; the history shows {name!r}")
    study = optuna.load_study(study_name=name, storage=url)
    run.maximize = study.directions[0] == optuna.study.StudyDirection.MAXIMIZE
    trials = []
    for t in study.get_trials(deepcopy=False):
        values = t.values if t.state == optuna.trial.TrialState.COMPLETE else None
        last = t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None
        trials.append({"number": t.number, "state": t.state.name, "value": number(values[0] if values else last),
                       "arch_id": t.user_attrs.get("arch_id", "")})
    run.trials, run.trials_source = trials, f"study.db (study {name!r})"


def read_best_arch(run: RunData, path: Path) -> None:
    run.best_arch = _json(path)


def read_pareto(run: RunData, path: Path) -> None:
    run.pareto = _csv_rows(path)


def read_retrain(run: RunData, path: Path) -> None:
    run.retrain = _csv_rows(path)


def read_summary(run: RunData, path: Path) -> None:
    run.summary = _json(path)


def read_proxy_meta(run: RunData, path: Path) -> None:
    run.proxy_meta = _json(path)


def read_proxy_grid(run: RunData, path: Path) -> None:
    run.proxy_grid = path


#: (file name, reader) in reading order; a reader fills its piece of the RunData or raises.
READERS: list[tuple[str, Callable[[RunData, Path], None]]] = [
    ("validation.json", read_validation),
    ("summary.json", read_summary),
    ("best_arch.json", read_best_arch),
    ("trials.csv", read_trials),
    ("study.db", read_study),
    ("pareto.csv", read_pareto),
    ("retrain.csv", read_retrain),
    ("proxy.json", read_proxy_meta),
    ("proxy.png", read_proxy_grid),
]


def load_run(run_dir: str | Path) -> RunData:
    """Read every piece of ``run_dir`` that is there (see the module docstring)."""
    run = RunData(root=Path(run_dir))
    for name, reader in READERS:
        path = run.root / name
        if not path.is_file():
            continue
        try:
            reader(run, path)
        except Exception as e:  # one unreadable piece must not stop the report
            run.notes.append(f"{name} could not be read ({type(e).__name__}: {_first_line(e)}); it is left out")
    return run


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else "no details"


__all__ = ["RunData", "load_run", "READERS", "number"]
