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


# 8-bit exports (docs/quant.md): PyTorch's fake-quant reference and the Q/DQ graph compute
# the same maths, but a quantizer is a step function. The float error ε of its input (the
# sums of the block-diagonal B reordered: ~1e-7 relative in float32, ~2^-11 in float16) flips
# a rounding decision when x/s lies within ε·|x/s| of a rounding boundary; int8 steps are
# uniform (|x/s| ≤ 127) so a flip happens with probability up to ~2·127·ε per activation,
# fp8's steps grow with the value (3 mantissa bits) so its flips are rarer. One flip moves
# that activation by one step, s·Δ (Δ = 1 for int8, up to 32 near ±448 for E4M3), and core
# output n by s·Δ·|W[k, n]|, then through A and every layer after it. That bound is far too
# loose to be a tolerance (it sums over every flip of every layer), so the allowance is set
# from measurement. Measured on the tiny test models (2 layers, tests/verify/
# test_quant_verify.py, ORT 1.32 CPU): float32 int8 and fp8 ≤ 3.6e-7 (no flip at all), float16
# int8 0.011 and fp8 0.018 on logits, inside the float16 default alone. Those models have few
# layers and small logits: the allowances below (float32 0.02, float16 0.5 on logits) are an
# estimate for 30-layer models (SmolLM2: logits up to ~32, where flips compound over the
# layers), not yet measured on one; a real-model run should re-derive them. A lowering
# bug (wrong scale, axis, layout) moves logits by whole units and the top-1 token at most
# positions; top-1 agreement catches what an absolute bound on the largest logit lets through.
QUANT_ALLOWANCE: dict[str, dict[str, float]] = {
    # dtype -> extra atol per output kind
    "float32": {"logits": 2e-2, "present": 2e-2},
    "float16": {"logits": 5e-1, "present": 2e-1},
    "bfloat16": {"logits": 2.0, "present": 8e-1},
}
# the fraction of real (not padded) positions whose top-1 token must agree with PyTorch's
TOP1_AGREEMENT = {"float32": 1.0, "float16": 0.9, "bfloat16": 0.8}
QUANT_DERIVATION = (
    "8-bit: float default + an allowance for rounding-boundary flips of the "
    "activation quantizer (one flip moves a core output by s_x·step·|W[k, n]|); "
    "top-1 agreement required (verify/tolerances.py)"
)


def output_kind(name: str) -> str:
    return "logits" if name == "logits" else "present"


def tolerances(
    dtype: str, output: str, atol: float = 0.0, rtol: float = 0.0, quant: str | None = None
) -> tuple[float, float]:
    """``(atol, rtol)`` for ``output`` of a ``dtype`` graph (``quant``: its 8-bit scheme, which
    adds ``QUANT_ALLOWANCE``); non-zero overrides win."""
    kind = output_kind(output)
    default_atol, default_rtol = DEFAULTS[dtype][kind]
    if quant is not None:
        default_atol += QUANT_ALLOWANCE[dtype][kind]
    return atol or default_atol, rtol or default_rtol


def top1_required(dtype: str, quant: str | None) -> float | None:
    """The top-1 agreement an 8-bit export must reach (None: float exports, not checked)."""
    return None if quant is None else TOP1_AGREEMENT[dtype]


def per_output(
    dtype: str, names: list[str], atol: float = 0.0, rtol: float = 0.0, quant: str | None = None
) -> tuple[dict, dict]:
    """Polygraphy-style per-output ``atol`` and ``rtol`` dicts for ``names``."""
    pairs = {name: tolerances(dtype, name, atol, rtol, quant) for name in names}
    return {n: p[0] for n, p in pairs.items()}, {n: p[1] for n, p in pairs.items()}
