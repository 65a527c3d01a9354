"""The 2:4 core layers of a built engine: which engine layer runs each core MatMul of the
graph, its precision as TensorRT reports it, and whether its kernel is a sparse one.

A core MatMul is one whose B input is a ``.sparse_core`` initializer, directly (a float
export) or through a DequantizeLinear (an 8-bit Q/DQ export, issue #26). TensorRT fuses and
renames layers; the engine's layer table (the verbose builder log, or the engine inspector
where the engine can be deserialised) names the ONNX nodes each layer came from in its
``Metadata`` (``[ONNX Layer: /model/layers.0/mlp/down_proj/MatMul]``), so a core's layer is
the GEMM layer whose metadata names its MatMul, never a guess from layer or weight names.

Its precision is what that layer's inputs, weights and outputs are typed as in the table
(``Int8 x Int8 -> Half`` for a W8A8 INT8 core). Whether its kernel is sparse is read only from
the tactic TensorRT chose or the builder log's list of sparse layers; where neither exists
(TensorRT-RTX's ahead-of-time build leaves a placeholder tactic, the kernel being picked on
the GPU at first run) the answer is ``unknown``, with the reason, never ``chosen``.
"""

from __future__ import annotations

import re
from pathlib import Path

CHOSEN = "chosen"
NOT_CHOSEN = "not chosen"
UNKNOWN = "unknown"
UNKNOWN_AOT = "unknown (ahead-of-time build: TensorRT-RTX picks kernels on the GPU at first run)"
STUB_TACTICS = ("__myelin_CASK_STUB", "")  # no kernel yet: it is picked when the engine runs
ONNX_LAYER = re.compile(r"\[ONNX Layer: ([^\]]*)\]")
# a Myelin fusion that ends in a fully connected layer (``__myl_CastMulCastFc_myl0_2``): what
# TensorRT-RTX makes of a weight-only 8-bit MatMul (DequantizeLinear fused into the GEMM)
FUSED_GEMM = re.compile(r"^__myl_\w*?Fc_myl\d")
GEMM_TYPES = ("gemm", "CaskGemmMatrixMultiply", "MatrixMultiply", "CaskGemmConvolution")


def is_gemm_layer(layer: dict) -> bool:
    """A layer that runs a matrix product: a ``gemm`` (fp16/bf16, or 8-bit inputs after a
    Q/DQ pair), or a ``runtime_fusion`` ending in a fully connected op (weight-only 8-bit)."""
    kind = layer.get("LayerType", "")
    if kind in GEMM_TYPES:
        return True
    return kind == "runtime_fusion" and bool(FUSED_GEMM.match(layer.get("Name", "")))


def core_matmuls(onnx_path: str | Path) -> list[dict]:
    """Every core MatMul of the graph at ``onnx_path`` (read without its external data):
    ``{"matmul": node name, "weight": initializer, "weight_type": ONNX type, "activation":
    "Q/DQ" | "float"}``, in graph order."""
    import onnx

    from armor_export.export.checks import CORE_SUFFIX

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    cores = {i.name: i for i in graph.initializer if i.name.split(".")[-1].startswith(CORE_SUFFIX)}
    producer = {out: node for node in graph.node for out in node.output}
    found = []
    for node in graph.node:
        if node.op_type != "MatMul" or len(node.input) < 2:
            continue
        b, a = producer.get(node.input[1]), producer.get(node.input[0])
        weight = node.input[1]
        if b is not None and b.op_type == "DequantizeLinear":
            weight = b.input[0]
        if weight not in cores:
            continue
        quantized = a is not None and a.op_type == "DequantizeLinear"
        found.append({
            "matmul": node.name,
            "weight": weight,
            "weight_type": onnx.TensorProto.DataType.Name(cores[weight].data_type),
            "activation": "Q/DQ" if quantized else "float",
        })  # fmt: skip
    return found


def layer_of(matmul: str, layers: list[dict]) -> dict | None:
    """The GEMM layer running the ONNX MatMul ``matmul``: the one whose metadata names it
    (TensorRT-RTX's Myelin layers), else the one named after it (TensorRT's own layers)."""
    gemms = [layer for layer in layers if is_gemm_layer(layer)]
    for layer in gemms:
        if matmul in ONNX_LAYER.findall(layer.get("Metadata", "")):
            return layer
    return next((layer for layer in gemms if layer.get("Name") == matmul), None)


def precision(layer: dict) -> str:
    """``Int8 x Int8 -> Half``: the layer's input types, then its weight's (the largest
    constant), then its outputs', as TensorRT's layer table spells them."""
    inputs = [t for _, t in layer.get("inputs", [])]
    constants = layer.get("constants", [])
    if constants:
        inputs.append(max(constants, key=lambda c: _elements(c[0]))[1])
    outputs = [t for _, t in layer.get("outputs", [])]
    return f"{' x '.join(inputs) or '?'} -> {', '.join(outputs) or '?'}"


def _elements(dims: list[int]) -> int:
    count = 1
    for d in dims:
        count *= abs(d)
    return count


