"""The layout pass: Transpose → Reshape… → Transpose chains become one Transpose."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from armor_export.config import ExportConfig
from armor_export.export import api, layout
from armor_export.export.layout import Mono, parse_dim, plan_chain, refine
from armor_export.export.wrapper import DecoderSpec, example_inputs
from tests.conftest import random_armorize, tiny_model

onnx = pytest.importorskip("onnx")
ir = pytest.importorskip("onnx_ir")


def dims(*items):
    out = []
    for item in items:
        if isinstance(item, int):
            out.append(Mono(item))
        else:
            out.append(parse_dim(ir.SymbolicDim(item)))
    return out


def test_dims_parse_as_products_and_sums_are_refused():
    assert parse_dim(576) == Mono(576)
    assert parse_dim(ir.SymbolicDim("batch*seq")) == Mono(1, ("batch", "seq"))
    assert parse_dim(ir.SymbolicDim("2*seq")) == Mono(2, ("seq",))
    assert parse_dim(ir.SymbolicDim("past_seq + seq")) is None
    assert parse_dim(ir.SymbolicDim(None)) is None
    assert Mono(1, ("seq",)).divides(Mono(4, ("batch", "seq")))
    assert not Mono(1, ("past_seq",)).divides(Mono(4, ("batch", "seq")))


def test_refinement_of_block_and_head_shapes():
    # 18 blocks of 32 vs 9 heads of 64: atoms batch, seq, 9, 2, 32
    atoms, spans1, spans2 = refine(dims("batch*seq", 18, 32), dims("batch", "seq", 9, 64))
    assert atoms == dims("batch", "seq", 9, 2, 32)
    assert [list(s) for s in spans1] == [[0, 1], [2, 3], [4]]
    assert [list(s) for s in spans2] == [[0], [1], [2], [3, 4]]
    # head_dim 80 with blocks of 32: boundaries 32·k and 80·k do not nest
    assert refine(dims("seq", 5, 32), dims("seq", 2, 80)) is None
    assert refine(dims("seq", 6), dims("seq", 7)) is None


def test_plan_of_the_q_projection_chain():
    # A-stage output [18, T, 32] → [T, 18, 32] → [B, S, 9, 64] → [B, 9, S, 64]
    plan = plan_chain(
        dims(18, "batch*seq", 32),
        [1, 0, 2],
        dims("batch*seq", 18, 32),
        dims("batch", "seq", 9, 64),
        [0, 2, 1, 3],
        dims("batch", 9, "seq", 64),
    )
    assert plan.in_dims == dims(9, 2, "batch", "seq", 32)
    assert plan.perm == [2, 0, 3, 1, 4]
    assert plan.out_dims == dims("batch", 9, "seq", 64)
    # shapes that do not match the permutations are refused
    assert (
        plan_chain(
            dims(18, "seq", 32),
            [1, 0, 2],
            dims(18, "seq", 32),
            dims("seq", 576),
            [1, 0],
            dims(576, "seq"),
        )
        is None
    )


def test_neighbouring_atoms_are_coalesced_and_identity_becomes_a_reshape():
    # [B, S, 576] → [B·S, 18, 32] and back: a pure reshape, no Transpose
    plan = plan_chain(
        dims("batch", "seq", 576),
        [0, 1, 2],
        dims("batch", "seq", 576),
        dims("batch*seq", 18, 32),
        [0, 1, 2],
        dims("batch*seq", 18, 32),
    )
    assert plan.perm == [0] and plan.in_dims == [Mono(576, ("batch", "seq"))]


def _chain_model(
    extra_use: bool = False, nb: int = 8, b: int = 8, heads: int = 4, interleaved: bool = False
):
    """ids [batch, seq] and blocks [nb, batch*seq, b] → q heads [batch, heads, seq, head_dim];
    ``interleaved`` adds a second chain (of ``-blocks``) whose nodes interleave the first's,
    ending before it: shared run-time shapes must still come before both."""
    from onnx import TensorProto, helper

    head_dim = nb * b // heads
    hidden = nb * b
    batch_seq = "batch*seq"
    vi = helper.make_tensor_value_info
    inputs = [
        vi("ids", TensorProto.INT64, ["batch", "seq"]),
        vi("blocks", TensorProto.FLOAT, [nb, batch_seq, b]),
    ]
    outputs = [vi("heads", TensorProto.FLOAT, ["batch", heads, "seq", head_dim])]
    nodes = [
        helper.make_node("Shape", ["ids"], ["ids_shape"]),
        helper.make_node("Concat", ["ids_shape", "c_hidden"], ["tok_shape"], axis=0),
        helper.make_node("Concat", ["ids_shape", "c_heads"], ["head_shape"], axis=0),
        helper.make_node("Transpose", ["blocks"], ["tokens"], perm=[1, 0, 2]),
        helper.make_node("Reshape", ["tokens", "tok_shape"], ["flat"]),
        helper.make_node("Reshape", ["flat", "head_shape"], ["split"]),
        helper.make_node("Transpose", ["split"], ["heads"], perm=[0, 2, 1, 3]),
    ]
    if interleaved:
        outputs.append(vi("heads_2", TensorProto.FLOAT, ["batch", heads, "seq", head_dim]))
        neg = helper.make_node("Neg", ["blocks"], ["blocks_2"])
        chain = nodes[3:]
        second = [
            helper.make_node(n.op_type, [f"{n.input[0]}_2", *n.input[1:]], [f"{n.output[0]}_2"])
            for n in chain
        ]
        for new, old in zip(second, chain, strict=True):
            new.attribute.extend(old.attribute)
        second[0].input[0] = "blocks_2"
        # T1, T1', R, R', R2, R2', T2', T2
        order = [chain[0], second[0], chain[1], second[1], chain[2], second[2], second[3]]
        nodes = [*nodes[:3], neg, *order, chain[3]]
    if extra_use:
        nodes.append(helper.make_node("Neg", ["flat"], ["flat_neg"]))
        outputs.append(vi("flat_neg", TensorProto.FLOAT, ["batch", "seq", hidden]))
    inits = [
        helper.make_tensor("c_hidden", TensorProto.INT64, [1], [hidden]),
        helper.make_tensor("c_heads", TensorProto.INT64, [2], [heads, head_dim]),
    ]
    value_info = [
        vi(f"{name}{suffix}", TensorProto.FLOAT, shape)
        for suffix in ("", "_2")
        for name, shape in (
            ("blocks", [nb, batch_seq, b]),
            ("tokens", [batch_seq, nb, b]),
            ("flat", ["batch", "seq", hidden]),
            ("split", ["batch", "seq", heads, head_dim]),
        )
        if f"{name}{suffix}" != "blocks"  # a graph input
    ]
    graph = helper.make_graph(nodes, "chain", inputs, outputs, inits, value_info=value_info)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _run(model_proto, batch, seq):
    ort = pytest.importorskip("onnxruntime")
    rng = np.random.default_rng(0)
    nb, _, b = (d.dim_value or 0 for d in model_proto.graph.input[1].type.tensor_type.shape.dim)
    feeds = {
        "ids": np.zeros((batch, seq), np.int64),
        "blocks": rng.standard_normal((nb, batch * seq, b)).astype(np.float32),
    }
    sess = ort.InferenceSession(model_proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _merged(model_proto):
    model = ir.from_proto(model_proto)
    count = layout.merge_transpose_chains(model.graph)
    return count, ir.to_proto(model)


@pytest.mark.parametrize(("batch", "seq", "nb", "b"), [(1, 5, 8, 8), (3, 2, 2, 32), (2, 1, 16, 4)])
def test_merged_chain_moves_the_same_values_with_one_transpose(batch, seq, nb, b):
    """Blocks smaller than, equal to and larger than a head."""
    original = _chain_model(nb=nb, b=b)
    count, merged = _merged(original)
    assert count == 1
    assert [n.op_type for n in merged.graph.node].count("Transpose") == 1
    onnx.checker.check_model(merged)
    for got, want in zip(_run(merged, batch, seq), _run(original, batch, seq), strict=True):
        np.testing.assert_array_equal(got, want)


def test_interleaved_chains_share_run_time_shapes_in_topological_order():
    original = _chain_model(interleaved=True)
    onnx.checker.check_model(original)
    count, merged = _merged(original)
    assert count == 2
    onnx.checker.check_model(merged)  # topological order included
    for got, want in zip(_run(merged, 2, 3), _run(original, 2, 3), strict=True):
        np.testing.assert_array_equal(got, want)


def test_chains_with_a_second_reader_or_unknown_shapes_are_left_alone():
    count, merged = _merged(_chain_model(extra_use=True))
    assert count == 0 and [n.op_type for n in merged.graph.node].count("Transpose") == 2
    unknown = _chain_model()
    del unknown.graph.value_info[:]
    assert _merged(unknown)[0] == 0
    # heads of 12 and blocks of 8 do not nest (8 ∤ 12): left alone
    count, merged = _merged(_chain_model(nb=6, b=8, heads=4))
    assert count == 0 and [n.op_type for n in merged.graph.node].count("Transpose") == 2


def _export_pair(model, tokenizer, tmp_path, monkeypatch):
    from armor_export.export import export_onnx

    results = {}
    for merge in (True, False):
        with monkeypatch.context() as m:
            if not merge:
                m.setattr(layout, "merge_transpose_chains", lambda graph: 0)
            cfg = ExportConfig(model="tiny", output_dir=str(tmp_path / str(merge)))
            results[merge] = export_onnx(cfg, model=copy.deepcopy(model), tokenizer=tokenizer)
    return results


@pytest.mark.parametrize(
    ("family", "block", "per_layer"), [("llama", 8, 4), ("qwen2", 8, 4), ("qwen3", 16, 2)]
)
def test_export_merges_head_transposes_and_outputs_are_identical(
    family, block, per_layer, tokenizer, tmp_path, monkeypatch
):
    """q/k/v outputs and the attention output each lose a Transpose (Qwen3 normalises q and
    k per head in between, so only v and o qualify); Qwen2's biases join in block layout."""
    ort = pytest.importorskip("onnxruntime")
    model = tiny_model(family).eval()
    random_armorize(model, block_size=block)
    results = _export_pair(model, tokenizer, tmp_path, monkeypatch)
    layers = model.config.num_hidden_layers
    assert results[True].counts["merged_transposes"] == per_layer * layers
    assert results[True].manifest["counts"]["merged_transposes"] == per_layer * layers
    assert results[True].manifest["graph_revision"] == api.GRAPH_REVISION

    def transposes(result):
        return sum(n.op_type == "Transpose" for n in onnx.load(str(result.onnx_path)).graph.node)

    assert transposes(results[True]) == transposes(results[False]) - per_layer * layers
    spec = DecoderSpec.from_config(model.config)
    for batch, seq, past in ((2, 6, 3), (1, 1, 5), (3, 4, 0)):
        args = example_inputs(spec, torch.float32, batch=batch, seq=seq, past=past)
        feeds = dict(zip(spec.input_names(), [t.numpy() for t in args], strict=True))
        out = {
            k: ort.InferenceSession(str(r.onnx_path)).run(None, feeds) for k, r in results.items()
        }
        for got, want in zip(out[True], out[False], strict=True):
            np.testing.assert_array_equal(got, want)
