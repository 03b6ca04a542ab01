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
SRE2L = ["--method", "sre2l", "--iterations", "6", "--set", "teacher=D2-W32-relu-batchnorm-avgpool",
         "--set", "teacher_epochs=2"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(argv: list[str]) -> subprocess.CompletedProcess:
    # the same NASDISTILL_HOME as this process: sre2l's teacher, trained here, is reused there
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "NASDISTILL_PROGRESS": "0"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), "-m", "nasdistill.cli", *argv]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("method", [DM, SRE2L], ids=["dm", "sre2l"])
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
