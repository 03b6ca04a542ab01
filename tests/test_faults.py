"""Injected faults: kill -9 mid-distillation, corrupt checkpoints / manifests / expert files / store
entries, and a full disk. Each ends in the same result as an undisturbed run, or in one line."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

from nasdistill.cli import main
from nasdistill.data import load_dataset, load_proxy
from nasdistill.distill import ProxyStore, distill, get_method
from nasdistill.distill.experts import ExpertBuffer
from nasdistill.errors import NasDistillWarning

ROOT = Path(__file__).resolve().parents[1]
NET = "D1-W32-relu-instancenorm-avgpool"
DM = dict(iterations=12, batch_real=16, net=NET, checkpoint_every=1)
DM_FLAGS = ["--method", "dm", "--iterations", "12", "--set", "batch_real=16", "--set", f"net={NET}",
            "--set", "checkpoint_every=1", "--train-per-class", "30", "--test-per-class", "5", "--ipc", "2",
            "--device", "cpu", "--no-progress", "--budget", "paper"]


@pytest.fixture(scope="module")
def small():
    return load_dataset("digits", train_per_class=30, test_per_class=5)


@pytest.fixture(scope="module")
def reference(small):
    """The proxy of an undisturbed run."""
    return distill(small, "dm", ipc=2, store=False, **DM)


def _env(tmp_path: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "NASDISTILL_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_kill_9_mid_distill_then_resume_gives_the_same_proxy(small, reference, tmp_path, monkeypatch):
    out = tmp_path / "out"
    ckpt_dir = out / "checkpoints"
    rng = random.Random(10)
    for _ in range(2):  # killed twice at seeded points, then finished
        proc = subprocess.Popen([sys.executable, "-m", "nasdistill.cli", "distill", *DM_FLAGS, "--out", str(out)],
                                env=_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None and not any(ckpt_dir.glob("*.ckpt")):
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    monkeypatch.setenv("NASDISTILL_HOME", str(tmp_path / "home"))
    assert main(["distill", *DM_FLAGS, "--out", str(out)]) == 0
    got = load_proxy(out / "proxy.safetensors")
    assert torch.equal(got.images, reference.images) and torch.equal(got.labels, reference.labels)


#: Every iterative method, small: (its command-line flags on the 30-a-class digits, ipc 2).
_POOL = '{"D1-W32-relu-instancenorm-avgpool": 0.9, "D1-W32-sigmoid-none-none": 0.3, "D2-W32-relu-none-maxpool": 0.7}'
ITERATIVE = {
    "dc": ["--iterations", "10", "--set", "batch_real=8", "--set", "outer_loop=2", "--set", "inner_loop=1"],
    "dsa": ["--iterations", "10", "--set", "batch_real=8", "--set", "outer_loop=2", "--set", "inner_loop=1"],
    "cafe": ["--iterations", "20", "--set", "batch_real=8", "--set", "inner_steps=1", "--set", "reinit_every=3"],
    "dd": ["--iterations", "20", "--set", "inner_steps=2", "--set", "inner_epochs=1", "--set", "batch_real=64"],
    "krr": ["--iterations", "20", "--set", "pool_size=2", "--set", "batch_real=64", "--set", "reset_every=3"],
    "mtt": ["--iterations", "20", "--set", "build_experts=true", "--set", "num_experts=1", "--set", "train_epochs=2",
            "--set", "syn_steps=2", "--set", "expert_epochs=1", "--set", "max_start_epoch=1"],
    "sre2l": ["--iterations", "300", "--set", "teacher=D2-W32-relu-batchnorm-avgpool", "--set", "teacher_epochs=1"],
    "rank": ["--iterations", "20", "--set", f"pool={_POOL}", "--set", "inner_steps=2", "--set", "augment=none",
             "--set", "batch_real=64"],
}
_NET_FREE = {"sre2l", "rank"}  # no matching network: sre2l has a teacher, rank trains its pool
_BUILDS_IN_HOME = {"mtt", "sre2l"}  # expert trajectories, a teacher: built once in NASDISTILL_HOME


def _flags(method: str) -> list[str]:
    net = [] if method in _NET_FREE else ["--set", f"net={NET}"]
    return ["--method", method, *ITERATIVE[method], *net, "--set", "checkpoint_every=1", "--train-per-class", "30",
            "--test-per-class", "5", "--ipc", "2", "--device", "cpu", "--no-progress", "--budget", "paper"]


def _cli(args: list[str], tmp_path: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "nasdistill.cli", *args], env=_env(tmp_path),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@contextlib.contextmanager
def _beside(args: list[str], tmp_path: Path):
    """A command-line run (one thread) going on beside the test's own work, on the other core; killed
    if the test ends before it does."""
    proc = _cli(args, tmp_path)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(ITERATIVE))
def test_kill_9_mid_distill_resumes_to_the_same_proxy_for_every_iterative_method(method, tmp_path):
    """Each method's checkpoint holds everything its next iteration reads (networks, optimisers,
    pools, learned rates): killed twice at seeded points, the run ends where an undisturbed one does."""
    flags = _flags(method)
    # two proxy stores, or the later runs would load the calm run's proxy; experts and teachers
    # (NASDISTILL_HOME) are shared: built by the calm run, reused by the others. Each process has one
    # thread: where nothing is shared, the killed runs go on beside the calm one, on the other core
    with _beside(["distill", *flags, "--store", str(tmp_path / "calm-store"), "--out", str(tmp_path / "calm")],
                 tmp_path) as calm:
        if method in _BUILDS_IN_HOME:
            assert calm.wait(timeout=600) == 0, calm.stderr.read()
        out = tmp_path / "killed"
        args = ["distill", *flags, "--store", str(tmp_path / "store"), "--out", str(out)]
        rng = random.Random(method)
        kills = 0
        for _ in range(2):  # each run is killed once it has written a checkpoint of its own, at a seeded delay
            started = time.time()
            proc = _cli(args, tmp_path)
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and proc.poll() is None and not any(
                    c.stat().st_mtime > started for c in (out / "checkpoints").glob("*.ckpt")):
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.1))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.wait(timeout=30)
        assert kills == 2, f"{method} finished before it could be killed: give it more iterations"
        last = _cli(args, tmp_path)
        assert last.wait(timeout=600) == 0, last.stderr.read()
        assert calm.wait(timeout=600) == 0, calm.stderr.read()
    want, got = load_proxy(tmp_path / "calm" / "proxy.safetensors"), load_proxy(out / "proxy.safetensors")
    assert torch.equal(got.images, want.images) and torch.equal(got.labels, want.labels)


def test_a_corrupt_checkpoint_is_discarded_with_one_warning(small, reference, tmp_path):
    method = get_method("dm", ipc=2, **DM)
    ckpt = tmp_path / f"dm-{method.key(small)}.ckpt"
    for junk in (b"", b"PK\x03\x04 not a torch file", b"\x80\x04\x95 pickled junk"):
        ckpt.write_bytes(junk)
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            proxy = distill(small, "dm", ipc=2, store=False, checkpoint_dir=tmp_path, **DM)
        ours = [w for w in seen if issubclass(w.category, NasDistillWarning)]
        assert len(ours) == 1 and "checkpoint" in str(ours[0].message)
        assert "weights_only" not in str(ours[0].message)
        assert torch.equal(proxy.images, reference.images)


def test_a_corrupt_checkpoint_through_the_command_line_is_one_warning_line(small, reference, tmp_path, monkeypatch,
                                                                           capsys):
    monkeypatch.setenv("NASDISTILL_HOME", str(tmp_path / "home"))
    key = get_method("dm", ipc=2, **DM).key(small)
    ckpt = tmp_path / "out" / "checkpoints" / f"dm-{key}.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"garbage")
    assert main(["distill", *DM_FLAGS, "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nasdistill: warning: checkpoint"), err
    assert torch.equal(load_proxy(tmp_path / "out" / "proxy.safetensors").images, reference.images)


def test_a_corrupt_store_entry_is_dropped_and_remade(small, reference, tmp_path):
    store = ProxyStore(tmp_path / "store")
    first = distill(small, "dm", ipc=2, store=store, **DM)
    path = store.path(first.key)
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])  # truncated
    again = distill(small, "dm", ipc=2, store=store, **DM)
    assert again.meta["reused"] is False and torch.equal(again.images, reference.images)
    assert store.get(first.key) is not None


def test_a_corrupt_expert_manifest_or_file_is_rebuilt_with_a_warning(small, tmp_path):
    settings = dict(num_experts=2, train_epochs=1, batch_size=32, net=NET, root=tmp_path)
    buf = ExpertBuffer(**settings).build(small, progress=False)
    traj = buf.trajectory(1)
    (buf.dir_ / "manifest.json").write_text("{ truncated")
    with pytest.warns(NasDistillWarning, match="manifest"):
        again = ExpertBuffer(**settings).build(small, progress=False)
    assert again.trained_ == [] and again.manifest_["key"] == buf.key(small)
    (buf.dir_ / "expert_001.safetensors").write_bytes(b"not safetensors")
    with pytest.warns(NasDistillWarning, match="expert file"):
        third = ExpertBuffer(**settings).build(small, progress=False)
    assert third.trained_ == [1] and torch.equal(third.trajectory(1), traj)


FULL_DISK = r"""
import resource, sys
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
from nasdistill.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_leaves_no_half_proxy(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-c", FULL_DISK, "distill", "--method", "random", "--ipc", "10",
                           "--device", "cpu", "--no-progress", "--out", str(out), "--store", str(tmp_path / "store")],
                          env=_env(tmp_path), capture_output=True, text=True, timeout=120)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr[-2000:]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "File too large" in lines[0] or "space" in lines[0], lines
    for folder in (out, tmp_path / "store"):
        names = {p.name for p in folder.glob("*")} if folder.exists() else set()
        stems = {n.rsplit(".", 1)[0] for n in names if n.endswith(".json")}
        assert all(f"{s}.safetensors" in names for s in stems), names  # no sidecar without its tensors
        assert not any(n.endswith(".tmp") for n in names), names


