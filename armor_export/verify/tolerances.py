"""Default parity tolerances by export dtype (elementwise: |a - b| <= atol + rtol * |b|).

fp32 graphs reorder sums but keep ~1e-6 relative error per op; fp16 has a 2^-11 unit
roundoff and bf16 2^-8, accumulated over tens of layers, so the low-precision defaults are
looser. Logits and the KV cache get the same rule; padded positions are masked out first.
"""

from __future__ import annotations

DEFAULTS: dict[str, tuple[float, float]] = {
    "float32": (5e-4, 1e-3),
    "float16": (2e-2, 2e-2),
    "bfloat16": (1.5e-1, 5e-2),
}


def tolerances(dtype: str, atol: float = 0.0, rtol: float = 0.0) -> tuple[float, float]:
    """``(atol, rtol)`` for ``dtype``; non-zero overrides win."""
    default_atol, default_rtol = DEFAULTS[dtype]
    return atol or default_atol, rtol or default_rtol
