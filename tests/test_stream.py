"""Streaming datasets: a memory-mapped uint8 cache, resumable, read through a DataLoader, bounded memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from nasdistill.data import stream
from nasdistill.data.stream import StreamingDataset, build_cache, stream_evaluate, stream_train

REPO = Path(__file__).resolve().parent.parent


def make_tree(root: Path, n_train: int, n_test: int, side: int, classes: int = 3) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        for c in range(classes):
            d = root / split / f"c{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                base = np.full((side, side, 3), 40 + 80 * c, dtype=np.int16)
                arr = np.clip(base + rng.integers(-30, 30, (side, side, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(arr).save(d / f"{i:05d}.png")
    return root


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return make_tree(tmp_path_factory.mktemp("tree"), 40, 10, 12)


def test_cache_is_resumable_and_streams_class_batches_and_epochs(tree, tmp_path, monkeypatch):
    real = stream._decode_one
    calls = {"n": 0}

    def flaky(*a):
        calls["n"] += 1
        if calls["n"] > 50:
            raise KeyboardInterrupt
        return real(*a)

    monkeypatch.setattr(stream, "_decode_one", flaky)
    with pytest.raises(KeyboardInterrupt):
        build_cache(tree, cache_dir=tmp_path / "a", resolution=8, chunk=16)
    folder = next((tmp_path / "a").iterdir())
    assert json.loads((folder / "progress.json").read_text())["train"] == 48  # three whole chunks kept
    monkeypatch.setattr(stream, "_decode_one", real)
    resumed = StreamingDataset(build_cache(tree, cache_dir=tmp_path / "a", resolution=8, chunk=16))
    fresh = StreamingDataset(build_cache(tree, cache_dir=tmp_path / "b", resolution=8, chunk=16))
    assert resumed.fingerprint == fresh.fingerprint and resumed.image_shape == (3, 8, 8)
    assert np.array_equal(np.load(folder / "train.npy"), np.load(fresh.folder / "train.npy"))

    g = torch.Generator().manual_seed(0)
    batch = resumed.class_batch(2, 5, g)
    assert batch.shape == (5, 3, 8, 8) and batch.mean() > 0.5  # class 2 is the bright one
    x, y = next(iter(resumed.loader("train", batch_size=32, workers=1)))
    assert x.shape == (32, 3, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    from nasdistill.spaces import get_space

    space = get_space("convnet")
    model = space.build_seeded(space.parse_id("D1-W32-relu-instancenorm-avgpool"), (3, 8, 8), 3, 0)
    stream_train(model, resumed, epochs=3, batch_size=32, lr=0.05)
    assert stream_evaluate(model, resumed) > 0.9


PROBE = """
import json, sys, time
import resource
import numpy as np
def anon():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
from nasdistill.data.stream import StreamingDataset, build_cache
import torch
torch.zeros(1)
base = anon(); peak = base
import nasdistill.data.stream as s
real = s._decode_one
def probe(*a):
    global peak
    peak = max(peak, anon())
    return real(*a)
s._decode_one = probe
data = StreamingDataset(build_cache(sys.argv[1], cache_dir=sys.argv[2], chunk=256))
for x, y in data.loader("train", batch_size=128):
    peak = max(peak, anon())
print(json.dumps({"base": base, "peak": peak, "n": len(data)}))
"""


@pytest.mark.slow
def test_memory_stays_bounded_on_a_tree_larger_than_the_limit(tmp_path):
    """3,000 64x64 RGB images: 147 MB as float32 in RAM; the streaming build and an epoch stay
    within 48 MB of anonymous memory above the interpreter's baseline (measured: ~44 MB, the
    decoder, one chunk and one batch, whatever the tree's size)."""
    root = make_tree(tmp_path / "tree", 1000, 1, 64)
    in_ram = 3000 * 64 * 64 * 3 * 4
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", PROBE, str(root), str(tmp_path / "cache")], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["n"] == 3000
    limit = 48 * 2**20
    assert r["peak"] - r["base"] < limit < in_ram / 2, r


def test_numpy_integer_settings_key_the_cache_their_ints_key(tree, tmp_path):
    """``np.int64`` limits were keyed by their repr ('np.int64(5)'), so a grid of NumPy settings
    decoded the tree again into a second cache; a float limit is a one-line error."""
    from nasdistill.errors import ConfigError

    want = build_cache(tree, cache_dir=tmp_path, resolution=8, train_per_class=5, test_per_class=2)
    n = np.int64
    got = build_cache(tree, cache_dir=tmp_path, resolution=n(8), train_per_class=n(5), test_per_class=n(2))
    assert got == want and len(list(tmp_path.iterdir())) == 1
    with pytest.raises(ConfigError, match="train_per_class must be a whole number >= 1, got 2.5"):
        build_cache(tree, cache_dir=tmp_path, train_per_class=2.5)


