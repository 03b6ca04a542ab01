"""What the CPU computes in hardware, for the layers (``spaces``) and the loops (``training``) alike."""

from __future__ import annotations

import torch

#: torch's private probes of bfloat16 hardware (absent in some versions: then False).
_BF16_PROBES = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")


def cpu_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AMX or AVX512-BF16); elsewhere bf16 is emulated
    and slower than float32. Asked each time (half a microsecond), so a test may patch the probes."""
    return any(getattr(torch.cpu, name, lambda: False)() for name in _BF16_PROBES)
