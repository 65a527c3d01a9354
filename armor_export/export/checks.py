"""Checks run on every exported graph: ONNX validity, 2:4 orientation, lowering counts.

Polygraphy's ``inspect sparsity`` misreads 3-D batched weights (docs/design.md §8.5), so the 2:4
orientation check is our own: each core initializer must be the constant ``B`` input of a
MatMul, ``[K, N]``, with at most 2 non-zeros in every group of 4 along K (axis 0).

The checks never hold all weights in memory: ``onnx.checker`` is given the path (the form
that handles models over protobuf's 2 GB), the graph is loaded without its external data,
and each core is read from the external data file on its own (offset and length), checked
and dropped before the next, so peak memory is the graph plus the largest core.

An 8-bit export's core (docs/quant.md) is the 8-bit input of a ``DequantizeLinear(axis=1)``
whose output is the MatMul's ``B``; the audit then reads the stored int8 / float8 values
(2:4 along K on the quantized values), checks every zero point is 0, the weight scale is
``[N]``, and that the MatMul's ``A`` comes through ``QuantizeLinear → DequantizeLinear``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from armor_export.errors import GraphCheckError
from armor_export.export import reference

CORE_SUFFIX = "sparse_core"


def two_four_violations(weight: np.ndarray, axis: int = 0) -> int:
    """Number of groups of 4 along ``axis`` holding more than 2 non-zeros (or a bad shape)."""
    w = np.moveaxis(np.asarray(weight), axis, 0)
    if w.shape[0] % 4:
        return -1
    nonzero = (w != 0).reshape(w.shape[0] // 4, 4, -1).sum(axis=1)
    return int((nonzero > 2).sum())


@dataclass
class GraphReport:
    cores: int = 0
    plugin_nodes: int = 0
    matmuls: int = 0
    quantized_cores: int = 0  # cores in Q/DQ form (8-bit exports)
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        counts = {"cores": self.cores, "plugin_nodes": self.plugin_nodes, "matmuls": self.matmuls}
        if self.quantized_cores:
            counts["quantized_cores"] = self.quantized_cores
        return counts


def initializer_array(init, base_dir: str | Path) -> np.ndarray:
    """One initializer as an array; external data is read for this tensor alone (by its
    offset and length in the data file) into a copy, so the graph keeps no weight bytes."""
    from onnx import TensorProto, external_data_helper, numpy_helper

    if not external_data_helper.uses_external_data(init):
        return numpy_helper.to_array(init)
    tensor = TensorProto()
    tensor.CopyFrom(init)  # the external form: name, type, dims and where the bytes are
    external_data_helper.load_external_data_for_tensor(tensor, str(base_dir))
    return numpy_helper.to_array(tensor)


def _tensors(graph):
    """Every tensor a graph holds: its initializers and the tensors of node attributes,
    subgraphs included (where ONNX allows external data)."""
    yield from graph.initializer
    for node in graph.node:
        yield from _attribute_tensors(node)


def _attribute_tensors(node):
    for attr in node.attribute:
        if attr.HasField("t"):
            yield attr.t
        yield from attr.tensors
        if attr.HasField("g"):
            yield from _tensors(attr.g)
        for sub in attr.graphs:
            yield from _tensors(sub)


def external_data_files(path: str | Path) -> list[str]:
    """The files (as written, relative to the graph's folder) that the model at ``path``
    keeps tensors in: what the writer actually did, read from the written graph."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    model = onnx.load(str(path), load_external_data=False)
    tensors = [*_tensors(model.graph)]
    for function in model.functions:
        for node in function.node:
            tensors.extend(_attribute_tensors(node))
    return sorted({ExternalDataInfo(t).location for t in tensors if uses_external_data(t)})


# ONNX element types of the 8-bit cores, by scheme storage (TensorProto values)
QUANT_TYPES = {"INT8": 3, "FLOAT8E4M3FN": 17}


def check_graph(
    path: str | Path, n_armor: int, n_sparse: int, plugin: bool, quant: str | None = None
) -> GraphReport:
    """Validate the exported model at ``path``; raise GraphCheckError naming every problem.

    ``quant``: the scheme name of an 8-bit export, whose every core must be in Q/DQ form.
    """
    import onnx

    path = Path(path)
    try:
        onnx.checker.check_model(str(path))  # the path form also handles > 2 GB models
    except onnx.checker.ValidationError as exc:
        raise GraphCheckError(f"{path}: onnx.checker: {str(exc).splitlines()[0]}") from None
    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    report = GraphReport()
    users: dict[str, list[tuple[str, int]]] = {}
    producers: dict[str, object] = {}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for idx, name in enumerate(node.input):
            users.setdefault(name, []).append((node.op_type, idx))
            consumers.setdefault(name, []).append(node)
        for name in node.output:
            producers[name] = node
        report.matmuls += node.op_type == "MatMul"
        if node.op_type == reference.PLUGIN_NAME:
            report.plugin_nodes += 1
            attrs = {a.name for a in node.attribute}
            if not {"plugin_version", "plugin_namespace"} <= attrs:
                report.problems.append(f"plugin node {node.name} lacks plugin_version/namespace")
    for init in graph.initializer:
        if not init.name.split(".")[-1].startswith(CORE_SUFFIX):
            continue
        report.cores += 1
        where = users.get(init.name, [])
        if quant is not None:
            problems = _qdq_problems(init, quant, consumers, producers, graph, path.parent)
            report.problems += problems
            report.quantized_cores += not problems
        elif not where or any(use != ("MatMul", 1) for use in where):
            report.problems.append(f"{init.name}: not the constant B input of a MatMul ({where})")
        try:
            weight = initializer_array(init, path.parent)
        except (OSError, ValueError) as exc:
            report.problems.append(f"{init.name}: its external data cannot be read ({exc})")
            continue
        if weight.ndim != 2:
            report.problems.append(f"{init.name}: expected a 2-D [K, N] weight, got {weight.shape}")
            continue
        bad = two_four_violations(weight, axis=0)
        if bad:
            what = "K not divisible by 4" if bad < 0 else f"{bad} groups of 4 along K with > 2"
            report.problems.append(f"{init.name} {list(weight.shape)}: not 2:4 along K ({what})")
    expected = n_armor + n_sparse
    if report.cores != expected:
        report.problems.append(
            f"{report.cores} sparse core MatMuls in the graph, expected {expected} "
            f"({n_armor} ArmorLinear + {n_sparse} 2:4 linear)"
        )
    want_plugins = 2 * n_armor if plugin else 0
    if report.plugin_nodes != want_plugins:
        report.problems.append(
            f"{report.plugin_nodes} {reference.PLUGIN_NAME} nodes, expected {want_plugins}"
        )
    if report.problems:
        shown = "; ".join(report.problems[:8])
        more = f" (+{len(report.problems) - 8} more)" if len(report.problems) > 8 else ""
        raise GraphCheckError(f"{path.name}: {shown}{more}")
    return report


def _qdq_problems(init, scheme: str, consumers, producers, graph, base_dir: Path) -> list[str]:
    """What keeps the 8-bit core ``init`` from TensorRT's explicit-quantization form:
    ``init → DequantizeLinear(axis=1, scale [N], zero point 0) → MatMul B``, its ``A``
    through ``QuantizeLinear → DequantizeLinear`` with one scale and zero point 0, or in
    float for a weight-only core (``quant.float_activations``)."""
    from armor_export.quant import schemes

    onnx_type = schemes.get(scheme).onnx_type
    name = init.name
    if init.data_type != QUANT_TYPES.get(onnx_type):
        return [f"{name}: element type {init.data_type}, the {scheme} scheme stores {onnx_type}"]
    dq = consumers.get(name, [])
    if len(dq) != 1 or dq[0].op_type != "DequantizeLinear" or list(dq[0].input[:1]) != [name]:
        found = [n.op_type for n in dq]
        return [f"{name}: not the input of one DequantizeLinear ({found})"]
    dq = dq[0]
    problems = []
    axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
    n_out = init.dims[1] if len(init.dims) == 2 else None
    if axis != 1:
        problems.append(f"{name}: its DequantizeLinear has axis {axis}, not 1 (per output channel)")
    problems += _zero_point_problems(name, dq, graph, base_dir, shape=[n_out])
    matmul = consumers.get(dq.output[0], [])
    if len(matmul) != 1 or matmul[0].op_type != "MatMul" or matmul[0].input[1] != dq.output[0]:
        return problems + [f"{name}: its DequantizeLinear does not feed one MatMul's B input"]
    act_dq = producers.get(matmul[0].input[0])
    if act_dq is None or act_dq.op_type != "DequantizeLinear":
        return problems  # a weight-only core: its input stays in float (W8A16)
    act_q = producers.get(act_dq.input[0])
    if act_q is None:
        return problems + [f"{name}: its MatMul's A input is not DequantizeLinear(QuantizeLinear)"]
    if act_q.op_type != "QuantizeLinear":
        return problems + [f"{name}: its MatMul's A input is not DequantizeLinear(QuantizeLinear)"]
    for node in (act_q, act_dq):
        problems += _zero_point_problems(name, node, graph, base_dir, shape=[])
    return problems


def _zero_point_problems(name: str, node, graph, base_dir: Path, shape: list) -> list[str]:
    """The scale of the Q/DQ ``node`` must have ``shape`` and be positive and finite, its
    zero point must be given (an 8-bit type) and all 0: symmetric quantization."""
    inits = {i.name: i for i in graph.initializer}
    if len(node.input) < 3 or node.input[2] not in inits or node.input[1] not in inits:
        return [f"{name}: {node.op_type} {node.name} lacks a constant scale and zero point"]
    scale = initializer_array(inits[node.input[1]], base_dir).astype(np.float32)
    zero_point = initializer_array(inits[node.input[2]], base_dir)
    problems = []
    if list(scale.shape) != shape:
        problems.append(f"{name}: {node.op_type} scale of shape {list(scale.shape)}, not {shape}")
    elif not np.all(np.isfinite(scale) & (scale > 0)):
        problems.append(f"{name}: {node.op_type} scale not finite and positive")
    if np.any(zero_point.astype(np.float32) != 0):
        problems.append(f"{name}: {node.op_type} zero point not 0 (symmetric quantization)")
    return problems
