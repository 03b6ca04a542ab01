"""The unrolls' memory layout (nasdistill.distill.unroll.unroll_layout): bf16 unrolls of instance-norm
ConvNets on a CPU run in channels_last, one-channel tensors included, and differentiate as the plain
layout does (issue 13)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nasdistill.distill.unroll as unroll
from nasdistill._strides import channels_last, nchw
from nasdistill.spaces import get_space
from nasdistill.training import make_augment
from nasdistill.training.layout import unroll_channels_last
from nasdistill.training.loop import bf16_autocast


def _net(arch="D2-W32-relu-instancenorm-avgpool", shape=(1, 12, 12)):
    space = get_space("convnet")
    return space.build_seeded(space.parse_id(arch), shape, 10, 0)


def _is_channels_last(t: torch.Tensor) -> bool:
    """channels_last strides, which a one-channel tensor may have or not (its memory is both layouts')."""
    n, c, h, w = t.shape
    return t.stride() == (h * w * c, 1, w * c, c) or (h * w == 1)


@pytest.mark.parametrize("shape", [(4, 1, 5, 6), (4, 3, 5, 6), (8, 1, 3, 3)], ids=["one-channel", "rgb", "weight"])
def test_channels_last_gives_channels_last_strides_also_to_one_channel_tensors(shape):
    x = torch.randn(shape)
    y = channels_last(x)
    assert _is_channels_last(y) and torch.equal(y, x)
    if shape[1] == 1:
        assert y.data_ptr() == x.data_ptr()  # a view: the memory is already in that order
        assert x.contiguous(memory_format=torch.channels_last).stride() == x.stride()  # what PyTorch leaves
    back = nchw(y)
    assert back.is_contiguous() and back.stride() == x.stride() and torch.equal(back, x)
    assert channels_last(torch.randn(3, 4)).shape == (3, 4)  # other tensors pass


def test_the_unroll_layout_is_channels_last_only_for_bf16_instance_norm_convnets_on_a_cpu():
    assert unroll_channels_last(_net(), "bf16", "cpu")
    assert unroll_channels_last(_net("D2-W32-relu-none-maxpool"), "bf16", torch.device("cpu"))
    assert not unroll_channels_last(_net(), "fp32", "cpu")  # float32: measured slower (0.97x on dd)
    assert not unroll_channels_last(_net(), "bf16", "meta")  # not measured off a CPU
    for norm in ("batchnorm", "layernorm", "groupnorm"):
        assert not unroll_channels_last(_net(f"D2-W32-relu-{norm}-avgpool"), "bf16", "cpu"), norm
    assert not unroll_channels_last(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), "bf16", "cpu")


@pytest.mark.parametrize(("arch", "shape"), [
    ("D2-W32-relu-instancenorm-avgpool", (1, 12, 12)), ("D2-W32-relu-instancenorm-avgpool", (3, 8, 8)),
    ("D2-W32-leakyrelu-instancenorm-maxpool", (1, 12, 12)), ("D2-W32-sigmoid-none-avgpool", (1, 14, 14)),
    ("D2-W32-relu-instancenorm-none", (1, 6, 6))], ids=["one-channel", "rgb", "maxpool", "odd-pool", "no-pool"])
def test_a_bf16_unroll_runs_in_channels_last_and_differentiates_as_in_the_plain_layout(arch, shape, monkeypatch):
    """A 3-step DSA unroll and a real batch, as dd's: every convolution sees channels_last tensors
    (through the augmentation and the updates), the gradient hooks leave with the block, and the
    pixels' and step size's meta-gradients equal the plain layout's to bf16 rounding (the ConvNet
    space's activations and pools, 7 x 7 maps pooled to 3 x 3 included)."""
    model = _net(arch, shape)
    for p in model.parameters():
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    x0, y = torch.randn(20, *shape, generator=g), torch.arange(20) % 10
    real_x, real_y = torch.randn(30, *shape, generator=g), torch.arange(30) % 10
    aug = make_augment("dsa", shape[0])
    seen = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_pre_hook(lambda mod, args: seen.append((_is_channels_last(args[0]),
                                                                       _is_channels_last(mod.weight))))

    def meta_grad():
        x = x0.clone().requires_grad_()
        lr = torch.tensor(0.05, requires_grad=True)
        params = {k: v.requires_grad_() for k, v in unroll.parameters(model).items()}
        with unroll.unroll_layout(model, "bf16", "cpu") as lay, bf16_autocast("cpu", "bf16"):
            final, _ = unroll.sgd_unroll(model, params, x, y, steps=3, lr=lr,
                                         generator=torch.Generator().manual_seed(1),
                                         augment=lambda xb, gen: aug(xb, generator=gen), layout=lay)
            logits = unroll.forward(model, final, lay(real_x))
        assert not any(m._forward_hooks for m in model.children())  # the gradient hooks left with the block
        return torch.cat([g.flatten() for g in torch.autograd.grad(F.cross_entropy(logits.float(), real_y), [x, lr])])

    fast = meta_grad()
    assert len(seen) == 2 * 4 and all(a and b for a, b in seen), seen
    seen.clear()
    monkeypatch.setattr(unroll, "unroll_channels_last", lambda *a: False)
    plain = meta_grad()
    assert not any(a and b for a, b in seen[:1])  # the plain layout's first convolution: NCHW
    assert fast.abs().sum() > 0
    assert F.cosine_similarity(fast, plain, dim=0) > 0.999, F.cosine_similarity(fast, plain, dim=0)
    assert float((fast - plain).norm() / plain.norm()) < 3e-2


@pytest.mark.parametrize("method", ["dd", "mtt"])
def test_dd_and_mtt_run_their_bf16_unrolls_in_channels_last(digits, method, tmp_path, monkeypatch):
    """The methods take the layout: each convolution of a bf16 iteration sees channels_last tensors, and the
    iteration's pixel gradients equal the plain layout's to bf16 rounding."""
    from nasdistill.distill import get_method

    common = dict(ipc=2, iterations=1, net="D2-W32-relu-instancenorm-avgpool", checkpoint_every=0, precision="bf16")
    if method == "dd":
        common.update(inner_steps=2, inner_epochs=2, batch_real=64, init="real")
    else:
        common.update(syn_steps=4, expert_epochs=1, max_start_epoch=1, num_experts=1, train_epochs=1,
                      build_experts=True, experts_dir=str(tmp_path))
    layouts = []

    def hook(module, args):
        if isinstance(module, nn.Conv2d) and torch.is_autocast_enabled("cpu"):  # the unroll's, not the experts'
            layouts.append(_is_channels_last(args[0]))

    grads = []
    for fast in (True, False):
        handle = nn.modules.module.register_module_forward_pre_hook(hook)
        try:
            with monkeypatch.context() as m:
                if not fast:
                    m.setattr(unroll, "unroll_channels_last", lambda *a: False)
                d = get_method(method, **common)
                d.fit(digits, progress=False)
        finally:
            handle.remove()
        grads.append(d.images.grad.flatten())
        if fast:
            assert layouts and all(layouts), layouts
            layouts.clear()
    assert layouts and not all(layouts)  # the plain layout: the one-channel images' convolution in NCHW
    assert F.cosine_similarity(grads[0], grads[1], dim=0) > 0.999, F.cosine_similarity(grads[0], grads[1], dim=0)
