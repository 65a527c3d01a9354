"""Default parity tolerances by export dtype and output (elementwise: |a - b| <= atol + rtol·|b|).

fp32 graphs reorder sums but keep ~1e-6 relative error per op; fp16 has a 2^-11 unit
roundoff and bf16 2^-8, accumulated over tens of layers, so the low-precision defaults are
looser. Logits are sums over the hidden size on top of the last layer, so they get more
absolute slack than the KV cache. Padded positions are masked out before comparing.
"""

from __future__ import annotations

DEFAULTS: dict[str, dict[str, tuple[float, float]]] = {
    "float32": {"logits": (5e-4, 1e-3), "present": (2e-4, 1e-3)},
    "float16": {"logits": (3e-2, 2e-2), "present": (2e-2, 2e-2)},
    "bfloat16": {"logits": (2e-1, 5e-2), "present": (1.5e-1, 5e-2)},
}


def output_kind(name: str) -> str:
    return "logits" if name == "logits" else "present"


def tolerances(
    dtype: str, output: str, atol: float = 0.0, rtol: float = 0.0
) -> tuple[float, float]:
    """``(atol, rtol)`` for ``output`` of a ``dtype`` graph; non-zero overrides win."""
    default_atol, default_rtol = DEFAULTS[dtype][output_kind(output)]
    return atol or default_atol, rtol or default_rtol


def per_output(
    dtype: str, names: list[str], atol: float = 0.0, rtol: float = 0.0
) -> tuple[dict, dict]:
    """Polygraphy-style per-output ``atol`` and ``rtol`` dicts for ``names``."""
    pairs = {name: tolerances(dtype, name, atol, rtol) for name in names}
    return {n: p[0] for n, p in pairs.items()}, {n: p[1] for n, p in pairs.items()}
