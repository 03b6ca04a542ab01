"""``--backend optuna|nni`` on the command line: the same outputs from either backend, every search
space with both, flags that do not fit the backend, and a missing NNI."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from nasdistill.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks: see conftest.one_thread

REPO = Path(__file__).resolve().parent.parent
FAST_TRAIN = ["--proxy-steps", "10", "--batch-size", "64", "--no-progress"]
NNI_MISSING = 'nasdistill: error: the NNI backend needs NNI; pip install "nasdistill[nni]"'

#: A search space written by a user: a one-hidden-layer MLP, 3 x 2 = 6 architectures.
USER_SPACE = '''
import math
from torch import nn
from nasdistill.spaces import CategoricalSpace, Network


class MLP(Network):
    def __init__(self, input_shape, num_classes, hidden, act):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), hidden),
                                  nn.ReLU() if act == "relu" else nn.Tanh())
        self.classifier = nn.Linear(hidden, num_classes)

    def embed(self, x):
        return self.body(x)


class MLPSpace(CategoricalSpace):
    name = "user-mlp"
    choices = {"hidden": [16, 32, 64], "act": ["relu", "tanh"]}

    def build(self, arch, input_shape, num_classes):
        return MLP(input_shape, num_classes, **self.validate(arch))


space = MLPSpace()
'''


@pytest.fixture(scope="module")
def proxy(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("proxy")
    assert main(["distill", "--data", "digits", "--method", "random", "--ipc", "2", "--out", str(out),
                 "--no-progress"]) == 0
    return out / "proxy.safetensors"


@pytest.fixture(scope="module")
def user_space(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("space") / "mlp_space.py"
    path.write_text(USER_SPACE)
    return path


def _rows(folder: Path) -> list[dict]:
    with (folder / "trials.csv").open() as f:
        return list(csv.DictReader(f))


def _search(proxy: Path, out: Path, *args: str) -> int:
    return main(["search", "--proxy", str(proxy), *FAST_TRAIN, "--out", str(out), *args])


# --- the same outputs from both backends ---------------------------------------------------------
@pytest.mark.slow
def test_nni_search_writes_what_the_optuna_backend_writes_and_retrains_the_top(proxy, tmp_path, capsys):
    assert _search(proxy, tmp_path / "optuna", "--sampler", "random", "--trials", "2") == 0
    assert _search(proxy, tmp_path / "nni", "--backend", "nni", "--strategy", "evolution", "--trials", "5",
                   "--retrain-top", "2", "--full-epochs", "1") == 0
    assert "with NNI's evolution strategy" in capsys.readouterr().out

    header = lambda folder: (folder / "trials.csv").read_text().splitlines()[0]  # noqa: E731
    assert header(tmp_path / "nni") == header(tmp_path / "optuna")
    rows = _rows(tmp_path / "nni")
    assert len(rows) == 5 and all(r["state"] == "COMPLETE" for r in rows)
    best = json.loads((tmp_path / "nni" / "best_arch.json").read_text())
    top = max(rows, key=lambda r: (float(r["value"]), -int(r["number"])))
    assert (best["backend"], best["strategy"], best["n_complete"]) == ("nni", "evolution", 5)
    assert best["arch_id"] == top["arch_id"] and best["value"] == pytest.approx(float(top["value"]))
    core = {"arch", "arch_id", "value", "trial", "metric", "study_name", "n_trials", "n_complete", "evaluator"}
    assert core <= set(json.loads((tmp_path / "optuna" / "best_arch.json").read_text())) and core <= set(best)
    assert (tmp_path / "nni" / "nni.log").is_file() and not (tmp_path / "nni" / "study.db").exists()

    with (tmp_path / "nni" / "retrain.csv").open() as f:
        retrain = list(csv.DictReader(f))
    by_value = sorted({r["arch_id"]: float(r["value"]) for r in rows}.items(), key=lambda kv: -kv[1])
    assert [r["arch_id"] for r in retrain] == [a for a, _ in by_value[:2]]
    assert all(0.0 <= float(r["test_acc"]) <= 1.0 for r in retrain)


# --- every space, both backends ------------------------------------------------------------------
@pytest.mark.parametrize("space", ["convnet", "nb201:cells_per_stage=1,channels=8", "macro", "USER"])
@pytest.mark.parametrize("backend", [["--backend", "optuna", "--sampler", "random"],
                                     ["--backend", "nni", "--strategy", "random"]], ids=["optuna", "nni"])
def test_every_space_searches_with_both_backends(space, backend, proxy, user_space, tmp_path):
    space = str(user_space) if space == "USER" else space
    assert _search(proxy, tmp_path, "--space", space, *backend, "--trials", "2") == 0
    rows = _rows(tmp_path)
    assert len(rows) == 2 and all(r["state"] == "COMPLETE" for r in rows)
    best = json.loads((tmp_path / "best_arch.json").read_text())
    assert best["arch_id"] in {r["arch_id"] for r in rows}


@pytest.mark.parametrize("backend", [["--sampler", "grid"], ["--backend", "nni", "--strategy", "grid"]],
                         ids=["optuna", "nni"])
def test_a_grid_visits_every_architecture_of_a_user_space_once(backend, proxy, user_space, tmp_path):
    assert _search(proxy, tmp_path, "--space", str(user_space), *backend, "--trials", "10") == 0
    ids = [r["arch_id"] for r in _rows(tmp_path)]
    assert len(ids) == 6 and len(set(ids)) == 6


# --- flags that do not fit -----------------------------------------------------------------------
@pytest.mark.parametrize("argv, needle", [
    (["--sampler", "nsga2", "--backend", "nni"], "--sampler nsga2 (an Optuna sampler) does not work with --backend nni"),
    (["--strategy", "evolution"], "--strategy evolution chooses an NNI strategy, but the backend is optuna"),
    (["--backend", "nni", "--workers", "2"], "--workers 2 does not work with --backend nni"),
    (["--backend", "nni", "--storage", "sqlite:///{tmp}/s.db"], "--storage does not work with --backend nni"),
    (["--backend", "nni", "--pruner", "median"], "--pruner median does not work with --backend nni"),
    (["--backend", "nni", "--objectives", "accuracy,params"], "--objectives accuracy,params does not work"),
    (["--backend", "nni", "--strategy", "evolutoin"], "did you mean 'evolution'"),
    (["--backend", "nni", "--strategy", "grid", "--space", "macro"], "grid search needs a finite categorical space"),
    (["--sampler", "grid", "--space", "macro"], "grid search needs a finite categorical space"),
])
@pytest.mark.parametrize("command", ["search", "run"])
def test_flags_that_do_not_fit_the_backend_fail_in_one_line_and_write_nothing(command, argv, needle, proxy,
                                                                               tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    out = tmp_path / "out"
    first = ["search", "--proxy", str(proxy)] if command == "search" else ["run", "--name", "r"]
    assert main([*first, *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("nasdistill: error: ") and needle in err and len(err.splitlines()) == 1, err
    assert not out.exists() and not (tmp_path / "s.db").exists()


@pytest.mark.slow
def test_without_nni_the_backend_says_how_to_install_it(proxy, tmp_path, monkeypatch, capsys):
    # A fresh process in which `import nni` fails, as where NNI is not installed.
    code = ("import sys; sys.modules['nni'] = None; from nasdistill.cli import main; "
            f"sys.exit(main(['search', '--proxy', {str(proxy)!r}, '--backend', 'nni', '--out', {str(tmp_path)!r}]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 2 and done.stderr.strip() == NNI_MISSING, done.stderr
    assert not list(tmp_path.iterdir())

    monkeypatch.setitem(sys.modules, "nni", None)  # in this process, for `run`: it fails before distilling
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--backend", "nni", "--strategy", "random"]) == 2
    assert capsys.readouterr().err.strip() == NNI_MISSING
    assert not list(tmp_path.iterdir())
    assert main(["search", "--proxy", str(proxy), "--out", str(tmp_path / "o"), "--trials", "1", *FAST_TRAIN]) == 0


def test_list_samplers_shows_both_backends(capsys):
    assert main(["list", "samplers"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {tuple(line.split()[:2]) for line in lines[1:]}
    assert {("tpe", "optuna"), ("nsga2", "optuna"), ("grid", "optuna"), ("random", "optuna")} <= rows
    assert {("random", "nni"), ("evolution", "nni"), ("tpe", "nni"), ("grid", "nni")} <= rows
    from nasdistill.search.samplers import NSGA2_POPULATION

    # summaries read as text: the population's size, no Sphinx roles or constants' names
    assert f"generations of {NSGA2_POPULATION} architectures" in " ".join(lines)
    assert not any(":data:" in line or ":func:" in line or "NSGA2_POPULATION" in line for line in lines)


# --- the whole pipeline with NNI -----------------------------------------------------------------
@pytest.mark.slow
def test_run_with_the_nni_backend_end_to_end(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--name", "nni", "--method", "random", "--ipc", "2", *FAST_TRAIN, "--backend", "nni",
                 "--strategy", "random", "--trials", "3", "--retrain-top", "1", "--archs", "4", "--full-epochs", "1",
                 "--eval-seeds", "1", "--bootstrap", "50"]) == 0
    run_dir = tmp_path / "runs" / "nni"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["search"]["backend"] == "nni" and summary["search"]["trials"] == 3
    assert [r["arch_id"] for r in summary["search"]["retrain"]] == [summary["search"]["best_arch_id"]]
    assert len(_rows(run_dir)) == 3 and not (run_dir / "study.db").exists()
    assert (run_dir / "validation.json").is_file()
