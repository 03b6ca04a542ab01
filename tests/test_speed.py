"""The optimised training and distillation paths compute what the plain ones do (issue 13).

Each test runs a straightforward, unoptimised version of the same math (written here, as the code
read before the optimisations) next to the library's path and asserts the same result.
"""

from __future__ import annotations

import math
import shutil

import pytest
import torch
import torch.nn.functional as F

from nasdistill._seed import derive_seed, generator, seeded
from nasdistill.spaces import get_space
from nasdistill.training import TrainConfig, evaluate, make_augment, predict, soft_cross_entropy, train

SMALL = "D2-W32-relu-instancenorm-avgpool"


def _model(ds, seed=0, arch=SMALL):
    space = get_space("convnet")
    return space.build_seeded(space.parse_id(arch), ds.image_shape, ds.num_classes, seed)


def _plain_train(model, x, y, config):
    """The training loop before issue 13: per-step host reads of the loss, per-parameter SGD."""
    model.train()
    n = len(x)
    bs = min(config.batch_size, n)
    spe, total = config.steps_per_epoch(n), config.total_steps(n)
    opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                          weight_decay=config.weight_decay, foreach=False)
    aug = make_augment(config.augment, x.shape[1])
    g = generator(derive_seed("batches", config.seed))
    losses, step = [], 0
    while step < total:
        perm = torch.randperm(n, generator=g)
        epoch_loss, nb = 0.0, 0
        for i in range(spe):
            if step >= total:
                break
            half = step >= total // 2 and total > 1
            lr = config.lr * (0.1 if half else 1.0) if config.schedule == "step" else (
                config.lr * 0.5 * (1 + math.cos(math.pi * step / total)) if config.schedule == "cosine" else config.lr)
            for group in opt.param_groups:
                group["lr"] = lr
            idx = perm[i * bs:(i + 1) * bs]
            xb = x[idx]
            if aug is not None:
                xb = aug(xb, generator=g)
            loss = soft_cross_entropy(model(xb).float(), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            epoch_loss += float(loss.detach())
            nb += 1
        losses.append(epoch_loss / max(1, nb))
    return losses


def _plain_accuracy(model, x, y):
    model.eval()
    with torch.no_grad():
        out = torch.cat([model(x[i:i + 256]) for i in range(0, len(x), 256)])
    model.train()
    return float((out.argmax(1) == y).float().mean())


def test_training_equals_the_plain_loop(digits):
    """Whole-proxy batches, on-device loss sums and foreach SGD: the same weights and epoch losses."""
    x, y = digits.x_train[:100], digits.y_train[:100]
    for cfg in (TrainConfig(epochs=6, augment="dsa", seed=2),
                TrainConfig(steps=9, batch_size=32, schedule="cosine", seed=1)):
        a, b = _model(digits), _model(digits)
        log = train(a, x, y, cfg)
        losses = _plain_train(b, x, y, cfg)
        assert log.losses == losses
        assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
        assert evaluate(a, digits.x_test, digits.y_test) == _plain_accuracy(b, digits.x_test, digits.y_test)


def test_predict_is_an_inference_pass_in_eval_mode(digits):
    m = _model(digits)
    m.train()
    out = predict(m, digits.x_test[:50], batch_size=16)
    assert m.training and not out.requires_grad and out.shape == (50, digits.num_classes)
    m.eval()
    with torch.no_grad():
        assert torch.allclose(out, m(digits.x_test[:50]), atol=1e-6)


def _runs_nchw(batch: torch.Tensor) -> bool:
    """Whether a convolution fed ``batch`` puts out the plain NCHW layout (not channels_last)."""
    out = torch.nn.Conv2d(batch.shape[1], 16, 3)(batch)
    return out.is_contiguous() and not out.is_contiguous(memory_format=torch.channels_last)


def test_one_channel_images_run_the_network_in_nchw(mnist_small, digits):
    """Pixels permuted from NHWC keep NHWC strides when C is 1 (already "contiguous"), and oneDNN then ran
    every layer in channels_last (slower in fp32, instance norm ~5x). Datasets, proxies and the training loop's
    batches come in NCHW (streamed batches: test_stream)."""
    from nasdistill.data import Proxy
    from nasdistill.training.layout import as_layout

    nhwc_strided = torch.randn(4, 8, 8, 1).permute(0, 3, 1, 2).contiguous()
    assert not _runs_nchw(nhwc_strided)  # the trap: contiguous, yet the convolution goes channels_last
    assert _runs_nchw(as_layout(nhwc_strided, False)) and torch.equal(as_layout(nhwc_strided, False), nhwc_strided)
    assert as_layout(nhwc_strided, True).is_contiguous(memory_format=torch.channels_last)
    for ds in (mnist_small, digits):
        for x in (ds.x_train, ds.x_test, ds.x_train[torch.tensor([3, 1, 2])], ds.x_test[5:9]):
            assert _runs_nchw(x)
    proxy = Proxy(images=nhwc_strided, labels=torch.arange(4))
    assert _runs_nchw(proxy.images)


def _dm_step_plain(d, dataset, t):
    """DM's iteration written as the reference does it: one pass of each class's real images, with grad off."""
    g = generator(derive_seed(d.seed, "step", t))
    with seeded(derive_seed(d.seed, "torch", t)):
        net = d.nets.build(d.seed, t, dataset, d.device).train()
        for p in net.parameters():
            p.requires_grad_(False)
        loss = 0.0
        for c, idx in enumerate(d._by_class):
            idx = idx[torch.randperm(len(idx), generator=g)[: d.batch_real]]
            real, syn = dataset.x_train[idx], d.images[c * d.ipc:(c + 1) * d.ipc]
            if d.aug is not None:
                p = d.aug.sample(1, g, d.device)
                real, syn = d.aug(real, p), d.aug(syn, p)
            with torch.no_grad():
                rm = net.embed(real).mean(0)
            loss = loss + ((rm - net.embed(syn).mean(0)) ** 2).sum()
    d.opt.zero_grad(set_to_none=True)
    loss.backward()
    d.opt.step()
    return loss.item()


def test_dm_iteration_equals_the_plain_iteration(digits):
    from nasdistill.distill import get_method
    from nasdistill.distill.base import FitContext

    for net in (SMALL, "D2-W32-relu-batchnorm-avgpool"):
        a = get_method("dm", ipc=2, iterations=1, batch_real=40, net=net)
        b = get_method("dm", ipc=2, iterations=1, batch_real=40, net=net)
        for d in (a, b):
            d._init_state(digits, FitContext())
        with seeded(derive_seed(a.seed, "torch", 0)):
            la = a._step(0, digits, generator(derive_seed(a.seed, "step", 0)))
        lb = _dm_step_plain(b, digits, 0)
        assert math.isclose(la, lb, rel_tol=1e-5), (la, lb)
        assert torch.allclose(a.images, b.images, atol=1e-6)


def test_dm_bf16_real_path_is_an_option_that_changes_the_key(digits):
    from nasdistill.distill import get_method
    from nasdistill.errors import ConfigError

    plain, fast = get_method("dm", ipc=1), get_method("dm", ipc=1, precision="bf16")
    assert "precision" not in plain.settings()  # keys of proxies stored before the option stay valid
    assert plain.key(digits) != fast.key(digits)
    fast = get_method("dm", ipc=1, iterations=2, batch_real=16, precision="bf16", net=SMALL).fit(digits)
    assert torch.isfinite(fast.images_).all() and len(fast.history_) == 2
    try:
        get_method("dm", ipc=1, precision="fp8").fit(digits)
    except ConfigError as e:
        assert "precision" in str(e)
    else:
        raise AssertionError("an unknown precision must be refused")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                    reason="torch.compile on a CPU needs a C++ compiler (c++ or g++ on PATH)")