def test_dm_distils_a_streamed_dataset_reading_only_per_class_batches(tree, tmp_path):
    from nasdistill.distill import get_method

    data = StreamingDataset(build_cache(tree, cache_dir=tmp_path, resolution=8))
    ds = data.as_image_dataset()
    assert ds.image_shape == (3, 8, 8) and ds.num_classes == 3
    idx = torch.tensor([5, 0, 70])
    x = ds.x_train[idx]
    assert torch.allclose(x[1], ds.x_train[torch.tensor([0])][0]) and x.shape == (3, 3, 8, 8)
    m = get_method("dm", ipc=2, iterations=4, batch_real=8, net="D1-W32-relu-instancenorm-avgpool")
    m.fit(ds, progress=False)
    assert m.images_.shape == (6, 3, 8, 8) and len(m.history_) == 4
    start = ds.x_train[m._select_real(ds)]  # dm starts from real images, read from the cache
    assert not torch.allclose(m.images_, start) and torch.isfinite(m.images_).all()
    with pytest.raises(Exception, match="streamed"):
        ds.x_train.to("cpu")


def _peak_rss_of(args: list[str], home: Path) -> int:
    """Peak resident memory (bytes) of ``nasdistill ARGS`` run in a fresh process."""
    code = ("import resource, subprocess, sys; "
            "r = subprocess.run(sys.argv[1:]); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "NASDISTILL_HOME": str(home)}
    out = subprocess.run([sys.executable, "-c", code, sys.executable, "-m", "nasdistill.cli", *args], env=env,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    return int(out.stdout.strip().splitlines()[-1]) * 1024


@pytest.mark.slow
@pytest.mark.shared_data
def test_cli_streams_the_whole_cifar10_jpeg_tree_within_a_memory_ceiling(cifar_jpeg, tmp_path):
    """``distill --stream`` on all 60,000 CIFAR-10 JPEGs (737 MB as float32 in RAM): its peak memory
    stays within 150 MB of the same command on the 8x8 digits (what the interpreter, torch and the
    command cost anyway), and the proxy is written from the uint8 cache."""
    flags = ["--method", "dm", "--ipc", "1", "--iterations", "2", "--set", "batch_real=8", "--set",
             "net=D1-W32-relu-instancenorm-avgpool", "--no-progress", "--device", "cpu"]
    base = _peak_rss_of(["distill", "--data", "digits", *flags, "--out", str(tmp_path / "digits")], tmp_path / "h")
    streamed = _peak_rss_of(["distill", "--data", f"imagefolder:{cifar_jpeg}", "--stream", *flags,
                             "--out", str(tmp_path / "cifar")], tmp_path / "h")
    in_ram = 60_000 * 3 * 32 * 32 * 4
    assert streamed - base < 150 * 2**20 < in_ram / 4, (base, streamed)
    meta = json.loads((tmp_path / "cifar" / "proxy.json").read_text())
    assert meta["dataset"]["info"]["source"] == "stream" and meta["ipc"] == 1
    assert len(list((tmp_path / "h" / "datasets").iterdir())) == 1  # the cache, built once


@pytest.mark.parametrize("args, match", [
    (["--data", "digits", "--stream"], "--stream reads ImageFolder trees and torchvision's datasets"),
    (["--data", "digits", "--resolution", "0"], "--resolution must be a positive integer, got 0"),
])
def test_stream_flags_are_checked(args, match, tmp_path, capsys):
    from nasdistill.cli import main

    assert main(["distill", *args, "--method", "random", "--ipc", "1", "--out", str(tmp_path / "o")]) == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_full_data_training_streams_the_same_batches_as_in_ram(tree, tmp_path):
    """train() on a streamed split reads each mini-batch from the cache: the same model, bit for
    bit, as training on the split loaded into RAM (same seeded batches, augmentation included)."""
    from nasdistill.spaces import get_space
    from nasdistill.training import TrainConfig, evaluate, train

    ds = StreamingDataset(build_cache(tree, cache_dir=tmp_path, resolution=8)).as_image_dataset()
    in_ram = ds.x_train[torch.arange(len(ds.x_train))]
    assert in_ram.is_contiguous() and not in_ram.is_contiguous(memory_format=torch.channels_last)  # NCHW batches
    space = get_space("convnet")
    cfg = TrainConfig(epochs=2, batch_size=16, augment="dsa", seed=4)
    a, b = (space.build_seeded(space.parse_id("D1-W32-relu-batchnorm-avgpool"), ds.image_shape, 3, 0)
            for _ in range(2))
    la, lb = train(a, ds.x_train, ds.y_train, cfg), train(b, in_ram, ds.y_train, cfg)
    assert la.losses == lb.losses and la.steps == 2 * 8
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert evaluate(a, ds.x_test, ds.y_test) == evaluate(b, ds.x_test[torch.arange(30)], ds.y_test)


@pytest.mark.slow
def test_cli_validates_on_a_streamed_tree(tree, tmp_path, monkeypatch, capsys):
    """``validate --stream``: the reference (full-data) trainings and early-stopping read batches
    from the cache; the validation completes with a Spearman for the proxy."""
    from nasdistill.cli import main

    monkeypatch.setenv("NASDISTILL_HOME", str(tmp_path / "home"))
    data = ["--data", f"imagefolder:{tree}", "--stream", "--resolution", "8"]
    assert main(["distill", *data, "--method", "random", "--ipc", "2", "--no-progress",
                 "--out", str(tmp_path / "p")]) == 0
    assert main(["validate", "--proxy", str(tmp_path / "p" / "proxy.safetensors"), *data, "--archs", "4",
                 "--proxy-steps", "5", "--full-epochs", "1", "--bootstrap", "50", "--baseline", "early-stop",
                 "--no-progress", "--json", "--out", str(tmp_path / "v")]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    by_kind = {c["kind"]: c for c in summary["contenders"]}
    assert set(by_kind) == {"proxy", "early-stop"} and by_kind["proxy"]["metrics"]["n"] == 4
    assert all(c["metrics"]["spearman"] == c["metrics"]["spearman"] for c in summary["contenders"])  # not nan
    assert len(list((tmp_path / "home" / "datasets").iterdir())) == 1  # one cache, shared by both commands


SMALL = "D1-W32-relu-instancenorm-avgpool"
STREAMED_METHODS = {
    "dsa": dict(iterations=2, batch_real=8, outer_loop=1, inner_loop=1, net=SMALL),
    "cafe": dict(iterations=2, batch_real=8, net=SMALL),
    "dd": dict(iterations=2, net=SMALL),
    "krr": dict(iterations=2, net=SMALL),
    "mtt": dict(iterations=2, syn_steps=2, expert_epochs=1, max_start_epoch=1, num_experts=1, train_epochs=1,
                build_experts=True, net=SMALL),
    "sre2l": dict(iterations=2, teacher="D1-W32-relu-batchnorm-avgpool", teacher_epochs=1),
    "herding": {}, "kcenter": {},
}


@pytest.mark.parametrize("method", sorted(STREAMED_METHODS))
def test_every_method_distils_a_streamed_dataset(method, tree, tmp_path):
    """Beyond dm: every method draws what it needs from the cache (per-class batches; the coresets
    one class at a time; the batches of a full-data training for mtt's experts and sre2l's teacher)."""
    from nasdistill.distill import get_method

    ds = StreamingDataset(build_cache(tree, cache_dir=tmp_path, resolution=8)).as_image_dataset()
    extra = {"experts_dir": str(tmp_path / "experts")} if method == "mtt" else {}
    d = get_method(method, ipc=2, **STREAMED_METHODS[method], **extra)
    d.fit(ds, progress=False)
    assert d.images_.shape == (6, 3, 8, 8) and torch.isfinite(d.images_).all()


def test_torchvision_names_stream_with_the_in_ram_validation_split(mnist_root):
    """``--stream`` with a torchvision name: its arrays are written into the cache once; the
    training, validation and test splits are those of the in-RAM load (same slices, same seeded
    hold-out), read through MappedImages; --resolution resizes as the tree cache does."""
    from nasdistill.data import load_dataset
    from nasdistill.data.stream import MappedImages
    from nasdistill.pipeline import DataSpec

    spec = dict(root=str(mnist_root), train_per_class=30, test_per_class=5, val_per_class=4, seed=3)
    streamed = DataSpec(name="mnist", stream=True, **spec).load()
    in_ram = load_dataset("mnist", **{k: v for k, v in spec.items() if k != "root"}, root=mnist_root)
    assert isinstance(streamed.x_val, MappedImages) and isinstance(streamed.x_train, MappedImages)
    for split in ("train", "val", "test"):
        xs, ys = getattr(streamed, f"x_{split}"), getattr(streamed, f"y_{split}")
        xr, yr = getattr(in_ram, f"x_{split}"), getattr(in_ram, f"y_{split}")
        assert torch.equal(ys, yr), split
        assert torch.allclose(xs[torch.arange(len(xs))], xr, atol=1e-4), split
    assert streamed.name == "mnist" and streamed.info["val_per_class"] == 4 and len(streamed.y_val) == 40
    again = DataSpec(name="mnist", stream=True, **spec).load()
    assert again.fingerprint == streamed.fingerprint != DataSpec(name="mnist", stream=True,
                                                                 **{**spec, "seed": 4}).load().fingerprint
    small = DataSpec(name="mnist", stream=True, resolution=14, **spec).load()
    assert small.image_shape == (1, 14, 14) and small.x_train[torch.tensor([0])].shape == (1, 1, 14, 14)
    # resized in RAM as the cache resizes: the same pixels, the same split
    small_in_ram = DataSpec(name="mnist", resolution=14, **spec).load()
    assert isinstance(small_in_ram.x_train, torch.Tensor) and small_in_ram.info["resolution"] == 14
    for split in ("train", "val", "test"):
        xs, xr = getattr(small, f"x_{split}"), getattr(small_in_ram, f"x_{split}")
        assert torch.allclose(xs[torch.arange(len(xs))], xr, atol=1e-4), split


def test_cli_searches_on_a_streamed_tree(tree, tmp_path, monkeypatch, capsys):
    """A proxy distilled from a streamed tree is searched on that tree's validation split (held
    out of the cache, by default 10% of each class as in RAM); every trial gets a real score."""
    from nasdistill.cli import main

    monkeypatch.setenv("NASDISTILL_HOME", str(tmp_path / "home"))
    assert main(["distill", "--data", f"imagefolder:{tree}", "--stream", "--resolution", "8", "--method", "random",
                 "--ipc", "2", "--no-progress", "--out", str(tmp_path / "p")]) == 0
    meta = json.loads((tmp_path / "p" / "proxy.json").read_text())
    assert meta["dataset"]["info"]["val_per_class"] == 4  # 10% of 40
    assert main(["search", "--proxy", str(tmp_path / "p" / "proxy.safetensors"), "--trials", "2", "--sampler",
                 "random", "--proxy-steps", "5", "--no-progress", "--json", "--out", str(tmp_path / "s")]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows = (tmp_path / "s" / "trials.csv").read_text().strip().splitlines()
    assert len(rows) == 3 and summary["best_value"] == summary["best_value"]  # a real (not nan) accuracy
    assert len(list((tmp_path / "home" / "datasets").iterdir())) == 1  # search read the distillation's cache


def test_cli_runs_the_pipeline_on_a_streamed_tree_at_a_resolution(tree, tmp_path, monkeypatch, capsys):
    """``run --stream --resolution PX``: the whole pipeline (distil, compare, search, validate) reads
    the tree from one cache at PX pixels; the proxy records both, so ``search --proxy`` reads the
    same cache back without the flags."""
    from nasdistill.cli import main

    monkeypatch.setenv("NASDISTILL_HOME", str(tmp_path / "home"))
    assert main(["run", "--data", f"imagefolder:{tree}", "--stream", "--resolution", "6", "--method", "random",
                 "--ipc", "2", "--trials", "2", "--sampler", "random", "--archs", "3", "--proxy-steps", "3",
                 "--full-epochs", "1", "--eval-seeds", "1", "--bootstrap", "20", "--no-progress", "--json",
                 "--out", str(tmp_path / "r")]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["dataset"]["image_shape"] == [3, 6, 6] and summary["search"]["trials"] == 2
    meta = json.loads((tmp_path / "r" / "proxy.json").read_text())
    assert meta["dataset"]["info"]["source"] == "stream" and meta["dataset"]["info"]["resolution"] == 6
    assert len(list((tmp_path / "home" / "datasets").iterdir())) == 1
    assert main(["search", "--proxy", str(tmp_path / "r"), "--trials", "1", "--sampler", "random",
                 "--proxy-steps", "2", "--no-progress", "--out", str(tmp_path / "s")]) == 0
    assert len(list((tmp_path / "home" / "datasets").iterdir())) == 1  # the run's cache, read back


def test_expert_command_lines_carry_stream_and_resolution(tree, tmp_path):
    """The ``nasdistill experts`` line mtt names for a missing buffer (and the ``distill`` line the
    experts command prints) read the data as the distillation did: --stream and --resolution kept."""
    from nasdistill.distill import get_method
    from nasdistill.pipeline import DataSpec

    ds = DataSpec(name=f"imagefolder:{tree}", stream=True, resolution=8).load()
    buffer = get_method("mtt", ipc=1, num_experts=1, train_epochs=1, net=SMALL,
                        experts_dir=str(tmp_path / "experts")).expert_buffer()
    command = buffer.command(ds)
    assert f"--data imagefolder:{tree} " in command and " --stream " in command and " --resolution 8 " in command
