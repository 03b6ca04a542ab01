"""The examples in ``examples/`` run as a user runs them (``python examples/X.py --quick``) and leave
what their docstrings promise, with results that make sense."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"

pytestmark = pytest.mark.slow  # each test runs an example script end to end


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    home = tmp_path_factory.mktemp("home")
    return {**os.environ, "NASDISTILL_HOME": str(home), "NASDISTILL_PROGRESS": "0", "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


def _run(name: str, out: Path, env: dict) -> str:
    done = subprocess.run([sys.executable, str(EXAMPLES / name), "--quick", "--out", str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("RESULT "), done.stdout[-2000:]
    return last


def test_evaluator_loop_scores_architectures_from_three_loops(env, tmp_path):
    _run("evaluator_loop.py", tmp_path, env)
    data = json.loads((tmp_path / "evaluator_loop.json").read_text())
    assert set(data["results"]) == {"for-loop", "optuna", "nni"}
    for loop, rows in data["results"].items():
        assert rows, loop
        accs = [r["val_acc"] for r in rows if r.get("val_acc") is not None]
        assert accs and all(0.0 <= a <= 1.0 for a in accs)
        # the best found by each loop beats chance (10 classes) by far
        assert data["best"][loop]["val_acc"] > 0.5, (loop, data["best"][loop])


def test_validate_proxies_compares_every_contender_and_reports(env, tmp_path):
    _run("validate_proxies.py", tmp_path, env)
    v = json.loads((tmp_path / "validation.json").read_text())
    names = [c["name"] for c in v["contenders"]]
    assert {"synflow", "naswot", "gradnorm"} <= set(names)
    assert any(n.startswith("dm-") for n in names) and any(n.startswith("random-") for n in names)
    assert any(n.startswith("early-stop") for n in names)
    assert {"report.html", "report.md", "report_scatter.png"} <= {p.name for p in tmp_path.iterdir()}
    dm = next(c for c in v["contenders"] if c["name"].startswith("dm-"))
    assert -1.0 <= dm["metrics"]["spearman"] <= 1.0


def test_distill_and_search_retrains_the_winners_on_full_data(env, tmp_path):
    line = _run("distill_and_search.py", tmp_path, env)
    assert {"proxy.safetensors", "study.db", "trials.csv", "best_arch.json", "retrain.csv",
            "report.html"} <= {p.name for p in tmp_path.iterdir()}
    with (tmp_path / "retrain.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert rows and all(0.5 < float(r["test_acc"]) <= 1.0 for r in rows)  # digits, full data: far above chance
    assert rows[0]["arch_id"] in line
