"""Every bad input ends in one line: exit status 2, one line on stderr, no traceback, nothing written.

Table-driven over every command (distill, search, validate, run, experts, report). Each case runs
in-process through :func:`nasdistill.cli.main` in a fresh working folder with a fresh
``$NASDISTILL_HOME``, and checks that no file appeared there, in ``--out`` or beside the inputs.
A few cases run as real subprocesses, to check the same holds for the installed entry point.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from nasdistill.cli import main

ROOT = Path(__file__).resolve().parents[1]
NOWHERE = "/nonexistent-nasdistill/x"

#: Placeholders in the argument lists, replaced by the fixture files' paths.
#: {proxy} a good proxy, {nan} a proxy with a NaN pixel, {garbage} a file that is not a proxy,
#: {sidecar} a proxy whose JSON sidecar names another method, {file} a plain text file,
#: {empty} an empty folder, {table} a reference table that is not JSON, {out} a fresh --out folder.
FAST = ["--no-progress", "--device", "cpu"]


def _proxy_training(cmd: str, base: list[str]) -> list[tuple[str, list[str]]]:
    """The proxy/full-data training flags every training command shares, each made bad."""
    cases = [
        ("lr-nan", ["--lr", "nan"]), ("lr-inf", ["--lr", "inf"]), ("lr-zero", ["--lr", "0"]),
        ("lr-negative", ["--lr", "-0.1"]), ("lr-text", ["--lr", "abc"]),
        ("augment-unknown", ["--augment", "bogus"]), ("augment-partly-unknown", ["--augment", "crop_bogus"]),
        ("batch-size-zero", ["--batch-size", "0"]), ("batch-size-negative", ["--batch-size", "-4"]),
        ("proxy-epochs-zero", ["--proxy-epochs", "0"]), ("proxy-steps-negative", ["--proxy-steps", "-1"]),
        ("proxy-epochs-and-steps", ["--proxy-epochs", "2", "--proxy-steps", "3"]),
        ("full-epochs-zero", ["--full-epochs", "0"]), ("full-batch-size-zero", ["--full-batch-size", "0"]),
        ("full-augment-unknown", ["--full-augment", "wobble"]),
        ("reference-store-malformed", ["--reference-store", "::bad::"]),
        ("reference-store-bad-url", ["--reference-store", "sqlite://:bad:/x"]),
        ("reference-store-folder", ["--reference-store", "{empty}"]),
        ("reference-store-under-file", ["--reference-store", "{file}/refs.db"]),
        ("out-is-file", ["--out", "{file}"]), ("out-under-file", ["--out", "{file}/sub"]),
        ("seed-text", ["--seed", "abc"]), ("device-unknown", ["--device", "tpu9"]),
        ("device-unavailable", ["--device", "vulkan"]), ("device-meta", ["--device", "meta"]),
        ("unknown-flag", ["--no-such-flag"]),
    ]
    return [(f"{cmd}:{name}", [cmd, *base, *args]) for name, args in cases]


def _data_flags(cmd: str, base: list[str]) -> list[tuple[str, list[str]]]:
    cases = [
        ("data-unknown", ["--data", "nosuchdata"]), ("data-npz-missing", ["--data", f"npz:{NOWHERE}.npz"]),
        ("data-imagefolder-missing", ["--data", f"imagefolder:{NOWHERE}"]),
        ("data-npz-not-npz", ["--data", "npz:{file}"]),
        ("train-per-class-zero", ["--train-per-class", "0"]), ("test-per-class-zero", ["--test-per-class", "0"]),
        ("val-per-class-negative", ["--val-per-class", "-1"]), ("train-per-class-text", ["--train-per-class", "x"]),
        ("resolution-zero", ["--resolution", "0"]), ("stream-digits", ["--data", "digits", "--stream"]),
    ]
    return [(f"{cmd}:{name}", [cmd, *base, *args]) for name, args in cases]


def _method_flags(cmd: str) -> list[tuple[str, list[str]]]:
    cases = [
        ("method-unknown", ["--method", "dmm"]), ("ipc-zero", ["--ipc", "0"]), ("ipc-negative", ["--ipc", "-3"]),
        ("ipc-text", ["--ipc", "ten"]), ("iterations-negative", ["--iterations", "-1"]),
        ("init-unknown", ["--init", "zeros"]), ("budget-unknown", ["--budget", "huge"]),
        ("set-not-key-value", ["--set", "lr_img"]), ("set-empty-key", ["--set", "=3"]),
        ("set-unknown", ["--set", "lr_imgg=1"]), ("set-ipc", ["--set", "ipc=3"]), ("set-seed", ["--set", "seed=3"]),
        ("set-device", ["--set", "device=cpu"]),
        ("set-iterations-and-flag", ["--set", "iterations=3", "--iterations", "4"]),
        ("set-twice", ["--set", "lr_img=1", "--set", "lr_img=2"]),
        ("set-batch-negative", ["--set", "batch_real=-1"]), ("set-batch-zero", ["--set", "batch_real=0"]),
        ("set-batch-list", ["--set", "batch_real=[1,2]"]), ("set-batch-float", ["--set", "batch_real=2.5"]),
        ("set-lr-text", ["--set", "lr_img=abc"]), ("set-lr-nan", ["--set", "lr_img=nan"]),
        ("set-lr-zero", ["--set", "lr_img=0"]), ("set-lr-negative", ["--set", "lr_img=-1"]),
        ("set-lr-bool", ["--set", "lr_img=true"]), ("set-iterations-text", ["--set", "iterations=abc"]),
        ("set-iterations-none", ["--set", "iterations=none"]), ("set-momentum-one", ["--set", "momentum=1"]),
        ("set-init-unknown", ["--set", "init=zeros"]), ("set-augment-unknown", ["--set", "augment=bogus"]),
        ("set-space-unknown", ["--set", "space=nospace"]), ("set-net-unknown", ["--set", "net=nonsense"]),
        ("matching-space-unknown", ["--matching-space", "nospace"]),
        ("store-is-file", ["--store", "{file}"]),
        ("ipc-above-smallest-class", ["--ipc", "5000"]),
    ]
    return [(f"{cmd}:{name}", [cmd, *args]) for name, args in cases]


CASES: list[tuple[str, list[str]]] = []
CASES += _method_flags("distill")
CASES += _data_flags("distill", [])
CASES += _proxy_training("distill", [])
CASES += [(f"distill:{n}", ["distill", *a]) for n, a in [
    ("target-above-one", ["--target-spearman", "2"]), ("target-nan", ["--target-spearman", "nan"]),
    ("target-metric-alone", ["--target-metric", "spearman"]), ("target-ipcs-alone", ["--target-ipcs", "1,2"]),
    ("target-ipcs-text", ["--target-spearman", "0.5", "--target-ipcs", "a,b"]),
    ("target-budget-negative", ["--target-spearman", "0.5", "--target-budget", "-1"]),
    ("target-max-candidates-zero", ["--target-spearman", "0.5", "--target-max-candidates", "0"]),
    ("target-validate-archs-one", ["--target-spearman", "0.5", "--validate-archs", "1"]),
    ("target-bound-unknown", ["--target-spearman", "0.5", "--target-bound", "median"]),
    ("target-set-unknown", ["--target-spearman", "0.5", "--set", "nosuch=1"]),
    ("target-set-ipc", ["--target-spearman", "0.5", "--set", "ipc=2"]),
]]
CASES += _data_flags("search", ["--proxy", "{proxy}"])
CASES += _proxy_training("search", ["--proxy", "{proxy}"])
CASES += [(f"search:{n}", ["search", *a]) for n, a in [
    ("proxy-missing", ["--proxy", f"{NOWHERE}.safetensors"]), ("proxy-garbage", ["--proxy", "{garbage}"]),
    ("proxy-folder-without-one", ["--proxy", "{empty}"]),
    ("proxy-nan", ["--proxy", "{nan}"]), ("proxy-sidecar-disagrees", ["--proxy", "{sidecar}"]),
    ("proxy-flag-missing", []),
    ("trials-zero", ["--proxy", "{proxy}", "--trials", "0"]),
    ("workers-zero", ["--proxy", "{proxy}", "--workers", "0"]),
    ("worker-index-negative", ["--proxy", "{proxy}", "--worker-index", "-1"]),
    ("retrain-top-negative", ["--proxy", "{proxy}", "--retrain-top", "-1"]),
    ("sampler-unknown", ["--proxy", "{proxy}", "--sampler", "tpee"]),
    ("pruner-unknown", ["--proxy", "{proxy}", "--pruner", "sometimes"]),
    ("backend-unknown", ["--proxy", "{proxy}", "--backend", "hyperopt"]),
    ("storage-not-url", ["--proxy", "{proxy}", "--storage", "nonsense"]),
    ("objectives-unknown", ["--proxy", "{proxy}", "--objectives", "accuracy,beauty"]),
    ("space-unknown", ["--proxy", "{proxy}", "--space", "nospace"]),
    ("space-images-too-small", ["--proxy", "{proxy}", "--space", "backbones"]),  # 8x8 digits, 17 px needed
    ("space-file-missing", ["--proxy", "{proxy}", "--space", f"{NOWHERE}.py"]),
    ("grace-env-text", ["--proxy", "{proxy}", "@GRACE=abc"]),
    ("grace-env-zero", ["--proxy", "{proxy}", "@GRACE=0"]),
]]
CASES += _data_flags("validate", ["--proxy", "{proxy}"])
CASES += _proxy_training("validate", ["--proxy", "{proxy}"])
CASES += [(f"validate:{n}", ["validate", *a]) for n, a in [
    ("proxy-missing", ["--proxy", f"{NOWHERE}.safetensors"]), ("proxy-garbage", ["--proxy", "{garbage}"]),
    ("proxy-folder-without-one", ["--proxy", "{empty}"]),
    ("proxy-nan", ["--proxy", "{nan}"]), ("proxy-sidecar-disagrees", ["--proxy", "{sidecar}"]),
    ("second-proxy-garbage", ["--proxy", "{proxy}", "--proxy", "{garbage}"]),
    ("archs-one", ["--proxy", "{proxy}", "--archs", "1"]), ("bootstrap-zero", ["--proxy", "{proxy}", "--bootstrap", "0"]),
    ("top-k-zero", ["--proxy", "{proxy}", "--top-k", "0"]), ("top-k-text", ["--proxy", "{proxy}", "--top-k", "a,b"]),
    ("top-k-fraction-above-one", ["--proxy", "{proxy}", "--top-k", "1.5"]),
    ("workers-zero", ["--proxy", "{proxy}", "--workers", "0"]),
    ("zero-cost-batch-zero", ["--proxy", "{proxy}", "--zero-cost-batch", "0"]),
    ("proxy-repeats-zero", ["--proxy", "{proxy}", "--proxy-repeats", "0"]),
    ("vectorize-repeats-without-repeats", ["--proxy", "{proxy}", "--vectorize-repeats"]),
    ("space-unknown", ["--proxy", "{proxy}", "--space", "nospace"]),
    ("space-images-too-small", ["--proxy", "{proxy}", "--space", "backbones"]),  # 8x8 digits, 17 px needed
    ("reference-table-missing", ["--proxy", "{proxy}", "--reference", f"{NOWHERE}.json"]),
    ("home-read-only", ["--proxy", "{proxy}", "@READONLY_HOME"]),
    ("home-is-file", ["--proxy", "{proxy}", "@HOME_IS_FILE"]),
    ("out-read-only", ["--proxy", "{proxy}", "--out", "{out}", "@READONLY_OUT"]),
    ("grace-env-text", ["--proxy", "{proxy}", "@GRACE=soon"]),
]]
CASES += _method_flags("run")
CASES += _data_flags("run", [])
CASES += _proxy_training("run", [])
CASES += [(f"run:{n}", ["run", *a]) for n, a in [
    ("trials-zero", ["--trials", "0"]), ("archs-one", ["--archs", "1"]), ("eval-seeds-zero", ["--eval-seeds", "0"]),
    ("bootstrap-zero", ["--bootstrap", "0"]), ("top-k-zero", ["--top-k", "0"]), ("workers-zero", ["--workers", "0"]),
    ("sampler-unknown", ["--sampler", "tpee"]), ("storage-not-url", ["--storage", "nonsense"]),
    ("home-read-only", ["@READONLY_HOME"]), ("home-is-file", ["@HOME_IS_FILE"]),
    ("out-read-only", ["--out", "{out}", "@READONLY_OUT"]),
    ("out-uncreatable", ["--out", "{out}/run", "@UNCREATABLE_OUT"]),
    ("space-images-too-small", ["--space", "backbones"]),  # refused before the proxy is distilled
]]
CASES += [(f"experts:{n}", ["experts", *a]) for n, a in [
    ("method-without-experts", ["--method", "dm"]), ("method-unknown", ["--method", "mttt"]),
    ("num-experts-zero", ["--num-experts", "0"]), ("train-epochs-zero", ["--train-epochs", "0"]),
    ("lr-nan", ["--lr", "nan"]), ("lr-zero", ["--lr", "0"]), ("lr-negative", ["--lr", "-1"]),
    ("batch-size-zero", ["--batch-size", "0"]), ("augment-unknown", ["--augment", "zz"]),
    ("net-unknown", ["--net", "nonsense"]), ("space-unknown", ["--space", "nospace"]),
    ("budget-unknown", ["--budget", "big"]), ("out-is-file", ["--out", "{file}"]),
    ("data-unknown", ["--data", "nosuchdata"]), ("train-per-class-zero", ["--train-per-class", "0"]),
    ("home-read-only", ["@READONLY_HOME"]), ("home-is-file", ["@HOME_IS_FILE"]),
    ("out-read-only", ["--out", "{out}", "@READONLY_OUT"]),
]]
CASES += [(f"distill:{n}", ["distill", *a]) for n, a in [
    ("dsa-precision-unknown", ["--method", "dsa", "--set", "precision=fp8"]),
    ("mtt-precision-unknown", ["--method", "mtt", "--set", "precision=half", "--set", "build_experts=true"]),
    ("mtt-trajectories-zero", ["--method", "mtt", "--set", "trajectories=0", "--set", "build_experts=true"]),
    ("mtt-trajectories-float", ["--method", "mtt", "--set", "trajectories=1.5", "--set", "build_experts=true"]),
]]
CASES += [(f"report:{n}", ["report", *a]) for n, a in [
    ("missing-folder", [NOWHERE]), ("a-file", ["{file}"]), ("empty-folder", ["{empty}"]), ("no-folder", []),
    ("out-missing-folder", ["--out", NOWHERE]), ("run-dir-and-another-out", ["{empty}", "--out", "{file}"]),
    ("unknown-flag", ["{empty}", "--no-such-flag"]),
]]
CASES += [("top:unknown-command", ["frobnicate"]), ("list:unknown", ["list", "things"])]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """The files the cases point at, made once (outside every case's watched folders)."""
    from nasdistill.data import Proxy, load_dataset
    from nasdistill.distill import distill

    d = tmp_path_factory.mktemp("inputs")
    dataset = load_dataset("digits", train_per_class=20, test_per_class=5)
    proxy = distill(dataset, "random", ipc=2, store=False)
    proxy.save(d / "proxy.safetensors")
    nan = Proxy(proxy.images.clone(), proxy.labels.clone(), dict(proxy.meta))
    nan.images[0, 0, 0, 0] = float("nan")
    nan.save(d / "nan.safetensors")
    (d / "garbage.safetensors").write_bytes(b"\x00\x01 not a safetensors file" * 10)
    proxy.save(d / "sidecar.safetensors")
    side = d / "sidecar.json"
    side.write_text(side.read_text().replace('"method": "random"', '"method": "dm"'))
    (d / "notes.txt").write_text("a file, not a folder\n")
    (d / "empty").mkdir()
    (d / "table.json").write_text("{ not json")
    return {"proxy": d / "proxy.safetensors", "nan": d / "nan.safetensors", "garbage": d / "garbage.safetensors",
            "sidecar": d / "sidecar.safetensors", "file": d / "notes.txt", "empty": d / "empty",
            "table": d / "table.json", "dir": d}


def _files(*roots: Path) -> set[str]:
    return {str(p) for r in roots if r.exists() for p in r.rglob("*")}


def _refusing(target: Path, real):
    """``os.access`` that calls ``target`` unwritable."""
    return lambda p, mode, **kw: False if Path(p) == target else real(p, mode, **kw)


def _failing_under(target: Path, real):
    """``tempfile.mkdtemp`` that fails with EROFS in ``target``."""
    def mkdtemp(*args, dir=None, **kw):
        if dir is not None and Path(dir) == target:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real(*args, dir=dir, **kw)
    return mkdtemp


def _prepare(argv: list[str], inputs: dict, tmp_path: Path, monkeypatch) -> list[str]:
    """Fill the placeholders, apply the ``@`` environment markers, return the argument list."""
    out = tmp_path / "out"
    paths = {k: str(v) for k, v in inputs.items()} | {"out": str(out)}
    args = []
    for a in argv:
        if a.startswith("@GRACE="):
            monkeypatch.setenv("NASDISTILL_GRACE_PERIOD", a.split("=", 1)[1])
        elif a == "@HOME_IS_FILE":
            monkeypatch.setenv("NASDISTILL_HOME", str(inputs["file"]))
        elif a == "@UNCREATABLE_OUT":
            # os.access says yes, creating a folder fails (root on /proc, a full or read-only mount)
            out.mkdir(parents=True, exist_ok=True)
            monkeypatch.setattr(tempfile, "mkdtemp", _failing_under(out, tempfile.mkdtemp))
        elif a in ("@READONLY_HOME", "@READONLY_OUT"):
            # Read-only as os.access sees it (tests may run as root, whom chmod does not stop).
            target = Path(os.environ["NASDISTILL_HOME"]) if a == "@READONLY_HOME" else out
            target.mkdir(parents=True, exist_ok=True)
            monkeypatch.setattr(os, "access", _refusing(target, os.access))
        else:
            args.append(a.format(**paths))
    return args


@pytest.mark.parametrize("argv", [c[1] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_writes_nothing(argv, inputs, tmp_path, monkeypatch, capsys):
    cwd, home = tmp_path / "cwd", tmp_path / "home"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("NASDISTILL_HOME", str(home))
    monkeypatch.delenv("NASDISTILL_GRACE_PERIOD", raising=False)
    args = _prepare(argv, inputs, tmp_path, monkeypatch)
    if args and args[0] in ("distill", "search", "validate", "run", "experts"):
        args += [a for a in FAST if a not in args] if "--device" not in args else ["--no-progress"]
    before = _files(tmp_path, inputs["dir"])
    code = main(args)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, (code, err)
    assert len(lines) == 1, err
    assert "Traceback" not in err and "weights_only" not in err
    assert lines[0].startswith("nasdistill"), err
    assert _files(tmp_path, inputs["dir"]) == before, sorted(_files(tmp_path, inputs["dir"]) - before)


def test_there_are_enough_cases_over_every_command():
    assert len(CASES) >= 120
    commands = {c[1][0] for c in CASES if c[1]}
    assert {"distill", "search", "validate", "run", "experts", "report"} <= commands


@pytest.mark.parametrize("argv", [
    ["distill", "--set", "batch_real=-1"],
    ["validate", "--proxy", "{garbage}", "--reference-store", "::bad::"],
    ["search", "--proxy", "{proxy}", "--augment", "bogus"],
], ids=["distill", "validate", "search"])
@pytest.mark.slow
def test_bad_input_as_a_process(argv, inputs, tmp_path):
    """The same promise through ``python -m nasdistill.cli``: exit 2, one line, nothing written."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = {**os.environ, "NASDISTILL_HOME": str(tmp_path / "home"), "PYTHONPATH": str(ROOT)}
    args = [a.format(**{k: str(v) for k, v in inputs.items()}) for a in argv]
    done = subprocess.run([sys.executable, "-m", "nasdistill.cli", *args, "--no-progress"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr, done.stderr
    assert not any(tmp_path.rglob("*.db")) and list(cwd.iterdir()) == [] and not (tmp_path / "home").exists()
    assert not (cwd / "::bad::").exists()


def test_a_proxy_with_nan_is_refused_on_load(inputs):
    from nasdistill.data import load_proxy
    from nasdistill.errors import ProxyError

    with pytest.raises(ProxyError):
        load_proxy(inputs["nan"])
    assert torch.isfinite(load_proxy(inputs["proxy"]).images).all()
