"""nasdistill.spaces.dropin: the other spaces' networks get nasdistill's convolutions and pools by a class
change only: the same parameters, state dict and training bits, and the fast derivatives in unrolls."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from nasdistill.distill import unroll
from nasdistill.spaces import get_space
from nasdistill.spaces.conv import Conv2d
from nasdistill.spaces.dropin import DROP_INS, fast_layers
from nasdistill.spaces.layers import MaxPool2d
from nasdistill.training import TrainConfig, train

PLAIN = {fast: plain for plain, fast in DROP_INS.items()}


def _plain_copy(net: nn.Module) -> nn.Module:
    """The same network with torch.nn's own classes back in place of the drop-ins."""
    twin = copy.deepcopy(net)
    for m in twin.modules():
        if type(m) in PLAIN:
            m.__class__ = PLAIN[type(m)]
    return twin


SPACES = [("nb201", None), ("macro", None), ("backbones", "resnet18")]


@pytest.mark.parametrize("name, arch_id", SPACES)
def test_spaces_build_networks_of_drop_ins_that_train_to_the_same_bits(name, arch_id):
    space = get_space(name)
    arch = space.parse_id(arch_id) if arch_id else space.default_arch()
    shape = (3, 32, 32)
    net = space.build_seeded(arch, shape, 10, 0)
    assert not any(type(m) in DROP_INS for m in net.modules())            # nothing left of the nn classes swapped
    assert any(type(m) is Conv2d for m in net.modules())
    plain = _plain_copy(net)
    assert plain.state_dict().keys() == net.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), net.state_dict().values()))
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, *shape, generator=g), torch.randint(0, 10, (16,), generator=g)
    for model in (net, plain):
        train(model, x, y, TrainConfig(steps=2, batch_size=8, seed=0))
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), plain.parameters()))


@pytest.mark.parametrize("name", ["nb201", "macro"])
def test_unrolls_through_other_spaces_take_the_fast_derivatives_with_pytorchs_values(name, monkeypatch):
    """An unrolled step's meta-gradient to the images runs the convolutions' written derivative
    (``_Conv``) and equals the nn network's to float rounding."""
    import nasdistill.spaces.conv as conv

    space = get_space(name)
    net = space.build_seeded(space.default_arch(), (3, 16, 16), 10, 0)
    plain = _plain_copy(net)
    calls = []
    apply = conv._Conv.apply
    monkeypatch.setattr(conv._Conv, "apply", lambda *a: calls.append(1) or apply(*a))
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(8, 3, 16, 16, generator=g), torch.randint(0, 10, (8,), generator=g)
    grads = []
    for model in (net, plain):
        xs = x.clone().requires_grad_(True)
        params = {k: v.requires_grad_(True) for k, v in unroll.parameters(model).items()}
        out, _ = unroll.sgd_unroll(model, params, xs, y, steps=1, lr=0.01)
        (gx,) = torch.autograd.grad(sum((v * v).sum() for v in out.values()), xs)
        grads.append(gx)
        if model is net:
            assert calls, "the drop-in convolutions did not take their twice-differentiable path"
            n = len(calls)
    assert len(calls) == n  # the nn network never did
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-4 * grads[1].abs().max().item())


def test_fast_layers_changes_exact_nn_classes_only_and_keeps_the_module_objects():
    class MyPool(nn.MaxPool2d):
        pass

    conv, pool, mine, relu = nn.Conv2d(3, 4, 3), nn.MaxPool2d(2), MyPool(2), nn.ReLU()
    seq = nn.Sequential(conv, pool, mine, relu)
    weight = conv.weight
    assert fast_layers(seq) is seq
    assert type(seq[0]) is Conv2d and seq[0] is conv and seq[0].weight is weight
    assert type(seq[1]) is MaxPool2d and type(seq[2]) is MyPool and type(seq[3]) is nn.ReLU
