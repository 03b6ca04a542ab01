"""The search package: proxy evaluator, storages, samplers/pruners and the resumable Optuna search.

Everything runs on scikit-learn's 8x8 digits with a 20-a-class random-subset proxy and budgets of a
few epochs; most studies use ``TinySpace`` (a one-hidden-layer MLP, milliseconds a trial), whose
``act="dead"`` networks output a constant and so score exactly chance.
"""

from __future__ import annotations

import csv
import json
import time
import warnings

import optuna
import pytest
import torch
from torch import nn

from nasdistill.data import Proxy
from nasdistill.errors import ConfigError, ProxyError, StorageError, UnknownNameError
from nasdistill.search import OptunaSearch, ProxyEvaluator, make_sampler, make_storage
from nasdistill.search.storage import HEARTBEAT_INTERVAL
from nasdistill.spaces import CategoricalSpace, Network, SearchSpace, get_space
from nasdistill.training import TrainConfig
from search_spaces.convnet import ConvNetSpace

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks: see conftest.one_thread

BUDGET = TrainConfig(epochs=5, batch_size=32, lr=0.05)


class TinyNet(Network):
    def __init__(self, input_shape, num_classes, hidden: int, act: str):
        super().__init__()
        c, h, w = input_shape
        self.hidden = nn.Linear(c * h * w, hidden)
        self.act = act
        self.classifier = nn.Linear(hidden, num_classes)

    def embed(self, x):
        z = self.hidden(x.flatten(1))
        return {"relu": torch.relu, "tanh": torch.tanh}[self.act](z) if self.act != "dead" else z * 0


class TinySpace(CategoricalSpace):
    """18 MLPs; ``act="dead"`` zeroes the features, so the prediction is one constant class."""

    name = "tiny"
    choices = {"hidden": [4, 8, 16, 32, 64, 128], "act": ["relu", "tanh", "dead"]}

    def build(self, arch, input_shape, num_classes):
        a = self.validate(arch)
        return TinyNet(input_shape, num_classes, a["hidden"], a["act"])


class SmallConvNets(ConvNetSpace):
    """A 16-architecture corner of DC's ConvNet space that trains in about a second."""

    name = "convnet-small"
    choices = {"depth": [1, 2], "width": [8, 16], "act": ["relu", "sigmoid"], "norm": ["none", "batchnorm"],
               "pool": ["avgpool"]}


class IntSpace(SearchSpace):
    """A space that is not categorical (no grid)."""

    name = "ints"

    def suggest(self, trial):
        return {"hidden": trial.suggest_int("hidden", 4, 64, log=True)}

    def build(self, arch, input_shape, num_classes):
        return TinyNet(input_shape, num_classes, arch["hidden"], "relu")


class Counting:
    """Wraps an evaluator and counts trainings."""

    def __init__(self, evaluator):
        self.evaluator, self.calls = evaluator, 0
        self.epochs = evaluator.epochs

    def __call__(self, arch, report=None):
        self.calls += 1
        return self.evaluator(arch, report=report)

    def describe(self):
        return self.evaluator.describe()


