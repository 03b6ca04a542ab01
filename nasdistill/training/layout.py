"""The fast memory layout of bfloat16 training and inference: ``channels_last`` with contiguous norms.

oneDNN (CPU, AMX / AVX-512-BF16) and cuDNN run bfloat16 convolutions fastest on NHWC tensors
(``torch.channels_last``), but PyTorch's CPU group norm is several times slower on them (an
instance norm, GroupNorm(C, C), ~10x in bf16). :func:`fast_layout` therefore turns a model's
convolutions to ``channels_last``, computes instance norms in that layout itself
(:mod:`nasdistill.training.instance_norm`: no copies), and wraps the other norm layers that are slow
on it (LayerNorm, LocalResponseNorm, GroupNorm with 2-15 channels a group) in a hook that hands them
a contiguous (NCHW) tensor and returns ``channels_last`` again. GroupNorm's NHWC kernel is fast with
16 or more channels a group (GroupNorm(4, 128): 1.4x faster unhooked).

Measured on this project's CPU (one thread, one SGD step on 100 images, DC's ConvNet space,
bf16 autocast): 1.1-2.5x over bf16 in NCHW, 1.4-4x over float32, for every normalisation
(``benchmarks/throughput.py`` has the candidate-training figure). Float32 keeps the plain layout:
its results stay bit-identical to earlier releases, and NHWC float32 is not faster on every net.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from .._strides import nchw
from .instance_norm import is_instance_norm, written_out_instance_norms

#: Layers given a contiguous input under :func:`fast_layout` (slow on channels_last tensors).
CONTIGUOUS_LAYERS = (nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)

#: GroupNorm's channels_last kernel is fast from this many channels a group on.
FAST_NHWC_GROUP = 16


def needs_contiguous(m: nn.Module) -> bool:
    """Whether layer ``m`` runs faster given a contiguous input than a channels_last one."""
    if isinstance(m, nn.GroupNorm):
        return m.num_channels // m.num_groups < FAST_NHWC_GROUP
    return isinstance(m, CONTIGUOUS_LAYERS)


def _to_contiguous(module, args):
    x = args[0]
    return (x.contiguous(), *args[1:]) if isinstance(x, torch.Tensor) else None


def _to_channels_last(module, args, out):
    if isinstance(out, torch.Tensor) and out.ndim == 4:
        return out.contiguous(memory_format=torch.channels_last)
    return None


def wants_fast_layout(model: nn.Module, precision: str) -> bool:
    """Whether :func:`fast_layout` pays: bfloat16 on a model with 2-D convolutions."""
    return precision == "bf16" and any(isinstance(m, nn.Conv2d) for m in model.modules())


def as_layout(x: torch.Tensor, enabled: bool) -> torch.Tensor:
    """A batch of images in ``channels_last`` when ``enabled``, else in plain NCHW (:func:`~nasdistill._strides.nchw`:
    a one-channel batch with NHWC strides would run the network in channels_last); other tensors as they are."""
    if x.ndim != 4:
        return x
    return x.contiguous(memory_format=torch.channels_last) if enabled else nchw(x)


@contextmanager
def fast_layout(model: nn.Module, enabled: bool = True) -> Iterator[bool]:
    """Run ``model`` in ``channels_last`` (norm layers contiguous) inside the block; yields ``enabled``.

    On exit the parameters are contiguous again and the hooks are gone: the model, its
    ``state_dict`` and anything saved from it look as if the block never ran. Feed it inputs
    through :func:`as_layout`.
    """
    if not enabled:
        yield False
        return
    handles = []
    try:
        model.to(memory_format=torch.channels_last)
        # instance norms computed in channels_last (nasdistill.training.instance_norm: no copies),
        # first-order as training passes are
        with written_out_instance_norms(model, twice=False):
            for m in model.modules():
                if needs_contiguous(m) and not is_instance_norm(m):  # (instance norms: swapped above)
                    handles.append(m.register_forward_pre_hook(_to_contiguous))
                    handles.append(m.register_forward_hook(_to_channels_last))
            yield True
    finally:
        for h in handles:
            h.remove()
        model.to(memory_format=torch.contiguous_format)


__all__ = ["fast_layout", "as_layout", "wants_fast_layout", "needs_contiguous", "CONTIGUOUS_LAYERS"]