# a call dynamo cannot trace breaks the compiled graph (no fusion across it): the space's layers must not make one
@pytest.mark.filterwarnings("error:Dynamo does not know how to trace")
def test_dm_compiled_real_path_moves_the_pixels_as_the_eager_one(digits):
    """``compile=True`` (the real embedding through torch.compile) gives dm's, krr's and cafe's images and
    losses to float rounding, is keyed (the default left out of keys), and is refused where it would not pay."""
    from nasdistill.distill import get_method
    from nasdistill.errors import ConfigError

    settings = dict(ipc=2, iterations=3, batch_real=32, net=SMALL)
    eager = get_method("dm", **settings).fit(digits)
    compiled = get_method("dm", **settings, compile=True).fit(digits)
    assert torch.allclose(compiled.images_, eager.images_, atol=1e-4)
    assert compiled.history_ == pytest.approx(eager.history_, rel=1e-4)
    assert "compile" not in eager.settings() and eager.key(digits) != compiled.key(digits)
    for bad in (dict(precision="bf16"), dict(matching_space="convnet"), dict(compile="yes")):
        with pytest.raises(ConfigError, match="compile"):
            get_method("dm", **{**settings, "net": None, "compile": True, **bad}).fit(digits)
    # krr's real batch and cafe's real feature maps the same way (pieces of 32, one compiled shape)
    for method, settings in (("krr", dict(ipc=2, iterations=3, batch_real=64, pool_size=2, net=SMALL)),
                             ("cafe", dict(ipc=2, iterations=3, batch_real=32, inner_steps=2, net=SMALL))):
        eager = get_method(method, **settings).fit(digits)
        compiled = get_method(method, **settings, compile=True).fit(digits)
        assert torch.allclose(compiled.images_, eager.images_, atol=1e-4), method
        assert compiled.history_ == pytest.approx(eager.history_, rel=1e-4), method