def sparse_status(layer: dict | None, *, flag: bool, aot: bool, picked: list[str] | None,
                  matmul: str, table: bool = True) -> tuple[str, str]:  # fmt: skip
    """(``chosen`` | ``not chosen`` | ``unknown ...``, why) for one core's layer (``table``:
    whether there was a layer table to look in)."""
    if not flag:
        return NOT_CHOSEN, "built with SPARSE_WEIGHTS off (--no-sparse): no sparse kernel is tried"
    name = layer.get("Name", "") if layer is not None else None
    if picked is not None:
        if name in picked or matmul in picked:
            return CHOSEN, "the builder log lists it among the layers given sparse kernels"
        return NOT_CHOSEN, "the builder log's list of layers given sparse kernels omits it"
    if layer is None:
        if not table:
            return UNKNOWN, "no layer table: neither the builder log nor an inspector gave one"
        return UNKNOWN, "no GEMM layer of the engine's layer table names this MatMul"
    tactic = layer.get("TacticName", "")
    if tactic not in STUB_TACTICS:
        if "sparse" in tactic.lower():
            return CHOSEN, f"its tactic {tactic} is a sparse kernel"
        return NOT_CHOSEN, f"its tactic {tactic} is a dense kernel"
    if aot:
        what = (
            "a runtime fusion (the weight's dequantize fused into the GEMM) compiled"
            if layer.get("LayerType") == "runtime_fusion"
            else "a placeholder tactic; the GEMM kernel, sparse or dense, is chosen"
        )
        return UNKNOWN_AOT, (
            f"the engine holds {what} on the GPU when the engine first runs, so the build "
            "cannot see it"
        )
    return UNKNOWN, "TensorRT names no tactic for this layer"


def core_layers(cores: list[dict], layers: list[dict], *, flag: bool, aot: bool,
                picked: list[str] | None) -> list[dict]:  # fmt: skip
    """One record per core MatMul (``core_matmuls``) with its engine layer (``layers``: the
    layer table, ``layers_from_log`` or ``inspector_layers``), precision and sparse status."""
    records = []
    for core in cores:
        layer = layer_of(core["matmul"], layers)
        status, reason = sparse_status(
            layer, flag=flag, aot=aot, picked=picked, matmul=core["matmul"], table=bool(layers)
        )
        found = {}
        if layer is not None:
            found = {
                "layer": layer.get("Name"),
                "layer_type": layer.get("LayerType"),
                "tactic": layer.get("TacticName", ""),
                "inputs": [t for _, t in layer.get("inputs", [])],
                "weights": [t for _, t in layer.get("constants", [])],
                "outputs": [t for _, t in layer.get("outputs", [])],
                "precision": precision(layer),
            }
        records.append({**core, "layer": None, "precision": None, **found,
                        "sparse_tactic": status, "reason": reason})  # fmt: skip
    return records


SECTION = re.compile(r"(?:^|, )(Inputs|Constants|Outputs): \[(.*?)\](?=, (?:Constants|Outputs|"
                     r"TacticName|StreamId|Metadata): |$)")  # fmt: skip
TENSOR = re.compile(r"Dimensions: \[([^\]]*)\][^{}]*?Datatype: (\w+)")


def tensor_types(line: str) -> dict[str, list[tuple[list[int], str]]]:
    """``inputs`` / ``constants`` / ``outputs`` of one layer-table line: (dims, Datatype)."""
    found = {}
    for section, body in SECTION.findall(line):
        found[section.lower()] = [
            ([int(d) for d in dims.split(",") if d.strip()], dtype)
            for dims, dtype in TENSOR.findall(body)
        ]
    return found


def inspector_layers(information: str) -> list[dict]:
    """The engine inspector's JSON layers (datacenter TensorRT on a GPU) in the layer table's
    form: ``Name``, ``LayerType``, ``TacticName``, ``Metadata``, ``inputs``, ``outputs``."""
    import json

    layers = []
    for layer in json.loads(information).get("Layers", []):
        if not isinstance(layer, dict):
            continue

        def typed(key, layer=layer):
            return [
                (list(t.get("Dimensions", [])), str(t.get("Format/Datatype", t.get("Datatype"))))
                for t in layer.get(key, [])
                if isinstance(t, dict)
            ]

        layers.append({
            "Name": str(layer.get("Name", "?")),
            "LayerType": str(layer.get("LayerType", "")),
            "TacticName": str(layer.get("TacticName", "")),
            "Metadata": str(layer.get("Metadata", "")),
            "inputs": typed("Inputs"),
            "outputs": typed("Outputs"),
        })  # fmt: skip
    return layers


def summary(records: list[dict]) -> str:
    """One report row: how many cores were found in the engine, their precisions and their
    sparse kernel status, e.g. ``2 of 2 in the engine; Int8 x Int8 -> Half; sparse kernels:
    unknown (...)``."""
    if not records:
        return "none in the graph"
    placed = [r for r in records if r["layer"] is not None]
    precisions = sorted({r["precision"] for r in placed})
    statuses = sorted({r["sparse_tactic"] for r in records})
    counted = [f"{sum(r['sparse_tactic'] == s for r in records)} {s}" for s in statuses]
    return (
        f"{len(placed)} of {len(records)} in the engine; {'; '.join(precisions) or 'no layers'}; "
        f"sparse kernels: {', '.join(counted)}"
    )
