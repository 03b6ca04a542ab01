"""The data layer on real data: digits (offline), MNIST and CIFAR-10 JPEG slices, npz, proxies."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from nasdistill.data import Proxy, load_dataset, load_proxy
from nasdistill.errors import DatasetError, ProxyError, UnknownNameError


def _balanced(y: torch.Tensor, k: int) -> bool:
    counts = torch.bincount(y, minlength=k)
    return bool((counts == counts[0]).all())


def test_digits_is_normalised_split_and_fingerprinted(digits):
    assert digits.image_shape == (1, 8, 8)
    assert digits.num_classes == 10 and digits.classes[3] == "3"
    assert len(digits.y_train) + len(digits.y_val) + len(digits.y_test) == 1797
    assert _balanced(digits.y_val, 10) and len(digits.y_val) >= 10
    x = torch.cat([digits.x_train, digits.x_val])
    assert abs(float(x.mean())) < 1e-3 and abs(float(x.std()) - 1) < 1e-2
    again = load_dataset("digits")
    assert again.fingerprint == digits.fingerprint
    assert torch.equal(again.x_val, digits.x_val)
    other = load_dataset("digits", seed=1)
    assert other.fingerprint != digits.fingerprint and not torch.equal(other.y_val, digits.y_val)
    # val and train are disjoint pieces of the original training split
    assert len(other.y_train) == len(digits.y_train)


@pytest.mark.parametrize("read", ["shipped file", "load_digits"])
def test_digits_are_scikit_learns_with_its_stratified_split(read, monkeypatch):
    """digits is read from the file scikit-learn ships, without importing scikit-learn (or, where that
    file is missing, through load_digits), and split by the fixed list of test images: the images,
    labels and split that load_digits and train_test_split(stratify, random_state=0) give."""
    import importlib.util

    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from nasdistill.data.sources import SOURCES

    if read == "load_digits":
        monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    raw = SOURCES.get("digits")(None)
    d = load_digits()
    x = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    train, test = train_test_split(np.arange(len(x)), test_size=0.25, stratify=d.target, random_state=0)
    train, test = np.sort(train), np.sort(test)
    assert np.array_equal(raw.x_train, x[train]) and np.array_equal(raw.y_train, d.target[train])
    assert np.array_equal(raw.x_test, x[test]) and np.array_equal(raw.y_test, d.target[test])
    assert raw.y_train.dtype == raw.y_test.dtype == np.int64 and raw.classes == [str(c) for c in range(10)]


def test_denormalize_recovers_pixels(digits):
    px = digits.denormalize(digits.x_test[:5])
    assert px.min() >= 0 and px.max() <= 1
    levels = (px * 255).round()
    assert torch.allclose(px * 255, levels, atol=1e-3)  # back on the uint8 grid


def test_mnist_slice(mnist_small):
    ds = mnist_small
    assert ds.image_shape == (1, 28, 28)
    assert ds.class_counts() == [180] * 10
    assert _balanced(ds.y_val, 10) and len(ds.y_val) == 200
    assert _balanced(ds.y_test, 10) and len(ds.y_test) == 1000
    assert abs(ds.mean[0] - 0.13) < 0.02


def test_cifar_imagefolder_slice_and_cache(cifar_jpeg, monkeypatch, tmp_path):
    monkeypatch.setenv("NASDISTILL_HOME", str(tmp_path))
    first = load_dataset(f"imagefolder:{cifar_jpeg}", train_per_class=30, test_per_class=10, val_per_class=5)
    assert first.image_shape == (3, 32, 32)
    assert first.classes[:3] == ["airplane", "automobile", "bird"]
    assert len(first.y_train) == 250 and len(first.y_test) == 100
    assert list((tmp_path / "datasets").glob("imagefolder-*.npz")), "decoded tree was not cached"

    import PIL.Image

    def no_decode(*a, **k):
        raise AssertionError("second load decoded images instead of using the cache")

    monkeypatch.setattr(PIL.Image, "open", no_decode)
    second = load_dataset(f"imagefolder:{cifar_jpeg}", train_per_class=30, test_per_class=10, val_per_class=5)
    assert second.fingerprint == first.fingerprint
    assert torch.equal(second.x_train, first.x_train)


def test_npz_source(tmp_path):
    rng = np.random.default_rng(0)
    for shape in [(8, 8), (8, 8, 3)]:
        path = tmp_path / f"d{len(shape)}.npz"
        np.savez(path, x_train=rng.integers(0, 256, (40, *shape), dtype=np.uint8), y_train=np.repeat(np.arange(4), 10),
                 x_test=rng.integers(0, 256, (8, *shape), dtype=np.uint8), y_test=np.repeat(np.arange(4), 2))
        ds = load_dataset(f"npz:{path}", val_per_class=2)
        assert ds.image_shape == ((1, 8, 8) if len(shape) == 2 else (3, 8, 8))
        assert ds.num_classes == 4 and len(ds.y_val) == 8
    bad = tmp_path / "bad.npz"
    np.savez(bad, x_train=np.zeros((4, 8, 8), np.uint8))
    with pytest.raises(DatasetError, match="lacks the arrays"):
        load_dataset(f"npz:{bad}")
    floats = tmp_path / "floats.npz"
    np.savez(floats, x_train=np.zeros((4, 8, 8)), y_train=np.arange(4), x_test=np.zeros((4, 8, 8)), y_test=np.arange(4))
    with pytest.raises(DatasetError, match=r"got float64 \(4, 8, 8\); convert the images to uint8"):
        load_dataset(f"npz:{floats}")  # the shape as given, not with the channel axis added
    video = tmp_path / "video.npz"  # 5-d: the fix is about the shape, not the dtype
    np.savez(video, x_train=np.zeros((4, 2, 8, 8, 3), np.uint8), y_train=np.arange(4),
             x_test=np.zeros((4, 2, 8, 8, 3), np.uint8), y_test=np.arange(4))
    with pytest.raises(DatasetError, match=r"got uint8 \(4, 2, 8, 8, 3\); pass one image per row"):
        load_dataset(f"npz:{video}")


def test_missing_root_names_the_fix(tmp_path):
    with pytest.raises(DatasetError) as err:
        load_dataset("mnist", root=tmp_path)  # never downloads without download=True
    msg = str(err.value)
    assert "--download" in msg and "--data-root" in msg and "\n" not in msg
    assert not any(tmp_path.iterdir()) or not list(tmp_path.rglob("*.gz"))


def test_a_missing_torchvision_set_beside_its_image_tree_points_at_the_tree(tmp_path):
    """../shared/data holds cifar10-jpeg (an ImageFolder tree), not torchvision's cifar-10-batches-py:
    --data cifar10 said only "pass --data-root"; it names the tree to load. cifar100-* is not it."""
    for name in ("cifar100-jpeg", "cifar10-jpeg"):
        for split in ("train", "test"):
            (tmp_path / name / split / "cat").mkdir(parents=True)
    with pytest.raises(DatasetError) as err:
        load_dataset("cifar10", root=tmp_path)
    assert str(err.value).endswith(f"loads as --data imagefolder:{tmp_path / 'cifar10-jpeg'}")
    assert "\n" not in str(err.value)
    with pytest.raises(DatasetError, match="pass --data-root DIR") as err:
        load_dataset("svhn", root=tmp_path)  # nothing named after it: the usual fix


def test_unknown_dataset_suggests():
    with pytest.raises(UnknownNameError, match="did you mean 'mnist'"):
        load_dataset("minst")


def test_val_split_larger_than_class_is_rejected():
    with pytest.raises(Exception, match="val_per_class"):
        load_dataset("digits", val_per_class=10_000)


# --- proxy artifact -----------------------------------------------------------------------------
def _proxy(ds, soft=False):
    idx = torch.cat([torch.nonzero(ds.y_train == c).flatten()[:2] for c in range(ds.num_classes)])
    labels = ds.y_train[idx]
    if soft:
        labels = torch.nn.functional.one_hot(labels, ds.num_classes).float() * 0.9 + 0.01
    meta = {"method": "manual", "ipc": 2, "dataset": {"name": ds.name, "fingerprint": ds.fingerprint,
                                                      "mean": list(ds.mean), "std": list(ds.std),
                                                      "num_classes": ds.num_classes}}
    return Proxy(ds.x_train[idx], labels, meta)


@pytest.mark.parametrize("soft", [False, True])
def test_proxy_roundtrip(digits, tmp_path, soft):
    p = _proxy(digits, soft)
    path = p.save(tmp_path / "p")
    assert path.name == "p.safetensors" and (tmp_path / "p.json").is_file()
    q = load_proxy(path)
    assert torch.equal(q.images, p.images) and torch.equal(q.labels, p.labels)
    assert q.labels.dtype == (torch.float32 if soft else torch.int64)
    assert q.meta["dataset"]["fingerprint"] == digits.fingerprint
    assert json.loads((tmp_path / "p.json").read_text())["method"] == "manual"
    q.check_compatible(digits)
    assert q.ipc == 2 and torch.equal(q.hard_labels, p.hard_labels)
    (tmp_path / "p.json").unlink()  # the safetensors header alone is enough
    assert load_proxy(path).meta["method"] == "manual"


def test_proxy_from_numpy_equals_from_tensors_and_fractional_hard_labels_are_refused(digits):
    p = _proxy(digits)
    q = Proxy(p.images.numpy(), p.labels.tolist(), dict(p.meta))
    assert torch.equal(q.images, p.images) and torch.equal(q.labels, p.labels) and q.labels.dtype == torch.int64
    assert torch.equal(Proxy(p.images, p.labels.double()).labels, p.labels)  # whole-number floats are indices
    with pytest.raises(ProxyError, match="hard labels .* hold fractions") as err:
        Proxy(p.images, p.labels + 0.5)  # before: truncated to the class below, silently
    assert "\n" not in str(err.value)


def test_proxy_rejects_corrupt_and_pickled_files(digits, tmp_path):
    path = _proxy(digits).save(tmp_path / "p.safetensors")
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ProxyError, match="not a valid proxy"):
        load_proxy(path)
    pickled = tmp_path / "evil.safetensors"
    torch.save({"images": torch.zeros(1)}, pickled)
    with pytest.raises(ProxyError):
        load_proxy(pickled)
    with pytest.raises(ProxyError, match="no proxy file"):
        load_proxy(tmp_path / "missing.safetensors")


def test_proxy_mismatch_is_reported(digits):
    p = _proxy(digits)
    with pytest.raises(ProxyError, match="fingerprint"):
        p.check_compatible(load_dataset("digits", seed=5))


def test_a_proxy_mismatch_names_the_loading_settings_that_differ(digits):
    """Both sides were named 'imagefolder:/same/path' with two fingerprints: which setting differed?"""
    from nasdistill.distill import distill

    proxy = distill(digits, "random", ipc=2, seed=0)
    with pytest.raises(ProxyError) as err:
        proxy.check_compatible(load_dataset("digits", seed=5, train_per_class=20))
    assert ("; they differ in seed (proxy: 0, given: 5), train_per_class (proxy: all, given: 20), val_per_class "
            "(proxy: 13, given: 2); pass the same dataset") in str(err.value)  # the held-out share follows the slice


def test_proxy_grid_has_one_row_per_class(digits, tmp_path):
    from PIL import Image

    p = _proxy(digits)
    png = p.save_grid(tmp_path / "grid.png")
    w, h = Image.open(png).size
    assert h > w * 2  # 10 rows, 2 columns


# --- content checked where it enters ---------------------------------------------------------------
def _npz(tmp_path, name="d.npz", y_train=None, y_test=None, classes=None):
    rng = np.random.default_rng(0)
    y_train = np.repeat(np.arange(3), 6) if y_train is None else np.asarray(y_train)
    y_test = np.repeat(np.arange(3), 2) if y_test is None else np.asarray(y_test)
    arrays = {"x_train": rng.integers(0, 256, (len(y_train), 8, 8), dtype=np.uint8), "y_train": y_train,
              "x_test": rng.integers(0, 256, (len(y_test), 8, 8), dtype=np.uint8), "y_test": y_test}
    if classes is not None:
        arrays["classes"] = np.array(classes)
    np.savez(tmp_path / name, **arrays)
    return f"npz:{tmp_path / name}"


@pytest.mark.parametrize("case, match", [
    (dict(y_train=np.repeat(np.arange(3), 6) + 0.5), "float64 labels"),
    (dict(y_train=np.repeat(np.arange(3.0), 6)), "float64 labels"),
    (dict(y_train=np.zeros(18, int), y_test=np.zeros(6, int)), "at least 2"),
    (dict(y_train=np.repeat([0, 2], 9), y_test=np.repeat([0, 2], 3)), "class '1' \\(label 1\\) has no training"),
    (dict(y_test=np.repeat([0, 1], 3)), "class '2' \\(label 2\\) has no test images"),
    (dict(y_test=np.repeat([0, 1, 2, 3], 2), classes=["a", "b", "c"]), "label 3 falls outside the 3 classes"),
    (dict(y_train=np.repeat(np.arange(3), 6) - 1), "label -1 falls outside"),
    (dict(classes=["a", "b", "c", "d"]), "class 'd' \\(label 3\\) has no training images"),
])
def test_bad_dataset_content_gives_one_line(tmp_path, case, match):
    with pytest.raises(DatasetError, match=match) as err:
        load_dataset(_npz(tmp_path, **case), val_per_class=1)
    assert "\n" not in str(err.value) and "--ipc 0" not in str(err.value)


def _tree(tmp_path, train_classes, test_classes):
    from PIL import Image

    for split, classes in (("train", train_classes), ("test", test_classes)):
        for c in classes:
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(tmp_path / split / c / f"{i}.png")
    return tmp_path


def test_imagefolder_class_mismatch_and_corrupt_first_file(tmp_path):
    with pytest.raises(DatasetError, match=r"test/ has class folders \['c'\] that train/ lacks"):
        load_dataset(f"imagefolder:{_tree(tmp_path / 'a', ['a', 'b'], ['a', 'b', 'c'])}", val_per_class=1)
    with pytest.raises(DatasetError, match=r"train/ has class folders \['b'\] that test/ lacks"):
        load_dataset(f"imagefolder:{_tree(tmp_path / 'b', ['a', 'b'], ['a'])}", val_per_class=1)
    root = _tree(tmp_path / "c", ["a", "b"], ["a", "b"])
    (root / "train" / "a" / "0.png").write_bytes(b"not an image")
    with pytest.raises(DatasetError, match=r"cannot decode .*train/a/0.png"):
        load_dataset(f"imagefolder:{root}", val_per_class=1)



def test_imagefolder_of_mixed_sizes_loads_at_a_resolution_as_the_stream_does(tmp_path, capsys):
    from PIL import Image

    from nasdistill.cli import main
    from nasdistill.data.stream import StreamingDataset

    root = _tree(tmp_path / "t", ["a", "b"], ["a", "b"])
    Image.fromarray(np.arange(120, dtype=np.uint8).reshape(12, 10, 1).repeat(3, 2)).save(root / "train" / "b" / "1.png")
    with pytest.raises(DatasetError, match=r"is \(12, 10\), other images are \(8, 8\); .*--resolution PX") as err:
        load_dataset(f"imagefolder:{root}", val_per_class=1)
    assert "\n" not in str(err.value)
    ds = load_dataset(f"imagefolder:{root}", val_per_class=1, resolution=6)  # the fix, as the line writes it
    assert ds.image_shape == (3, 6, 6) and ds.info["resolution"] == 6
    streamed = StreamingDataset.build(root, resolution=6).as_image_dataset(val_per_class=1)
    for split in ("train", "val", "test"):  # the same pixels and split as the streaming cache
        xs, xr = getattr(streamed, f"x_{split}"), getattr(ds, f"x_{split}")
        assert torch.allclose(xs[torch.arange(len(xs))], xr, atol=1e-4), split
    assert load_dataset(f"imagefolder:{root}", val_per_class=1, resolution=8).fingerprint != ds.fingerprint
    # on the command line: the proxy records the resolution, and search reads its data back at it
    assert main(["distill", "--data", f"imagefolder:{root}", "--resolution", "6", "--method", "random", "--ipc", "1",
                 "--val-per-class", "1", "--no-progress", "--out", str(tmp_path / "p")]) == 0
    assert main(["search", "--proxy", str(tmp_path / "p"), "--trials", "1", "--sampler", "random",
                 "--proxy-steps", "1", "--no-progress", "--out", str(tmp_path / "s")]) == 0, capsys.readouterr().err
    assert (tmp_path / "s" / "best_arch.json").is_file()

def _resave(path, images, labels, meta):
    from safetensors.torch import save

    path.write_bytes(save({"images": images, "labels": labels}, metadata={"nasdistill": json.dumps(meta)}))


@pytest.mark.parametrize("change, match", [
    (lambda x, y, m: (x.masked_fill(x > 1, float("nan")), y, m), "NaN or infinite"),
    (lambda x, y, m: (x, y + 7, m), "outside 0..9"),
    (lambda x, y, m: (x, y.float(), m), "hard labels are torch.float32"),
    (lambda x, y, m: (x, torch.full((len(y), 3), 0.5), m), "3 columns for 10 classes"),
    (lambda x, y, m: (x, -torch.ones(len(y), 10), m), "negative"),
    (lambda x, y, m: (x[:, :, :4].contiguous(), y, m), "metadata says"),
    (lambda x, y, m: (x, y, {**m, "format_version": "1"}), "format_version '1'"),
    (lambda x, y, m: (x, y, {**m, "dataset": "digits"}), "field 'dataset' is a str"),
    (lambda x, y, m: (x, y, [m]), "metadata is a JSON list"),
])
def test_proxy_content_is_checked_on_load(digits, tmp_path, change, match):
    p = _proxy(digits)
    p.meta["dataset"]["image_shape"] = list(digits.image_shape)
    path = tmp_path / "p.safetensors"
    _resave(path, *change(p.images, p.labels, p.meta))
    with pytest.raises(ProxyError, match=match) as err:
        load_proxy(path)
    assert "\n" not in str(err.value)


def test_proxy_sidecar_must_agree_with_the_header(digits, tmp_path):
    path = _proxy(digits).save(tmp_path / "p")
    side = tmp_path / "p.json"
    side.write_text(json.dumps({**json.loads(side.read_text()), "ipc": 5}))
    with pytest.raises(ProxyError, match="sidecar p.json says ipc=5"):
        load_proxy(path)
    side.write_text("{broken")
    with pytest.raises(ProxyError, match="not valid JSON"):
        load_proxy(path)