def test_real_batches_embedded_in_pieces_equal_the_whole_batch(digits):
    """dm's and krr's real images go through the network in pieces under inference_mode: the embedding
    of the whole batch, for per-image norms in train mode and for batch norm in eval mode."""
    from nasdistill.distill.embed import real_pass

    x = digits.x_train[:100]
    for arch, train_mode in ((SMALL, True), ("D2-W32-relu-batchnorm-avgpool", False)):
        net = _model(digits, arch=arch).train(train_mode)
        with torch.no_grad():
            whole = net.embed(x)
        pieces = real_pass(net, x, chunk=32)
        assert not pieces.is_inference() and not pieces.requires_grad
        assert torch.allclose(pieces, whole, atol=1e-6)


def test_real_pieces_hold_about_the_same_pixels_whatever_the_image_size():
    """Real images are embedded in pieces of ~32 MNIST images' pixels on a CPU: more small images a
    piece (8x8 digits: 392), fewer large ones, at least one; at once elsewhere."""
    from nasdistill.distill.embed import REAL_PIXELS, real_chunk

    assert real_chunk(torch.zeros(2, 1, 28, 28)) == 32
    assert real_chunk(torch.zeros(2, 1, 8, 8)) == 392
    assert real_chunk(torch.zeros(2, 3, 32, 32)) == 24
    assert real_chunk(torch.zeros(2, 3, 512, 512)) == 1 and REAL_PIXELS < 512 * 512
    assert real_chunk(torch.zeros(2, 1, 8, 8), device="meta") is None


def test_cafe_real_feature_maps_in_pieces_give_the_whole_batch_loss(digits, monkeypatch):
    """cafe's real images go through the network in pieces under inference_mode: the same loss and
    pixel gradients as one whole-batch pass (batch norm, which couples images, keeps one pass)."""
    import nasdistill.distill.methods.cafe as cafe
    from nasdistill.distill import get_method
    from nasdistill.distill.base import FitContext

    pieces = 7  # digits' batch of 40 fits one real_chunk (392 8x8 images): smaller pieces, to see them
    for net in (SMALL, "D2-W32-relu-batchnorm-avgpool"):
        d = get_method("cafe", ipc=2, iterations=1, batch_real=40, net=net)
        d._init_state(digits, FitContext())
        real, syn, sizes = d._batches(digits, generator(0))
        d.kept.build(0)
        d.kept.model.requires_grad_(False)
        out = {}
        for chunk in (pieces, None):
            monkeypatch.setattr(cafe, "real_chunk", lambda x, device, chunk=chunk: chunk)
            loss = d._loss(d.kept.model, real, syn, sizes)
            out[chunk] = (float(loss.detach()), torch.autograd.grad(loss, d.images, retain_graph=True)[0])
        (la, ga), (lb, gb) = out.values()
        assert math.isclose(la, lb, rel_tol=1e-6) and torch.allclose(ga, gb, atol=1e-6)


