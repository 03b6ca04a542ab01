"""A third search backend needs one new file: here, a plain in-process loop defined and registered
in this test file, run through the CLI like the built-in ones."""

from __future__ import annotations

import csv
import json
import time

import pytest

from nasdistill.cli import main
from nasdistill.errors import ConfigError, UnknownNameError
from nasdistill.search import BACKENDS, SearchBackend, SearchResult, backend_class, register_backend

FAST_TRAIN = ["--proxy-steps", "10", "--batch-size", "64", "--no-progress"]


class LoopSearch(SearchBackend):
    """Score a seeded sample of the space, one architecture after the other."""

    def search(self) -> SearchResult:
        space = self.space_()
        rows = []
        for number, arch in enumerate(space.sample(self.n_trials, self.seed)):
            start = time.perf_counter()
            value = float(self.evaluator(arch))
            rows.append({"number": number, "state": "COMPLETE", "value": value, "arch_id": space.arch_id(arch),
                         "arch": dict(arch), "params": dict(arch), "duration_s": time.perf_counter() - start,
                         "reused": False, "reused_from": None})
        return self.result(rows)


@pytest.fixture(scope="module")
def loop_backend():
    register_backend("loop")(LoopSearch)
    yield LoopSearch
    BACKENDS._items.pop("loop")


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    out = tmp_path_factory.mktemp("proxy")
    assert main(["distill", "--data", "digits", "--method", "random", "--ipc", "2", "--out", str(out),
                 "--no-progress"]) == 0
    return out / "proxy.safetensors"


@pytest.mark.slow
def test_a_registered_backend_runs_through_the_cli_and_writes_the_usual_outputs(loop_backend, proxy, tmp_path,
                                                                               capsys):
    assert backend_class("loop") is LoopSearch and LoopSearch.name == "loop"
    out = tmp_path / "loop"
    assert main(["search", "--proxy", str(proxy), "--backend", "loop", "--trials", "3", "--retrain-top", "1",
                 "--full-epochs", "1", "--out", str(out), *FAST_TRAIN]) == 0
    assert "search: 3 trials with the loop backend" in capsys.readouterr().out
    with (out / "trials.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and all(r["state"] == "COMPLETE" for r in rows)
    best = json.loads((out / "best_arch.json").read_text())
    assert best["backend"] == "loop" and best["n_trials"] == 3 and best["metric"] == "val_accuracy"
    assert best["value"] == max(float(r["value"]) for r in rows)
    assert best["evaluator"]["dataset"] == "digits"
    retrain = json.loads((out / "retrain.json").read_text())
    assert [r["arch_id"] for r in retrain["results"]] == [best["arch_id"]]
    assert not (out / "study.db").exists()


def test_a_registered_backend_is_listed_and_refuses_options_it_does_not_take(loop_backend, proxy, tmp_path, capsys):
    assert main(["list", "backends"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert names == ["loop", "nni", "optuna"]
    assert main(["search", "--proxy", str(proxy), "--backend", "loop", "--sampler", "random",
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "nasdistill: error: --sampler random does not work with --backend loop; drop --sampler", err
    assert not (tmp_path / "o").exists()
    with pytest.raises(ConfigError, match="--workers 2 does not work"):
        LoopSearch.check_options(workers=2)


def test_unknown_backends_get_a_did_you_mean():
    with pytest.raises(UnknownNameError, match="did you mean 'optuna'"):
        backend_class("optuan")
