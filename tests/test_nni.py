"""The NNI backend: NNI 3.0 strategies run in this process on a proxy, results in the Optuna format.

Everything runs on scikit-learn's 8x8 digits with a 20-a-class random-subset proxy and a 5-epoch
budget. Most searches use small MLP spaces (milliseconds a trial); the evolution test searches a
16-network corner of DC's ConvNet space.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import torch
from torch import nn

from nasdistill.data import Proxy
from nasdistill.errors import ConfigError, UnknownNameError
from nasdistill.search import OptunaSearch, ProxyEvaluator
from nasdistill.search.nni_backend import NNISearch, import_nni
from nasdistill.spaces import CategoricalSpace, Network, SearchSpace
from nasdistill.training import TrainConfig
from search_spaces.convnet import ConvNetSpace

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks: see conftest.one_thread

BUDGET = TrainConfig(epochs=5, batch_size=32, lr=0.05)
REPO = Path(__file__).resolve().parent.parent


# --- spaces, written the way a user writes one ---------------------------------------------------
class MLP(Network):
    def __init__(self, input_shape, num_classes, hidden: int, act: str = "relu", dropout: float | None = None,
                 layers: int = 1):
        super().__init__()
        c, h, w = input_shape
        body: list[nn.Module] = [nn.Flatten()]
        width = c * h * w
        for _ in range(layers):
            body += [nn.Linear(width, hidden), {"relu": nn.ReLU, "tanh": nn.Tanh}[act]()]
            width = hidden
        if dropout is not None:
            body.append(nn.Dropout(dropout))
        self.body = nn.Sequential(*body)
        self.classifier = nn.Linear(width, num_classes)

    def embed(self, x):
        return self.body(x)


class TinySpace(CategoricalSpace):
    """12 MLPs (``layers`` has a single value)."""

    name = "tiny-mlp"
    choices = {"hidden": [4, 8, 16, 32, 64, 128], "act": ["relu", "tanh"], "layers": [1]}

    def build(self, arch, input_shape, num_classes):
        a = self.validate(arch)
        return MLP(input_shape, num_classes, a["hidden"], a["act"], layers=a["layers"])


class DropoutSpace(CategoricalSpace):
    """8 MLPs; ``dropout`` holds None, a value NNI's choices are not meant to hold."""

    name = "dropout-mlp"
    choices = {"hidden": [8, 32], "act": ["relu", "tanh"], "dropout": [None, 0.2]}

    def build(self, arch, input_shape, num_classes):
        a = self.validate(arch)
        return MLP(input_shape, num_classes, a["hidden"], a["act"], a["dropout"])


class ConditionalSpace(SearchSpace):
    """A linear model or a one-hidden-layer MLP: ``hidden`` is asked only when ``layers`` is 1, so the
    4 flat samples describe 3 networks."""

    name = "conditional-mlp"

    def suggest(self, trial):
        layers = trial.suggest_categorical("layers", [0, 1])
        return {"layers": layers, "hidden": trial.suggest_categorical("hidden", [8, 32]) if layers else 0}

    def dimensions(self):
        return {"layers": [0, 1], "hidden": [8, 32]}

    def size(self):
        return 3

    def build(self, arch, input_shape, num_classes):
        return MLP(input_shape, num_classes, arch["hidden"] or 1, layers=arch["layers"])


class NoDimensions(SearchSpace):
    name = "ints"

    def suggest(self, trial):
        return {"hidden": trial.suggest_int("hidden", 4, 64, log=True)}

    def build(self, arch, input_shape, num_classes):
        return MLP(input_shape, num_classes, arch["hidden"])


class SmallConvNets(ConvNetSpace):
    """A 16-architecture corner of DC's ConvNet space that trains in well under a second."""

    name = "convnet-small"
    choices = {"depth": [1, 2], "width": [8, 16], "act": ["relu", "sigmoid"], "norm": ["none", "batchnorm"],
               "pool": ["avgpool"]}


