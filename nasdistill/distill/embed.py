"""Embedding real images when no gradient flows through them (dm's class means, krr's regression
targets, cafe's feature maps): in pieces under ``torch.inference_mode``, optionally through
:func:`torch.compile`.

Pieces of :data:`REAL_CHUNK` images keep each activation small enough for the C allocator to reuse
its memory on a CPU (no page faults: measured ~1.4x for dm, the same numbers). ``compile=True`` runs
the embedding through inductor, which fuses each block's normalisation, activation and pooling into
one pass over memory: 1.4x on that part on a 2-core AVX2 CPU after a one-time compile of ~20 s,
values equal to float rounding (~1e-6). Fresh networks of one architecture reuse the compiled code
(their weights are inputs); each new input shape (the piece, a batch's last piece) compiles once.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from ..training.layout import as_layout, fast_layout, wants_fast_layout
from ..training.loop import bf16_autocast

#: Real images embedded at a time on a CPU (measured for dm: 32 beats 64 and whole 256-image classes).
REAL_CHUNK = 32

#: Pixels (images x height x width) of a piece on a CPU: :data:`REAL_CHUNK` MNIST images' worth.
REAL_PIXELS = REAL_CHUNK * 28 * 28


def real_chunk(x: torch.Tensor, device: str | torch.device | None = None) -> int | None:
    """Images of ``x`` (N, C, H, W) to embed at a time: about :data:`REAL_PIXELS` pixels a piece on a CPU
    (32 MNIST images, 392 images of scikit-learn's 8x8 digits, 24 of CIFAR-10), None (at once) elsewhere.
    A piece's activations are what the allocator must hold, and they scale with its pixels: small images
    in pieces of 32 spend their time in the per-call overhead of small convolutions (dm on 8x8 digits:
    pieces of 392 (or 128) 1.3x faster than pieces of 32, the same numbers)."""
    if torch.device(device if device is not None else x.device).type != "cpu":
        return None
    return max(1, REAL_PIXELS // max(1, x.shape[-1] * x.shape[-2]))

_compiled: dict[str, object] = {}


def _embed(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return net.embed(x)


def _feature_maps(net: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    return net.feature_maps(x)


_EAGER = {"embed": _embed, "feature_maps": _feature_maps}


def embed_fn(compile: bool = False, what: str = "embed"):
    """``f(net, x) = net.embed(x)`` (or ``net.feature_maps(x)``), eager or through :func:`torch.compile`
    (built on first use)."""
    if not compile:
        return _EAGER[what]
    if what not in _compiled:
        _compiled[what] = torch.compile(_EAGER[what], dynamic=False)
    return _compiled[what]


def in_pieces(fn, x: torch.Tensor, chunk: int | None = REAL_CHUNK):
    """``fn(x)`` computed in pieces of ``chunk`` images (None: at once) under ``torch.inference_mode``
    and concatenated along the batch: a tensor, or a list of tensors when ``fn`` returns lists (feature
    maps), as ordinary tensors autograd may use (no gradient flows to ``x`` or through ``fn``). Only
    for functions that do not couple images (no batch statistics)."""
    with torch.inference_mode():
        outs = [fn(p) for p in (x.split(chunk) if chunk else (x,))]
    # concatenated outside inference mode: ordinary tensors (autograd may save them for backward)
    if isinstance(outs[0], torch.Tensor):
        return torch.cat(outs)
    return [torch.cat(maps) for maps in zip(*outs)]


def real_pass(net: nn.Module, x: torch.Tensor, *, what: str = "embed", chunk: int | None = REAL_CHUNK,
              compile: bool = False, precision: str = "fp32"):
    """``net.embed(x)`` (or ``net.feature_maps(x)``) of images no gradient flows through, by
    :func:`in_pieces`, eager or compiled; with ``precision="bf16"`` under bfloat16 autocast in the fast
    layout (:func:`~nasdistill.training.layout.fast_layout`). Float32 results either way."""
    return real_passes(net, [x], what=what, chunk=chunk, compile=compile, precision=precision)[0]


def real_passes(net: nn.Module, batches, *, what: str = "embed", chunk: int | None = REAL_CHUNK,
                compile: bool = False, precision: str = "fp32") -> list:
    """:func:`real_pass` of several batches (dm's classes) in one fast-layout block: the network is
    re-laid out, and its weights cast to bf16, once for all of them.

    The fast layout is entered outside inference mode, so the parameters it re-lays out stay ordinary
    tensors for the passes that need gradients afterwards."""
    if not batches:
        return []
    f = embed_fn(compile, what)
    with fast_layout(net, wants_fast_layout(net, precision)) as nhwc, bf16_autocast(batches[0].device, precision):
        outs = [in_pieces(lambda piece: f(net, as_layout(piece, nhwc)), x, chunk) for x in batches]
    return [out.float() if isinstance(out, torch.Tensor) else [m.float() for m in out] for out in outs]


def check_compile(compile, *, precision: str = "fp32", matching_space: str | None = None) -> None:
    """Refuse a ``compile`` setting that is not a bool, or one that would not pay: outside fp32, or with
    a matching space (every architecture drawn would compile anew)."""
    if compile not in (True, False):
        raise ConfigError(f"compile must be true or false, got {compile!r}", "pass --set compile=true")
    if compile and (precision != "fp32" or matching_space):
        raise ConfigError("compile=true needs precision fp32 and one fixed matching network (a matching space "
                          "would compile every architecture it draws)",
                          "drop --set compile=true, or use --precision fp32 without --matching-space")


__all__ = ["REAL_CHUNK", "embed_fn", "in_pieces", "real_pass", "real_passes", "check_compile"]