def subset_proxy(ds, per_class: int = 20, seed: int = 0, soft: bool = False) -> Proxy:
    """A class-balanced random subset of the training split, tagged as distilled from ``ds``."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.cat([ix[torch.randperm(len(ix), generator=g)[:per_class]] for ix in ds.indices_by_class()])
    labels = ds.y_train[idx]
    if soft:
        labels = torch.full((len(idx), ds.num_classes), 0.02).scatter_(1, labels[:, None], 0.82)
    meta = {"method": "subset", "dataset": {"name": ds.name, "fingerprint": ds.fingerprint,
                                            "num_classes": ds.num_classes, "image_shape": list(ds.image_shape)}}
    return Proxy(ds.x_train[idx].clone(), labels, meta)


@pytest.fixture(scope="module")
def proxy(digits):
    return subset_proxy(digits)


@pytest.fixture(scope="module")
def tiny_eval(digits, proxy):
    return ProxyEvaluator(TinySpace(), proxy, digits, BUDGET)


def sqlite(tmp_path, name="study.db"):
    return f"sqlite:///{tmp_path / name}"


# --- evaluator -------------------------------------------------------------------------------------
def test_evaluator_scores_convnet_above_chance_and_deterministically(digits, proxy):
    space = get_space("convnet")
    ev = ProxyEvaluator(space, proxy, digits, BUDGET, seed=3)
    arch = {"depth": 1, "width": 32, "act": "relu", "norm": "none", "pool": "maxpool"}
    acc = ev(arch)
    assert 0.0 <= acc <= 1.0
    assert acc > 0.3  # ten classes: chance is 0.1
    assert ev(arch) == acc
    assert ProxyEvaluator(space, proxy, digits, BUDGET, seed=3)(arch) == acc
    assert ev.describe()["seed"] == 3 and ev.describe()["dataset_fingerprint"] == digits.fingerprint
    test_acc = ProxyEvaluator(space, proxy, digits, BUDGET, seed=3, split="test")(arch)
    assert 0.3 < test_acc <= 1.0


def test_evaluator_soft_labels_and_chance_arch(digits):
    ev = ProxyEvaluator(TinySpace(), subset_proxy(digits, soft=True), digits, BUDGET)
    assert ev({"hidden": 32, "act": "relu"}) > 0.3
    assert ev({"hidden": 32, "act": "dead"}) == pytest.approx(1 / digits.num_classes)  # balanced val split


def test_evaluator_reports_epochs_and_stops_when_told(digits, proxy):
    seen = []
    ev = ProxyEvaluator(TinySpace(), proxy, digits, BUDGET, report_every=1)
    acc = ev({"hidden": 16, "act": "relu"}, report=lambda e, a: seen.append((e, a)) or e == 2)
    assert [e for e, _ in seen] == [1, 2]
    assert acc == seen[-1][1]
    seen.clear()
    ev3 = ProxyEvaluator(TinySpace(), proxy, digits, BUDGET, report_every=3)
    full = ev3({"hidden": 16, "act": "relu"}, report=lambda e, a: seen.append((e, a)))
    assert [e for e, _ in seen] == [3, 5] and full == seen[-1][1]
    assert full == ev3({"hidden": 16, "act": "relu"})  # reporting does not change the result


def test_evaluator_rejects_a_proxy_from_other_data(digits, proxy):
    wrong_fp = Proxy(proxy.images, proxy.labels, {"dataset": {**proxy.meta["dataset"], "fingerprint": "0" * 32}})
    with pytest.raises(ProxyError, match="fingerprint"):
        ProxyEvaluator(TinySpace(), wrong_fp, digits, BUDGET)
    wrong_shape = Proxy(torch.zeros(10, 3, 8, 8), torch.arange(10), {})
    with pytest.raises(ProxyError, match="images are"):
        ProxyEvaluator(TinySpace(), wrong_shape, digits, BUDGET)
    with pytest.raises(ConfigError, match="split"):
        ProxyEvaluator(TinySpace(), proxy, digits, BUDGET, split="train")


# --- storages --------------------------------------------------------------------------------------
@pytest.mark.parametrize("url, shown", [
    ("not a storage", "not a storage"),
    ("nosuchdb://host/db", "nosuchdb://host/db"),
    ("postgresql://nobody:hunter2@127.0.0.1:1/nodb", "127.0.0.1:1/nodb"),
])
def test_bad_storage_urls_raise_one_line_storage_errors(url, shown):
    with pytest.raises(StorageError) as err:
        make_storage(url)
    msg = str(err.value)
    assert shown in msg and "\n" not in msg and err.value.fix
    assert "hunter2" not in msg


def test_a_file_that_is_not_a_database_is_a_storage_error(tmp_path):
    (tmp_path / "junk.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StorageError, match="junk.db"):
        make_storage(sqlite(tmp_path, "junk.db"))


def test_sqlite_storage_creates_its_folder_and_has_a_heartbeat(tmp_path):
    storage = make_storage(f"sqlite:///{tmp_path}/a/b/study.db")
    assert (tmp_path / "a" / "b").is_dir()
    assert storage.get_heartbeat_interval() == HEARTBEAT_INTERVAL


# --- samplers --------------------------------------------------------------------------------------
def test_sampler_errors_come_before_any_storage_is_touched(tmp_path, tiny_eval):
    with pytest.raises(UnknownNameError, match="did you mean 'random'"):
        OptunaSearch(TinySpace(), tiny_eval, sampler="randon", storage=sqlite(tmp_path)).run()
    with pytest.raises(ConfigError, match="grid"):
        OptunaSearch(IntSpace(), tiny_eval, sampler="grid", storage=sqlite(tmp_path)).run()
    assert not (tmp_path / "study.db").exists()
    with pytest.raises(UnknownNameError, match="pruner"):
        OptunaSearch(TinySpace(), tiny_eval, pruner="mediun", storage=sqlite(tmp_path)).run()
    assert not (tmp_path / "study.db").exists()
    assert isinstance(make_sampler("grid", 0, TinySpace()), optuna.samplers.GridSampler)


# --- Optuna search ---------------------------------------------------------------------------------
def test_random_search_over_convnets_exports_json_and_csv(tmp_path, digits, proxy):
    space = SmallConvNets()
    ev = ProxyEvaluator(space, proxy, digits, BUDGET)
    search = OptunaSearch(space, ev, n_trials=3, sampler="random", storage=sqlite(tmp_path), study_name="cnn").run()
    assert len(search.trials_) == 3 and all(t["state"] == "COMPLETE" for t in search.trials_)
    values = {t["arch_id"]: t["value"] for t in search.trials_}
    assert search.best_value_ == max(values.values()) == values[search.best_id_]
    assert space.arch_id(search.best_arch_) == search.best_id_
    assert ev(search.best_arch_) == search.best_value_

    paths = search.export(tmp_path / "out")
    best = json.loads(paths["best_arch"].read_text())
    assert best["arch"] == search.best_arch_ and best["arch_id"] == search.best_id_
    assert best["value"] == search.best_value_ and best["study_name"] == "cnn" and best["n_trials"] == 3
    with paths["trials"].open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["number"]) for r in rows] == [0, 1, 2]
    assert {r["arch_id"] for r in rows} == set(values)
    assert {f"params_{k}" for k in space.choices} <= set(rows[0])
    for r in rows:
        assert float(r["value"]) == values[r["arch_id"]]
        assert space.arch_id({k: space.parse_id(r["arch_id"])[k] for k in space.choices}) == r["arch_id"]
    assert not list((tmp_path / "out").glob(".*.tmp"))


def test_rerunning_a_study_continues_it_without_repeating_trials(tmp_path, tiny_eval):
    ev = Counting(tiny_eval)

    def run(n):
        return OptunaSearch(TinySpace(), ev, n_trials=n, sampler="random", storage=sqlite(tmp_path),
                            study_name="resume", seed=1).run()

    first = run(3).trials_
    assert len(first) == 3 and ev.calls == 3
    second = run(5).trials_
    assert len(second) == 5
    assert second[:3] == first  # the earlier trials are untouched
    assert ev.calls == 3 + sum(not t["reused"] for t in second[3:])
    third = run(5)
    assert third.trials_ == second and ev.calls == 3 + sum(not t["reused"] for t in second[3:])
    assert third.best_value_ == max(t["value"] for t in second)


def test_a_proposal_already_completed_is_reused_not_retrained(tmp_path, tiny_eval):
    url = sqlite(tmp_path)
    study = optuna.create_study(storage=url, study_name="dup", direction="maximize")
    for arch in ({"hidden": 8, "act": "relu"}, {"hidden": 16, "act": "relu"}, {"hidden": 8, "act": "relu"}):
        study.enqueue_trial(arch)
    ev = Counting(tiny_eval)
    search = OptunaSearch(TinySpace(), ev, n_trials=3, sampler="random", storage=url, study_name="dup").run()
    assert ev.calls == 2
    assert [t["reused_from"] for t in search.trials_] == [None, None, 0]
    assert search.trials_[2]["value"] == search.trials_[0]["value"]


def test_nan_scores_fail_their_trials_and_a_run_of_them_stops_the_search(tmp_path, tiny_eval):
    from nasdistill.search.optuna_backend import FAILED_ATTR, MAX_FAILED_IN_A_ROW

    def diverges_on_tanh(arch, report=None):  # an evaluator whose tanh networks "diverge"
        return float("nan") if arch["act"] == "tanh" else tiny_eval(arch)

    search = OptunaSearch(TinySpace(), diverges_on_tanh, n_trials=6, sampler="random", storage=sqlite(tmp_path),
                          study_name="some").run()
    states = [t["state"] for t in search.trials_]
    assert states.count("COMPLETE") == 6 and "FAIL" in states  # failed trials are retried, the rest completes
    assert {t.user_attrs[FAILED_ATTR] for t in search.study_.trials if t.state.name == "FAIL"} == {
        "the evaluator returned nan"}
    assert search.best_arch_["act"] != "tanh"

    with pytest.raises(ConfigError, match=rf"study 'all': {MAX_FAILED_IN_A_ROW} trials in a row failed \(the last, "
                                          r".*: the evaluator returned nan\), so the search stopped") as err:
        OptunaSearch(TinySpace(), lambda arch: float("nan"), n_trials=3, sampler="random", storage=sqlite(tmp_path),
                     study_name="all").run()  # before: retried forever
    assert "\n" not in str(err.value)
    study = optuna.load_study(study_name="all", storage=sqlite(tmp_path))
    assert [t.state.name for t in study.trials] == ["FAIL"] * MAX_FAILED_IN_A_ROW


@pytest.mark.parametrize("backend", ["optuna", "nni"])
@pytest.mark.parametrize("setting, shown", [({"n_trials": 2.5}, "n_trials must be an integer, 0 or more, got 2.5"),
                                            ({"n_trials": True}, "n_trials must be an integer, 0 or more, got True"),
                                            ({"n_trials": -1}, "n_trials must be an integer, 0 or more, got -1"),
                                            ({"timeout": 0}, "timeout must be a positive number of seconds"),
                                            ({"timeout": float("nan")}, "timeout must be a positive number")])
def test_counts_and_timeouts_that_cannot_be_meant_are_refused_before_any_trial(tmp_path, backend, setting, shown):
    """2.5 trials ran 3 (Optuna) or tripped NNI's model count in its log; True ran as 1."""
    import numpy as np

    from nasdistill.search import backend_class

    calls = []
    cls = backend_class(backend)
    extra = {"storage": sqlite(tmp_path)} if backend == "optuna" else {}
    search = cls(TinySpace(), lambda arch: calls.append(arch) or 0.5, **{"n_trials": 2, **setting}, **extra)
    with pytest.raises(ConfigError, match=shown) as err:
        search.run()
    assert "\n" not in str(err.value) and calls == []
    search = cls(TinySpace(), lambda arch: 0.5, n_trials=np.int64(2), **extra).run()  # NumPy integers are integers
    assert search.n_trials == 2 and type(search.n_trials) is int and len(search.trials_) == 2


