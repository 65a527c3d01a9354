"""Small hand-built 8-bit Q/DQ export folders, in the ONNX form issue #26's contract fixes:

``input_ids -> Gather(embedding) -> x``, then per core ``x -> QuantizeLinear(per-tensor) ->
DequantizeLinear -> MatMul(B = DequantizeLinear(axis=1, per-N scale, zero point 0) of an 8-bit
[K, N] ``.sparse_core`` initializer, 2:4 along K)``; ``logits`` out. The manifest around it is
sealed like the exporter's, with the top-level ``quant`` key of an 8-bit export (or none).
Built without torch, so an engine test needs only onnx and the backend.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from armor_export.export_manifest import (
    MANIFEST,
    DecoderSpec,
    ExportManifest,
    Limits,
    Source,
    Tokens,
)

VOCAB = 32
CORE_NAME = "model.layers.{}.mlp.down_proj.sparse_core"


def two_four_along_k(k: int, n: int, seed: int) -> np.ndarray:
    """A float [K, N] matrix with two zeros in every group of four along K (axis 0)."""
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((k, n)).astype(np.float32)
    keep = np.argsort(rng.random((k // 4, 4, n)), axis=1) < 2
    return weight * keep.reshape(k, n)


def qdq_model(scheme: str | None, k: int = 512, n: int = 512, cores: int = 1,
              activations: bool = True, dtype: str = "float16"):  # fmt: skip
    """The ONNX model: ``cores`` chained [K, K] 2:4 cores (K == N) quantized by ``scheme``
    (``int8``, ``fp8``; None: float cores); ``activations=False``: weight-only (no Q/DQ on
    the MatMul's input)."""
    from onnx import TensorProto, helper, numpy_helper

    assert cores == 1 or k == n
    float_type = {"float16": TensorProto.FLOAT16, "float32": TensorProto.FLOAT}[dtype]
    np_float = np.float16 if dtype == "float16" else np.float32
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((VOCAB, k)).astype(np_float), "embed")]
    nodes = [helper.make_node("Gather", ["embed", "input_ids"], ["x0"], name="/embed/Gather")]
    x = "x0"
    for i in range(cores):
        weight = two_four_along_k(k, n, seed=i + 1)
        core, prefix = CORE_NAME.format(i), f"/model/layers.{i}/mlp/down_proj"
        if scheme is None:
            inits.append(numpy_helper.from_array(weight.astype(np_float), core))
            b = core
        else:
            qtype, values = _quantized(scheme, weight)
            scale = np.abs(weight).max(axis=0) / (127.0 if scheme == "int8" else 448.0)
            inits += [
                _tensor(core, qtype, values),
                numpy_helper.from_array(scale.astype(np_float), f"{core}.scale"),
                _tensor(f"{core}.zero_point", qtype, np.zeros(n, dtype=values.dtype)),
            ]
            b = f"{prefix}/weight_dq"
            nodes.append(helper.make_node(
                "DequantizeLinear", [core, f"{core}.scale", f"{core}.zero_point"], [b],
                name=f"{prefix}/DequantizeLinear_weight", axis=1))  # fmt: skip
            if activations:
                qtype_zero = _tensor(f"{prefix}.act_zero_point", qtype, np.zeros((), values.dtype))
                inits += [
                    numpy_helper.from_array(np.array(0.05, dtype=np_float), f"{prefix}.act_scale"),
                    qtype_zero,
                ]
                params = [f"{prefix}.act_scale", f"{prefix}.act_zero_point"]
                nodes += [
                    helper.make_node("QuantizeLinear", [x, *params], [f"{prefix}/xq"],
                                     name=f"{prefix}/QuantizeLinear_input"),
                    helper.make_node("DequantizeLinear", [f"{prefix}/xq", *params],
                                     [f"{prefix}/xdq"], name=f"{prefix}/DequantizeLinear_input"),
                ]  # fmt: skip
                x = f"{prefix}/xdq"
        out = "logits" if i == cores - 1 else f"x{i + 1}"
        nodes.append(helper.make_node("MatMul", [x, b], [out], name=f"{prefix}/MatMul"))
        x = out
    graph = helper.make_graph(
        nodes,
        "qdq",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("logits", float_type, ["batch", "seq", n])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9
    return model


def _quantized(scheme: str, weight: np.ndarray):
    """(onnx type, stored values) of ``weight`` in ``scheme``, per-N (axis 1) scales."""
    from onnx import TensorProto

    amax = np.abs(weight).max(axis=0, keepdims=True)
    if scheme == "int8":
        return TensorProto.INT8, np.clip(np.round(weight / amax * 127), -127, 127).astype(np.int8)
    import ml_dtypes  # onnx's own dependency for its float8 tensors

    values = (weight / amax * 448).astype(ml_dtypes.float8_e4m3fn)
    return TensorProto.FLOAT8E4M3FN, values


def _tensor(name: str, qtype: int, values: np.ndarray):
    """An 8-bit initializer (float8 stored as its raw bytes, as onnx expects)."""
    from onnx import helper

    return helper.make_tensor(name, qtype, values.shape, values.tobytes(), raw=True)


def qdq_export(folder: Path, scheme: str | None, limits=(1, 64, 64), **model_kwargs) -> Path:
    """An export folder around ``qdq_model``: the graph, an empty tokenizer file and a sealed
    manifest (``quant`` key for 8-bit schemes) that ``ExportManifest.read`` accepts."""
    import onnx

    from armor_export.io import sha256_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = qdq_model(scheme, **model_kwargs)
    onnx.checker.check_model(model)
    onnx.save(model, str(folder / "model.onnx"))
    (folder / "tokenizer.json").write_text("{}")
    k = model.graph.initializer[0].dims[1]
    decoder = DecoderSpec(num_layers=0, num_kv_heads=1, head_dim=k, vocab_size=VOCAB,
                          hidden_size=k)  # fmt: skip
    cores = model_kwargs.get("cores", 1)
    dtype = model_kwargs.get("dtype", "float16")
    extra = {}
    if scheme is not None:
        extra["quant"] = {"scheme": scheme, "weights": "per-channel",
                          "activations": "per-tensor", "wrappers": dtype}  # fmt: skip
    manifest = ExportManifest(
        versions={"armor_export": "0"},
        config={"model": "hand-built", "dtype": dtype},
        source=Source(model="hand-built", pruned=True, method="armor"),
        family="llama",
        dtype=dtype,
        lowering="plain",
        decoder=decoder,
        input_names=("input_ids",),
        output_names=("logits",),
        limits=Limits(*limits),
        tokens=Tokens(eos_token_ids=(0,), bos_token_id=None, pad_token_id=0),
        counts={"armor": cores, "cores": cores},
        sha256={name: sha256_file(folder / name) for name in ("model.onnx", "tokenizer.json")},
        graph_revision=4,
        attention="eager",
        extra=extra,
    )
    data = replace(manifest).sealed().to_dict()
    (folder / MANIFEST).write_text(json.dumps(data, indent=2) + "\n")
    ExportManifest.read(folder)  # what the engine verb reads
    return folder
