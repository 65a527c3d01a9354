"""FP8 E4M3 (finite, no infinities): round to nearest even, saturated to ±448."""

from __future__ import annotations

from typing import TYPE_CHECKING

from armor_export.quant.schemes.base import QuantScheme, register

if TYPE_CHECKING:
    import torch

E4M3_MAX = 448.0


def _to_e4m3(x: torch.Tensor) -> torch.Tensor:
    import torch

    # torch's float8 cast rounds to nearest even but turns out-of-range values into NaN:
    # saturate first, as ONNX QuantizeLinear (saturate=1) and TensorRT do
    return x.float().clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)


FP8 = register(
    QuantScheme(
        name="fp8",
        title="FP8",
        summary="W8A8 float (E4M3): per-output-channel weight scales, per-tensor activations",
        storage="float8_e4m3fn",
        qmax=E4M3_MAX,
        onnx_type="FLOAT8E4M3FN",
        to_storage=_to_e4m3,
        engine_targets=("sm89", "sm120"),
        min_compute_capability=(8, 9),
        trt_type="FP8",
    )
)