def test_resuming_with_other_evaluation_settings_is_refused(tmp_path, digits, proxy, tiny_eval):
    url = sqlite(tmp_path)
    OptunaSearch(TinySpace(), tiny_eval, n_trials=1, sampler="random", storage=url, study_name="s").run()
    other = ProxyEvaluator(TinySpace(), proxy, digits, BUDGET, seed=7)
    with pytest.raises(ConfigError, match="seed"):
        OptunaSearch(TinySpace(), other, n_trials=2, sampler="random", storage=url, study_name="s").run()


def test_tpe_search_models_its_results(tmp_path, tiny_eval):
    search = OptunaSearch(TinySpace(), tiny_eval, n_trials=14, sampler="tpe", storage=sqlite(tmp_path),
                          study_name="tpe").run()
    assert isinstance(search.study_.sampler, optuna.samplers.TPESampler)
    assert len(search.trials_) == 14 and all(t["state"] == "COMPLETE" for t in search.trials_)
    complete = [t["value"] for t in search.trials_]
    assert search.best_value_ == max(complete) > 0.3


def test_gp_search_models_its_results_from_its_seed(tmp_path, tiny_eval):
    runs = [OptunaSearch(TinySpace(), tiny_eval, n_trials=13, sampler="gp", storage=sqlite(tmp_path / str(i)),
                         study_name="gp", seed=4).run() for i in range(2)]
    assert isinstance(runs[0].study_.sampler, optuna.samplers.GPSampler)
    assert len(runs[0].trials_) == 13 and all(t["state"] == "COMPLETE" for t in runs[0].trials_)
    assert runs[0].best_value_ > 0.3
    # past the 10 random start-up trials the GP proposes, the same from the same seed
    assert [t["arch_id"] for t in runs[0].trials_] == [t["arch_id"] for t in runs[1].trials_]


