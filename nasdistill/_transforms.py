"""Whether a tensor belongs to a ``torch.func`` transform, for the layers (``spaces``) and the compiled
norm kernels (``training``) alike: custom autograd Functions and compiled kernels are not written for
``vmap``'s or ``grad``'s tensors, and step aside for them."""

from __future__ import annotations

import torch

#: functorch's "is this a transform's tensor" probe (private: may move).
_PROBE = getattr(torch._C._functorch, "is_functorch_wrapped_tensor", None)


def transformed(x: torch.Tensor) -> bool | None:
    """Whether ``x`` is a tensor of a ``torch.func`` transform (``vmap``, ``grad``); None when it cannot be
    told: torch lacks the private probe, or dynamo is tracing (the probe would break its graph; nothing
    compiled is vmapped). Callers choose what None means for them."""
    if _PROBE is None or torch.compiler.is_compiling():
        return None
    return bool(_PROBE(x))