VALIDATE_FLAGS = ["--data", "digits", "--archs", "6", "--proxy-steps", "5", "--full-epochs", "1", "--batch-size", "64",
                  "--bootstrap", "20", "--top-k", "3", "--device", "cpu", "--no-progress", "--seed", "3"]


def _scores(folder: Path) -> tuple[dict, dict]:
    import json

    d = json.loads((folder / "validation.json").read_text())
    return d["reference"]["scores"], {c["name"]: c["scores"] for c in d["contenders"]}


@pytest.mark.slow
def test_kill_9_mid_validate_then_rerun_gives_the_same_result_and_each_reference_once(small, tmp_path, monkeypatch):
    import sqlalchemy as sa

    from nasdistill.validate import ReferenceStore

    proxy = get_method("random", ipc=2).fit(load_dataset("digits"), progress=False).to_proxy().save(tmp_path / "p")
    monkeypatch.setenv("NASDISTILL_HOME", str(tmp_path / "home"))
    # the undisturbed run, in a process of one thread beside the killed ones (the other core)
    db = tmp_path / "killed.db"
    argv = ["validate", "--proxy", str(proxy), *VALIDATE_FLAGS, "--reference-store", str(db),
            "--out", str(tmp_path / "killed")]
    rng = random.Random(11)
    with _beside(["validate", "--proxy", str(proxy), *VALIDATE_FLAGS, "--reference-store", str(tmp_path / "calm.db"),
                  "--out", str(tmp_path / "calm")], tmp_path) as calm:
        for stored_before_kill in (1, 3):  # killed twice at seeded points, after some results are stored
            proc = _cli(argv, tmp_path)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and proc.poll() is None:
                if db.is_file():
                    with ReferenceStore(db) as st:
                        if st.count() >= stored_before_kill:
                            break
                time.sleep(0.05)
            time.sleep(rng.uniform(0.0, 0.3))
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            assert not (tmp_path / "killed" / "validation.json").exists()  # it was killed mid-way, not after
        # the rerun takes over the killed run's claims once their heartbeat is 5 s old (60 by default)
        last = subprocess.run([sys.executable, "-m", "nasdistill.cli", *argv], capture_output=True, text=True,
                              env={**_env(tmp_path), "NASDISTILL_GRACE_PERIOD": "5"}, timeout=600)
        assert last.returncode == 0, last.stderr[-2000:]
        assert calm.wait(timeout=600) == 0, calm.stderr.read()
    assert _scores(tmp_path / "killed") == _scores(tmp_path / "calm")
    engine = sa.create_engine(f"sqlite:///{db}")
    with engine.connect() as conn:
        refs = conn.execute(sa.text("select count(*) from reference_results")).scalar_one()
        runs = conn.execute(sa.text("select count(*) from work_runs where task like 'ref:%' and stored")).scalar_one()
    engine.dispose()
    assert refs == 6 and runs == 6  # every reference computed and stored exactly once


