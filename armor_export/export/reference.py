"""NumPy reference of the ArmorLinear op and of the block-diagonal plugin node (no torch).

This is the oracle for the exported graphs, in the spirit of Polygraphy's ``pluginref``:
whatever form the export takes (plain MatMuls or TensorRT plugin nodes), these few lines say
what it must compute.
"""

from __future__ import annotations

import numpy as np

PLUGIN_NAME = "ArmorBlockDiagMatMul"
PLUGIN_DOMAIN = "trt.plugins"
PLUGIN_VERSION = "1"
PLUGIN_NAMESPACE = ""


def blockdiag_matmul(x: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """``y[..., i, :] = x[..., i, :] @ weight[i]ᵀ`` over ``n_blocks`` blocks of the last axis.

    ``x`` is ``[..., n_blocks * b]``, ``weight`` is ``[n_blocks, b, b]``; ``y`` has x's shape.
    This is the plugin node's contract (plugins/armorBlockDiagPlugin/README.md).
    """
    n_blocks, b, b2 = weight.shape
    if b != b2 or x.shape[-1] != n_blocks * b:
        raise ValueError(
            f"blockdiag_matmul: x last dim {x.shape[-1]} != n_blocks*b for weight {weight.shape}"
        )
    blocks = x.reshape(*x.shape[:-1], n_blocks, b)
    y = np.einsum("...ni,noi->...no", blocks, weight)
    return y.reshape(x.shape).astype(x.dtype, copy=False)


def armor_linear(
    x: np.ndarray,
    a_blocks: np.ndarray,
    core: np.ndarray,
    b_blocks: np.ndarray,
    bias: np.ndarray | None = None,
) -> np.ndarray:
    """``y = A (S (B x)) + bias`` for ``x`` ``[..., d_in]``; ``core`` is ``[d_out, d_in]``."""
    h = blockdiag_matmul(x, b_blocks)
    h = h @ core.T
    y = blockdiag_matmul(h, a_blocks)
    return y if bias is None else y + bias


def onnx_reference_ops() -> list[type]:
    """``onnx.reference`` implementations of our custom nodes (for ``ReferenceEvaluator``)."""
    from onnx.reference.op_run import OpRun

    class ArmorBlockDiagMatMul(OpRun):
        op_domain = PLUGIN_DOMAIN

        def _run(self, x, weight, plugin_version=None, plugin_namespace=None):
            return (blockdiag_matmul(x, weight),)

    ArmorBlockDiagMatMul.__name__ = PLUGIN_NAME
    return [ArmorBlockDiagMatMul]
