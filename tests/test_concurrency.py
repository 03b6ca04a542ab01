"""Processes creating one new SQLite study and one new results store at the same instant all succeed.

Four processes wait for one wall-clock instant, then each opens the same new Optuna study (same
name, same new SQLite file) through :func:`nasdistill.search.make_storage`, adds one finished
trial, and opens the same new :class:`~nasdistill.validate.ReferenceStore` and stores one result.
Repeated on fresh files: every process succeeds and the counts are exact.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
N_PROCESSES = 4
ROUNDS = 5

WORKER = r"""
import sys, time
i, root, start, gap, rounds = int(sys.argv[1]), sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
import optuna
from nasdistill.search import make_storage
from nasdistill.validate import ReferenceKey, ReferenceResult, ReferenceStore
optuna.logging.set_verbosity(optuna.logging.WARNING)
for r in range(rounds):  # one new study and store per round, opened by every process at one instant
    folder = f"{root}/round{r}"
    while time.time() < start + r * gap:
        time.sleep(0.001)
    storage = make_storage(f"sqlite:///{folder}/study.db")
    study = optuna.create_study(storage=storage, study_name="same", load_if_exists=True)
    study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=float(i)))
    with ReferenceStore(f"{folder}/refs.db") as store:
        store.put(ReferenceKey(dataset="d", space="s", arch_id=f"a{i}", budget="b", seed=0),
                  ReferenceResult(test_acc=0.5, wall_time=1.0))
        store.put(ReferenceKey(dataset="d", space="s", arch_id="shared", budget="b", seed=0),
                  ReferenceResult(test_acc=float(i), wall_time=1.0))
    storage.engine.dispose()
print("done", i)
"""


def _run(root: Path) -> list[subprocess.CompletedProcess]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    start = time.time() + 6.0  # every process is imported and waiting by then
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(i), str(root), repr(start), "1.5", str(ROUNDS)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(N_PROCESSES)]
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=180)
        out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return out


@pytest.mark.slow
def test_processes_create_one_new_study_and_store_at_once(tmp_path):
    import optuna

    from nasdistill.search import make_storage
    from nasdistill.validate import ReferenceStore

    done = _run(tmp_path)
    for p in done:
        assert p.returncode == 0, p.stderr[-3000:]
        assert "Traceback" not in p.stderr, p.stderr[-3000:]
    for r in range(ROUNDS):
        folder = tmp_path / f"round{r}"
        study = optuna.load_study(study_name="same", storage=make_storage(f"sqlite:///{folder}/study.db"))
        assert len(study.trials) == N_PROCESSES
        assert sorted(t.value for t in study.trials) == [float(i) for i in range(N_PROCESSES)]
        assert optuna.get_all_study_names(make_storage(f"sqlite:///{folder}/study.db")) == ["same"]
        with ReferenceStore(folder / "refs.db") as store:
            assert store.count() == N_PROCESSES + 1  # one per process, and the shared key once
        assert not list(folder.glob("*.lock"))  # the creation locks are gone
