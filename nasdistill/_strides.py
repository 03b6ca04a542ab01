"""Image batches in the plain NCHW layout, whatever strides they arrived with.

A batch made by permuting NHWC pixels to ``(N, C, H, W)`` keeps NHWC strides: with ``C > 1``
``.contiguous()`` copies it, but a one-channel batch (MNIST) already counts as contiguous and keeps
strides like ``(784, 1, 28, 1)``, which also read as ``channels_last``. oneDNN then runs the first
convolution in ``channels_last`` and its output stays there: every later layer of the network runs
in the layout that is slower in float32 on a CPU, and instance norm (GroupNorm with one channel a
group) ~5x slower. Measured on DC's ConvNet, MNIST, one thread of an AVX512-BF16 EPYC: the forward
pass of 1,000 test images 1.8-1.9 s against 1.0-1.1 s in NCHW; a 256-image real-batch gradient with
every layer in channels_last 1.3 s against 0.8 s.
"""

from __future__ import annotations

import torch


def nchw(x: torch.Tensor) -> torch.Tensor:
    """``x`` contiguous; a batch of images (4-D) also with the plain NCHW strides of its shape: a no-copy
    view when its memory is already in that order (the one-channel case), one copy when it is not."""
    x = x.contiguous()
    return x.view(x.shape) if x.ndim == 4 else x


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` in ``channels_last`` memory, with strides that say so also when it has one channel: a no-copy
    view when its memory is already in that order (the one-channel case), one copy when it is not.

    ``contiguous(memory_format=torch.channels_last)`` leaves a contiguous one-channel tensor as it is (its
    memory is both layouts' at once), NCHW strides included, and oneDNN picks a convolution's layout from
    its operands' strides: the first convolution of an MNIST network then runs the plain-layout kernel, in
    bf16 a slow one (2 threads of an AVX-512/AMX Xeon, 1 -> 128 channels, 3x3, 100 images of 28 x 28:
    forward 8.3 ms against 1.2 ms), and hands the next layer an NCHW tensor."""
    if x.ndim != 4:
        return x
    if x.shape[1] == 1:
        n, _, h, w = x.shape
        return x.contiguous().reshape(n, h, w, 1).permute(0, 3, 1, 2)
    return x.contiguous(memory_format=torch.channels_last)
