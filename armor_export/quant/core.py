"""Symmetric 8-bit quantization of the 2:4 cores, and the fake-quant module PyTorch runs.

``q = saturate(round(x / scale))`` with zero point 0 (docs/quant.md). The weight of a core
``[d_out, d_in]`` has one scale per output channel (its row's largest magnitude over the
format's ``qmax``), so a zero stays exactly zero and every 2:4 group keeps its pattern;
the core's input activation has one scale per tensor, from the calibration set.

:class:`QuantCore` is what ArmorLinear (and a quantized baseline linear) runs instead of
``F.linear(x, core)``: the input is fake-quantized with the activation scale and multiplied by
the dequantized weight. The exported Q/DQ graph computes the same: ``DQ(Q(x))`` into a MatMul
whose weight is ``DQ(q)`` (export/lowering.py).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from armor_export.errors import QuantScaleError
from armor_export.quant import schemes
from armor_export.quant.schemes.base import QuantScheme


def stored_bits(values: torch.Tensor) -> torch.Tensor:
    """8-bit values as the raw bytes kernels handle (float8 viewed as uint8; int8 as is)."""
    return values.view(torch.uint8) if values.is_floating_point() else values


def check_scale(scale: torch.Tensor, what: str) -> torch.Tensor:
    """``scale`` if every entry is finite and positive; one line naming ``what`` otherwise."""
    bad = ~(torch.isfinite(scale) & (scale > 0))
    if bool(bad.any()):
        first = scale.reshape(-1)[bad.reshape(-1)][0].item()
        raise QuantScaleError(
            f"{what}: {int(bad.sum())} of {scale.numel()} scale(s) are not finite and positive "
            f"(first: {first!r}); a quantization scale must be a finite number > 0"
        )
    return scale


def weight_scales(core: torch.Tensor, scheme: QuantScheme) -> torch.Tensor:
    """Per output channel: the row's largest magnitude over ``qmax`` (float32 ``[d_out]``).

    An all-zero row gets scale 1 (its stored values are all 0 whatever the scale).
    """
    amax = core.detach().abs().amax(dim=-1).float()
    return torch.where(amax > 0, amax / scheme.qmax, torch.ones_like(amax))


def activation_scale(amax: float, scheme: QuantScheme) -> torch.Tensor:
    """The per-tensor scale of an activation whose calibration maximum magnitude is ``amax``."""
    if not math.isfinite(amax) or amax < 0:
        raise QuantScaleError(f"activation maximum {amax!r} is not a finite number >= 0")
    return torch.tensor(amax / scheme.qmax if amax > 0 else 1.0, dtype=torch.float32)


def quantize(x: torch.Tensor, scale: torch.Tensor, scheme: QuantScheme) -> torch.Tensor:
    """Stored values of ``x`` (``scale`` broadcasts against it): ``saturate(round(x/scale))``."""
    return scheme.to_storage(x.float() / scale.float())


def dequantize(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``q * scale`` in ``dtype`` (computed in ``dtype``, as DequantizeLinear does)."""
    return q.to(dtype) * scale.to(dtype)


def fake_quant(x: torch.Tensor, scale: torch.Tensor, scheme: QuantScheme) -> torch.Tensor:
    """``DQ(Q(x))`` in ``x``'s dtype: what the graph's activation Q/DQ pair computes."""
    s = scale.to(x.dtype)
    return dequantize(scheme.to_storage(x / s), s, x.dtype)


