"""Training loop and differentiable augmentation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nasdistill._seed import generator
from nasdistill.errors import ConfigError
from nasdistill.spaces import get_space
from nasdistill.training import DiffAugment, TrainConfig, evaluate, fit_evaluate, soft_cross_entropy, train

SMALL = "D2-W32-relu-instancenorm-avgpool"


def _model(ds, seed=0, arch=SMALL):
    space = get_space("convnet")
    return space.build_seeded(space.parse_id(arch), ds.image_shape, ds.num_classes, seed)


def test_training_learns_digits(digits):
    acc, log = fit_evaluate(_model(digits), digits.x_train, digits.y_train, digits.x_test, digits.y_test,
                            TrainConfig(epochs=8, batch_size=64, augment="dsa"))
    assert acc > 0.85, acc
    assert log.losses[-1] < log.losses[0]
    assert log.steps == 8 * (len(digits.y_train) // 64)  # 1,217 = 19 x 64 + 1: the lone image is skipped


def test_training_is_deterministic_on_cpu(digits):
    cfg = TrainConfig(steps=20, batch_size=64, augment="dsa", seed=3)
    a, b = _model(digits), _model(digits)
    train(a, digits.x_train, digits.y_train, cfg)
    train(b, digits.x_train, digits.y_train, cfg)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    c = _model(digits)
    train(c, digits.x_train, digits.y_train, cfg.replace(seed=4))
    assert not all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), c.state_dict().values()))


def test_dropout_draws_depend_on_the_seed_not_on_what_ran_before(digits):
    """Dropout draws from torch's global generator: train() seeds it from the config's seed, so a
    network with dropout trains the same after any other use of the generator, differently under
    another seed, and the caller's generator is left where it was."""
    def dropout_model():
        m = _model(digits)
        m.classifier = torch.nn.Sequential(torch.nn.Dropout(0.5), m.classifier)
        return m

    cfg = TrainConfig(steps=6, batch_size=64, seed=3)
    a, b, c = dropout_model(), dropout_model(), dropout_model()
    torch.manual_seed(1)
    train(a, digits.x_train, digits.y_train, cfg)
    torch.manual_seed(2)
    torch.rand(5)
    before = torch.random.get_rng_state()
    train(b, digits.x_train, digits.y_train, cfg)
    assert torch.equal(torch.random.get_rng_state(), before)  # the caller's stream is untouched
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    train(c, digits.x_train, digits.y_train, cfg.replace(seed=4))
    assert not all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), c.state_dict().values()))


def test_numpy_inputs_train_as_tensors_do_and_bad_inputs_get_one_line(digits):
    cfg = TrainConfig(steps=10, batch_size=64, seed=1)
    a, b = _model(digits), _model(digits)
    train(a, digits.x_train, digits.y_train, cfg)
    train(b, digits.x_train.numpy(), digits.y_train.tolist(), cfg)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert evaluate(a, digits.x_test.numpy(), digits.y_test.numpy()) == evaluate(a, digits.x_test, digits.y_test)
    x, y = digits.x_train, digits.y_train
    for args, match in [((x, y[:5]), "train got 1217 images but 5 labels"),
                        ((x[:0], y[:0]), "cannot train on an empty split"),
                        (((x * 255).to(torch.uint8), y), "torch.uint8 images; it takes normalised float"),
                        ((x, y.float()), "labels shaped \\(1217,\\)"),
                        ((x, y[:, None]), "int class indices \\(N,\\) or soft label rows")]:
        with pytest.raises(ConfigError, match=match) as err:
            train(_model(digits), *args, cfg)
        assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="evaluate got 450 images but 3 labels"):
        evaluate(a, digits.x_test, digits.y_test[:3])


def test_soft_labels_match_hard_labels_when_one_hot():
    logits = torch.randn(6, 4)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    assert torch.allclose(soft_cross_entropy(logits, y),
                          soft_cross_entropy(logits, torch.nn.functional.one_hot(y, 4).float()))


def test_callback_stops_training(digits):
    seen = []
    log = train(_model(digits), digits.x_train, digits.y_train, TrainConfig(epochs=5, batch_size=256),
                callback=lambda epoch, model: seen.append(epoch) or epoch == 2)
    assert seen == [1, 2] and log.stopped_early and log.epochs == 2


def test_lr_schedule_and_config_errors():
    with pytest.raises(ConfigError):
        TrainConfig()
    with pytest.raises(ConfigError):
        TrainConfig(epochs=1, steps=1)
    with pytest.raises(ConfigError):
        TrainConfig(epochs=1, schedule="warm")
    assert TrainConfig(epochs=3).replace(steps=5).steps == 5
    # refused when built, not at the first training step (or, for 2.5 epochs, never)
    for kw, match in [(dict(epochs=2.5), "epochs must be a whole number, got 2.5"),
                      (dict(steps=True), "steps must be a whole number"),
                      (dict(epochs=3, batch_size=64.0), "batch_size must be a whole number"),
                      (dict(epochs=3, augment="crop_bogus"), "unknown augmentation 'bogus'"),
                      (dict(epochs=3, lr="0.1"), "lr must be a finite number"),
                      (dict(epochs=3, lr=float("nan")), "lr must be a finite number"),
                      (dict(epochs=3, momentum=1.5), r"momentum must be in \[0, 1\)"),
                      (dict(epochs=3, weight_decay=-1e-4), "weight_decay must be 0 or more"),
                      (dict(epochs=3, seed="7"), "seed must be a whole number")]:
        with pytest.raises(ConfigError, match=match):
            TrainConfig(**kw)
    import numpy as np

    cfg = TrainConfig(epochs=np.int64(3), batch_size=np.int32(64))
    assert type(cfg.epochs) is int and type(cfg.batch_size) is int and cfg.budget()["epochs"] == 3
    # NumPy floats (a grid of settings) act as the floats they stand for: same budget, JSON-able keys
    cfg = TrainConfig(epochs=3, lr=np.float32(0.5), momentum=np.float64(0.9), seed=np.int64(4))
    assert type(cfg.lr) is float and type(cfg.seed) is int
    assert cfg.budget() == TrainConfig(epochs=3, lr=0.5, momentum=0.9).budget()