class Counting:
    """Wraps an evaluator and counts trainings."""

    def __init__(self, evaluator):
        self.evaluator, self.calls = evaluator, 0

    def __call__(self, arch):
        self.calls += 1
        return self.evaluator(arch)

    def describe(self):
        return self.evaluator.describe()


def subset_proxy(ds, per_class: int = 20, seed: int = 0) -> Proxy:
    """A class-balanced random subset of the training split, tagged as distilled from ``ds``."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.cat([ix[torch.randperm(len(ix), generator=g)[:per_class]] for ix in ds.indices_by_class()])
    meta = {"method": "subset", "dataset": {"name": ds.name, "fingerprint": ds.fingerprint,
                                            "num_classes": ds.num_classes, "image_shape": list(ds.image_shape)}}
    return Proxy(ds.x_train[idx].clone(), ds.y_train[idx], meta)


@pytest.fixture(scope="module")
def proxy(digits):
    return subset_proxy(digits)


def evaluator(space, digits, proxy):
    return ProxyEvaluator(space, proxy, digits, BUDGET)


# --- evolution on a proxy -------------------------------------------------------------------------------
def test_evolution_completes_trials_on_a_proxy_and_writes_the_optuna_format(tmp_path, digits, proxy):
    space = SmallConvNets()
    ev = evaluator(space, digits, proxy)
    search = NNISearch(space, ev, n_trials=6, strategy="evolution", seed=0, workdir=tmp_path / "nni",
                       study_name="evo").run()
    from nni.nas.strategy import RegularizedEvolution

    assert isinstance(search.strategy_, RegularizedEvolution)
    assert (search.strategy_.population_size, search.strategy_.sample_size) == (2, 2)  # 6 trials: 2 random, 4 bred
    assert len(search.trials_) == 6 >= 5 and all(t["state"] == "COMPLETE" for t in search.trials_)
    log = (tmp_path / "nni" / "nni.log").read_text()
    assert log.count("] Random:") == 2 and log.count("] Mutated:") == 4  # NNI's own account of the run

    values = {t["arch_id"]: t["value"] for t in search.trials_}
    assert len(values) == 6  # no architecture proposed twice
    assert search.best_value_ == max(values.values()) == values[search.best_id_] > 0.3
    assert space.arch_id(search.best_arch_) == search.best_id_
    assert ev(search.best_arch_) == search.best_value_  # the architecture recorded is the one that was scored
    for t, model in zip(search.trials_, search.engine_.list_models(), strict=True):  # NNI's own record
        assert model.sample == t["params"] and model.metric == t["value"]
        assert space.arch_id(space.from_values(t["params"])) == t["arch_id"]

    paths = search.export(tmp_path / "out")
    best = json.loads(paths["best_arch"].read_text())
    assert best["backend"] == "nni" and best["strategy"] == "evolution" and best["study_name"] == "evo"
    assert best["arch"] == search.best_arch_ and best["arch_id"] == search.best_id_
    assert best["value"] == search.best_value_ and best["n_trials"] == best["n_complete"] == 6
    assert best["evaluator"]["dataset_fingerprint"] == digits.fingerprint
    with paths["trials"].open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["number"]) for r in rows] == list(range(6))
    assert {r["arch_id"]: float(r["value"]) for r in rows} == values

    optuna = OptunaSearch(space, ev, n_trials=1, sampler="random", storage="memory", study_name="o").run()
    ref = optuna.export(tmp_path / "optuna")
    header = paths["trials"].read_text().splitlines()[0]
    assert header == ref["trials"].read_text().splitlines()[0]  # same columns, same order
    assert set(best) >= set(json.loads(ref["best_arch"].read_text())) - {"storage", "sampler", "pruner"}


# --- random and grid --------------------------------------------------------------------------------------
def test_random_with_dedup_proposes_distinct_architectures_reproducibly(digits, proxy):
    space = DropoutSpace()

    def run(seed):
        ev = Counting(evaluator(space, digits, proxy))
        search = NNISearch(space, ev, n_trials=8, strategy="random", seed=seed).run()
        return [t["arch_id"] for t in search.trials_], ev.calls, search

    ids, calls, search = run(seed=0)
    assert len(ids) == calls == 8 and sorted(ids) == sorted(space.arch_id(a) for a in space.enumerate())
    assert not any(t["reused"] for t in search.trials_)
    assert {t["params"]["dropout"] for t in search.trials_} == {None, 0.2}  # decoded from NNI's positions
    assert run(seed=0)[0] == ids  # same seed, same order
    assert run(seed=1)[0] != ids


def test_grid_visits_every_point_exactly_once(digits, proxy):
    space = TinySpace()
    ev = Counting(evaluator(space, digits, proxy))
    search = NNISearch(space, ev, n_trials=100, strategy="grid").run()
    ids = [t["arch_id"] for t in search.trials_]
    assert sorted(ids) == sorted(space.arch_id(a) for a in space.enumerate())
    assert ev.calls == space.size() == len(ids) == 12


def test_a_sample_that_describes_a_network_already_scored_is_reused(digits, proxy):
    space = ConditionalSpace()
    ev = Counting(evaluator(space, digits, proxy))
    search = NNISearch(space, ev, n_trials=10, strategy="grid").run()
    assert len(search.trials_) == 4 and ev.calls == 3  # 4 flat samples, 3 networks
    (reused,) = [t for t in search.trials_ if t["reused"]]
    first = search.trials_[reused["reused_from"]]
    assert reused["arch_id"] == first["arch_id"] == "hidden=0,layers=0" and reused["value"] == first["value"]
    assert reused["params"]["hidden"] != first["params"]["hidden"]


@pytest.mark.slow
def test_tpe_maximises(digits, proxy):
    space = TinySpace()
    search = NNISearch(space, evaluator(space, digits, proxy), n_trials=3, strategy="tpe", seed=0).run()
    assert search.strategy_.tuner.optimize_mode.value == "maximize"
    assert len(search.trials_) == 3 and all(t["state"] == "COMPLETE" for t in search.trials_)
    assert search.best_value_ == max(t["value"] for t in search.trials_)


def test_intermediate_accuracies_reach_nni_when_asked(digits, proxy):
    space = TinySpace()
    ev = ProxyEvaluator(space, proxy, digits, BUDGET, report_every=1)
    search = NNISearch(space, ev, n_trials=2, strategy="random", report_intermediate=True).run()
    for t, model in zip(search.trials_, search.engine_.list_models(), strict=True):
        assert len(model.metrics.intermediates) == ev.epochs == 5
        assert model.metrics.intermediates[-1] == model.metric == t["value"]
    quiet = NNISearch(space, ev, n_trials=2, strategy="random").run()
    assert all(not m.metrics.intermediates for m in quiet.engine_.list_models())
    assert [t["value"] for t in quiet.trials_] == [t["value"] for t in search.trials_]


# --- in-process, nothing listening, nothing written ---------------------------------------------------------
_WATCH: dict = {"events": None}  # module-wide, so events from any thread are seen
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def _audit(event, args):
    seen = _WATCH["events"]
    if seen is None:
        return
    if event == "open":
        path, mode, flags = args
        writes = any(c in mode for c in "wax+") if isinstance(mode, str) else bool((flags or 0) & _WRITE_FLAGS)
        if writes and isinstance(path, (str, bytes, os.PathLike)):
            seen.append(("write", os.path.realpath(os.fsdecode(path))))
    elif event in ("os.mkdir", "os.rename", "os.symlink"):
        seen.append(("write", os.path.realpath(os.fsdecode(args[0]))))
    elif event.startswith(("socket.bind", "socket.connect", "subprocess.", "os.system", "os.exec", "os.fork",
                           "os.posix_spawn", "os.spawn")):
        seen.append((event, repr(args)[:200]))


def _listening(proc: psutil.Process) -> set:
    return {c.laddr for c in proc.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}


def test_a_search_listens_on_no_port_starts_no_process_and_writes_only_its_log(tmp_path, monkeypatch, digits,
                                                                                 proxy):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    space = TinySpace()
    ev = evaluator(space, digits, proxy)
    search = NNISearch(space, ev, n_trials=3, strategy="evolution", workdir=tmp_path / "work")
    sys.addaudithook(_audit)  # hooks cannot be removed; this one is idle outside the block below
    me = psutil.Process()
    before = (_listening(me), {c.pid for c in me.children(recursive=True)})
    _WATCH["events"] = []
    try:
        search.run()
    finally:
        events, _WATCH["events"] = _WATCH["events"], None
    assert len(search.trials_) == 3
    assert (_listening(me), {c.pid for c in me.children(recursive=True)}) == before
    assert [e for e in events if e[0] != "write"] == []  # no bind, connect, subprocess, fork or exec
    work = os.path.realpath(tmp_path / "work")
    assert events and all(path.startswith(work + os.sep) or path == work for _, path in events), events
    assert list(home.iterdir()) == []
    assert "Random:" in (tmp_path / "work" / "nni.log").read_text()


# --- errors -------------------------------------------------------------------------------------------------
def test_nan_scores_fail_their_trials_and_a_run_of_them_stops_the_search():
    """As the Optuna backend: a NaN score is a failed trial and the search goes on (NNI counts it
    towards n_trials), but MAX_FAILED_IN_A_ROW failures in a row stop it in one line, rows kept."""
    from nasdistill.search.backend import MAX_FAILED_IN_A_ROW

    calls = {"n": 0}

    def every_third_fails(arch):
        calls["n"] += 1
        return float("nan") if calls["n"] % 3 == 0 else 0.5 + 0.01 * calls["n"]

    search = NNISearch(TinySpace(), every_third_fails, n_trials=6, strategy="random", seed=0).run()
    states = [r["state"] for r in search.trials_]
    assert states.count("FAIL") == 2 and states.count("COMPLETE") == 4 and search.best_value_ == pytest.approx(0.55)

    search = NNISearch(TinySpace(), lambda arch: float("nan"), n_trials=8, strategy="random", seed=0,
                       study_name="all")
    with pytest.raises(ConfigError, match=rf"study 'all': {MAX_FAILED_IN_A_ROW} trials in a row failed \(the last, "
                                          r".*: the evaluator returned nan\), so the search stopped") as err:
        search.run()  # before: all 8 trials spent, and then "no completed trial"
    assert "\n" not in str(err.value)
    assert [r["state"] for r in search.result_.trials] == ["FAIL"] * MAX_FAILED_IN_A_ROW


def test_settings_that_cannot_work_fail_before_any_trial(digits, proxy):
    ev = Counting(evaluator(TinySpace(), digits, proxy))
    with pytest.raises(ConfigError, match="dimensions"):
        NNISearch(NoDimensions(), ev, n_trials=2).run()
    with pytest.raises(UnknownNameError, match="did you mean 'evolution'"):
        NNISearch(TinySpace(), ev, strategy="evolutoin").run()
    with pytest.raises(ConfigError, match="population_size"):
        NNISearch(TinySpace(), ev, strategy="evolution", populaton_size=4).run()
    with pytest.raises(ConfigError, match="sample_size"):
        NNISearch(TinySpace(), ev, strategy="evolution", population_size=2, sample_size=3).run()
    with pytest.raises(ConfigError, match="run"):
        NNISearch(TinySpace(), ev).export("unused")
    assert ev.calls == 0


def test_without_nni_the_backend_says_how_to_install_it(monkeypatch, digits, proxy):
    monkeypatch.setitem(sys.modules, "nni", None)  # what `import nni` meets when NNI is not installed
    with pytest.raises(ConfigError) as err:
        NNISearch(TinySpace(), evaluator(TinySpace(), digits, proxy))
    assert str(err.value) == 'the NNI backend needs NNI; pip install "nasdistill[nni]"'
    with pytest.raises(ConfigError, match="nasdistill\\[nni\\]"):
        import_nni()


@pytest.mark.slow
def test_importing_the_search_package_does_not_import_nni():
    code = ("import sys, nasdistill.search as s; s.NNISearch, s.NNI_STRATEGIES.names(); "
            "print(sorted(m for m in sys.modules if m == 'nni' or m.startswith('nni.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"

