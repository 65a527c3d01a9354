"""INT8: symmetric, round half to even, saturated to [-128, 127] (weights use ±127)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from armor_export.quant.schemes.base import QuantScheme, register

if TYPE_CHECKING:
    import torch


def _to_int8(x: torch.Tensor) -> torch.Tensor:
    import torch

    # torch.round rounds half to even, as ONNX QuantizeLinear does
    return torch.round(x.float()).clamp_(-128, 127).to(torch.int8)


INT8 = register(
    QuantScheme(
        name="int8",
        title="INT8",
        summary="W8A8 integer: per-output-channel weight scales, per-tensor activation scales",
        storage="int8",
        qmax=127.0,
        onnx_type="INT8",
        to_storage=_to_int8,
        engine_targets=("sm80", "sm86"),
        min_compute_capability=(8, 0),
        trt_type="Int8",
        # measured on SmolLM2-135M ARMOR b=64 (docs/quant.md): the MLP down projection's
        # input (SiLU(gate)·up) spans ~1e4 in some layers; INT8 per tensor there cost
        # 1.34x the float perplexity even smoothed, weight-only there 1.02x
        float_activations=("*.down_proj",),
        # measured likewise: with the down projections weight-only, smoothing (α = 0.5)
        # took ARMOR INT8 from 1.12x to 1.017x the float perplexity
        smoothing=0.5,
    )
)
