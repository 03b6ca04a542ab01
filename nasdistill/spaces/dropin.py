"""Give a network built from ``torch.nn`` layers nasdistill's faster drop-ins, in place.

:func:`fast_layers` turns every ``nn.Conv2d``, ``nn.MaxPool2d`` and ``nn.AvgPool2d`` module (those exact
classes, not subclasses) into :class:`~nasdistill.spaces.conv.Conv2d`,
:class:`~nasdistill.spaces.layers.MaxPool2d` and :class:`~nasdistill.spaces.layers.AvgPool2d`. Each
drop-in subclasses the ``nn`` class and adds no state, so the module's class is changed and nothing
else: the same parameter objects, buffers, hooks and state-dict keys, the same initialisation (the
random draws happened when the network was built). Candidate training gives the same bits (the
drop-ins' first-order paths are PyTorch's kernels, or values equal to them); where a gradient is
differentiated again (the unrolls of ``mtt``, ``dd`` and ``rank``, gradient matching) the
convolutions take oneDNN's first-order kernels to every order.

The spaces other than DC's ConvNet (``nb201``, ``macro``, ``backbones``) apply it to the networks they
build. Measured in place, alternating, on 2 threads of an AVX-512 Xeon (2026-12-08; 50 images of
3 x 32 x 32, 5 unrolled SGD steps and the images' meta-gradient, against 10 training steps):
``macro``'s default network 1.19x faster unrolled, ``nb201``'s 1.05x, torchvision's ResNet-18 1.02x;
training bit-identical and 1.00-1.03x (the ResNet's stem max pool). Rectifiers are left as they are:
:mod:`nasdistill.spaces.activation`'s ReLU added 3% to ``nb201``'s unroll gain and cost 2.6% in its
training (a Python Function per call, ninety calls a step).
"""

from __future__ import annotations

from torch import nn

from .conv import Conv2d
from .layers import AvgPool2d, MaxPool2d

#: ``nn`` class -> nasdistill's drop-in subclass of it.
DROP_INS: dict[type, type] = {nn.Conv2d: Conv2d, nn.MaxPool2d: MaxPool2d, nn.AvgPool2d: AvgPool2d}


def fast_layers(model: nn.Module) -> nn.Module:
    """Change, in place, the class of every module of ``model`` whose class is a key of :data:`DROP_INS`
    to its drop-in (see the module docstring); returns ``model``."""
    for module in model.modules():
        fast = DROP_INS.get(type(module))
        if fast is not None:
            module.__class__ = fast
    return model


__all__ = ["DROP_INS", "fast_layers"]