def _study_trials(db: Path, name: str):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        return optuna.load_study(study_name=name, storage=f"sqlite:///{db}").get_trials()
    except Exception:  # not created yet, or the database is being created
        return None


def _trial_states(db: Path) -> list[tuple[int, str]]:
    """(number, state name) of every trial, read straight from the study's SQLite file, read-only: a
    poll of about a millisecond (``optuna.load_study`` takes tens, long enough to miss a short trial
    under load); empty while the file is absent, being created or locked. A RUNNING trial counts as
    ``RUNNING`` only once it is under way: its first heartbeat recorded and its architecture drawn
    (every parameter suggested, the ``arch`` attribute written); ``STARTING`` before."""
    import sqlite3
    from contextlib import closing

    if not db.is_file():
        return []
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.05)) as con:
            rows = con.execute("select t.number, t.state, exists(select 1 from trial_heartbeats h "
                               "where h.trial_id = t.trial_id) and exists(select 1 from trial_user_attributes u "
                               "where u.trial_id = t.trial_id and u.key = 'arch') from trials t").fetchall()
    except sqlite3.Error:
        return []
    return [(n, "STARTING" if state == "RUNNING" and not under_way else state) for n, state, under_way in rows]


@pytest.mark.slow
def test_kill_9_mid_search_then_rerun_finishes_the_exact_trials(tmp_path, monkeypatch):
    """``search`` killed twice (SIGKILL, mid-trial, at seeded points), then run again: the study ends
    with exactly the trials asked for, each killed trial failed once and re-run with the same
    architecture by the rerun (which says what it waits for), and every score equals an undisturbed
    run's score of the same architecture."""
    monkeypatch.setenv("NASDISTILL_HOME", str(tmp_path / "home"))
    assert main(["distill", *DM_FLAGS, "--out", str(tmp_path / "proxy")]) == 0
    proxy = tmp_path / "proxy" / "proxy.safetensors"
    flags = ["search", "--proxy", str(proxy), "--sampler", "random", "--trials", "6", "--proxy-steps", "30",
             "--batch-size", "16", "--study-name", "k", "--device", "cpu", "--no-progress"]
    db, rng, victims = tmp_path / "killed" / "study.db", random.Random(9), []
    with _beside([*flags, "--out", str(tmp_path / "calm")], tmp_path) as calm:
        for _ in range(2):
            after = sum(state == "COMPLETE" for _, state in _trial_states(db)) + rng.randint(0, 1)
            proc = _cli([*flags, "--out", str(tmp_path / "killed")], tmp_path)
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.005)
                trials = _trial_states(db)
                mine = lambda ts: [n for n, state in ts if state == "RUNNING" and n not in victims]  # noqa: E731
                if sum(state == "COMPLETE" for _, state in trials) < after or not mine(trials):
                    continue
                proc.send_signal(signal.SIGSTOP)  # a stopped process writes nothing: the trial dies unfinished
                running = mine(_trial_states(db))  # empty: stopped inside a write, the file locked
                if running:
                    victims.append(running[0])
                    break
                proc.send_signal(signal.SIGCONT)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        assert len(victims) == 2, "search finished before it could be killed mid-trial"
        # a grace period longer than the rerun's own trials take: it must wait for the killed trial's
        # heartbeat to age, and say so, before it takes that trial over
        env = {"NASDISTILL_GRACE_PERIOD": "40"}
        last = subprocess.run([sys.executable, "-m", "nasdistill.cli", *flags, "--out", str(tmp_path / "killed")],
                              env={**_env(tmp_path), **env}, capture_output=True, text=True, timeout=600)
        assert last.returncode == 0, last.stderr[-2000:]
        said = last.stdout + last.stderr
        assert calm.wait(timeout=600) == 0, calm.stderr.read()
    assert "trial(s) running elsewhere" in said and "heartbeat is 40 s old" in said, said

    trials = _study_trials(db, "k")
    states = [t.state.name for t in trials]
    assert states.count("COMPLETE") == 6 and "RUNNING" not in states and "WAITING" not in states
    failed = [t for t in trials if t.state.name == "FAIL"]
    assert sorted(t.number for t in failed) == sorted(victims)  # the killed trials, failed once each
    for f in failed:
        retry = [t for t in trials if t.system_attrs.get("failed_trial") == f.number]
        assert len(retry) == 1 and retry[0].state.name == "COMPLETE" and retry[0].params == f.params
    calm_scores = {t.user_attrs["arch_id"]: t.value for t in _study_trials(tmp_path / "calm" / "study.db", "k")}
    for t in trials:
        if t.state.name == "COMPLETE" and t.user_attrs["arch_id"] in calm_scores:
            assert t.value == calm_scores[t.user_attrs["arch_id"]]


