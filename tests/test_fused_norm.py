"""The compiled (fused) passes of the channels_last instance norm (nasdistill.training.fused_norm): values,
the switch, the fallback when compiling fails, and where they apply."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from _norms import inputs, run
from _norms import make_norm as _norm
from torch import nn

from nasdistill.spaces import get_space
from nasdistill.training import fused_norm
from nasdistill.training.instance_norm import instance_norm
from nasdistill.training.layout import as_layout, fast_layout


def _inputs(shape, seed=0):
    return inputs(torch.bfloat16, shape, seed)


def _run(norm, x, dy, fn=None):
    """:func:`_norms.run` of ``fn`` (default: the first-order instance norm of ``norm``)."""
    return run(fn or (lambda t: instance_norm(t, norm, twice=False)), x, dy, norm)


@pytest.fixture
def eager(monkeypatch):
    """Inside a test: a function running ``fn()`` with the fused kernels switched off."""
    def run(fn):
        with monkeypatch.context() as m:
            m.setenv("NASDISTILL_FUSED_NORM", "0")
            return fn()
    return run


@pytest.fixture
def counted(monkeypatch):
    """Counts the compiled kernels' calls (by name) while the real ones run."""
    calls = {"forward": 0, "backward": 0, "double_backward": 0}
    real = fused_norm.run

    def run(name, *args):
        calls[name] += 1
        return real(name, *args)

    monkeypatch.setattr(fused_norm, "run", run)
    return calls


