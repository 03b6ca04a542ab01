"""``sre2l``: squeeze (a BatchNorm teacher), recover (BN statistics + class logits, no real images), relabel."""

from __future__ import annotations

import json

import pytest
import torch

from nasdistill.cli import main
from nasdistill.data import load_proxy
from nasdistill.distill import get_method
from nasdistill.errors import ConfigError

TEACHER = "D2-W32-relu-batchnorm-avgpool"
FAST = {"iterations": 40, "teacher": TEACHER, "teacher_epochs": 5}


@pytest.fixture(scope="module")
def fitted(digits):
    return get_method("sre2l", ipc=2, **FAST).fit(digits, progress=False)


def test_recover_matches_the_teachers_statistics_and_relabels(digits, fitted):
    m = fitted
    assert m.history_[-1] < 0.8 * m.history_[0]  # CE + BN statistics fall
    # the BN term alone, measured afresh on the recovered images, is below that of noise
    from nasdistill.distill.methods.sre2l import BNStatistics

    stats = BNStatistics(m.net)
    with torch.no_grad():
        m.net(m.images_[::2])  # group 0: one image a class
        recovered = float(stats.loss())
        # seeded: the global RNG's position depends on what ran before (a teacher trained or loaded)
        m.net(torch.randn(m.images_[::2].shape, generator=torch.Generator().manual_seed(0)))
        noise = float(stats.loss())
    stats.remove()
    assert recovered < noise
    assert m.labels_.shape == (20, 10) and m.labels_.dtype == torch.float32
    assert torch.allclose(m.labels_.sum(1), torch.ones(20), atol=1e-5)
    hard = torch.arange(10).repeat_interleave(2)
    assert (m.labels_.argmax(1) == hard).float().mean() >= 0.9  # the teacher sees each image's class
    proxy = m.to_proxy()
    assert proxy.soft and proxy.meta["relabel"]["teacher_arch"] == TEACHER


def test_teacher_weights_file_gives_the_same_images(digits, fitted, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "teacher.safetensors"
    save_file({k: v.contiguous() for k, v in fitted.net.state_dict().items()}, str(path))
    again = get_method("sre2l", ipc=2, **FAST, teacher_weights=str(path)).fit(digits, progress=False)
    assert again.teacher_.test_acc_ == pytest.approx(fitted.teacher_.test_acc_)
    assert torch.allclose(again.images_, fitted.images_, atol=1e-5)
    with pytest.raises(ConfigError, match="not found"):
        get_method("sre2l", teacher_weights=str(tmp_path / "missing.pt")).check(digits)


def test_a_teacher_without_batchnorm_is_refused(digits):
    with pytest.raises(ConfigError, match="BatchNorm"):
        get_method("sre2l", teacher="D2-W32-relu-instancenorm-avgpool").check(digits)


def test_cli_sre2l_writes_a_soft_proxy(tmp_path):
    out = tmp_path / "p"
    argv = ["distill", "--data", "digits", "--method", "sre2l", "--ipc", "1", "--iterations", "5",
            "--set", f"teacher={TEACHER}", "--set", "teacher_epochs=5", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    proxy = load_proxy(out / "proxy.safetensors")
    assert proxy.soft and proxy.labels.shape == (10, 10)
    assert json.loads((out / "proxy.json").read_text())["method"] == "sre2l"


@pytest.mark.slow
def test_a_torchvision_backbone_teacher_from_a_local_weights_file(mnist_small, digits, tmp_path):
    """SRe2L's own teacher: a torchvision ResNet-18 (space ``backbones``), here trained on an MNIST slice,
    saved as torchvision saves weights (``torch.save`` of the state dict) and given back as a local
    file: the recovered images are those of the trained teacher, its BN statistics fall, and the
    file of another backbone is refused with the reason."""
    settings = {"iterations": 20, "teacher_space": "backbones", "teacher": "resnet18", "teacher_epochs": 2}
    data = mnist_small
    trained = get_method("sre2l", ipc=1, **settings).fit(data, progress=False)
    assert trained.teacher_.test_acc_ > 0.8 and trained.history_[-1] < trained.history_[0]
    path = tmp_path / "resnet18.pth"
    torch.save(trained.teacher_.model_.state_dict(), path)
    again = get_method("sre2l", ipc=1, **settings, teacher_weights=str(path)).fit(data, progress=False)
    assert again.teacher_.key_ == "file:resnet18.pth"
    assert again.teacher_.test_acc_ == pytest.approx(trained.teacher_.test_acc_)
    assert torch.allclose(again.images_, trained.images_, atol=1e-5)
    other = tmp_path / "resnet34.pth"
    from nasdistill.spaces import get_space

    torch.save(get_space("backbones").build({"model": "resnet34"}, data.image_shape, 10).state_dict(), other)
    with pytest.raises(ConfigError, match="do not fit resnet18"):
        get_method("sre2l", ipc=1, **{**settings, "teacher_weights": str(other)}).fit(data, progress=False)
    with pytest.raises(ConfigError, match="at least 17 px"):  # 8x8 digits: see search_spaces/backbones.py
        get_method("sre2l", ipc=1, **settings).check(digits)


@pytest.mark.parametrize("hardware_bf16", [False, True])
def test_the_proxy_key_names_the_teachers_precision_where_it_is_not_fp32(monkeypatch, tmp_path, hardware_bf16):
    """The teacher trains in bf16 where the device computes it in hardware: such a teacher, and so
    the images squeezed from it, differ from an fp32 teacher's, and the proxy's key says so (as the
    teacher's own key does). On fp32 devices, and with teacher_weights, the key is what it was."""
    import nasdistill.distill.relabel as relabel

    monkeypatch.setattr(relabel, "resolve_precision", lambda p, device="cpu": "bf16" if hardware_bf16 else "fp32")
    m = get_method("sre2l", ipc=2, **FAST)
    base = {k: v for k, v in m.get_params().items() if k not in ("device", "checkpoint_every")}
    assert m.make_teacher().train.precision == ("bf16" if hardware_bf16 else "fp32")
    if hardware_bf16:
        assert m.settings() == {**base, "teacher_precision": "bf16"}
    else:
        assert m.settings() == base
    weights = tmp_path / "t.pt"
    weights.touch()
    loaded = get_method("sre2l", ipc=2, **FAST, teacher_weights=str(weights))
    assert "teacher_precision" not in loaded.settings()  # given weights: no training, no precision


def test_a_bf16_teachers_proxy_and_an_fp32_teachers_have_different_keys(digits, monkeypatch):
    import nasdistill.distill.relabel as relabel

    m = get_method("sre2l", ipc=2, **FAST)
    keys = {}
    for precision in ("fp32", "bf16"):
        monkeypatch.setattr(relabel, "resolve_precision", lambda p, device="cpu", precision=precision: precision)
        keys[precision] = m.key(digits)
    assert keys["fp32"] != keys["bf16"]