def test_dc_real_gradients_in_pieces_equal_the_whole_batch(digits):
    import torch.nn.functional as F

    from nasdistill.distill import get_method
    from nasdistill.distill.base import FitContext

    for arch in (SMALL, "D2-W32-relu-batchnorm-avgpool"):
        d = get_method("dsa", ipc=1, batch_real=40, net=arch)
        d._init_state(digits, FitContext())
        net = _model(digits, arch=arch)
        for m in net.modules():  # dc freezes batch norm (eval mode) while it matches gradients
            if isinstance(m, torch.nn.BatchNorm2d):
                m.eval()
        params = [p for p in net.parameters() if p.requires_grad]
        real = digits.x_train[digits.y_train == 3][:40]
        whole = torch.autograd.grad(F.cross_entropy(net(real), torch.full((40,), 3)), params)
        for chunk in (7, 32):
            pieces = d._real_gradients(net, params, real, 3, chunk=chunk)
            assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(pieces, whole))
        if "batchnorm" not in arch:
            continue
        net.train()  # batch norm in training mode couples the images: the batch stays whole
        whole = torch.autograd.grad(F.cross_entropy(net(real), torch.full((40,), 3)), params)
        assert all(torch.equal(a, b) for a, b in zip(d._real_gradients(net, params, real, 3, chunk=7), whole))


def test_keep_freed_memory_can_be_turned_off(monkeypatch):
    from nasdistill.training import keep_freed_memory, memory

    assert keep_freed_memory() == (memory._mallopt() is not None)  # True on Linux with glibc
    monkeypatch.setenv("NASDISTILL_KEEP_MEMORY", "0")
    assert keep_freed_memory() is False


def _plain_bf16_train(model, x, y, config):
    """bf16 training as it ran before the fast layout: autocast in the plain (NCHW) layout."""
    import nasdistill.training.loop as loop

    real = loop.wants_fast_layout
    loop.wants_fast_layout = lambda *a: False
    try:
        return train(model, x, y, config)
    finally:
        loop.wants_fast_layout = real


@pytest.mark.slow
def test_bf16_fast_layout_trains_every_norm_like_the_plain_layout(digits):
    """bf16 runs channels_last with contiguous norm layers: the same training to bf16 rounding,
    and afterwards the model is as before (contiguous parameters, no hooks left)."""
    x, y = digits.x_train[:200], digits.y_train[:200]
    cfg = TrainConfig(epochs=8, batch_size=50, augment="dsa", precision="bf16", seed=3)
    for norm in ("instancenorm", "batchnorm", "layernorm", "groupnorm", "none"):
        arch = f"D2-W32-relu-{norm}-avgpool"
        a, b = _model(digits, arch=arch), _model(digits, arch=arch)
        la, lb = train(a, x, y, cfg), _plain_bf16_train(b, x, y, cfg)
        assert all(p.is_contiguous() for p in a.parameters()), norm
        assert not any(m._forward_hooks or m._forward_pre_hooks or "forward" in m.__dict__ for m in a.modules()), norm
        # bf16 rounds differently in the two layouts; the trainings agree, they are not bit-equal
        assert abs(la.losses[-1] - lb.losses[-1]) < 0.1 * lb.losses[0], (norm, la.losses, lb.losses)
        acc_a = evaluate(a, digits.x_test, digits.y_test, precision="bf16")
        acc_b = evaluate(b, digits.x_test, digits.y_test)
        assert abs(acc_a - acc_b) < 0.08, (norm, acc_a, acc_b)
        assert acc_a > 0.5 or norm == "none", (norm, acc_a)  # an unnormalised net barely moves in 32 steps


def test_bf16_predict_matches_fp32_predict_to_bf16_rounding(digits):
    m = _model(digits)
    train(m, digits.x_train[:100], digits.y_train[:100], TrainConfig(epochs=3))
    fp32 = predict(m, digits.x_test[:64])
    bf16 = predict(m, digits.x_test[:64], precision="bf16")
    assert bf16.dtype == torch.float32 and bf16.shape == fp32.shape
    assert (bf16.argmax(1) == fp32.argmax(1)).float().mean() > 0.9
    assert torch.allclose(bf16, fp32, atol=0.1 * float(fp32.abs().max()))