@pytest.mark.parametrize("shape", [(6, 16, 12, 12), (3, 32, 7, 5), (1, 8, 2, 2)], ids=["12x12", "7x5", "one image"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
@pytest.mark.parametrize("slope", [None, 0.0, 0.1], ids=["norm", "relu", "leaky"])
def test_fused_passes_are_at_least_as_close_to_the_exact_values_as_the_eager_ones(shape, affine, slope, eager,
                                                                                  counted):
    x, dy = _inputs(shape)
    norm = _norm(shape[1], affine=affine)
    fn = lambda t: instance_norm(t, norm, twice=False, slope=slope)  # noqa: E731
    fused = _run(norm, x, dy, fn=fn)
    assert counted == {"forward": 1, "backward": 1, "double_backward": 0}
    plain = eager(lambda: _run(norm, x, dy, fn=fn))
    assert counted == {"forward": 1, "backward": 1, "double_backward": 0}  # the switch kept them out
    act = (lambda t: t) if slope is None else (lambda t: F.leaky_relu(t, slope))  # noqa: E731
    ref = _norm(shape[1], affine=affine).double()
    if affine:
        ref.load_state_dict(norm.state_dict())
    exact = _run(ref, x.double(), dy.double(), fn=lambda t: act(ref(t)))
    assert fused[0].dtype == fused[1].dtype == torch.bfloat16
    assert fused[0].is_contiguous(memory_format=torch.channels_last)
    for a, b, e, name in zip(fused, plain, exact, ("output", "input grad", "weight grad", "bias grad")):
        err_fused = float((a.double() - e).norm() / e.norm())
        err_eager = float((b.double() - e).norm() / e.norm())
        assert err_fused < 1e-2, (name, err_fused)  # bf16 rounding of the output; float32 inside
        assert err_fused <= err_eager * 1.05 + 1e-6, (name, err_fused, err_eager)


def test_an_inplace_relu_may_follow_and_inference_mode_runs_it(counted):
    x, _ = _inputs((4, 16, 8, 8))
    norm = _norm(16)
    x.requires_grad_()
    y = F.relu(instance_norm(x, norm, twice=False), inplace=True)
    y.float().sum().backward()
    assert x.grad is not None and norm.weight.grad is not None
    with torch.inference_mode():
        z = instance_norm(x.detach(), norm, twice=False)
    torch.testing.assert_close(F.relu(z), y.detach(), rtol=0, atol=0)  # the same kernel, inference or not
    assert counted == {"forward": 2, "backward": 1, "double_backward": 0}


def test_other_dtypes_and_layouts_keep_the_eager_ops(monkeypatch):
    def refuse(name, *args):
        raise AssertionError(f"fused {name} called")

    monkeypatch.setattr(fused_norm, "run", refuse)
    x, dy = _inputs((4, 16, 8, 8))
    norm = _norm(16)
    _run(norm, x.float(), dy.float())                                   # float32 channels_last
    _run(norm, x.contiguous(), dy.contiguous())                         # bf16 NCHW: PyTorch's kernels
    _run(norm, x.contiguous(), dy.contiguous(), fn=lambda t: instance_norm(t, norm))  # and twice-differentiable
    assert not fused_norm.applies(torch.zeros(2, 3, 4, 4, dtype=torch.float16).contiguous(
        memory_format=torch.channels_last))
    assert torch.func.vmap(lambda t: torch.tensor(fused_norm.applies(t)))(x.unsqueeze(0)).item() is False


def _break_compiler(monkeypatch, message, forward=None):
    """Compiling fails with ``message`` from now on (the forward "compiles" to ``forward`` when given)."""
    def broken(*args):
        raise RuntimeError(message)

    monkeypatch.setattr(fused_norm, "_compiled", {"forward": forward or broken, "backward": broken})
    monkeypatch.setattr(fused_norm, "_broken", [])


@pytest.mark.parametrize("slope", [None, 0.1], ids=["norm", "leaky"])
def test_a_failed_compile_warns_once_and_runs_the_eager_ops(monkeypatch, eager, slope):
    """Also with an activation handed to the norm: the fallback applies it (the two modules' values)."""
    _break_compiler(monkeypatch, "no C++ compiler here\nsecond line")
    x, dy = _inputs((4, 16, 8, 8))
    norm = _norm(16)
    fn = lambda t: instance_norm(t, norm, twice=False, slope=slope)  # noqa: E731
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler here"):
        got = _run(norm, x, dy, fn=fn)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning: the attempt is not repeated
        again = _run(norm, x, dy, fn=fn)
    assert not fused_norm.enabled()
    apart = (lambda t: instance_norm(t, norm, twice=False)) if slope is None else (  # noqa: E731
        lambda t: F.leaky_relu(instance_norm(t, norm, twice=False), slope))
    want = eager(lambda: _run(norm, x, dy, fn=apart))
    for a, b, c in zip(got, again, want):
        torch.testing.assert_close(a, c, rtol=0, atol=0)
        torch.testing.assert_close(b, c, rtol=0, atol=0)


@pytest.mark.parametrize("slope", [None, 0.0, 0.1], ids=["norm", "relu", "leaky"])
def test_a_failed_backward_compile_falls_back_from_the_saved_input(monkeypatch, slope):
    # the forward "compiled" as the plain function (same values as the kernel, to float rounding)
    _break_compiler(monkeypatch, "backward kernel failed", forward=fused_norm.forward)
    x, dy = _inputs((4, 16, 8, 8))
    norm = _norm(16)
    with pytest.warns(RuntimeWarning, match="backward kernel failed"):
        got = _run(norm, x, dy, fn=lambda t: instance_norm(t, norm, twice=False, slope=slope))
    act = (lambda t: t) if slope is None else (lambda t: F.leaky_relu(t, slope))
    ref = _norm(16).double()
    ref.load_state_dict(norm.state_dict())
    exact = _run(ref, x.double(), dy.double(), fn=lambda t: act(ref(t)))
    for a, e, name in zip(got, exact, ("output", "input grad", "weight grad", "bias grad")):
        assert float((a.double() - e).norm() / e.norm()) < 1e-2, name


def test_a_failed_compile_of_the_twice_differentiable_norms_gradients_falls_back_to_the_eager_formulas(
        monkeypatch, eager):
    """The bf16 unrolls' channels_last norm (kind "fused"): with its forward compiled but its backward
    and double backward failing to compile, the eager channels_last formulas take the compiled forward's
    statistics and give the eager path's gradient of a gradient to bf16 rounding, with one warning."""
    _break_compiler(monkeypatch, "backward kernel failed", forward=fused_norm.forward)
    fused_norm._compiled["double_backward"] = fused_norm._compiled["backward"]
    x, dy = _inputs((4, 16, 10, 10))
    norm = _norm(16)

    def meta():
        t = x.clone().requires_grad_()
        (gw,) = torch.autograd.grad((instance_norm(t, norm) * dy).float().sum(), [norm.weight], create_graph=True)
        return torch.cat([g.flatten() for g in torch.autograd.grad(gw.square().sum(), [t, norm.weight])]).float()

    with pytest.warns(RuntimeWarning, match="backward kernel failed"):
        got = meta()
    want = eager(meta)
    assert float((got - want).norm() / want.norm()) < 2e-2


def test_a_bf16_convnet_pass_in_the_fast_layout_is_as_close_to_float32_as_the_eager_one(eager, counted):
    """DC's ConvNet (instance norms) in the bf16 fast layout, forward and backward, with and without
    the kernels, against the same pass in float32: the fused one no further from it."""
    space = get_space("convnet")
    model = space.build_seeded(space.parse_id("D3-W32-relu-instancenorm-avgpool"), (1, 28, 28), 10, 0)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 1, 28, 28, generator=g), torch.randint(0, 10, (16,), generator=g)

    def step(bf16=True):
        model.zero_grad()
        with fast_layout(model, bf16) as nhwc, torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(as_layout(x, nhwc)).float(), y)
        loss.backward()
        return torch.cat([loss.detach().view(1), *[p.grad.reshape(-1) for p in model.parameters()]])

    fused = step()
    assert counted["forward"] == 3 and counted["backward"] == 3  # one per norm layer
    plain = eager(step)
    exact = step(bf16=False)
    err = lambda t: float((t - exact).norm() / exact.norm())  # noqa: E731
    assert err(fused) < 0.1 and err(fused) <= 1.2 * err(plain), (err(fused), err(plain))


# --- a ReLU / LeakyReLU computed with the norm before it ------------------------------------------
def _convnet(act):
    space = get_space("convnet")
    return space.build_seeded(space.parse_id(f"D2-W32-{act}-instancenorm-avgpool"), (1, 16, 16), 10, 0)