def test_a_trial_orphaned_while_being_claimed_is_failed_and_rerun_at_once(tmp_path, monkeypatch, capfd):
    """A worker killed between creating its trial and recording the trial's first heartbeat (two
    writes) leaves a RUNNING trial no heartbeat marks stale. The next worker, under the claim lock,
    fails it and queues it again with the same parameters at once, not after a grace period: the
    study ends with exactly the trials asked for."""
    import optuna

    proxy = get_method("random", ipc=2).fit(load_dataset("digits"), progress=False).to_proxy().save(tmp_path / "p")
    flags = ["search", "--proxy", str(proxy), "--sampler", "random", "--proxy-steps", "3", "--batch-size", "16",
             "--study-name", "o", "--device", "cpu", "--no-progress", "--out", str(tmp_path / "s")]
    monkeypatch.setenv("NASDISTILL_HOME", str(tmp_path / "home"))

    assert main([*flags, "--trials", "2"]) == 0
    storage = f"sqlite:///{tmp_path / 's' / 'study.db'}"
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.load_study(study_name="o", storage=storage)
    # what the dead worker left a minute ago: Optuna's own ask (no heartbeat), parameters drawn
    orphan = study.ask(fixed_distributions=study.trials[0].distributions)
    orphan_params = study.trials[orphan.number].params
    _backdate(tmp_path / "s" / "study.db", orphan._trial_id, seconds=60)

    capfd.readouterr()
    # (NASDISTILL_GRACE_PERIOD is read when nasdistill is imported: this process has the default 60 s,
    # and a worker that waited for the orphan's heartbeat would say "running elsewhere")
    assert main([*flags, "--trials", "4"]) == 0
    said = "".join(capfd.readouterr())
    assert f"trial {orphan.number} was left RUNNING by a worker that died while claiming it" in said, said
    assert "running elsewhere" not in said
    trials = optuna.load_study(study_name="o", storage=storage).get_trials()
    states = [t.state.name for t in trials]
    assert states.count("COMPLETE") == 4 and "RUNNING" not in states and "WAITING" not in states, states
    assert trials[orphan.number].state.name == "FAIL"
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == orphan.number]
    assert len(retry) == 1 and retry[0].state.name == "COMPLETE" and retry[0].params == orphan_params