def test_dsa_bf16_gradients_point_where_the_fp32_ones_do(digits):
    """dsa's bf16 option: the real batch's gradient (bf16, channels_last) is the fp32 gradient to
    bf16 rounding (cosine > 0.99 per weight), the option changes the key, and the network is
    left as it was (contiguous, no hooks)."""
    from nasdistill.distill import get_method
    from nasdistill.distill.base import FitContext

    plain = get_method("dsa", ipc=2, iterations=1, batch_real=40, net=SMALL)
    fast = get_method("dsa", ipc=2, iterations=1, batch_real=40, net=SMALL, precision="bf16")
    assert "precision" not in plain.settings() and plain.key(digits) != fast.key(digits)
    for d in (plain, fast):
        d._init_state(digits, FitContext())
    net = plain.nets.build(0, 0, digits, "cpu").train()
    params = [p for p in net.parameters() if p.requires_grad]
    real = digits.x_train[digits.y_train == 3][:40]
    a, b = plain._real_gradients(net, params, real, 3), fast._real_gradients(net, params, real, 3)
    for x, y in zip(a, b):
        assert x.shape == y.shape and y.is_contiguous()
        if x.ndim > 1:  # what the matching distance reads (a conv bias before a norm has a zero gradient: noise)
            assert F.cosine_similarity(x.flatten(), y.flatten(), dim=0) > 0.99
    assert all(p.is_contiguous() for p in net.parameters())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in net.modules())
    fit = get_method("dsa", ipc=2, iterations=2, batch_real=16, outer_loop=2, inner_loop=2, net=SMALL,
                     precision="bf16").fit(digits)
    assert torch.isfinite(fit.images_).all() and len(fit.history_) == 2


def test_mtt_bf16_student_moves_the_pixels_as_fp32_does(digits, tmp_path):
    """mtt's bf16 option: one iteration from the same state changes the pixels in the direction
    fp32 does (cosine > 0.99), and the option changes the key."""
    from nasdistill.distill import get_method

    common = dict(ipc=2, iterations=1, syn_steps=4, expert_epochs=1, max_start_epoch=1, num_experts=1,
                  train_epochs=1, build_experts=True, experts_dir=str(tmp_path), net=SMALL, checkpoint_every=0)
    plain, fast = get_method("mtt", **common), get_method("mtt", **common, precision="bf16")
    assert "precision" not in plain.settings() and plain.key(digits) != fast.key(digits)
    moves = []
    for d in (plain, fast):
        d.fit(digits, progress=False)
        start = d._initial_images(digits)
        moves.append((d.images_ - start).flatten())
    assert moves[0].abs().sum() > 0
    assert F.cosine_similarity(moves[0], moves[1], dim=0) > 0.99, F.cosine_similarity(moves[0], moves[1], dim=0)


def test_dd_bf16_unroll_gives_the_pixels_and_step_sizes_the_fp32_gradients(digits):
    """dd's bf16 option (the unrolled steps and the real batch under autocast): one iteration from the
    same state gives the pixels and the step sizes the fp32 gradients to bf16 rounding (cosine > 0.99;
    Adam's first step is their sign, so the gradients are compared, not the moves), and the option
    changes the key."""
    from nasdistill.distill import get_method

    common = dict(ipc=2, iterations=1, inner_steps=2, inner_epochs=2, batch_real=64, init="real", net=SMALL,
                  checkpoint_every=0)
    plain, fast = get_method("dd", **common), get_method("dd", **common, precision="bf16")
    assert "precision" not in plain.settings() and plain.key(digits) != fast.key(digits)
    for d in (plain, fast):
        d.fit(digits, progress=False)  # one iteration: .grad holds its gradients
    for name in ("images", "raw_lrs"):
        a, b = (getattr(d, name).grad.flatten() for d in (plain, fast))
        assert a.abs().sum() > 0
        assert F.cosine_similarity(a, b, dim=0) > 0.99, (name, F.cosine_similarity(a, b, dim=0))
    with pytest.raises(Exception, match="precision"):
        get_method("dd", ipc=1, precision="half").fit(digits)


