"""Default parity tolerances by export dtype and output (elementwise: |a - b| <= atol + rtol·|b|).

fp32 graphs reorder sums but keep ~1e-6 relative error per op. fp16 (unit roundoff 2^-11)
and bf16 (2^-8) errors accumulate over the layers: on SmolLM2-135M ARMOR (30 layers) the
fp16 PyTorch model itself differs from its fp32 self by up to 0.12 on the logits (p99
0.06, logits up to ~32), and the fp16 ONNX Runtime graph by up to 0.10 from fp16 PyTorch.
The fp16 defaults allow about twice that noise, and bf16 eight times fp16 (its mantissa is
3 bits shorter). A lowering bug moves outputs by whole units, far beyond these. Logits get
more absolute slack than the KV cache. Padded positions are masked out before comparing.
"""

from __future__ import annotations

DEFAULTS: dict[str, dict[str, tuple[float, float]]] = {
    "float32": {"logits": (5e-4, 1e-3), "present": (2e-4, 1e-3)},
    "float16": {"logits": (2.5e-1, 2e-2), "present": (1e-1, 2e-2)},
    "bfloat16": {"logits": (2.0, 5e-2), "present": (8e-1, 5e-2)},
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