def _backdate(db: Path, trial_id: int, seconds: float) -> None:
    """Move a trial's start ``seconds`` into the past in an Optuna SQLite database."""
    import datetime
    import sqlite3

    with sqlite3.connect(db) as con:
        (start,) = con.execute("SELECT datetime_start FROM trials WHERE trial_id = ?", (trial_id,)).fetchone()
        earlier = datetime.datetime.fromisoformat(start) - datetime.timedelta(seconds=seconds)
        con.execute("UPDATE trials SET datetime_start = ? WHERE trial_id = ?", (earlier.isoformat(" "), trial_id))


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_a_fresh_trial_without_a_heartbeat_is_left_to_its_worker(tmp_path, monkeypatch):
    """A plain Optuna worker sharing the study takes no claim lock: between its ask (which samples)
    and its heartbeat thread's first beat, its trial has no heartbeat. Such a trial is failed as an
    orphan only once it is a heartbeat interval old; younger, it is left running for its worker."""
    import optuna

    from nasdistill.search.claiming import ClaimingStudy, claim_lock
    from nasdistill.search.storage import HEARTBEAT_INTERVAL, make_storage

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    storage = make_storage(url)
    optuna.create_study(study_name="p", storage=storage)
    plain = optuna.load_study(study_name="p", storage=url)
    dead, alive = plain.ask(), plain.ask()  # neither has a heartbeat; "dead" started long ago
    _backdate(tmp_path / "study.db", dead._trial_id, seconds=HEARTBEAT_INTERVAL + 30)
    study = ClaimingStudy("p", storage, optuna.samplers.RandomSampler(seed=0), optuna.pruners.NopPruner(),
                          target=4, lock=claim_lock(storage, "p"))
    claimed = study.ask()  # fails the orphans, under the lock, before it claims
    states = {t.number: t.state.name for t in study.get_trials(deepcopy=False)}
    assert states[dead.number] == "FAIL" and states[alive.number] == "RUNNING", states
    plain.tell(alive, 1.0)  # the plain worker finishes its trial as usual
    study.tell(claimed, 0.5)
    states = {t.number: t.state.name for t in study.get_trials(deepcopy=False)}
    assert states[alive.number] == states[claimed.number] == "COMPLETE"

    # clocks that disagree (a trial stamped in this worker's future): it is failed once this worker
    # has seen it without a heartbeat for an interval
    import nasdistill.search.claiming as claiming

    skewed = plain.ask()
    _backdate(tmp_path / "study.db", skewed._trial_id, seconds=-3600)
    other = study.ask()  # first sight of the skewed trial: left alone
    assert study.get_trials(deepcopy=False)[skewed.number].state.name == "RUNNING"
    study.tell(other, 0.5)
    real = claiming.time.monotonic
    monkeypatch.setattr(claiming.time, "monotonic", lambda: real() + HEARTBEAT_INTERVAL + 1)  # an interval later
    study.tell(study.ask(), 0.5)
    assert study.get_trials(deepcopy=False)[skewed.number].state.name == "FAIL"
