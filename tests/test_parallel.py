"""Data-parallel distillation: 2 Gloo processes under torchrun give the images of 1 process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nasdistill.cli import main
from nasdistill.data import load_proxy

REPO = Path(__file__).resolve().parent.parent
DM = ["--method", "dm", "--iterations", "6", "--set", "batch_real=16", "--set", "net=D1-W32-relu-batchnorm-avgpool"]
DSA = ["--method", "dsa", "--iterations", "3", "--set", "batch_real=16", "--set", "outer_loop=2", "--set",
       "inner_loop=2", "--set", "net=D1-W32-relu-instancenorm-avgpool"]
MTT = ["--method", "mtt", "--iterations", "3", "--set", "trajectories=2", "--set", "syn_steps=4", "--set",
       "expert_epochs=1", "--set", "max_start_epoch=2", "--set", "num_experts=2", "--set", "train_epochs=2",
       "--set", "build_experts=true", "--set", "net=D1-W32-relu-instancenorm-avgpool"]
SRE2L = ["--method", "sre2l", "--iterations", "6", "--set", "teacher=D2-W32-relu-batchnorm-avgpool",
         "--set", "teacher_epochs=2"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(argv: list[str]) -> subprocess.CompletedProcess:
    # the same NASDISTILL_HOME as this process: sre2l's teacher and mtt's experts, trained here, are reused there
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "NASDISTILL_PROGRESS": "0"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), "-m", "nasdistill.cli", *argv]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("method", [DM, DSA, MTT, SRE2L], ids=["dm", "dsa", "mtt", "sre2l"])
def test_two_gloo_processes_give_the_images_of_one(method, tmp_path):
    base = ["distill", "--data", "digits", "--ipc", "2", *method, "--device", "cpu", "--no-progress"]
    assert main([*base, "--out", str(tmp_path / "one"), "--store", str(tmp_path / "store1")]) == 0
    done = _torchrun([*base, "--out", str(tmp_path / "two"), "--store", str(tmp_path / "store2")])
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = load_proxy(tmp_path / "one" / "proxy.safetensors"), load_proxy(tmp_path / "two" / "proxy.safetensors")
    assert one.key == two.key
    assert torch.allclose(one.images, two.images, atol=1e-4), (one.images - two.images).abs().max()
    assert torch.allclose(one.labels.float(), two.labels.float(), atol=1e-4)
    assert len(list((tmp_path / "store2").glob("*.safetensors"))) == 1  # written once
    assert done.stdout.count("proxy: ") == 1


def _launch(argv: list[str], world: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "NASDISTILL_PROGRESS": "0"}
    head = ([sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(world),
             "--master-addr", "127.0.0.1", "--master-port", str(_free_port())] if world > 1 else [sys.executable])
    return subprocess.Popen([*head, "-m", "nasdistill.cli", *argv], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (torchrun starts each rank in a session of its own, so
    killing the launcher's process group would leave the ranks running)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(parents.get(p, []))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("worlds", [(2, 1), (1, 2)], ids=["2-then-1", "1-then-2"])
def test_a_run_killed_under_one_world_size_resumes_under_another(worlds, tmp_path):
    """The checkpoint does not depend on the world size: killed (SIGKILL to the whole launch) after
    a checkpoint under ``worlds[0]`` processes, finished under ``worlds[1]``: the images of an
    undisturbed one-process run (to float tolerance: ranks sum their classes' gradients in another order)."""
    # 120 iterations: the first checkpoint (iteration 5) comes seconds before the end
    flags = ["distill", "--data", "digits", "--ipc", "2", "--method", "dm", "--iterations", "120", "--set",
             "batch_real=16", "--set", "net=D1-W32-relu-batchnorm-avgpool", "--set", "checkpoint_every=5",
             "--device", "cpu", "--no-progress"]
    calm = _launch([*flags, "--out", str(tmp_path / "calm"), "--store", str(tmp_path / "s1")], 1)  # goes on beside
    try:
        _kill_and_resume(flags, worlds, tmp_path)
        assert calm.wait(timeout=600) == 0, calm.communicate()[1][-3000:]
    finally:
        if calm.poll() is None:
            calm.kill()
            calm.wait()
    want, got = load_proxy(tmp_path / "calm" / "proxy.safetensors"), load_proxy(tmp_path / "killed" / "proxy.safetensors")
    assert torch.allclose(got.images, want.images, atol=1e-4), (got.images - want.images).abs().max()


def _kill_and_resume(flags: list[str], worlds: tuple[int, int], tmp_path: Path) -> None:
    """Run ``flags`` under ``worlds[0]`` processes, kill the whole launch after its first checkpoint
    and finish under ``worlds[1]``."""
    import signal
    import time

    out = tmp_path / "killed"
    args = [*flags, "--out", str(out), "--store", str(tmp_path / "s2")]
    first = _launch(args, worlds[0])
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and first.poll() is None and not any((out / "checkpoints").glob("*.ckpt")):
        time.sleep(0.02)
    assert first.poll() is None, "the run ended before it could be killed"
    procs = _tree(first.pid)
    for pid in procs:  # the launcher and every rank, stopped first so that none finishes in between
        os.kill(pid, signal.SIGSTOP)
    for pid in procs:
        os.kill(pid, signal.SIGKILL)
    first.wait(timeout=30)
    assert not (out / "proxy.safetensors").exists() and not list((tmp_path / "s2").glob("*.safetensors"))
    second = _launch(args, worlds[1])
    said, err = second.communicate(timeout=600)
    assert second.returncode == 0, err[-3000:]
    assert "resumed from iteration" in said, said


def test_each_rank_matches_its_share_of_the_classes(digits, monkeypatch):
    """dsa under 2 ranks: rank 0's and rank 1's matching losses (the same random stream) add up to
    the one-process loss, and neither is the whole: the work is split, not repeated."""
    from nasdistill._seed import generator
    from nasdistill.distill import get_method, parallel
    from nasdistill.distill.base import FitContext

    d = get_method("dsa", ipc=2, iterations=1, batch_real=16, net="D1-W32-relu-instancenorm-avgpool")
    d._init_state(digits, FitContext())
    net = d.nets.build(d.seed, 0, digits, d.device).train()
    params = [p for p in net.parameters() if p.requires_grad]

    def loss_as(rank, size):
        monkeypatch.setattr(parallel, "world", lambda: (rank, size))
        return float(d._matching_loss(net, params, digits, generator(7)).detach())

    whole, r0, r1 = loss_as(0, 1), loss_as(0, 2), loss_as(1, 2)
    assert abs(r0 + r1 - whole) < 1e-4 * whole and 0 < r0 < whole and 0 < r1 < whole, (whole, r0, r1)


class _Reads:
    """A training-image tensor that records which images are read (by index tensor)."""

    def __init__(self, x: torch.Tensor):
        self.x, self.read = x, []

    def __getitem__(self, idx):
        self.read.append(torch.as_tensor(idx).flatten())
        return self.x[idx]

    def __len__(self):
        return len(self.x)

    def __getattr__(self, name):
        return getattr(self.x, name)


@pytest.mark.parametrize("method", ["dm", "dsa"])
def test_a_rank_reads_only_its_classes_real_images_and_draws_the_same_stream(method, digits, monkeypatch):
    """Every rank draws every class's batch and augmentation (one random stream), but reads (and
    augments) the real images of its own classes only: rank 1 of 2 never touches an even class,
    and each rank's loss is what it was when every rank read everything (the split's sum: the whole)."""
    import dataclasses

    from nasdistill._seed import generator
    from nasdistill.distill import get_method, parallel
    from nasdistill.distill.base import FitContext

    net_id = "D1-W32-relu-instancenorm-avgpool"
    d = get_method(method, ipc=2, iterations=1, batch_real=16, net=net_id, augment="dsa")
    d._init_state(digits, FitContext())
    net = d.nets.build(d.seed, 0, digits, d.device).train()
    params = [p for p in net.parameters() if p.requires_grad]

    def loss_as(rank: int, size: int) -> tuple[float, set, int]:
        monkeypatch.setattr(parallel, "world", lambda: (rank, size))
        reads = _Reads(digits.x_train)
        data = dataclasses.replace(digits, x_train=reads)
        g = generator(7)
        if method == "dsa":
            loss = float(d._matching_loss(net, params, data, g).detach())
        else:
            pairs = list(d._class_batches(data, g, keep=parallel.mine))
            loss = sum(float(((net.embed(r).mean(0) - net.embed(s).mean(0)) ** 2).sum().detach()) for r, s in pairs)
        after = int(torch.randint(2**31, (1,), generator=g))  # where the stream stands afterwards
        read = set(digits.y_train[torch.cat(reads.read)].tolist()) if reads.read else set()
        return loss, read, after

    (whole, read_all, s_all), (r0, read0, s0), (r1, read1, s1) = loss_as(0, 1), loss_as(0, 2), loss_as(1, 2)
    assert read_all == set(range(10)) and read0 == {0, 2, 4, 6, 8} and read1 == {1, 3, 5, 7, 9}
    assert s_all == s0 == s1  # every rank consumed the same draws
    assert abs(r0 + r1 - whole) < 1e-4 * whole and 0 < r0 < whole and 0 < r1 < whole, (whole, r0, r1)
