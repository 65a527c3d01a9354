"""What a quantization scheme is to the rest of the tool: one :class:`QuantScheme` each.

Like the pruning methods (``prune/methods``), a scheme is a small descriptor registered by
its own module; config validation, the CLI, the export's Q/DQ lowering, the engine's targets
and the report ask this registry instead of comparing names. Every scheme here is
*symmetric with zero point 0* (what TensorRT's explicit quantization takes): a tensor is
stored as ``q = saturate(round(x / scale))`` in ``storage`` and read back as ``q * scale``.
Weights get one scale per output channel, activations one per tensor.

Adding a scheme: one module under ``quant/schemes/`` calling :func:`register`, and its name
in ``BUILT_IN`` (``quant/schemes/__init__.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class QuantScheme:
    """One 8-bit (or narrower) format for the 2:4 cores and their input activations."""

    name: str  # config / CLI spelling, e.g. "int8"
    title: str  # as TensorRT and papers spell it, e.g. "INT8"
    summary: str  # one line for help texts and docs
    storage: str  # torch dtype name of the stored values, e.g. "int8", "float8_e4m3fn"
    qmax: float  # largest magnitude a stored value holds (127, 448)
    onnx_type: str  # onnx.TensorProto name of the Q/DQ tensors, e.g. "INT8", "FLOAT8E4M3FN"
    # (value / scale) -> stored values: rounding and saturation of the format, as
    # ONNX QuantizeLinear does it (round half to even, saturate)
    to_storage: Callable[[torch.Tensor], torch.Tensor]
    # TensorRT-RTX compute capabilities whose tensor cores run this format's GEMMs
    engine_targets: tuple[str, ...] = ()
    min_compute_capability: tuple[int, int] = (8, 0)
    # how TensorRT's engine inspector spells the format of a tensor ("Int8", "FP8")
    trt_type: str = ""
    # globs of the cores whose input stays in float by default (weight-only, W8A16): the
    # inputs whose range one per-tensor scale of this format cannot cover (docs/quant.md)
    float_activations: tuple[str, ...] = ()
    # SmoothQuant α folded into ARMOR's B by default (None: no smoothing)
    smoothing: float | None = None

    @property
    def torch_dtype(self) -> torch.dtype:
        import torch

        return getattr(torch, self.storage)


_REGISTRY: dict[str, QuantScheme] = {}


def register(scheme: QuantScheme) -> QuantScheme:
    """Make ``scheme`` available to configs, the CLI, export, engines and the report."""
    if scheme.qmax <= 0:
        raise ValueError(f"{scheme.name}: qmax must be positive")
    _REGISTRY[scheme.name] = scheme
    return scheme


def unregister(name: str) -> None:
    """Remove a scheme (tests that register a temporary one)."""
    _REGISTRY.pop(name, None)


def names() -> tuple[str, ...]:
    """Every registered scheme's name, in registration order."""
    return tuple(_REGISTRY)


def get(name: str) -> QuantScheme:
    """The registered scheme ``name``; a KeyError naming the registered ones otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(names())
        raise KeyError(f"unknown quantization scheme {name!r}; registered: {known}") from None
