"""mtt (matching training trajectories) and its cached expert buffer, on real data."""

from __future__ import annotations

import json
import re
import shlex

import pytest
import torch
from safetensors.torch import load_file

from nasdistill.cli import main
from nasdistill.distill import distill, get_method
from nasdistill.distill import experts as experts_mod
from nasdistill.distill.experts import ExpertBuffer
from nasdistill.errors import ConfigError

TINY_NET = "D1-W32-relu-instancenorm-avgpool"
SMALL_NET = "D3-W32-relu-instancenorm-avgpool"
#: A digits buffer small enough to build in a second or two.
TINY_BUFFER = dict(num_experts=3, train_epochs=2, batch_size=32, net=TINY_NET)


def _files(folder):
    return sorted(p.name for p in folder.iterdir())


def test_expert_buffer_is_built_once_then_reused(digits, tmp_path, monkeypatch):
    buf = ExpertBuffer(**TINY_BUFFER, root=tmp_path).build(digits, progress=False)
    assert buf.trained_ == [0, 1, 2] and buf.reused_ == [] and buf.dir_ == tmp_path / buf.key(digits)
    # stored without pickle: one safetensors file per expert plus a JSON manifest
    assert _files(buf.dir_) == ["expert_000.safetensors", "expert_001.safetensors", "expert_002.safetensors",
                                "manifest.json"]
    manifest = json.loads((buf.dir_ / "manifest.json").read_text())
    tensors = load_file(buf.dir_ / "expert_001.safetensors")
    assert sorted(tensors) == ["epoch_000", "epoch_001", "epoch_002"]
    assert all(t.shape == (manifest["num_params"],) and t.dtype == torch.float32 for t in tensors.values())
    # the trajectory starts at the seeded initialisation and moves every epoch; fetch reads it back
    init = torch.cat([p.detach().reshape(-1) for p in buf.network(digits, 1).parameters()])
    assert torch.equal(tensors["epoch_000"], init)
    assert not torch.equal(tensors["epoch_001"], tensors["epoch_000"])
    assert not torch.equal(tensors["epoch_002"], tensors["epoch_001"])
    start, target = buf.fetch(1, 0, 2)
    assert torch.equal(start, tensors["epoch_000"]) and torch.equal(target, tensors["epoch_002"])
    assert buf.trajectory(2).shape == (3, manifest["num_params"])
    # experts are distinct networks that learned the task
    assert not torch.equal(buf.trajectory(0)[0], buf.trajectory(1)[0])
    assert all(e["test_acc"] > 0.5 for e in manifest["experts"]), manifest["experts"]
    assert all(e["train_losses"][-1] < e["train_losses"][0] for e in manifest["experts"])

    stamps = {p.name: p.stat().st_mtime_ns for p in buf.dir_.iterdir()}

    def no_training(*args, **kwargs):
        raise AssertionError("a complete buffer was trained again")

    monkeypatch.setattr(experts_mod, "train", no_training)
    again = ExpertBuffer(**TINY_BUFFER, root=tmp_path).build(digits, progress=False)
    assert again.trained_ == [] and again.reused_ == [0, 1, 2] and again.dir_ == buf.dir_
    assert {p.name: p.stat().st_mtime_ns for p in buf.dir_.iterdir()} == stamps
    assert torch.equal(again.trajectory(1), buf.trajectory(1))
    # any setting that changes the experts changes the key; the device does not
    for change in ({"num_experts": 2}, {"train_epochs": 3}, {"lr": 0.02}, {"seed": 1}, {"net": SMALL_NET},
                   {"augment": None}):
        assert ExpertBuffer(**{**TINY_BUFFER, **change}, root=tmp_path).key(digits) != buf.key(digits), change
    assert ExpertBuffer(**TINY_BUFFER, device="cuda").key(digits) == buf.key(digits)