def _acts(model):
    return [m for m in model.modules() if isinstance(m, (nn.ReLU, nn.LeakyReLU))]


def test_fast_layout_fuses_each_norm_with_the_activation_after_it_and_restores_both():
    model = _convnet("leakyrelu")
    with fast_layout(model, True):
        norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
        assert all(m.forward.args[-1] == 0.01 for m in norms)  # the LeakyReLU's slope, in the norm
        x = torch.randn(3, 32, 8, 8).contiguous(memory_format=torch.channels_last)
        assert all(a(x) is x for a in _acts(model))  # the activations pass their input through
    assert all("forward" not in m.__dict__ for m in model.modules())


@pytest.mark.parametrize("reason", ["shared", "hooked", "twice"])
def test_pairs_with_a_shared_or_hooked_activation_or_a_second_derivative_stay_apart(reason):
    from nasdistill.training.instance_norm import written_out_instance_norms

    model = _convnet("relu")
    if reason == "shared":  # one ReLU module used in both blocks
        model.blocks[1][2] = model.blocks[0][2]
    if reason == "hooked":
        for a in _acts(model):
            a.register_forward_hook(lambda *args: None)
    with written_out_instance_norms(model, twice=reason == "twice", fuse_activations=True):
        assert all("forward" not in a.__dict__ for a in _acts(model))
        assert all(m.forward.args[-1] is None for m in model.modules() if isinstance(m, nn.GroupNorm))


@pytest.mark.parametrize("act", ["relu", "leakyrelu"])
def test_a_fused_activation_gives_the_unfused_values(act, monkeypatch):
    """Without the kernels the fused pair runs the same ops as the two modules (bit-identical); with
    them, within bf16 rounding of those (the same ReLU, a float32 pre-activation inside)."""
    from nasdistill.training import instance_norm as inorm

    model = _convnet(act)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 1, 16, 16, generator=g), torch.randint(0, 10, (8,), generator=g)

    def step(fuse, kernels):
        model.zero_grad()
        with monkeypatch.context() as m:
            m.setenv("NASDISTILL_FUSED_NORM", "1" if kernels else "0")
            if not fuse:
                m.setattr(inorm, "_norm_activation_pairs", lambda model: {})
            with fast_layout(model, True) as nhwc, torch.autocast("cpu", dtype=torch.bfloat16):
                loss = F.cross_entropy(model(as_layout(x, nhwc)).float(), y)
            loss.backward()
        return torch.cat([loss.detach().view(1), *[p.grad.reshape(-1) for p in model.parameters()]])

    torch.testing.assert_close(step(True, False), step(False, False), rtol=0, atol=0)
    fused, apart = step(True, True), step(False, True)
    assert float((fused - apart).norm() / apart.norm()) < 2e-2


# --- the unrolls' second derivative ------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_an_unrolled_step_differentiates_the_norm_gradient_through_the_compiled_kernel(dtype, layout, eager, counted):
    """A gradient of a gradient through instance norms (an unroll's SGD step, as in mtt and dd): the
    compiled double backward runs (NCHW; and channels_last bf16, the layout of the bf16 unrolls on a CPU,
    whose forward and first backward are compiled too) and gives the eager formulas' values (float32 to
    float rounding, bf16 within bf16 rounding of float64). Float32 channels_last keeps the eager ops."""
    x, dy = _inputs((4, 16, 10, 10))
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x, dy = x.to(dtype).contiguous(memory_format=fmt), dy.to(dtype).contiguous(memory_format=fmt)
    norm = _norm(16)

    def meta(t, dt=dtype, n=norm):
        t = t.to(dt).clone().requires_grad_()
        w = n.weight
        y = instance_norm(t, n, twice=True) if dt != torch.float64 else n(t)
        (gw,) = torch.autograd.grad((y * dy.to(dt)).sum(), [w], create_graph=True)
        step = w - 0.1 * gw  # one SGD step of the weight
        out = (instance_norm(t, n, twice=True) if dt != torch.float64 else n(t)) * step.view(1, -1, 1, 1).to(dt)
        gx, gw2 = torch.autograd.grad(out.float().square().sum(), [t, w])
        return torch.cat([gx.double().reshape(-1), gw2.double()])

    compiled = meta(x)
    if layout == "nchw":
        assert counted == {"forward": 0, "backward": 0, "double_backward": 1}
    elif dtype == torch.bfloat16:  # every pass compiled: two forwards, two backwards, one derivative of one
        assert counted == {"forward": 2, "backward": 2, "double_backward": 1}
    else:
        assert counted == {"forward": 0, "backward": 0, "double_backward": 0}
    plain = eager(lambda: meta(x))
    ref = _norm(16).double()
    ref.load_state_dict(norm.state_dict())
    exact = meta(x.double(), torch.float64, ref)
    err = lambda t: float((t - exact).norm() / exact.norm())  # noqa: E731
    if dtype == torch.float32:
        torch.testing.assert_close(compiled, plain, rtol=1e-4, atol=1e-4)
    assert err(compiled) < (1e-4 if dtype == torch.float32 else 3e-2) and err(compiled) <= 1.2 * err(plain) + 1e-6
