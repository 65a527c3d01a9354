"""Checks run on every exported graph: ONNX validity, 2:4 orientation, lowering counts.

Polygraphy's ``inspect sparsity`` misreads 3-D batched weights (docs/design.md §8.5), so the 2:4
orientation check is our own: each core initializer must be the constant ``B`` input of a
MatMul, ``[K, N]``, with at most 2 non-zeros in every group of 4 along K (axis 0).

The checks never hold all weights in memory: ``onnx.checker`` is given the path (the form
that handles models over protobuf's 2 GB), the graph is loaded without its external data,
and each core is read from the external data file on its own (offset and length), checked
and dropped before the next, so peak memory is the graph plus the largest core.
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
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"cores": self.cores, "plugin_nodes": self.plugin_nodes, "matmuls": self.matmuls}


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


def check_graph(path: str | Path, n_armor: int, n_sparse: int, plugin: bool) -> GraphReport:
    """Validate the exported model at ``path``; raise GraphCheckError naming every problem."""
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
    for node in graph.node:
        for idx, name in enumerate(node.input):
            users.setdefault(name, []).append((node.op_type, idx))
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
        if not where or any(use != ("MatMul", 1) for use in where):
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