class QuantCore(nn.Module):
    """A quantized 2:4 core: ``y = DQ(Q(x)) @ DQ(q)ᵀ``.

    Buffers: ``q_bits`` ``[d_out, d_in]`` (the stored values; float8 formats are kept as
    their raw bytes, so ``model.to(dtype)`` never converts them), ``weight_scale``
    ``[d_out]`` and ``act_scale`` ``[]`` (floating, so they follow the model's dtype, as
    the exported graph's scales do). ``saturated``/``seen`` count the activation values
    beyond the format's range (saturated, as the graph saturates them) since the last
    :meth:`reset_counts`: a report states them instead of clipping silently.
    """

    def __init__(
        self,
        scheme: str,
        values: torch.Tensor,
        weight_scale: torch.Tensor,
        act_scale: torch.Tensor | None,
        name: str = "core",
    ):
        super().__init__()
        self.scheme_name = schemes.get(scheme).name
        spec = self.scheme
        if values.dtype != spec.torch_dtype:
            raise ValueError(f"{name}: values are {values.dtype}, {scheme} stores {spec.storage}")
        d_out = values.shape[0]
        act_shape = None if act_scale is None else tuple(act_scale.shape)
        bad_act = act_scale is not None and act_scale.numel() != 1
        if tuple(weight_scale.shape) != (d_out,) or bad_act:
            raise ValueError(
                f"{name}: scales of shape {tuple(weight_scale.shape)} and {act_shape} do not "
                f"fit a [{d_out}, ...] core"
            )
        check_scale(weight_scale, f"{name}.weight_scale")
        if act_scale is not None:
            check_scale(act_scale, f"{name}.act_scale")
        bits = stored_bits(values)
        self.register_buffer("q_bits", bits.contiguous())
        self.register_buffer("weight_scale", weight_scale.float().clone())
        # None: a weight-only core (its input stays in float, W8A16)
        act = None if act_scale is None else act_scale.float().reshape(()).clone()
        self.register_buffer("act_scale", act)
        self.saturated = 0
        self.seen = 0

    @property
    def scheme(self) -> QuantScheme:
        return schemes.get(self.scheme_name)

    @property
    def values(self) -> torch.Tensor:
        """The stored values in the scheme's dtype (int8, float8_e4m3fn)."""
        dtype = self.scheme.torch_dtype
        return self.q_bits if self.q_bits.dtype == dtype else self.q_bits.view(dtype)

    def weight(self, dtype: torch.dtype) -> torch.Tensor:
        """The dequantized core ``[d_out, d_in]`` in ``dtype``."""
        return dequantize(self.values, self.weight_scale[:, None], dtype)

    @property
    def weight_only(self) -> bool:
        """True when the core's input stays in float (only its weight is 8-bit)."""
        return self.act_scale is None

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.act_scale is None:
            return x
        if not torch.onnx.is_in_onnx_export() and not torch.compiler.is_compiling():
            with torch.no_grad():
                over = (x.detach().float().abs() / self.act_scale.float()) > self.scheme.qmax
                self.saturated += int(over.sum())
                self.seen += over.numel()
        return fake_quant(x, self.act_scale, self.scheme)

    def reset_counts(self) -> None:
        self.saturated = self.seen = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.quantize_input(x), self.weight(x.dtype))

    def extra_repr(self) -> str:
        d_out, d_in = self.q_bits.shape
        only = ", weight only" if self.weight_only else ""
        return f"scheme={self.scheme_name}, shape=({d_out}, {d_in}){only}"

    @classmethod
    def from_float(
        cls, core: torch.Tensor, act_scale: torch.Tensor | None, scheme: str, name: str = "core"
    ) -> QuantCore:
        """Quantize a float core (its zeros stay zero) with per-row weight scales."""
        spec = schemes.get(scheme)
        scale = weight_scales(core, spec)
        return cls(scheme, quantize(core, scale[:, None], spec), scale, act_scale, name)


def saturation(model: nn.Module) -> dict[str, tuple[int, int]]:
    """``{core name: (saturated, seen)}`` for every QuantCore of ``model`` that saw values."""
    return {
        name: (m.saturated, m.seen)
        for name, m in model.named_modules()
        if isinstance(m, QuantCore) and m.seen
    }


def reset_saturation(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, QuantCore):
            m.reset_counts()
