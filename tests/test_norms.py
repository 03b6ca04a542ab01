"""nasdistill.training.norms: whole-map layer norms and training batch norms with the written-out second
derivative equal PyTorch's (values, first and second derivatives, running statistics), and are swapped
in only where they apply."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nasdistill.training.norms import _GroupNorm, batch_norm, group_norm, is_map_layer_norm, layer_norm, written_out_norms


def _first_and_second(f, x, params):
    """f(x), its gradients (x and params) of sum(sin f), and the gradients of their squares' sum."""
    y = f(x)
    g1 = torch.autograd.grad(y.sin().sum(), (x, *params), create_graph=True)
    g2 = torch.autograd.grad(sum(t.square().sum() for t in g1), (x, *params))
    return (y, *g1, *g2)


def _assert_all_close(ours, theirs):
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("affine", ["affine", "none", "no bias"])
def test_layer_norm_equals_pytorchs_to_second_order_in_float64(affine):
    norm = nn.LayerNorm([8, 5, 5], elementwise_affine=affine != "none", bias=affine != "no bias").double()
    with torch.no_grad():
        for p in norm.parameters():
            p.normal_()
    x = torch.randn(3, 8, 5, 5, dtype=torch.float64, requires_grad=True)
    params = list(norm.parameters())
    _assert_all_close(_first_and_second(lambda t: layer_norm(t, norm), x, params), _first_and_second(norm, x, params))


@pytest.mark.parametrize("kw", [{}, {"affine": False}, {"momentum": None}, {"track_running_stats": False}])
def test_batch_norm_equals_pytorchs_to_second_order_and_updates_the_same_running_statistics(kw):
    ours, ref = nn.BatchNorm2d(6, **kw).double(), nn.BatchNorm2d(6, **kw).double()
    if ours.affine:
        with torch.no_grad():
            ours.weight.normal_(), ours.bias.normal_()
        ref.load_state_dict(ours.state_dict())
    x = torch.randn(4, 6, 5, 5, dtype=torch.float64, requires_grad=True)
    for _ in range(2):  # the running statistics move twice
        _assert_all_close(_first_and_second(lambda t: batch_norm(t, ours), x, list(ours.parameters())),
                          _first_and_second(ref, x, list(ref.parameters())))
    assert all(torch.equal(a, b) for a, b in zip(ours.buffers(), ref.buffers(), strict=True))
    if ours.track_running_stats:
        assert int(ours.num_batches_tracked) == 2  # one a forward pass, as the module's own forward counts
        assert type(batch_norm(x, ours).grad_fn).__name__ == "_BatchNormBackward"


@pytest.mark.parametrize("groups, channels, affine", [(4, 8, True), (2, 6, False), (1, 4, True), (8, 8, True)])
def test_group_norm_equals_pytorchs_to_second_order_in_float64(groups, channels, affine):
    norm = nn.GroupNorm(groups, channels, affine=affine).double()
    with torch.no_grad():
        for p in norm.parameters():
            p.normal_()
    x = torch.randn(3, channels, 5, 4, dtype=torch.float64, requires_grad=True)
    params = list(norm.parameters())
    _assert_all_close(_first_and_second(lambda t: group_norm(t, norm), x, params), _first_and_second(norm, x, params))
    x = torch.randn(2, channels, 3, 3, dtype=torch.float64, requires_grad=True)
    w, b = torch.randn(channels, dtype=torch.float64, requires_grad=True), torch.randn(channels, dtype=torch.float64)
    assert torch.autograd.gradgradcheck(lambda t, w, b: _GroupNorm.apply(t, w, b, groups, 1e-5), (x, w, b.requires_grad_()))


@pytest.mark.parametrize("layout", ["channels_last", "strided"])
@pytest.mark.parametrize("kind", ["layer", "batch", "group", "instance"])
def test_every_written_out_norm_takes_any_input_layout_to_second_order(kind, layout):
    """A channels_last or strided (non-contiguous) input: the same values and first and second derivatives
    as PyTorch's in float64. The batch and group norms once saved a contiguous copy of such an input, which
    is not part of the graph: their second derivative lost its term through the input without a word
    (the meta-gradient of a channels_last unroll of a group-norm ConvNet: cosine 0.91 to the right one)."""
    from nasdistill.training.instance_norm import instance_norm

    torch.manual_seed(0)
    norm, ours = {"layer": (nn.LayerNorm([8, 5, 6]), layer_norm), "batch": (nn.BatchNorm2d(8), batch_norm),
                  "group": (nn.GroupNorm(2, 8), group_norm),
                  "instance": (nn.GroupNorm(8, 8), lambda t, m: instance_norm(t, m))}[kind]
    norm = norm.double()
    with torch.no_grad():
        for p in norm.parameters():
            p.uniform_(0.5, 1.5)
    x = torch.randn(4, 8, 5, 6, dtype=torch.float64)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    else:  # every other element of a wider tensor: the same values, strides (.., 2)
        x = torch.stack([x, x], -1)[..., 0]
    assert not x.is_contiguous()
    x.requires_grad_()
    params = list(norm.parameters())  # (a training batch norm's values do not depend on its running statistics)
    _assert_all_close(_first_and_second(lambda t: ours(t, norm), x, params), _first_and_second(norm, x, params))


