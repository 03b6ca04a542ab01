"""The Python API from an AutoML pipeline's side: datasets from in-memory arrays, one-line errors
for objects that are not nasdistill's, readable reprs, and scikit-learn's parameter protocol."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.base import clone

from nasdistill.api import (ImageDataset, OptunaSearch, ProxyEvaluator, RankingValidator, TrainConfig, distill,
                            load_dataset, validate)
from nasdistill.distill import get_method, method_names
from nasdistill.errors import ConfigError, DatasetError, ProxyError

ARCH = {"depth": 1, "width": 32, "act": "relu", "norm": "none", "pool": "avgpool"}


# --- datasets from arrays ---------------------------------------------------------------------------
def test_from_arrays_of_a_torchvision_dataset_equals_loading_it_by_name(mnist_root):
    import torchvision

    train = torchvision.datasets.MNIST(root=mnist_root, train=True)
    test = torchvision.datasets.MNIST(root=mnist_root, train=False)
    by_name = load_dataset("mnist", root=mnist_root, train_per_class=50, test_per_class=20, val_per_class=5)
    # torch tensors as they come, and the same as NumPy arrays and lists of labels
    for cast in (lambda a: a, lambda a: a.numpy(), lambda a: a.tolist()):
        ours = ImageDataset.from_arrays(train.data, cast(train.targets), test.data, cast(test.targets),
                                        classes=train.classes, name="mine", train_per_class=50, test_per_class=20,
                                        val_per_class=5)
        assert ours.fingerprint == by_name.fingerprint  # so a stored proxy of one is reused for the other
        for split in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
            assert torch.equal(getattr(ours, split), getattr(by_name, split)), split
        assert ours.classes == list(train.classes) and ours.name == "mine"


def test_from_arrays_refuses_channels_first_images_instead_of_misreading_them():
    y = np.repeat(np.arange(2), 5)
    nchw = np.zeros((10, 3, 16, 16), np.uint8)
    with pytest.raises(DatasetError, match=r"looks channels-first.*transpose") as err:
        ImageDataset.from_arrays(nchw, y, nchw, y)
    assert "\n" not in str(err.value)
    ds = ImageDataset.from_arrays(nchw.transpose(0, 2, 3, 1), y, nchw.transpose(0, 2, 3, 1), y, val_per_class=1)
    assert ds.image_shape == (3, 16, 16)
    with pytest.raises(DatasetError, match="uint8"):  # floats are refused, not rescaled silently
        ImageDataset.from_arrays(np.zeros((10, 8, 8)), y, np.zeros((10, 8, 8)), y)


def test_dataset_repr_is_one_short_line(digits):
    text = repr(digits)
    assert text.startswith("ImageDataset('digits', train=") and "\n" not in text and len(text) < 160
    assert "tensor" not in text


# --- objects that are not nasdistill's --------------------------------------------------------------
@pytest.mark.parametrize("call", ["distill", "fit", "evaluator", "ranking", "validate"])
def test_a_foreign_dataset_gets_one_line_naming_the_fix(call, digits, tmp_path):
    arrays = (np.zeros((10, 8, 8), np.uint8), np.arange(10) % 2)
    proxy = distill(digits, "random", ipc=1, store=False)
    run = {
        "distill": lambda d: distill(d, "random", ipc=1, store=False),
        "fit": lambda d: get_method("random", ipc=1).fit(d),
        "evaluator": lambda d: ProxyEvaluator("convnet", proxy, d),
        "ranking": lambda d: RankingValidator("convnet", n_archs=3).fit(d, proxy),
        "validate": lambda d: validate([proxy], data=d, n_archs=3),
    }[call]
    with pytest.raises(DatasetError, match=r"takes a nasdistill ImageDataset, got tuple; .*from_arrays") as err:
        run(arrays)
    assert "\n" not in str(err.value)
    assert not list(tmp_path.iterdir())


def test_a_streamed_dataset_is_pointed_to_its_in_ram_view(digits):
    class Streamed:  # what matters: it has as_image_dataset(), as StreamingDataset does
        def as_image_dataset(self):
            return digits

    with pytest.raises(DatasetError, match=r"got Streamed; pass its in-RAM view: data.as_image_dataset\(\)"):
        distill(Streamed(), "random", ipc=1, store=False)


def test_the_evaluator_takes_a_proxy_or_its_path(digits, tmp_path):
    proxy = distill(digits, "random", ipc=2, store=tmp_path)
    cfg = TrainConfig(steps=5)
    by_object = ProxyEvaluator("convnet", proxy, digits, cfg)(ARCH)
    by_path = ProxyEvaluator("convnet", proxy.meta["path"], digits, cfg)(ARCH)
    assert by_object == by_path
    with pytest.raises(ProxyError, match="takes a Proxy or a proxy file's path, got int"):
        ProxyEvaluator("convnet", 3, digits)
    with pytest.raises(ProxyError, match="no proxy file"):
        ProxyEvaluator("convnet", tmp_path / "missing.safetensors", digits)


# --- scikit-learn's parameter protocol --------------------------------------------------------------
@pytest.mark.parametrize("name", method_names())
def test_every_distiller_clones_and_sets_params(name, digits):
    d = get_method(name)
    twin = clone(d)
    assert twin is not d and twin.get_params() == d.get_params()
    assert twin.set_params(seed=7) is twin and twin.seed == 7 and d.seed != 7
    if not d.requires:  # methods without a required setting have a key here
        assert twin.key(digits) != d.key(digits)
    with pytest.raises(ConfigError, match="has no setting 'ipcc'; use some of ipc"):
        d.set_params(ipcc=3)


@pytest.mark.parametrize("name", method_names())
def test_every_numeric_setting_is_checked_by_the_api_as_by_the_command_line(name, digits):
    """``--set`` checked types and ranges, the Python API did not: ``distill(ds, "dm", lr_img="x")``
    was a TypeError from the optimiser, ``momentum=5`` and ``seed="x"`` ran, ``batch_real=0`` failed
    inside torch. Every distiller's ``check`` now refuses them in one line, and takes a NumPy float or
    an int for a float setting as the float it stands for (the same key)."""
    from nasdistill.checks import setting_kinds

    cls = type(get_method(name))
    numeric = [k for k in cls._param_names() if k not in ("ipc", "device")
               and setting_kinds(cls, k)[0] & {"int", "float"} and "bool" not in setting_kinds(cls, k)[0]]
    assert "seed" in numeric
    for key in numeric:
        for bad in ("x", -1, float("nan")):
            with pytest.raises(ConfigError, match=f"{name}'s {key} must be"):
                cls(ipc=1, **{key: bad}).check(digits)
    floats = [k for k in numeric if setting_kinds(cls, k)[0] == {"float"}]
    for key in floats:
        value = getattr(cls(), key)
        if value is None or value <= 0:
            continue
        d = cls(ipc=1, **{key: np.float32(value)})
        assert d.key(digits) == cls(ipc=1, **{key: float(np.float32(value))}).key(digits)
        if not d.requires:  # rank needs a pool of architectures before its check passes
            d.check(digits)
            assert type(getattr(d, key)) is float


def test_validator_and_search_clone_and_set_params(digits):
    v = RankingValidator("convnet", n_archs=3, top_k=(2, 0.5))
    twin = clone(v).set_params(n_archs=5)
    assert (twin.n_archs, v.n_archs, twin.top_k) == (5, 3, (2, 0.5))
    evaluator = ProxyEvaluator("convnet", distill(digits, "random", ipc=1, store=False), digits, TrainConfig(steps=1))
    s = OptunaSearch("convnet", evaluator, n_trials=2, sampler="random")
    twin = clone(s)
    # an equal evaluator, its own object, sharing the data it only reads: scikit-learn deep-copied
    # it (settings that are not estimators), a copy of the whole dataset per clone of a grid search
    assert twin.evaluator.describe() == evaluator.describe() and twin.n_trials == 2 and twin.sampler == "random"
    assert twin.evaluator is not evaluator and twin.evaluator.dataset is digits
    assert twin.evaluator.proxy is evaluator.proxy and twin.evaluator.x_eval.data_ptr() == digits.x_val.data_ptr()
    assert twin.evaluator(ARCH) == evaluator(ARCH)
    with pytest.raises(ConfigError, match="OptunaSearch has no setting 'n_trial'"):
        s.set_params(n_trial=3)


# --- counts from a NumPy grid ----------------------------------------------------------------------
def test_numpy_integer_counts_give_what_their_ints_give(digits, tmp_path):
    """A grid of settings built with NumPy (``np.arange``, ``ParameterGrid`` over arrays) gives
    np.int64 counts: loading, distilling and contending with them equals doing it with the ints
    (the same fingerprints and keys), where ``ipc=np.int64(2)`` was refused as "not a positive integer"
    and ``train_per_class=np.int64(30)`` gave another dataset fingerprint."""
    from nasdistill.target import ipc_ladder
    from nasdistill.validate import ProxyContender

    n = np.int64
    ints = dict(train_per_class=30, test_per_class=5, val_per_class=3, seed=2, resolution=8)
    a = load_dataset("digits", **ints)
    b = load_dataset("digits", **{k: n(v) for k, v in ints.items()})
    assert a.fingerprint == b.fingerprint and torch.equal(a.x_val, b.x_val)
    assert b.info["train_per_class"] == 30 and type(b.info["train_per_class"]) is int

    settings = dict(ipc=2, iterations=3, batch_real=8)
    want = get_method("dm", **settings)
    got = get_method("dm", **{k: n(v) for k, v in settings.items()})
    assert got.key(a) == want.key(a)
    got.fit(a, progress=False)
    assert type(got.ipc) is int and got.images_.shape[0] == 20
    proxy = distill(a, "random", ipc=n(2), store=False)
    assert proxy.ipc == 2 and len(proxy.labels) == 20
    c = ProxyContender(proxy.save(tmp_path / "p"), repeats=n(2), draw=n(1))
    assert (c.repeats, c.draw) == (2, 1) and type(c.repeats) is type(c.draw) is int
    assert ipc_ladder(n(2), 27) == ipc_ladder(2, 27)


@pytest.mark.parametrize("kwargs, match", [
    (dict(train_per_class=2.5), "train_per_class must be a whole number >= 1, got 2.5"),
    (dict(train_per_class="30"), "train_per_class must be a whole number >= 1, got '30'"),
    (dict(test_per_class=0), "test_per_class must be a whole number >= 1, got 0"),
    (dict(val_per_class=True), "val_per_class must be a whole number >= 0, got True"),
    (dict(seed=1.5), "seed must be a whole number, got 1.5"),
])
def test_bad_slice_settings_are_one_line(kwargs, match):
    """They were TypeErrors from deep inside NumPy ('slice indices must be integers', "'<' not
    supported"), or, for True, a hold-out of one image a class."""
    with pytest.raises(ConfigError, match=match):
        load_dataset("digits", **kwargs)


def test_a_bool_ipc_is_refused():
    with pytest.raises(ConfigError, match="ipc must be a positive integer, got True"):
        distill(load_dataset("digits", train_per_class=5, test_per_class=2), "random", ipc=True, store=False)


def test_set_takes_every_methods_own_defaults_and_bounds():
    """``--set inner_momentum=0.9`` (rank's default) was refused as "must be >= 1" (read as a count,
    by its ``inner`` prefix), and ``--set online_steps=0``, which krr takes (no online training)."""
    from nasdistill.checks import check_method_settings
    from nasdistill.distill import method_class

    assert check_method_settings(method_class("rank"), {"inner_momentum": 0.9}) == {"inner_momentum": 0.9}
    assert check_method_settings(method_class("krr"), {"online_steps": 0}) == {"online_steps": 0}
    for name in method_names():  # every method's defaults pass the checks of --set
        cls = method_class(name)
        defaults = {k: v for k, v in get_method(name).get_params().items() if k not in ("ipc", "seed", "device")}
        check_method_settings(cls, defaults)


def test_the_evaluator_takes_an_arch_id_and_a_dict_budget(digits):
    """``evaluator("D1-W32-relu-none-none")`` read the id's characters as the architecture's keys, an int
    was a TypeError, and a dict budget an AttributeError; a string seed for a search a NumPy cast error."""
    proxy = distill(digits, "random", ipc=1, store=False)
    arch = {"depth": 1, "width": 32, "act": "relu", "norm": "none", "pool": "none"}
    evaluator = ProxyEvaluator("convnet", proxy, digits, TrainConfig(steps=3))
    assert evaluator("D1-W32-relu-none-none") == evaluator(arch)
    assert ProxyEvaluator("convnet", proxy, digits, {"steps": 3}).describe() == evaluator.describe()
    for bad, match in [(42, "an architecture of 'convnet' is a dict of its choices or its id, got int 42"),
                       (["depth"], "got list")]:
        with pytest.raises(ConfigError, match=match):
            evaluator(bad)
    with pytest.raises(ConfigError, match=r"unknown training settings \['step'\]"):
        ProxyEvaluator("convnet", proxy, digits, {"step": 3})
    with pytest.raises(ConfigError, match="train_config must be a TrainConfig or a dict"):
        ProxyEvaluator("convnet", proxy, digits, 300)
    with pytest.raises(ConfigError, match="seed must be a whole number, got 'x'"):
        OptunaSearch("convnet", evaluator, n_trials=1, seed="x", sampler="random").run()
    with pytest.raises(ConfigError, match="seed must be a whole number, got 1.5"):
        ProxyEvaluator("convnet", proxy, digits, seed=1.5)
