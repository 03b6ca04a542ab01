"""Worker processes sharing one study, multi-objective search with a Pareto front, heartbeats of
the journal storage, and retraining the best architectures on the full data.

Everything runs on scikit-learn's 8x8 digits with a 20-a-class random proxy. Worker processes
cannot import a space defined in this file, so the space they search (12 one-hidden-layer MLPs)
is written to a file and loaded by path, as a user would pass ``--space my_space.py``.
Pruning (median, hyperband) is tested in test_search.py.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import optuna
import pytest

from nasdistill.errors import ConfigError, UnknownNameError
from nasdistill.search import OptunaSearch, ProxyEvaluator, make_storage, parse_objectives
from nasdistill.spaces import get_space
from nasdistill.training import TrainConfig, evaluate, train

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks: see conftest.one_thread

BUDGET = TrainConfig(epochs=5, batch_size=32, lr=0.05)

TINY_SPACE = '''
import torch
from torch import nn

from nasdistill.spaces import CategoricalSpace, Network


class TinyNet(Network):
    def __init__(self, input_shape, num_classes, hidden, act):
        super().__init__()
        c, h, w = input_shape
        self.hidden = nn.Linear(c * h * w, hidden)
        self.act = act
        self.classifier = nn.Linear(hidden, num_classes)

    def embed(self, x):
        z = self.hidden(x.flatten(1))
        return torch.relu(z) if self.act == "relu" else torch.tanh(z)


class TinySpace(CategoricalSpace):
    """12 MLPs for 8x8 digits; trained in a fraction of a second."""

    name = "tiny-mlp"
    choices = {"hidden": [4, 8, 16, 32, 64, 128], "act": ["relu", "tanh"]}

    def build(self, arch, input_shape, num_classes):
        a = self.validate(arch)
        return TinyNet(input_shape, num_classes, a["hidden"], a["act"])
'''


def tiny_space_file(folder: Path) -> Path:
    """Write the tiny space module into ``folder``; return its path (pass it as the space)."""
    path = Path(folder) / "tiny_space.py"
    path.write_text(TINY_SPACE)
    return path


def digits_proxy(digits):
    from nasdistill.distill import distill

    return distill(digits, "random", ipc=20, seed=0, store=False)


def states(study: optuna.Study) -> list[str]:
    return [t.state.name for t in study.get_trials(deepcopy=False)]


@pytest.fixture(scope="module")
def space_path(tmp_path_factory) -> Path:
    return tiny_space_file(tmp_path_factory.mktemp("space"))


@pytest.fixture(scope="module")
def space(space_path):
    return get_space(str(space_path))


@pytest.fixture(scope="module")
def proxy(digits):
    return digits_proxy(digits)


@pytest.fixture(scope="module")
def evaluator(space, proxy, digits):
    return ProxyEvaluator(space, proxy, digits, BUDGET)


def sqlite(tmp_path, name="study.db"):
    return f"sqlite:///{tmp_path / name}"


# --- workers ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_cli_workers_share_one_sqlite_study_and_retrain_the_top(tmp_path, digits, space_path):
    from nasdistill.pipeline import distill_step

    distill_step(digits, "random", ipc=20, out_dir=tmp_path, store=False)
    cmd = [sys.executable, "-m", "nasdistill.cli", "search", "--proxy", str(tmp_path / "proxy.safetensors"),
           "--space", str(space_path), "--trials", "8", "--sampler", "random", "--workers", "2",
           "--proxy-epochs", "20", "--batch-size", "32", "--lr", "0.05", "--augment", "none",
           "--retrain-top", "2", "--full-epochs", "2", "--device", "cpu", "--no-progress", "--study-name", "w"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]

    study = optuna.load_study(study_name="w", storage=sqlite(tmp_path))
    trials = study.get_trials()
    assert sorted(t.number for t in trials) == list(range(8))
    assert states(study) == ["COMPLETE"] * 8  # exactly the trials asked for: none lost, none extra
    workers = {t.user_attrs["worker"] for t in trials}
    assert len(workers) == 2 and {w.rsplit("#", 1)[1] for w in workers} == {"0", "1"}

    rows = [r for r in csv.DictReader((tmp_path / "trials.csv").open()) if r["reused"] == "False"]
    proxy_score = {r["arch_id"]: float(r["value"]) for r in rows}
    best_two = [r["arch_id"] for r in sorted(rows, key=lambda r: (-float(r["value"]), int(r["number"])))[:2]]
    retrain = list(csv.DictReader((tmp_path / "retrain.csv").open()))
    assert [int(r["rank"]) for r in retrain] == [1, 2] and [r["arch_id"] for r in retrain] == best_two
    for r in retrain:  # full-data test accuracy beside the proxy score of the search
        assert float(r["proxy_score"]) == proxy_score[r["arch_id"]] and 0.1 < float(r["test_acc"]) <= 1.0
    assert "full-data test acc" in done.stdout


def test_workers_need_a_shareable_storage_and_a_proxy_evaluator(tmp_path, space, evaluator):
    with pytest.raises(ConfigError, match="in-memory"):
        OptunaSearch(space, evaluator, n_trials=2, storage="memory", workers=2).run()
    with pytest.raises(ConfigError, match="ProxyEvaluator"):
        OptunaSearch(space, lambda arch: 0.5, n_trials=2, storage=sqlite(tmp_path), workers=2).run()
    assert not (tmp_path / "study.db").exists()
    with pytest.raises(ConfigError, match="workers"):
        OptunaSearch(space, evaluator, n_trials=2, storage=sqlite(tmp_path), workers=0).run()


def test_worker_index_seeds_the_sampler(space, evaluator):
    def proposals(index):
        s = OptunaSearch(space, evaluator, n_trials=4, sampler="random", storage="memory", worker_index=index).run()
        return [t["arch_id"] for t in s.trials_]

    assert proposals(None) == proposals(None)  # one process alone is reproducible
    assert proposals(0) != proposals(1)  # workers started together explore different architectures


def test_a_proposal_another_worker_is_training_waits_and_reuses_its_result(tmp_path, space, evaluator):
    storage = make_storage(sqlite(tmp_path), heartbeat_interval=1, grace_period=60)
    arch = {"hidden": 16, "act": "relu"}
    study = optuna.create_study(storage=storage, study_name="twin", direction="maximize")
    study.enqueue_trial(arch)
    with warnings.catch_warnings():  # Optuna warns that heartbeats are meant for optimize()
        warnings.simplefilter("ignore", UserWarning)
        other = study.ask()  # "another worker" is training this architecture right now...
    assert space.suggest(other) == arch
    other.set_user_attr("arch_id", space.arch_id(arch))
    storage.record_heartbeat(other._trial_id)
    study.enqueue_trial(arch)  # ...and this process is about to propose the same one

    def finish_other():
        time.sleep(1.5)
        study.tell(other, 0.25)  # a value proxy training would not give: reuse is visible

    worker = threading.Thread(target=finish_other)
    worker.start()
    search = OptunaSearch(space, evaluator, n_trials=2, sampler="random", storage=storage, study_name="twin").run()
    worker.join()
    assert [t["state"] for t in search.trials_] == ["COMPLETE", "COMPLETE"]
    assert search.trials_[1]["reused_from"] == 0 and search.trials_[1]["value"] == 0.25


@pytest.mark.slow
def test_journal_storage_fails_and_retries_a_dead_workers_trial(tmp_path, space, evaluator):
    url = f"journal:{tmp_path}/study.journal"
    OptunaSearch(space, evaluator, n_trials=1, sampler="random", storage=url, study_name="j").run()
    storage = make_storage(url, heartbeat_interval=1, grace_period=1)
    study = optuna.load_study(study_name="j", storage=storage)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        orphan = study.ask()  # a worker that died mid-trial, after its last heartbeat
    arch = space.suggest(orphan)
    storage.record_heartbeat(orphan._trial_id)
    time.sleep(2.5)
    search = OptunaSearch(space, evaluator, n_trials=3, sampler="random", storage=url, study_name="j",
                          heartbeat_interval=1, grace_period=1).run()
    frozen = search.study_.get_trials()
    assert [t.state.name for t in frozen] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    retry = [t for t in frozen if t.system_attrs.get("failed_trial") == orphan.number]
    assert len(retry) == 1 and retry[0].params == arch and retry[0].state.name == "COMPLETE"
    assert search.trials_[-1]["value"] is not None


# --- several objectives ------------------------------------------------------------------------------
def test_objectives_are_parsed_and_checked(tmp_path, space, evaluator):
    assert [o.name for o in parse_objectives("accuracy,params")] == ["accuracy", "params"]
    assert [o.direction for o in parse_objectives(["accuracy", "latency"])] == ["maximize", "minimize"]
    with pytest.raises(ConfigError, match="start with accuracy"):
        parse_objectives("params,accuracy")
    with pytest.raises(UnknownNameError, match="did you mean 'flops'"):
        parse_objectives("accuracy,flop")
    with pytest.raises(ConfigError, match="several objectives"):
        OptunaSearch(space, evaluator, objectives="accuracy,params", pruner="median", storage=sqlite(tmp_path)).run()
    assert not (tmp_path / "study.db").exists()
    OptunaSearch(space, evaluator, n_trials=1, sampler="random", storage=sqlite(tmp_path), study_name="s").run()
    with pytest.raises(ConfigError, match="optimises 1 value"):
        OptunaSearch(space, evaluator, n_trials=2, objectives="accuracy,params", storage=sqlite(tmp_path),
                     study_name="s").run()


def _dominates(a, b):  # (accuracy up, cost down)
    return a[0] >= b[0] and a[1] <= b[1] and (a[0] > b[0] or a[1] < b[1])


def test_nsga2_finds_and_exports_a_non_dominated_pareto_front(tmp_path, space, evaluator, digits):
    search = OptunaSearch(space, evaluator, n_trials=10, sampler="nsga2", objectives="accuracy,params",
                          storage=sqlite(tmp_path), study_name="mo", seed=3).run()
    assert isinstance(search.study_.sampler, optuna.samplers.NSGAIISampler)
    assert [d.name for d in search.study_.directions] == ["MAXIMIZE", "MINIMIZE"]
    points = {t["arch_id"]: (t["value"], t["objectives"]["params"]) for t in search.trials_}
    assert len(search.trials_) == 10 and all(t["state"] == "COMPLETE" for t in search.trials_)
    for aid, (_, params) in points.items():  # the cost is the network's real parameter count
        assert params == space.complexity(space.parse_id(aid), digits.image_shape, digits.num_classes)["params"]

    front = {p["arch_id"]: (p["values"]["accuracy"], p["values"]["params"]) for p in search.pareto_}
    assert front
    for aid, p in points.items():  # brute force: the front is exactly the non-dominated points
        dominated = any(_dominates(q, p) for q in points.values())
        assert (aid in front) == (not dominated), (aid, p)
    assert search.best_id_ in front and search.best_value_ == max(v[0] for v in front.values())

    paths = search.export(tmp_path / "out")
    rows = list(csv.DictReader(paths["pareto_csv"].open()))
    assert {r["arch_id"]: (float(r["accuracy"]), float(r["params"])) for r in rows} == front
    assert [float(r["accuracy"]) for r in rows] == sorted((float(r["accuracy"]) for r in rows), reverse=True)
    exported = json.loads(paths["pareto_json"].read_text())
    assert [o["name"] for o in exported["objectives"]] == ["accuracy", "params"]
    best = json.loads(paths["best_arch"].read_text())
    assert best["arch_id"] == search.best_id_ and best["values"]["params"] == front[search.best_id_][1]
    trial_rows = list(csv.DictReader(paths["trials"].open()))
    assert "params" in trial_rows[0] and float(trial_rows[0]["params"]) == points[trial_rows[0]["arch_id"]][1]


def test_flops_and_latency_objectives_measure_the_network(tmp_path, space, evaluator, digits):
    search = OptunaSearch(space, evaluator, n_trials=3, sampler="tpe", objectives="accuracy,flops,latency",
                          storage="memory", study_name="cost").run()
    for t in search.trials_:
        arch = space.parse_id(t["arch_id"])
        flops = space.complexity(arch, digits.image_shape, digits.num_classes)["flops"]
        assert t["objectives"]["flops"] == flops > 0
        assert 0 < t["objectives"]["latency"] < 1000  # ms for 64 digits through an MLP


# --- retraining the best -----------------------------------------------------------------------------
def test_retrain_top_reports_full_data_test_accuracy_beside_the_proxy_score(tmp_path, digits, proxy, space):
    from nasdistill.pipeline import search_step

    full = TrainConfig(epochs=2, batch_size=64, lr=0.05)
    search = search_step(digits, proxy, space=space, n_trials=5, sampler="random", storage="memory",
                         study_name="rt", train=BUDGET, out_dir=tmp_path, retrain_top=2, full_train=full,
                         reference_store=str(tmp_path / "refs.db"))
    done = [t for t in search.trials_ if t["state"] == "COMPLETE" and not t["reused"]]
    top = sorted(done, key=lambda t: (-t["value"], t["number"]))[:2]
    assert [r["arch_id"] for r in search.retrain_] == [t["arch_id"] for t in top]
    for r, t in zip(search.retrain_, top):
        assert r["proxy_score"] == t["value"] and not r["reused"]
        model = space.build_seeded(r["arch"], digits.image_shape, digits.num_classes, 0)
        train(model, digits.x_train, digits.y_train, full.replace(seed=0))
        assert r["test_acc"] == evaluate(model, digits.x_test, digits.y_test)  # trained on the full data
    saved = json.loads((tmp_path / "retrain.json").read_text())
    assert [r["test_acc"] for r in saved["results"]] == [r["test_acc"] for r in search.retrain_]
    again = search_step(digits, proxy, space=space, n_trials=5, sampler="random", storage="memory",
                        study_name="rt", train=BUDGET, out_dir=tmp_path, retrain_top=2, full_train=full,
                        reference_store=str(tmp_path / "refs.db"))
    assert all(r["reused"] for r in again.retrain_)  # the reference store keeps full-data results


def test_a_resumed_parallel_search_counts_finished_trials_as_done_before_it_started(tmp_path, space, evaluator,
                                                                                      monkeypatch):
    """The workers' progress starts at the study's finished trials (``initial``), so its rate and ETA
    are this run's; it counted them as done in its first poll."""
    from types import SimpleNamespace

    from nasdistill.progress import progress_bar
    from nasdistill.search import workers

    url = sqlite(tmp_path)
    OptunaSearch(space, evaluator, n_trials=2, sampler="random", storage=url, study_name="r").run()
    search = OptunaSearch(space, evaluator, n_trials=5, sampler="random", storage=url, study_name="r",
                          progress=True)
    bars = []
    monkeypatch.setattr(workers, "progress_bar", lambda **kw: bars.append(progress_bar(**kw)) or bars[-1])
    group = SimpleNamespace(commands=["a", "b"], wait=lambda poll, on_poll: on_poll())
    workers._wait(group, search, url, poll=0.1)
    (bar,) = bars
    assert (bar.total, bar._initial, bar.n) == (5, 2, 2)