@pytest.mark.parametrize("method", ["dd", "dsa"])
def test_an_iteration_through_the_written_out_norm_equals_one_through_pytorchs(digits, monkeypatch, method):
    """dd's unroll and dsa's synthetic-image gradients differentiate the instance norm twice through
    nasdistill.training.instance_norm (nasdistill.training.norms.written_out_norms) and the convolutions
    through nasdistill.spaces.conv's _Conv (inside
    differentiated_twice): one fp32 iteration from the same state gives the pixels the gradient (dd) or
    the move (dsa: plain SGD, so the move is the gradient) it gives through PyTorch's group norm and
    convolution, to float rounding."""
    import contextlib

    import nasdistill.distill.unroll as unroll_module
    import nasdistill.spaces.conv as conv_module
    from nasdistill.distill import get_method

    settings = (dict(ipc=2, iterations=1, inner_steps=2, inner_epochs=2, batch_real=64, init="real")
                if method == "dd" else dict(ipc=2, iterations=1, batch_real=40, outer_loop=1, inner_loop=1))
    results, seen = [], []
    for native in (False, True):
        if native:  # PyTorch's group norm and convolution, as before the written-out second derivatives
            # (dd's unroll and dsa's synthetic gradients both run inside unroll.twice_differentiable)
            monkeypatch.setattr(unroll_module, "written_out_norms", lambda model: contextlib.nullcontext())
            monkeypatch.setattr(unroll_module, "differentiated_twice", contextlib.nullcontext)
        else:
            monkeypatch.setattr(conv_module._Conv, "apply", (lambda f: lambda *a: seen.append(1) or f(*a))(
                conv_module._Conv.apply))
        d = get_method(method, net=SMALL, checkpoint_every=0, **settings).fit(digits, progress=False)
        results.append(d.images.grad.clone() if method == "dd" else d.images_ - d._initial_images(digits))
        monkeypatch.undo()
    assert seen and results[0].abs().sum() > 0
    torch.testing.assert_close(results[0], results[1], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method", ["cafe", "krr"])
def test_cafe_and_krr_bf16_gives_the_pixels_and_the_network_the_fp32_gradients(digits, method):
    """cafe's and krr's bf16 option (the real images' feature maps / features and the network's
    training in bf16, the synthetic side in float32): one iteration from the same state gives the pixels
    the fp32 gradient to bf16 rounding (cosine > 0.99), the option changes the key, and compile=true
    with it is refused."""
    from nasdistill.distill import get_method
    from nasdistill.distill.base import FitContext
    from nasdistill.errors import ConfigError

    common = dict(ipc=2, iterations=1, batch_real=40, net=SMALL, checkpoint_every=0)
    plain, fast = get_method(method, **common), get_method(method, **common, precision="bf16")
    assert "precision" not in plain.settings() and plain.key(digits) != fast.key(digits)
    grads = []
    for d in (plain, fast):
        d.fit(digits, progress=False)  # one iteration: .grad holds its pixel gradient
        grads.append(d.images.grad.flatten())
    assert grads[0].abs().sum() > 0
    assert F.cosine_similarity(grads[0], grads[1], dim=0) > 0.99, F.cosine_similarity(grads[0], grads[1], dim=0)
    with pytest.raises(ConfigError, match="compile=true needs precision fp32"):
        get_method(method, **common, precision="bf16", compile=True).fit(digits)
    # the network's training on the synthetic set (cafe's kept network, krr's online pool step), the
    # other bf16 part: the same first step's gradient to bf16 rounding, and the network back in NCHW
    steps = []
    for precision in ("fp32", "bf16"):
        d = get_method(method, **common, precision=precision, **{"cafe": {"inner_steps": 1},
                                                                  "krr": {"online_steps": 1}}[method])
        d._init_state(digits, FitContext())
        if method == "cafe":
            d.kept.build(0)
            net = d.kept.model
            d._train_network(generator(0))
        else:
            net = d.pool[0]
            d._train_online(0, generator(0))
        assert all(p.is_contiguous() for p in net.parameters())
        steps.append(torch.cat([p.grad.flatten() for p in net.parameters()]))
    assert steps[0].abs().sum() > 0
    assert F.cosine_similarity(steps[0], steps[1], dim=0) > 0.99, F.cosine_similarity(steps[0], steps[1], dim=0)


def test_auto_precision_is_bf16_exactly_where_the_hardware_runs_it(monkeypatch):
    """``auto`` resolves to bf16 on a CPU with AMX or AVX512-BF16 and to fp32 on one without (where bf16
    is emulated); an explicit precision is kept; an unknown one is refused in one line."""
    from nasdistill.errors import ConfigError
    from nasdistill.training import native_bf16, resolve_precision

    assert resolve_precision("auto", "cpu") == ("bf16" if native_bf16("cpu") else "fp32")
    for amx, avx in ((True, False), (False, True), (False, False)):
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda amx=amx: amx)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda avx=avx: avx)
        assert resolve_precision("auto", "cpu") == ("bf16" if amx or avx else "fp32")
        assert resolve_precision("fp32", "cpu") == "fp32" and resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(ConfigError, match="unknown precision 'fp16'"):
        resolve_precision("fp16", "cpu")