def test_grid_visits_every_architecture_exactly_once(tmp_path, tiny_eval):
    space = TinySpace()
    ev = Counting(tiny_eval)
    search = OptunaSearch(space, ev, n_trials=100, sampler="grid", storage=sqlite(tmp_path), study_name="g").run()
    ids = [t["arch_id"] for t in search.trials_]
    assert sorted(ids) == sorted(space.arch_id(a) for a in space.enumerate())
    assert ev.calls == space.size() == len(ids)


def test_median_pruner_stops_architectures_below_the_median(tmp_path, tiny_eval):
    # Five working MLPs complete first (the median pruner's start-up trials), then two constant
    # networks report chance accuracy at epoch 1, below the median of the five: they must be pruned.
    url = sqlite(tmp_path)
    study = optuna.create_study(storage=url, study_name="prune", direction="maximize")
    archs = [{"hidden": h, "act": "relu"} for h in (4, 8, 16, 32, 64)] + [{"hidden": h, "act": "dead"} for h in (4, 8)]
    for arch in archs:
        study.enqueue_trial(arch)
    search = OptunaSearch(TinySpace(), tiny_eval, n_trials=7, sampler="random", pruner="median", storage=url,
                          study_name="prune").run()
    assert [t["state"] for t in search.trials_] == ["COMPLETE"] * 5 + ["PRUNED"] * 2
    frozen = search.study_.get_trials()
    assert all(len(t.intermediate_values) == tiny_eval.epochs for t in frozen[:5])
    assert all(list(t.intermediate_values) == [1] for t in frozen[5:])
    assert search.best_id_ in {TinySpace().arch_id(a) for a in archs[:5]}


