"""Image batches in the plain NCHW layout, whatever strides they arrived with.

A batch made by permuting NHWC pixels to ``(N, C, H, W)`` keeps NHWC strides: with ``C > 1``
``.contiguous()`` copies it, but a one-channel batch (MNIST) already counts as contiguous and keeps
strides like ``(784, 1, 28, 1)``, which also read as ``channels_last``. oneDNN then runs the first
convolution in ``channels_last`` and its output stays there: every later layer of the network runs
in the layout that is slower in float32 on a CPU, and instance norm (GroupNorm with one channel a
group) ~5x slower. Measured on DC's ConvNet, MNIST, one CPU thread: the test-split forward pass
1.7x slower, a dsa/dm real-batch gradient ~1.3x slower.
"""

from __future__ import annotations

import torch


def nchw(x: torch.Tensor) -> torch.Tensor:
    """``x`` (any shape) with the plain contiguous strides of its shape: a no-copy view when its
    memory is already in that order (the one-channel case), one copy when it is not."""
    x = x.contiguous()
    return x.view(x.shape) if x.ndim == 4 else x