@pytest.mark.parametrize("affine", [True, False])
def test_channels_last_layer_norm_equals_pytorchs(affine):
    """The fast layout's LayerNorm over (C, H, W) runs on the NHWC view of a channels_last tensor: the
    values and gradients of ``nn.LayerNorm`` (float64: to rounding), the output channels_last, and an
    in-place ReLU after it allowed (the output is no view)."""
    from nasdistill.training.layout import layer_norm_channels_last

    torch.manual_seed(0)
    norm = torch.nn.LayerNorm([4, 5, 6], elementwise_affine=affine).double()
    if affine:
        with torch.no_grad():
            norm.weight.normal_()
            norm.bias.normal_()
    x = torch.randn(3, 4, 5, 6, dtype=torch.float64)
    g = torch.randn_like(x)
    out = {}
    for name, layout, f in (("plain", torch.contiguous_format, norm),
                            ("nhwc", torch.channels_last, lambda t: layer_norm_channels_last(norm, t))):
        xi = x.contiguous(memory_format=layout).requires_grad_(True)
        y = torch.relu_(f(xi))
        grads = torch.autograd.grad(y, [xi, *norm.parameters()], g)
        out[name] = (y, grads)
    (y0, g0), (y1, g1) = out["plain"], out["nhwc"]
    assert y1.is_contiguous(memory_format=torch.channels_last) and not y1.is_contiguous()
    assert g1[0].is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y1, y0)
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b)
    # anything else (a contiguous input, other normalised dims) goes the plain way
    torch.testing.assert_close(layer_norm_channels_last(norm, x), norm(x))


def test_fast_layout_hands_the_head_boundary_a_channels_last_gradient():
    """Under the fast layout, the gradient a model's own forward (its flatten) sends back into its
    channels_last feature maps is made channels_last (mixed layouts make the ReLU's backward ~14x
    slower), the LayerNorm is swapped in and out, and the model leaves the block as it was."""
    from nasdistill.training.layout import as_layout, fast_layout

    space = get_space("convnet")
    net = space.build_seeded(space.parse_id("D2-W32-relu-layernorm-none"), (1, 8, 8), 10, 0)
    seen = []
    with fast_layout(net) as nhwc:
        assert nhwc and all("forward" in m.__dict__ for m in net.modules() if isinstance(m, torch.nn.LayerNorm))
        maps = net.blocks(as_layout(torch.randn(4, 1, 8, 8), nhwc))
        maps.register_hook(lambda grad: seen.append(grad))  # runs after the fast layout's own hook
        net.classifier(maps.flatten(1)).sum().backward()
    assert seen and seen[0].is_contiguous(memory_format=torch.channels_last) and not seen[0].is_contiguous()
    assert not any(m._forward_hooks or m._forward_pre_hooks or "forward" in m.__dict__ for m in net.modules())
    assert all(p.is_contiguous() for p in net.parameters())
