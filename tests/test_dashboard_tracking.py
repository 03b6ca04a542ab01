"""The tools NAS users already use: optuna-dashboard on the search study, MLflow tracking (offline)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest

from nasdistill.cli import main

REPO = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_dashboard_serves_the_study_on_a_local_port(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'study.db'}", study_name="nasdistill",
                                direction="maximize")
    study.add_trial(optuna.trial.create_trial(params={"width": 32},
                                              distributions={"width": optuna.distributions.CategoricalDistribution(
                                                  [16, 32])}, value=0.5))
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "nasdistill.cli", "dashboard", str(tmp_path), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    try:
        deadline, body = time.monotonic() + 60, None
        while time.monotonic() < deadline and body is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as r:
                    body = json.loads(r.read())
            except OSError:
                time.sleep(0.5)
        assert body is not None, "the dashboard did not answer"
        assert [s["study_name"] for s in body["study_summaries"]] == ["nasdistill"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/dashboard", timeout=5) as r:
            assert r.status == 200 and b"html" in r.read().lower()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_dashboard_without_a_study_is_one_line(tmp_path, capsys):
    assert main(["dashboard", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "no study.db" in err and len(err.splitlines()) == 1
    for port in ("70000", "0", "-1"):  # were an OverflowError traceback from bind(), or a server at "port 0"
        assert main(["dashboard", str(tmp_path), "--port", port]) == 2
        assert capsys.readouterr().err.strip() == ("nasdistill: error: --port must be a port number from 1 to 65535, "
                                                   f"got {port}; pass e.g. --port 8080")


@pytest.mark.slow
def test_mlflow_tracker_records_loss_curves_trials_and_metrics(tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "d"
    assert main(["distill", "--data", "digits", "--ipc", "1", "--method", "dm", "--iterations", "3",
                 "--set", "batch_real=16", "--set", "net=D1-W32-relu-instancenorm-avgpool", "--out", str(out),
                 "--mlflow", uri]) == 0
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("nasdistill")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1 and runs[0].data.params["method"] == "dm"
    assert len(client.get_metric_history(runs[0].info.run_id, "loss")) == 3

    from nasdistill.search import SearchResult
    from nasdistill.tracking import MLflowTracker

    class FakeSearch:  # what a fitted backend exposes to the tracker
        name = "optuna"
        result_ = SearchResult("s", [{"number": i, "state": "COMPLETE", "value": v, "arch_id": f"a{i}"}
                                     for i, v in enumerate([0.3, 0.6])],
                               {"arch": {"width": 32}, "arch_id": "a1", "value": 0.6}, {})

    tracker = MLflowTracker(uri)
    tracker.on_search(FakeSearch())
    rid = tracker.run_ids_[-1]
    assert [m.value for m in client.get_metric_history(rid, "trial_value")] == [0.3, 0.6]
    assert client.get_run(rid).data.params["best.width"] == "32"


@pytest.mark.parametrize("missing", ["optuna_dashboard", "mlflow"])
def test_missing_extras_say_how_to_install(missing, tmp_path, monkeypatch):
    from nasdistill.errors import ConfigError

    monkeypatch.setitem(sys.modules, missing, None)
    monkeypatch.setitem(sys.modules, f"{missing}.tracking", None)
    (tmp_path / "study.db").write_bytes(b"")
    with pytest.raises(ConfigError) as e:
        if missing == "mlflow":
            from nasdistill.tracking import MLflowTracker

            MLflowTracker(f"sqlite:///{tmp_path / 'm.db'}")
        else:
            from nasdistill.dashboard import serve

            serve(tmp_path, port=_free_port())
    assert "nasdistill[" in str(e.value)
