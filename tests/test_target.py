"""Distilling to a fidelity target: the walk stops at the first candidate that meets it.

One exploratory walk on digits with a target that no candidate reaches records every candidate's
metric (module fixture); the other tests replay the same ladder, with the proxies and scores in
the stores, with targets taken from what it measured, and count the distillations.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

import nasdistill.target as target_mod
from nasdistill.cli import EXIT_TARGET_NOT_MET, main
from nasdistill.errors import ConfigError, NasDistillError
from nasdistill.target import FidelitySearch, distill_to_target, ipc_ladder, metric_top_k
from nasdistill.training import TrainConfig
from nasdistill.validate import ReferenceStore

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks: see conftest.one_thread

#: DC's ConvNet space cut to depth 1-2 and width 8-32: real ConvNets, quick on 8x8 digits.
SMALL_SPACE = '''
from search_spaces.convnet import ConvNetSpace


class SmallConvNets(ConvNetSpace):
    name = "convnet-small"
    choices = {**ConvNetSpace.choices, "depth": [1, 2], "width": [8, 16, 32]}


space = SmallConvNets()
'''
K = 8
DM = {"iterations": 8, "batch_real": 16, "net": "D1-W32-relu-instancenorm-avgpool"}
METHODS, IPCS = ["random", "dm"], [1, 2, 5]  # 6 candidates: random-ipc1, dm-ipc1, random-ipc2, ...
EXPLORED = 4  # candidates the exploratory walk may try


@pytest.fixture(scope="module")
def setup(tmp_path_factory, digits) -> dict:
    root = tmp_path_factory.mktemp("target")
    space = root / "small_space.py"
    space.write_text(SMALL_SPACE)
    return {"dataset": digits, "space": str(space), "store": str(root / "proxies"),
            "reference_store": str(root / "references.db")}


def settings(setup: dict, **overrides) -> dict:
    kw = dict(methods=METHODS, ipcs=IPCS, method_settings={"dm": DM}, n_archs=K, space=setup["space"],
              proxy_train=TrainConfig(steps=10, batch_size=64), full_train=TrainConfig(epochs=1, batch_size=128),
              n_bootstrap=200, store=setup["store"], reference_store=setup["reference_store"])
    kw.update(overrides)
    return kw


class Counter:
    """Wraps a function and counts its calls."""

    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return self.fn(*args, **kwargs)


@pytest.fixture
def count_distill(monkeypatch) -> Counter:
    counter = Counter(target_mod.distill)
    monkeypatch.setattr(target_mod, "distill", counter)
    return counter


@pytest.fixture(scope="module")
def explored(setup):
    """A walk whose target (a perfect top-5 ranking) the weak proxies here do not reach, stopped after
    ``EXPLORED`` candidates: every candidate's value, and the reference trained by the first."""
    return distill_to_target(setup["dataset"], target=1.0, max_candidates=EXPLORED, **settings(setup))


def values(result) -> list[float]:
    return [c.value for c in result.candidates]


def test_unreachable_target_spends_the_budget_and_keeps_the_best(explored):
    assert not explored.met, explored.message()
    assert len(explored.candidates) == EXPLORED
    assert explored.stopped == f"candidate budget spent ({EXPLORED} of {EXPLORED})"
    assert [c.name for c in explored.candidates] == ["random-ipc1", "dm-ipc1", "random-ipc2", "dm-ipc2"]
    v = values(explored)
    assert all(math.isfinite(x) and x < 1 for x in v), v
    best = max(range(len(v)), key=lambda i: (v[i], -i))  # highest, the cheaper on a tie
    assert explored.chosen is explored.best is explored.candidates[best]
    assert "NOT met" in explored.message() and explored.chosen.name in explored.message()
    d = explored.to_dict()
    assert d["met"] is False and d["chosen"] == best and len(d["candidates"]) == EXPLORED
    assert json.loads(json.dumps(d)) == d


def test_full_data_reference_is_trained_once_and_shared(explored, setup):
    refs = [c.reference for c in explored.candidates]
    assert refs[0] == {"n_trained": K, "n_reused": 0}
    assert all(r == {"n_trained": 0, "n_reused": K} for r in refs[1:]), refs
    with ReferenceStore(setup["reference_store"]) as store:
        assert store.count() == K
    arch_ids = {tuple(c.validation.arch_ids) for c in explored.candidates}
    assert len(arch_ids) == 1  # one shared sample of architectures


