"""Lower ArmorLinear (and masked 2:4 ``nn.Linear``) into export-friendly modules.

Plain form, for any ONNX runtime::

    x ─Reshape→[T, nb, b]─Transpose→[nb, T, b]─MatMul(Bᵀ blocks)─Transpose─Reshape─┐
    ┌──────────────────────────────────────────────────────────────────────────────┘
    └─MatMul(sparse_core [K, N])─ (same block-diagonal pattern with A) ─ (+ bias)

The core stays a native MatMul whose constant weight is ``[K, N]`` with the 2:4 groups along
K (axis 0): the layout TensorRT's sparse tactics need (docs/design.md §8.1). Plugin form
replaces the two block-diagonal patterns by ``ArmorBlockDiagMatMul`` nodes (reference.py) for
the TensorRT plugin; the core stays a MatMul either way, since a plugin around it would hide it
from TensorRT's sparse kernels.

Gated MLPs (``down(act(gate(x)) * up(x))``, declared per family by ``Adapter.gated_mlps``)
whose three projections are ArmorLinear with one block size keep the activation in block
layout ``[nb, T, b]`` in the plain form: the gate/up ``A`` outputs and the down ``B`` input
then need no Transpose, and elementwise maths does not care about layout. Same operations on
the same numbers, so the outputs are bit-identical; on ORT CPU it halves the MLP wrappers'
cost (their output transposes of the wide activation were as dear as the block MatMuls).

8-bit cores (``ArmorLinear.quant`` or a baseline's ``QuantLinear``, docs/quant.md) take
TensorRT's explicit-quantization form; the wrappers stay in the graph's float dtype::

    x ─QuantizeLinear(s_x, 0)─DequantizeLinear(s_x, 0)─┐
    sparse_core (int8 | float8e4m3fn [K, N]) ─DequantizeLinear(axis=1, s_w [N], 0)─MatMul

The 8-bit core stays the constant input of its DequantizeLinear, whose output is MatMul's B:
the pattern TensorRT fuses into one 8-bit GEMM, which keeps the 2:4 weight visible to its
sparse tactics. Eagerly the same maths runs as ``QuantCore`` does (``quant/core.py``).
"""

from __future__ import annotations

import torch
from torch import nn

from armor_export.export import reference
from armor_export.memory import trim_heap
from armor_export.prune.linear import ArmorLinear, QuantLinear, set_submodule

CORE_SUFFIX = "sparse_core"
QDQ_OPSET = 19  # QuantizeLinear/DequantizeLinear with float8 types (and ``saturate``)


def blockdiag_matmul(x: torch.Tensor, weight_t: torch.Tensor) -> torch.Tensor:
    """``y[..., i, :] = x[..., i, :] @ weight_t[i]`` as reshape → batched MatMul → reshape."""
    return from_blocks(blockdiag_matmul_to_blocks(x, weight_t), x.shape[:-1])


def blockdiag_matmul_to_blocks(x: torch.Tensor, weight_t: torch.Tensor) -> torch.Tensor:
    """``blockdiag_matmul`` with the result left in block layout ``[n_blocks, tokens, b]``."""
    n_blocks, b, _ = weight_t.shape
    blocks = x.reshape(-1, n_blocks, b).transpose(0, 1)  # [nb, T, b]: one GEMM per block
    return torch.matmul(blocks, weight_t)


def from_blocks(blocks: torch.Tensor, lead: torch.Size) -> torch.Tensor:
    """``[n_blocks, tokens, b]`` back to token layout ``[*lead, n_blocks * b]``."""
    return blocks.transpose(0, 1).reshape(*lead, -1)


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


