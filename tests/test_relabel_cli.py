"""``--relabel TEACHER``: every method's proxy can carry a teacher's soft labels, from the CLI and ``run``."""

from __future__ import annotations

import json

import pytest
import torch

from nasdistill.cli import main
from nasdistill.data import load_proxy

TEACHER = "D2-W32-relu-instancenorm-avgpool"


@pytest.mark.parametrize("method", ["random", "dm"])
def test_distill_relabel_writes_the_soft_proxy_and_records_the_teacher(method, tmp_path, capsys):
    out = tmp_path / method
    extra = ["--iterations", "4", "--set", "batch_real=16", "--set", "net=D1-W32-relu-instancenorm-avgpool"] \
        if method == "dm" else []
    argv = ["distill", "--data", "digits", "--method", method, "--ipc", "2", *extra, "--relabel", TEACHER,
            "--teacher-epochs", "2", "--temperature", "2", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    said = capsys.readouterr().out
    proxy = load_proxy(out / "proxy.safetensors")
    assert proxy.soft and proxy.labels.shape == (20, 10)
    assert torch.allclose(proxy.labels.sum(1), torch.ones(20), atol=1e-5)
    meta = json.loads((out / "proxy.json").read_text())
    assert meta["method"] == method and meta["relabel"]["teacher_arch"] == TEACHER
    assert meta["relabel"]["temperature"] == 2.0 and meta["relabel"]["teacher_train"]["epochs"] == 2
    assert meta["relabel"]["teacher_test_acc"] > 0.5 and "teacher " in said
    # the same command again reuses the stored proxy and the stored teacher: the same soft labels
    assert main(argv) == 0
    assert "(reused)" in capsys.readouterr().out
    assert torch.allclose(load_proxy(out / "proxy.safetensors").labels, proxy.labels, atol=1e-5)


def test_bad_teacher_is_one_line_error(tmp_path, capsys):
    argv = ["distill", "--data", "digits", "--method", "random", "--ipc", "1", "--relabel", "not-an-arch",
            "--out", str(tmp_path / "x"), "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nasdistill: error:")
    assert main(["distill", "--data", "digits", "--method", "random", "--relabel", TEACHER, "--teacher-epochs", "0",
                 "--out", str(tmp_path / "y")]) == 2


def test_run_passes_relabel_to_its_proxy(tmp_path):
    from nasdistill.pipeline import DataSpec, RunConfig, distill_step

    config = RunConfig(data=DataSpec("digits"), method="random", ipc=1, relabel=TEACHER, teacher_epochs=1)
    dataset = config.data.load()
    proxy = distill_step(dataset, config.method, ipc=config.ipc, out_dir=tmp_path, relabel=config.relabel,
                         teacher_epochs=config.teacher_epochs, temperature=config.temperature)
    assert proxy.soft and proxy.meta["relabel"]["teacher_arch"] == TEACHER
    assert load_proxy(tmp_path / "proxy.safetensors").soft