def test_evaluate_counts_correct():
    class Fixed(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.one_hot(x[:, 0, 0, 0].long(), 3).float()

    x = torch.tensor([0, 1, 2, 2]).float().view(4, 1, 1, 1)
    assert evaluate(Fixed(), x, torch.tensor([0, 1, 1, 2])) == 0.75


# --- augmentation ------------------------------------------------------------------------------
def test_augment_is_differentiable_and_siamese(digits):
    aug = DiffAugment(mode="all")
    x = digits.x_train[:8].clone().requires_grad_(True)
    params = aug.sample(1, generator(0))
    out = aug(x, params)
    out.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    # the same sampled transformation applied twice gives the same result (siamese)
    assert torch.equal(aug(x.detach(), params), aug(x.detach(), params))
    # a single-image parameter set transforms every image of a batch the same way
    twice = torch.cat([x.detach()[:1], x.detach()[:1]])
    y = aug(twice, params)
    assert torch.allclose(y[0], y[1])


def test_each_augmentation_changes_images_as_described():
    x = torch.arange(64.0).view(1, 1, 8, 8)
    g = generator(0)
    flip = DiffAugment("flip")
    p = flip.sample(1, g)
    p.values["flip"]["p"][:] = 0.0
    assert torch.equal(flip(x, p), x.flip(3))
    crop = DiffAugment("crop")
    p = crop.sample(1, g)
    p.values["crop"]["tx"][:] = 1 / 8  # one pixel to the right
    p.values["crop"]["ty"][:] = 0.0
    shifted = crop(x, p)
    assert torch.allclose(shifted[..., :, :7], x[..., :, 1:], atol=1e-4)  # sampled one pixel along
    cutout = DiffAugment("cutout")
    p = cutout.sample(1, g)
    p.values["cutout"]["cx"][:] = 0.5
    p.values["cutout"]["cy"][:] = 0.5
    cut = cutout(x + 1, p)
    assert int((cut == 0).sum()) == 16 == int((cut[..., 2:6, 2:6] == 0).sum())  # a centred 4x4 square
    assert torch.equal(DiffAugment("none")(x), x)
    with pytest.raises(ConfigError):
        DiffAugment("blur")


def test_batchnorm_survives_a_leftover_batch_of_one(digits):
    """1,217 digits at batch 64 leave one image for the last batch; BN on 1x1 maps must not crash."""
    n = len(digits.y_train)
    assert n % 64 == 1
    model = _model(digits, arch="D4-W32-relu-batchnorm-avgpool")
    log = train(model, digits.x_train, digits.y_train, TrainConfig(epochs=1, batch_size=64))
    assert log.epochs == 1 and log.steps == n // 64


@pytest.mark.parametrize("name", ["nb201", "macro"])
def test_float32_batch_norm_spaces_train_and_evaluate_in_channels_last_to_float_rounding(name, monkeypatch):
    """nb201's and macro's networks ask for channels_last in float32 on a CPU (fp32_channels_last): their
    convolutions see NHWC inputs; the trained weights and the predictions equal an NCHW training's to float
    rounding; afterwards the model is as before (contiguous parameters, nothing left swapped). DC's
    ConvNet, and any float32 request without a CPU device (the distillation methods), stay NCHW."""
    import nasdistill.training.loop as loop
    from nasdistill.training import predict
    from nasdistill.training.layout import wants_fast_layout

    space = get_space("nb201:cells_per_stage=1,channels=8" if name == "nb201" else name)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(24, 3, 16, 16, generator=g), torch.randint(0, 10, (24,), generator=g)
    config = TrainConfig(steps=3, batch_size=12, augment="dsa", seed=0)
    models, layouts = [], []
    for nhwc in (True, False):
        model = space.build_seeded(space.default_arch(), (3, 16, 16), 10, 0)
        assert wants_fast_layout(model, "fp32", "cpu") and not wants_fast_layout(model, "fp32")
        conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
        hook = conv.register_forward_pre_hook(lambda m, a, n=nhwc: layouts.append((n, a[0].is_contiguous())))
        if not nhwc:
            monkeypatch.setattr(loop, "wants_fast_layout", lambda *a: False)
        train(model, x, y, config)
        models.append((model, predict(model, x)))
        hook.remove()
        monkeypatch.undo()
    assert {c for n, c in layouts if n} == {False} and {c for n, c in layouts if not n} == {True}
    (a, pa), (b, pb) = models
    assert all(p.is_contiguous() for p in a.parameters())
    assert not any(m._forward_hooks or m._forward_pre_hooks or "forward" in m.__dict__ for m in a.modules())
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(pa, pb, rtol=1e-4, atol=1e-4)
    convnet = get_space("convnet").build_seeded(get_space("convnet").default_arch(), (1, 8, 8), 10, 0)
    assert not wants_fast_layout(convnet, "fp32", "cpu")
