"""One study in a real PostgreSQL server (started by the fixture on 127.0.0.1, stopped after),
shared by separate worker processes: every trial is recorded exactly once, and a worker killed
mid-trial leaves no trial running once the heartbeat's grace period has passed.

The space, proxy and budgets are the small ones of test_search_workers.py (digits, 12 MLPs).
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time

import optuna
import pytest
import sqlalchemy as sa
from optuna.storages import RDBStorage

import _pg
from nasdistill.search import OptunaSearch, ProxyEvaluator, make_storage
from nasdistill.search.claiming import claim_lock
from nasdistill.search.workers import prepare_job, worker_command, worker_env
from nasdistill.spaces import get_space
from nasdistill.training import TrainConfig
from test_search_workers import digits_proxy, tiny_space_file

postgres_server = _pg.postgres_server
postgres_url = _pg.postgres_url

pytestmark = [pytest.mark.postgres, pytest.mark.slow,  # starts a private server
              pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def space(tmp_path_factory):
    return get_space(str(tiny_space_file(tmp_path_factory.mktemp("space"))))


@pytest.fixture(scope="module")
def proxy(digits):
    return digits_proxy(digits)


def trials_of(storage: str | RDBStorage, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=storage).get_trials()


def _freeze_mid_trial(proc: subprocess.Popen, url: str, name: str, label: str) -> optuna.trial.FrozenTrial:
    """Stop ``proc`` (SIGSTOP) while it trains a trial whose heartbeat is recorded; return that trial.

    "Trains": its architecture is recorded whole (``arch_id``); stopped between two ``suggest``
    calls, the retry would rightly keep only the parameters chosen so far. A stopped process writes
    nothing more, so the trial is certain to die unfinished; if it ended in the moment between
    looking and stopping, let the process go on and wait for its next trial.
    """
    storage = RDBStorage(url)
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
            try:
                running = [t for t in trials_of(storage, name) if t.state.name == "RUNNING"
                           and t.user_attrs.get("worker", "").endswith(label) and "arch_id" in t.user_attrs]
            except KeyError:  # the study does not exist yet
                continue
            if not running:
                continue
            with storage.engine.connect() as conn:  # Optuna's heartbeat table
                beating = {r[0] for r in conn.execute(sa.text("SELECT trial_id FROM trial_heartbeats"))}
            mine = [t for t in running if t._trial_id in beating]
            if not mine:
                continue
            proc.send_signal(signal.SIGSTOP)
            if trials_of(storage, name)[mine[0].number].state.name == "RUNNING":
                return mine[0]
            proc.send_signal(signal.SIGCONT)
    finally:
        storage.engine.dispose()
    raise AssertionError(f"worker {proc.pid} never ran a trial")


def test_postgres_storage_has_a_heartbeat_and_a_server_wide_claim_lock(postgres_url):
    storage = make_storage(postgres_url, heartbeat_interval=2, grace_period=5)
    assert isinstance(storage, RDBStorage) and storage.get_heartbeat_interval() == 2
    assert storage.engine.dialect.name == "postgresql"
    lock = claim_lock(storage, "s")
    other = sa.create_engine(postgres_url)
    held = threading.Event()
    release = threading.Event()

    def holder():
        with lock():
            held.set()
            release.wait(10)

    t = threading.Thread(target=holder)
    t.start()
    assert held.wait(10)
    with other.connect() as conn:  # another connection (as another process would) cannot take it
        key = conn.execute(sa.text("SELECT objid::bigint | (classid::bigint << 32) FROM pg_locks "
                                   "WHERE locktype = 'advisory' AND granted")).scalar()
        assert key is not None
        assert conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar() is False
    release.set()
    t.join()
    with other.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")).scalar() == 0
    other.dispose()


def test_two_worker_processes_record_every_trial_exactly_once(postgres_url, space, proxy, digits):
    evaluator = ProxyEvaluator(space, proxy, digits, TrainConfig(epochs=20, batch_size=32, lr=0.05))
    search = OptunaSearch(space, evaluator, n_trials=8, sampler="random", storage=postgres_url, study_name="pg",
                          workers=2).run()
    trials = trials_of(postgres_url, "pg")
    assert sorted(t.number for t in trials) == list(range(8))  # each trial recorded once, none extra
    assert [t.state.name for t in trials] == ["COMPLETE"] * 8  # none lost, none left running
    assert {t.user_attrs["worker"].rsplit("#", 1)[1] for t in trials} == {"0", "1"}
    assert len({t.user_attrs["worker"].split("#")[0] for t in trials}) == 2  # two processes
    trained = [t.user_attrs["arch_id"] for t in trials if "reused_from" not in t.user_attrs]
    assert len(trained) == len(set(trained))  # no architecture trained twice, even concurrently
    assert search.best_value_ == max(t.value for t in trials)


def test_a_killed_worker_leaves_no_trial_running(postgres_url, space, proxy, digits, tmp_path):
    # Worker A is killed (SIGKILL: no clean-up at all) in the middle of a trial; worker B keeps
    # going, fails A's trial once its heartbeat is older than the grace period, runs it again and
    # finishes the study with exactly the trials asked for.
    evaluator = ProxyEvaluator(space, proxy, digits, TrainConfig(epochs=20, batch_size=32, lr=0.05))
    search = OptunaSearch(space, evaluator, n_trials=5, sampler="random", storage=postgres_url, study_name="kill",
                          heartbeat_interval=1, grace_period=3)
    job = prepare_job(search, tmp_path / "job", threads=1)
    a, b = (subprocess.Popen(worker_command(job, i), env=worker_env(1), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True) for i in (0, 1))
    try:
        victim = _freeze_mid_trial(a, postgres_url, "kill", label=f":{a.pid}#0")
        a.send_signal(signal.SIGKILL)
        a.wait(30)
        _, err = b.communicate(timeout=300)
        assert b.returncode == 0, err[-2000:]
    finally:
        for p in (a, b):
            if p.poll() is None:
                p.kill()
                p.wait()

    trials = trials_of(postgres_url, "kill")
    assert sorted(t.number for t in trials) == list(range(len(trials)))
    by_state = {s: [t for t in trials if t.state.name == s] for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING",
                                                                       "WAITING")}
    assert not by_state["RUNNING"] and not by_state["WAITING"]  # nothing stuck
    assert len(by_state["COMPLETE"]) + len(by_state["PRUNED"]) == 5  # exactly the trials asked for
    assert [t.number for t in by_state["FAIL"]] == [victim.number]  # the killed worker's trial, failed once
    failed = by_state["FAIL"][0]
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == victim.number]  # queued again...
    assert len(retry) == 1 and retry[0].state.name == "COMPLETE"
    assert failed.params and retry[0].params == failed.params  # ...with the same architecture
    assert retry[0].user_attrs["worker"].endswith(f":{b.pid}#1")  # taken over by the surviving worker