@pytest.mark.parametrize("case", ["eval", "bf16 autocast", "vmap", "3d"])
def test_batch_norm_elsewhere_is_pytorchs(case):
    norm = nn.BatchNorm2d(4)
    x = torch.randn(3, 4, 5, 5, requires_grad=True)
    if case == "eval":
        norm.eval()
        assert type(batch_norm(x, norm).grad_fn).__name__ != "_BatchNormBackward"
    elif case == "bf16 autocast":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert type(batch_norm(x, norm).grad_fn).__name__ != "_BatchNormBackward"
    elif case == "vmap":  # (running statistics cannot be updated in place under vmap: none kept)
        norm, plain = nn.BatchNorm2d(4, track_running_stats=False), nn.BatchNorm2d(4, track_running_stats=False)
        out = torch.func.vmap(lambda t: batch_norm(t, norm))(x.detach().unsqueeze(0))
        torch.testing.assert_close(out, torch.func.vmap(plain)(x.detach().unsqueeze(0)))
    else:
        with pytest.raises(ValueError):
            batch_norm(torch.randn(3, 4, 5), norm)
        with pytest.raises(ValueError, match="more than 1 value per channel"):  # as nn.BatchNorm2d refuses it
            batch_norm(torch.randn(1, 4, 1, 1), norm)


def test_written_out_norms_swap_exact_classes_in_and_out_and_nest():
    class Mine(nn.BatchNorm2d):
        pass

    net = nn.Sequential(nn.GroupNorm(8, 8), nn.LayerNorm([8, 5, 5]), nn.BatchNorm2d(8), Mine(8), nn.GroupNorm(2, 8))
    with written_out_norms(net):
        assert ["forward" in m.__dict__ for m in net] == [True, True, True, False, True]
        assert net[0].forward.func.__name__ == "_swapped_forward"  # the instance norm's own, not group_norm
        with written_out_norms(net):
            pass
        assert ["forward" in m.__dict__ for m in net] == [True, True, True, False, True]
    assert not any("forward" in m.__dict__ for m in net.modules())
    x = torch.randn(3, 8, 5, 5)
    assert not is_map_layer_norm(nn.LayerNorm(5), x) and torch.equal(layer_norm(x, nn.LayerNorm(5)), nn.LayerNorm(5)(x))


def test_a_bf16_unroll_through_the_layer_norm_moves_the_pixels_as_pytorchs():
    """Under bf16 autocast (dd's and mtt's precision="bf16") the layer norm takes the written-out path with
    bf16 statistics' inputs: the images' meta-gradient points where PyTorch's autocast layer norm's does."""
    import contextlib

    from nasdistill.distill import unroll
    from nasdistill.spaces import get_space

    space = get_space("convnet")
    net = space.build_seeded(space.parse_id("D2-W32-relu-layernorm-avgpool"), (1, 12, 12), 10, 0)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(20, 1, 12, 12, generator=g), torch.arange(20) % 10
    grads = []
    for norms in (written_out_norms, lambda model: contextlib.nullcontext()):
        xs = x.clone().requires_grad_(True)
        params = {k: v.requires_grad_(True) for k, v in unroll.parameters(net).items()}
        with pytest.MonkeyPatch.context() as mp, torch.autocast("cpu", dtype=torch.bfloat16):
            mp.setattr(unroll, "written_out_norms", norms)
            out, _ = unroll.sgd_unroll(net, params, xs, y, steps=3, lr=0.1)
            loss = sum((v.float() ** 2).sum() for v in out.values())
        (gx,) = torch.autograd.grad(loss, xs)
        grads.append(gx.flatten())
    assert torch.nn.functional.cosine_similarity(*grads, dim=0) > 0.999