def test_first_candidate_meeting_the_target_is_the_only_one_tried(explored, setup, count_distill):
    first = explored.candidates[0].value
    result = distill_to_target(setup["dataset"], target=first, **settings(setup))
    assert [c.name for c in result.candidates] == ["random-ipc1"]
    assert result.met and result.stopped == "target met" and result.chosen.value == first
    assert len(count_distill.calls) == 1


@pytest.mark.parametrize("bound", ["value", "ci-low"])
def test_walk_stops_at_the_first_rung_that_meets_the_target(explored, setup, count_distill, bound):
    """The target is the highest value the exploratory walk measured (its estimate, or its CI's low
    end): the walk must stop at the first candidate reaching it and distil nothing after it."""
    v = [c.estimate if bound == "value" else c.ci[0] for c in explored.candidates]
    goal = max(v)
    stop = v.index(goal)
    assert bound == "ci-low" or stop > 0, f"the first rung was already the best ({v}): no later rung to stop at"
    result = distill_to_target(setup["dataset"], target=goal, bound=bound, **settings(setup))
    assert [c.name for c in result.candidates] == [c.name for c in explored.candidates[:stop + 1]]
    assert [c.met for c in result.candidates] == [False] * stop + [True]
    assert result.chosen is result.candidates[-1] and result.stopped == "target met"
    assert len(count_distill.calls) == stop + 1 < len(METHODS) * len(IPCS)
    assert [kw["ipc"] for _, kw in count_distill.calls] == [c.ipc for c in result.candidates]
    assert all(c.proxy_reused and c.reference["n_trained"] == 0 for c in result.candidates)  # all in the stores


def test_time_budget_stops_after_the_first_candidate(setup, count_distill):
    result = distill_to_target(setup["dataset"], target=1.0, time_budget_s=1e-6, **settings(setup))
    assert len(result.candidates) == 1 and not result.met
    assert result.stopped.startswith("time budget spent")
    assert len(count_distill.calls) == 1


@pytest.mark.parametrize("overrides, needle", [
    ({"target": 1.01}, "outside [-1, 1]"),
    ({"target": -1.5}, "outside [-1, 1]"),
    ({"methods": []}, "method ladder is empty"),
    ({"ipcs": []}, "ipc ladder is empty"),
    ({"ipcs": [1, 500]}, "above the smallest class"),
    ({"ipcs": [0, 1]}, "not a positive integer"),
    ({"metric": "regret@1"}, "unknown target metric"),
    ({"metric": "spearman_top1"}, "fewer than 2"),
    ({"bound": "mean"}, "unknown target bound"),
    ({"bound": "ci-low", "n_bootstrap": 0}, "needs bootstrap"),
    ({"n_archs": 1}, "n_archs"),
    ({"time_budget_s": 0}, "time budget must be positive"),
    ({"max_candidates": 0}, "max_candidates"),
    ({"methods": ["dm", "nope"]}, "unknown distillation method"),
    ({"method_settings": {"dm": {"lr_img_typo": 1}}}, "no setting"),
])
def test_bad_settings_fail_before_any_work(setup, count_distill, overrides, needle):
    kw = settings(setup, **{k: v for k, v in overrides.items() if k != "target"})
    with pytest.raises(NasDistillError) as e:
        FidelitySearch(target=overrides.get("target", 0.5), **kw).run(setup["dataset"])
    assert needle in str(e.value) and len(str(e.value).splitlines()) == 1
    assert count_distill.calls == []


def test_ladders_and_metric_names():
    assert ipc_ladder(1, 118) == [1, 2, 5, 10, 20, 50]
    assert ipc_ladder(3, 30) == [3, 5, 10, 20]
    assert ipc_ladder(10, 10) == [10]
    with pytest.raises(ConfigError, match="smallest class"):
        ipc_ladder(200, 118)
    assert metric_top_k("spearman_top5") == 5 and metric_top_k("spearman_top25pct") == 0.25
    assert metric_top_k("spearman") is None and metric_top_k("kendall") is None
    order = FidelitySearch(target=0.5, methods=["dm", "random", "dm"], ipcs=[5, 1]).candidates()
    assert order == [("dm", 1), ("random", 1), ("dm", 5), ("random", 5)]