def register_core(module: nn.Module, linear: nn.Module) -> None:
    """Give ``module`` the core of ``linear`` (an ArmorLinear, a masked 2:4 ``nn.Linear`` or
    a ``QuantLinear``) as the constant buffers of its MatMul, read by :func:`core_matmul`.

    Float: ``sparse_core`` ``[K, N]`` (2:4 along K). 8-bit (``linear.quant``, a QuantCore):
    ``sparse_core`` holds the stored values ``[K, N]`` (int8 / float8_e4m3fn), with
    ``weight_scale`` ``[N]`` and ``input_scale`` ``[]`` in the model's float dtype and the zero
    points ``weight_zero_point`` ``[N]`` / ``input_zero_point`` ``[]`` of the 8-bit type, all 0.
    """
    quant = getattr(linear, "quant", None)
    module.quant_scheme = None if quant is None else quant.scheme
    if quant is None:
        core = (
            linear.core.detach() * linear.mask if isinstance(linear, ArmorLinear) else linear.weight
        )
        module.register_buffer(CORE_SUFFIX, core.detach().t().contiguous())
        return
    values = quant.values  # [N, K]
    # transposed as raw bytes (float8 tensors support few kernels), then viewed back
    from armor_export.quant.core import stored_bits

    raw = stored_bits(values)
    module.register_buffer(CORE_SUFFIX, raw.t().contiguous().view(values.dtype))
    module.register_buffer("weight_scale", quant.weight_scale.detach().clone())
    act = quant.act_scale  # None: a weight-only core, its input stays in float
    module.register_buffer("input_scale", None if act is None else act.detach().reshape(()).clone())
    zeros = torch.zeros(values.shape[0], dtype=torch.int8)
    zero_point = zeros.view(values.dtype) if values.is_floating_point() else zeros
    module.register_buffer("weight_zero_point", zero_point)
    module.register_buffer("input_zero_point", zero_point[0].clone())