def test_interrupted_build_keeps_finished_experts_and_resumes(digits, tmp_path, monkeypatch):
    real_train = experts_mod.train
    calls = []

    def crash_on_second_expert(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_train(*args, **kwargs)

    monkeypatch.setattr(experts_mod, "train", crash_on_second_expert)
    with pytest.raises(KeyboardInterrupt):
        ExpertBuffer(**TINY_BUFFER, root=tmp_path).build(digits, progress=False)
    folder = tmp_path / ExpertBuffer(**TINY_BUFFER).key(digits)
    assert _files(folder) == ["expert_000.safetensors"]  # finished expert kept, nothing half-written
    kept = (folder / "expert_000.safetensors").read_bytes()
    assert not ExpertBuffer(**TINY_BUFFER, root=tmp_path).is_complete(digits)

    monkeypatch.setattr(experts_mod, "train", real_train)
    resumed = ExpertBuffer(**TINY_BUFFER, root=tmp_path).build(digits, progress=False)
    assert resumed.reused_ == [0] and resumed.trained_ == [1, 2] and resumed.is_complete(digits)
    assert (folder / "expert_000.safetensors").read_bytes() == kept
    # resuming gives the same trajectories as one uninterrupted build
    fresh = ExpertBuffer(**TINY_BUFFER, root=tmp_path / "fresh").build(digits, progress=False)
    for i in range(3):
        assert torch.equal(resumed.trajectory(i), fresh.trajectory(i)), i


# --- mtt -------------------------------------------------------------------------------------------
def _mtt_settings(root, **changes) -> dict:
    """mtt on digits against a tiny buffer in ``root``."""
    return {"num_experts": 2, "train_epochs": 3, "batch_train": 64, "net": TINY_NET, "expert_epochs": 2,
            "max_start_epoch": 2, "syn_steps": 4, "experts_dir": str(root), **changes}


def test_mtt_without_experts_says_how_to_build_them(digits, tmp_path):
    m = get_method("mtt", ipc=1, iterations=2, **_mtt_settings(tmp_path))
    with pytest.raises(ConfigError, match="nasdistill experts") as err:
        m.fit(digits, progress=False)
    msg = str(err.value)
    assert "\n" not in msg and "--set build_experts=true" in msg
    assert "--num-experts 2 --train-epochs 3 --net D1-W32-relu-instancenorm-avgpool" in msg and "--batch-size 64" in msg
    assert not list(tmp_path.iterdir()), "a refused run wrote files"
    # settings that cannot work are refused before any work
    with pytest.raises(ConfigError, match="max_start_epoch"):
        get_method("mtt", ipc=1, **_mtt_settings(tmp_path, max_start_epoch=3)).check(digits)
    with pytest.raises(ConfigError, match="syn_steps"):
        get_method("mtt", ipc=1, **_mtt_settings(tmp_path, syn_steps=0)).check(digits)
    with pytest.raises(ConfigError, match="'convnet'"):
        get_method("mtt", ipc=1, **_mtt_settings(tmp_path, net="D3-W32-relu-nonorm-avgpool")).check(digits)


def test_mtt_learns_lr_resumes_and_stores_it(digits, tmp_path, monkeypatch):
    kw = dict(ipc=2, iterations=8, seed=3, checkpoint_every=4, **_mtt_settings(tmp_path / "experts"))
    reference = get_method("mtt", build_experts=True, **kw).fit(digits, progress=False)
    assert reference.images_.shape == (20, 1, 8, 8) and torch.bincount(reference.labels_).tolist() == [2] * 10
    assert reference.syn_lr_ != pytest.approx(0.01, rel=1e-3) and reference.syn_lr_ > 0
    assert not torch.equal(reference.images_, digits.x_train[reference._select_real(digits)])
    proxy = reference.to_proxy()
    assert proxy.meta["syn_lr"] == reference.syn_lr_ and proxy.meta["experts"]["num_experts"] == 2
    # build_experts and experts_dir do not change what is distilled, so not the key either
    assert reference.key(digits) == get_method("mtt", **{**kw, "experts_dir": str(tmp_path)}).key(digits)

    # an interrupted run resumes to the same images and learned lr (the lr is checkpointed)
    from nasdistill.distill.methods.mtt import MatchingTrainingTrajectories as MTT

    real_step = MTT._step

    def crash_at_6(self, t, dataset, g):
        if t == 6:
            raise KeyboardInterrupt
        return real_step(self, t, dataset, g)

    monkeypatch.setattr(MTT, "_step", crash_at_6)
    with pytest.raises(KeyboardInterrupt):
        get_method("mtt", **kw).fit(digits, checkpoint_dir=tmp_path / "ckpt", progress=False)
    monkeypatch.setattr(MTT, "_step", real_step)
    resumed = get_method("mtt", **kw).fit(digits, checkpoint_dir=tmp_path / "ckpt", progress=False)
    assert resumed.resumed_from_ == 4
    assert resumed.history_ == pytest.approx(reference.history_)
    assert resumed.syn_lr_ == pytest.approx(reference.syn_lr_)
    assert torch.allclose(resumed.images_, reference.images_, atol=1e-6)

    # the stored proxy keeps the learned lr
    store = tmp_path / "store"
    first = distill(digits, "mtt", store=store, **kw)
    second = distill(digits, "mtt", store=store, **kw)
    assert not first.meta["reused"] and second.meta["reused"]
    assert second.meta["syn_lr"] == pytest.approx(reference.syn_lr_)


@pytest.mark.slow
def test_mtt_beats_random_on_mnist(mnist_small, beats_random):
    """MTT at 1 image per class vs a random image per class. Two width-32 experts trained for 4
    epochs (batch 128) are the trajectories; 40 iterations of 8 student steps match 2 of their epochs."""
    settings = dict(iterations=40, syn_steps=8, expert_epochs=2, max_start_epoch=2, num_experts=2, train_epochs=4,
                    batch_train=128, net=SMALL_NET)
    get_method("mtt", **settings).expert_buffer().build(mnist_small, progress=False)
    beats_random("mtt", margin=0.1, **settings)


# --- the `nasdistill experts` command ---------------------------------------------------------------
def test_experts_command_builds_the_buffer_mtt_asks_for(tmp_path, capsys):
    out = tmp_path / "experts"
    distill_argv = ["distill", "--data", "digits", "--method", "mtt", "--ipc", "1", "--iterations", "2",
                    "--set", "syn_steps=2", "--set", f"experts_dir={out}", "--budget", "cpu", "--no-progress",
                    "--store", str(tmp_path / "store"), "--out", str(tmp_path / "run")]
    assert main(distill_argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    command = re.search(r"`(nasdistill experts [^`]*)`", err).group(1)
    assert f"--store {out}" in command

    # the command the error names builds exactly the buffer mtt looks for
    argv = shlex.split(command)[1:] + ["--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    (folder,) = list(out.iterdir())
    assert f"expert buffer: {folder}" in printed and "2 trained now, 0 reused" in printed
    assert main(argv) == 0
    assert "0 trained now, 2 reused" in capsys.readouterr().out
    assert main(distill_argv) == 0
    assert (tmp_path / "run" / "proxy.safetensors").is_file()
    meta = json.loads((tmp_path / "run" / "proxy.json").read_text())
    assert meta["method"] == "mtt" and meta["syn_lr"] > 0


def test_the_distill_line_experts_prints_finds_the_buffer_of_a_slice(tmp_path, capsys):
    """experts on a slice (--train-per-class) printed a distill line without the slice, which then
    read the whole set and found no buffer (the buffer is keyed by the data's fingerprint)."""
    out = tmp_path / "experts"
    argv = ["experts", "--data", "digits", "--train-per-class", "40", "--num-experts", "1", "--train-epochs", "2",
            "--net", "D1-W32-relu-instancenorm-avgpool", "--store", str(out), "--no-progress"]
    assert main(argv) == 0
    line = re.search(r"matches it with: (nasdistill distill [^)]*)\)", capsys.readouterr().out).group(1)
    assert "--train-per-class 40" in line
    distill_argv = shlex.split(line)[1:] + ["--ipc", "1", "--iterations", "2", "--set", "syn_steps=2", "--set",
                                            "max_start_epoch=1", "--set", "expert_epochs=1", "--budget",
                                            "cpu", "--no-progress", "--out", str(tmp_path / "run")]
    assert main(distill_argv) == 0, capsys.readouterr().err
    assert (tmp_path / "run" / "proxy.safetensors").is_file()


def test_experts_command_documents_its_flags(capsys):
    from nasdistill.cli import build_parser

    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["experts", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--data", "--num-experts", "--train-epochs", "--net", "--lr", "--batch-size", "--augment", "--budget",
                 "--seed", "--device", "--out"):
        assert flag in text, flag
    actions = [a for a in build_parser()._subparsers._group_actions[0].choices["experts"]._actions]
    assert all(a.help for a in actions), [a.option_strings for a in actions if not a.help]


@pytest.mark.parametrize("argv, needle", [
    (["--num-experts", "0"], "--num-experts must be an integer >= 1"),
    (["--net", "D2-W7-relu-none-none"], "'convnet'"),
    (["--augment", "blur"], "unknown augmentation 'blur'"),
    (["--data", "minst"], "unknown dataset 'minst'"),
])
def test_experts_command_bad_input_is_one_line(argv, needle, tmp_path, capsys):
    out = tmp_path / "experts"
    code = main(["experts", "--data", "digits", "--train-epochs", "1", "--num-experts", "1", *argv,
                 "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert needle in err and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert not out.exists() or not [f for f in out.rglob("*") if f.is_file()]