# --- command line -------------------------------------------------------------------------------------
def cli_args(setup: dict, out: Path, *extra: str) -> list[str]:
    return ["distill", "--data", "digits", "--validate-archs", str(K), "--space", setup["space"],
            "--target-methods", ",".join(METHODS), "--target-ipcs", ",".join(map(str, IPCS)),
            "--iterations", str(DM["iterations"]), "--set", f"batch_real={DM['batch_real']}", "--set", f"net={DM['net']}",
            "--proxy-steps", "10", "--batch-size", "64", "--augment", "none", "--full-epochs", "1", "--bootstrap", "200",
            "--store", setup["store"], "--reference-store", setup["reference_store"], "--out", str(out),
            "--no-progress", *extra]


def test_cli_keeps_the_cheapest_proxy_that_meets_the_target(explored, setup, tmp_path, capsys):
    goal = max(values(explored))
    stop = values(explored).index(goal)
    assert main(cli_args(setup, tmp_path, "--target-spearman", repr(goal))) == 0
    assert "target met" in capsys.readouterr().out
    assert {"proxy.safetensors", "proxy.json", "proxy.png", "validation.json", "target.json"} <= \
        {p.name for p in tmp_path.iterdir()}
    history = json.loads((tmp_path / "target.json").read_text())
    assert history["met"] is True and history["chosen"] == stop and len(history["candidates"]) == stop + 1
    kept = explored.candidates[stop]
    meta = json.loads((tmp_path / "proxy.json").read_text())
    assert (meta["method"], meta["ipc"], meta["key"]) == (kept.method, kept.ipc, kept.proxy_key)
    validation = json.loads((tmp_path / "validation.json").read_text())
    assert validation["contenders"][0]["name"] == kept.name
    assert validation["contenders"][0]["metrics"]["spearman_top5"] == pytest.approx(kept.estimate)


def test_cli_target_not_met_exits_3_and_keeps_the_best(explored, setup, tmp_path, capsys):
    code = main(cli_args(setup, tmp_path, "--target-spearman", "1", "--target-max-candidates", "2"))
    err = capsys.readouterr().err.strip()
    assert code == EXIT_TARGET_NOT_MET == 3
    assert "NOT met" in err and len(err.splitlines()) == 1, err
    history = json.loads((tmp_path / "target.json").read_text())
    two = explored.candidates[:2]
    best = max(two, key=lambda c: (c.value, -c.index))
    assert history["met"] is False and len(history["candidates"]) == 2 and history["chosen"] == best.index
    assert json.loads((tmp_path / "proxy.json").read_text())["key"] == best.proxy_key


@pytest.mark.parametrize("extra, needle", [
    (["--target-spearman", "1.01"], "--target-spearman must be a finite number >= -1 and <= 1"),
    (["--target-spearman", "0.9", "--target-ipcs", ""], "ipc ladder is empty"),
    (["--target-spearman", "0.9", "--target-methods", ","], "method ladder is empty"),
    (["--target-spearman", "0.9", "--target-ipcs", "1,500"], "above the smallest class"),
    (["--target-spearman", "0.9", "--target-ipcs", "1,two"], "comma-separated list of integers"),
    (["--target-spearman", "0.9", "--target-metric", "regret@1"], "unknown target metric"),
    (["--target-spearman", "0.9", "--target-methods", "dm,nope"], "unknown distillation method 'nope'"),
    (["--target-spearman", "0.9", "--target-methods", "random,dm", "--set", "lr_img_typo=1"], "no method of"),
    (["--target-spearman", "0.9", "--target-budget", "0"], "--target-budget must be a finite number > 0"),
    (["--validate-archs", "4"], "--validate-archs only applies with --target-spearman"),
])
def test_cli_bad_target_flags_exit_2_with_one_line_and_write_nothing(tmp_path, capsys, extra, needle):
    out = tmp_path / "out"
    home = Path(os.environ["NASDISTILL_HOME"])
    before = set(home.rglob("*"))
    assert main(["distill", "--data", "digits", "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert not out.exists() or not [f for f in out.rglob("*") if f.is_file()]
    assert set(home.rglob("*")) == before