def core_matmul(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x @ core`` with the buffers of :func:`register_core`: a plain MatMul, or for an
    8-bit core ``DQ(Q(x)) @ DQ(sparse_core)`` (the Q/DQ nodes while exporting; eagerly the
    same maths, as ``QuantCore`` runs it)."""
    if module.quant_scheme is None:
        return torch.matmul(x, module.sparse_core)
    weight_only = module.input_scale is None
    if torch.onnx.is_in_onnx_export():
        x = x if weight_only else _qdq_input(module, x)
        return torch.matmul(x, _dq_weight(module, x.dtype))
    from armor_export.quant.core import dequantize, fake_quant

    weight = dequantize(module.sparse_core, module.weight_scale, x.dtype)  # [K, N] · [N]
    if not weight_only:
        x = fake_quant(x, module.input_scale, module.quant_scheme)
    return torch.matmul(x, weight)


def _qdq_input(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    scale = module.input_scale.to(x.dtype)
    q = torch.onnx.ops.symbolic(
        "QuantizeLinear",
        (x, scale, module.input_zero_point),
        {},
        dtype=module.sparse_core.dtype,
        shape=x.shape,
        version=QDQ_OPSET,
    )
    return torch.onnx.ops.symbolic(
        "DequantizeLinear",
        (q, scale, module.input_zero_point),
        {},
        dtype=x.dtype,
        shape=x.shape,
        version=QDQ_OPSET,
    )


def _dq_weight(module: nn.Module, dtype: torch.dtype) -> torch.Tensor:
    return torch.onnx.ops.symbolic(
        "DequantizeLinear",
        (module.sparse_core, module.weight_scale.to(dtype), module.weight_zero_point),
        {"axis": 1},
        dtype=dtype,
        shape=module.sparse_core.shape,
        version=QDQ_OPSET,
    )


class LoweredArmorLinear(nn.Module):
    """``y = A (S (B x)) + bias`` with constant buffers laid out for export."""

    def __init__(self, linear: ArmorLinear, plugin: bool):
        super().__init__()
        self.plugin = plugin
        a, b = linear.a_blocks.detach(), linear.b_blocks.detach()
        # plugin nodes take the blocks as stored (y_i = x_i W_iᵀ); MatMuls want W_iᵀ
        self.register_buffer("b_weight", (b if plugin else b.transpose(1, 2)).contiguous())
        self.register_buffer("a_weight", (a if plugin else a.transpose(1, 2)).contiguous())
        register_core(self, linear)
        bias = linear.bias
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    def _blockdiag(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return plugin_blockdiag_matmul(x, weight) if self.plugin else blockdiag_matmul(x, weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.plugin:
            # the bias joins in block layout, so the output's way back to token layout is a
            # lone Transpose that the layout pass can merge with a following head transpose
            return from_blocks(self.forward_to_blocks(x), x.shape[:-1])
        x = self._blockdiag(x, self.b_weight)
        x = core_matmul(self, x)
        x = self._blockdiag(x, self.a_weight)
        return x if self.bias is None else x + self.bias

    def forward_to_blocks(self, x: torch.Tensor) -> torch.Tensor:
        """``forward`` with the output left in block layout ``[n_blocks, tokens, b]``."""
        x = self._blockdiag(x, self.b_weight)
        y = blockdiag_matmul_to_blocks(core_matmul(self, x), self.a_weight)
        return y if self.bias is None else y + self.bias.reshape(y.shape[0], 1, -1)

    def forward_from_blocks(self, blocks: torch.Tensor, lead: torch.Size) -> torch.Tensor:
        """``forward`` of an input given in block layout ``[n_blocks, tokens, b]``."""
        x = from_blocks(torch.matmul(blocks, self.b_weight), lead)
        x = core_matmul(self, x)
        x = self._blockdiag(x, self.a_weight)
        return x if self.bias is None else x + self.bias


class LoweredArmorMLP(nn.Module):
    """A gated MLP computed with its activation in block layout (plain form only).

    Keeps the projections as ``gate_proj``/``up_proj``/``down_proj`` children, so the
    exported initializer names are those of the per-linear lowering.
    """

    def __init__(self, mlp: nn.Module):
        super().__init__()
        self.gate_proj = LoweredArmorLinear(mlp.gate_proj, plugin=False)
        self.up_proj = LoweredArmorLinear(mlp.up_proj, plugin=False)
        self.down_proj = LoweredArmorLinear(mlp.down_proj, plugin=False)
        self.act_fn = mlp.act_fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.gate_proj.forward_to_blocks(x)
        up = self.up_proj.forward_to_blocks(x)
        return self.down_proj.forward_from_blocks(self.act_fn(gate) * up, x.shape[:-1])


def blocked_mlp_eligible(mlp: nn.Module) -> bool:
    """True for an MLP that a registered family declares gated (``Adapter.gated_mlps``)
    whose projections are ArmorLinear sharing the block size of the activation (gate/up
    ``A`` and down ``B``)."""
    from armor_export.models.registry import gated_mlp_classes

    if type(mlp).__name__ not in gated_mlp_classes():
        return False
    parts = [getattr(mlp, n, None) for n in ("gate_proj", "up_proj", "down_proj")]
    if not all(isinstance(p, ArmorLinear) for p in parts) or not hasattr(mlp, "act_fn"):
        return False
    gate, up, down = parts
    sizes = {gate.a_blocks.shape[-1], up.a_blocks.shape[-1], down.b_blocks.shape[-1]}
    return len(sizes) == 1 and gate.out_features == up.out_features


class LoweredSparseLinear(nn.Module):
    """A masked 2:4 ``nn.Linear`` (baseline methods), or its 8-bit ``QuantLinear``, with the
    weight stored as ``[K, N]``."""

    def __init__(self, linear: nn.Module):
        super().__init__()
        register_core(self, linear)
        bias = linear.bias
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = core_matmul(self, x)
        return x if self.bias is None else x + self.bias


def lower_model_(model: nn.Module, sparse_names: list[str], plugin: bool) -> dict[str, int]:
    """Swap every ArmorLinear (and each 2:4 linear named in ``sparse_names``) in place.

    The heap is trimmed after each swap: the freed module's tensors are below glibc's
    (self-raising) mmap threshold, and without giving them back the process grew by the
    size of the replaced modules (+2.7 GiB of a 1.5 B model's 7.3 GiB float16 export peak).

    Returns counts: ``{"armor": n_armor, "sparse": n_masked_linears, "blocked_mlps": n}``
    (gated MLPs lowered with their activation in block layout; plain form only).
    """
    armor = [n for n, m in model.named_modules() if isinstance(m, ArmorLinear)]
    mlps = [] if plugin else [n for n, m in model.named_modules() if blocked_mlp_eligible(m)]
    for name in mlps:
        set_submodule(model, name, LoweredArmorMLP(model.get_submodule(name)))
        trim_heap()
    for name in armor:
        if isinstance(model.get_submodule(name), ArmorLinear):
            set_submodule(model, name, LoweredArmorLinear(model.get_submodule(name), plugin))
            trim_heap()
    sparse = [
        n for n in sparse_names if isinstance(model.get_submodule(n), (nn.Linear, QuantLinear))
    ]
    for name in sparse:
        set_submodule(model, name, LoweredSparseLinear(model.get_submodule(name)))
        trim_heap()
    return {"armor": len(armor), "sparse": len(sparse), "blocked_mlps": len(mlps)}