def test_hyperband_prunes_on_proxy_epochs(tmp_path, tiny_eval):
    search = OptunaSearch(TinySpace(), tiny_eval, n_trials=8, sampler="random", pruner="hyperband",
                          storage=sqlite(tmp_path), study_name="hb", seed=2).run()
    assert isinstance(search.study_.pruner, optuna.pruners.HyperbandPruner)
    frozen = search.study_.get_trials()
    assert len(frozen) == 8 and {t.state.name for t in frozen} <= {"COMPLETE", "PRUNED"}
    trained = [t for t in frozen if "reused_from" not in t.user_attrs]
    assert trained and all(set(t.intermediate_values) <= set(range(1, tiny_eval.epochs + 1)) for t in trained)
    assert all(t.intermediate_values for t in trained)


def test_pruner_needs_an_evaluator_that_reports(tmp_path, tiny_eval):
    with pytest.raises(ConfigError, match="report"):
        OptunaSearch(TinySpace(), lambda arch: tiny_eval(arch), n_trials=1, pruner="median",
                     storage=sqlite(tmp_path)).run()


def test_journal_storage_resumes(tmp_path, tiny_eval):
    url = f"journal:{tmp_path}/j/study.journal"
    a = OptunaSearch(TinySpace(), tiny_eval, n_trials=2, sampler="random", storage=url, study_name="j").run()
    b = OptunaSearch(TinySpace(), tiny_eval, n_trials=3, sampler="random", storage=url, study_name="j").run()
    assert (tmp_path / "j" / "study.journal").is_file()
    assert len(a.trials_) == 2 and len(b.trials_) == 3 and b.trials_[:2] == a.trials_


def test_default_storage_is_sqlite_under_runs(tmp_path, monkeypatch, tiny_eval):
    monkeypatch.chdir(tmp_path)
    OptunaSearch(TinySpace(), tiny_eval, n_trials=1, sampler="random", study_name="exp1").run()
    assert (tmp_path / "runs" / "exp1" / "study.db").is_file()
    with pytest.raises(ConfigError, match="study name"):
        OptunaSearch(TinySpace(), tiny_eval, n_trials=1, study_name="../escape").run()


@pytest.mark.slow
def test_a_dead_workers_running_trial_is_failed_by_the_heartbeat(tmp_path, tiny_eval):
    storage = make_storage(sqlite(tmp_path), heartbeat_interval=1, grace_period=1)
    study = optuna.create_study(storage=storage, study_name="hb", direction="maximize")
    with warnings.catch_warnings():  # Optuna warns that heartbeats are meant for optimize()
        warnings.simplefilter("ignore", UserWarning)
        orphan = study.ask()  # a trial whose worker "died" right after its last heartbeat
    storage.record_heartbeat(orphan._trial_id)
    time.sleep(2.5)
    search = OptunaSearch(TinySpace(), tiny_eval, n_trials=1, sampler="random", storage=storage,
                          study_name="hb").run()
    assert [t["state"] for t in search.trials_] == ["FAIL", "COMPLETE"]
