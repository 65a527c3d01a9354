"""Lower ArmorLinear (and masked 2:4 ``nn.Linear``) into export-friendly modules.

Plain form, for any ONNX runtime::

    x ─Reshape→[T, nb, b]─Transpose→[nb, T, b]─MatMul(Bᵀ blocks)─Transpose─Reshape─┐
    ┌──────────────────────────────────────────────────────────────────────────────┘
    └─MatMul(sparse_core [K, N])─ (same block-diagonal pattern with A) ─ (+ bias)

The core stays a native MatMul whose constant weight is ``[K, N]`` with the 2:4 groups along
K (axis 0): the layout TensorRT's sparse tactics need (platform.md). Plugin form replaces the
two block-diagonal patterns by ``ArmorBlockDiagMatMul`` nodes (reference.py) for the TensorRT
plugin; the core stays a MatMul either way, since a plugin around it would hide it from
TensorRT's sparse kernels.
"""

from __future__ import annotations

import torch
from torch import nn

from armor_export.export import reference
from armor_export.prune.linear import ArmorLinear, set_submodule

CORE_SUFFIX = "sparse_core"


def blockdiag_matmul(x: torch.Tensor, weight_t: torch.Tensor) -> torch.Tensor:
    """``y[..., i, :] = x[..., i, :] @ weight_t[i]`` as reshape → batched MatMul → reshape."""
    n_blocks, b, _ = weight_t.shape
    lead = x.shape[:-1]
    blocks = x.reshape(-1, n_blocks, b).transpose(0, 1)  # [nb, T, b]: one GEMM per block
    y = torch.matmul(blocks, weight_t)
    return y.transpose(0, 1).reshape(*lead, n_blocks * b)


def plugin_blockdiag_matmul(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The plugin node while exporting; the same maths eagerly (weight is ``[nb, b, b]``)."""
    if torch.onnx.is_in_onnx_export():
        return torch.onnx.ops.symbolic(
            f"{reference.PLUGIN_DOMAIN}::{reference.PLUGIN_NAME}",
            (x, weight),
            {
                "plugin_version": reference.PLUGIN_VERSION,
                "plugin_namespace": reference.PLUGIN_NAMESPACE,
            },
            dtype=x.dtype,
            shape=x.shape,
            version=1,
        )
    return blockdiag_matmul(x, weight.transpose(1, 2))


class LoweredArmorLinear(nn.Module):
    """``y = A (S (B x)) + bias`` with constant buffers laid out for export."""

    def __init__(self, linear: ArmorLinear, plugin: bool):
        super().__init__()
        self.plugin = plugin
        a, b = linear.a_blocks.detach(), linear.b_blocks.detach()
        # plugin nodes take the blocks as stored (y_i = x_i W_iᵀ); MatMuls want W_iᵀ
        self.register_buffer("b_weight", (b if plugin else b.transpose(1, 2)).contiguous())
        self.register_buffer("a_weight", (a if plugin else a.transpose(1, 2)).contiguous())
        core = linear.core.detach() * linear.mask
        self.register_buffer(CORE_SUFFIX, core.t().contiguous())  # [K, N], 2:4 along K
        bias = linear.bias
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    def _blockdiag(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return plugin_blockdiag_matmul(x, weight) if self.plugin else blockdiag_matmul(x, weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._blockdiag(x, self.b_weight)
        x = torch.matmul(x, self.sparse_core)
        x = self._blockdiag(x, self.a_weight)
        return x if self.bias is None else x + self.bias


class LoweredSparseLinear(nn.Module):
    """A masked 2:4 ``nn.Linear`` (baseline methods) with its weight stored as ``[K, N]``."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.register_buffer(CORE_SUFFIX, linear.weight.detach().t().contiguous())
        bias = linear.bias
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.matmul(x, self.sparse_core)
        return x if self.bias is None else x + self.bias


def lower_model_(model: nn.Module, sparse_names: list[str], plugin: bool) -> dict[str, int]:
    """Swap every ArmorLinear (and each 2:4 linear named in ``sparse_names``) in place.

    Returns counts: ``{"armor": n_armor, "sparse": n_masked_linears}``.
    """
    armor = [n for n, m in model.named_modules() if isinstance(m, ArmorLinear)]
    for name in armor:
        set_submodule(model, name, LoweredArmorLinear(model.get_submodule(name), plugin))
    sparse = [n for n in sparse_names if isinstance(model.get_submodule(n), nn.Linear)]
    for name in sparse:
        set_submodule(model, name, LoweredSparseLinear(model.get_submodule(name)))
    return {"armor": len(armor), "sparse": len(sparse)}
