"""8-bit checkpoints (issue #26): quantize -> export (Q/DQ) -> verify -> generate, per scheme.

One tiny ARMOR checkpoint is quantized to int8 and fp8 (seconds each); two exports keep the
count small: int8 in float32 and fp8 in float16, so both schemes and both float dtypes
ONNX Runtime runs are covered.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from armor_export.errors import GraphCheckError
from armor_export.export_manifest import ExportManifest
from tests.conftest import damaged_export, export_tiny, prune_tiny

CASES = {"int8": "float32", "fp8": "float16"}  # scheme -> export dtype
ONNX_TYPES = {"int8": 3, "fp8": 17}  # TensorProto INT8, FLOAT8E4M3FN


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    from armor_export.quant.api import QuantSettings, quantize_checkpoint

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("quant")
    checkpoint = prune_tiny(root)
    return {
        # every core W8A8 (no weight-only default), the form these tests check
        scheme: quantize_checkpoint(
            checkpoint, root / f"q-{scheme}", QuantSettings(scheme=scheme, float_activations=())
        )
        for scheme in CASES
    }


@pytest.fixture(scope="module")
def exports(quantized, tmp_path_factory):
    pytest.importorskip("onnxruntime")
    root = tmp_path_factory.mktemp("quant-onnx")
    return {
        scheme: export_tiny(quantized[scheme], root / scheme, dtype=dtype).output_dir
        for scheme, dtype in CASES.items()
    }


def _folder(quantized, scheme):
    return getattr(quantized[scheme], "output_dir", quantized[scheme])


def _graph(folder):
    import onnx

    return onnx.load(str(folder / "model.onnx"))


# ---------------------------------------------------------------- the Q/DQ form


@pytest.mark.fault(
    "export",
    "an 8-bit checkpoint (int8 or fp8 cores with per-channel weight and per-tensor "
    "activation scales) exported to ONNX",
    "8-bit sparse_core initializers [K, N], 2:4 along K, zeros where the checkpoint's mask is "
    "off, each through DequantizeLinear(axis=1) into MatMul B, the activation through "
    "QuantizeLinear -> DequantizeLinear, every zero point 0, opset 19, a manifest quant record",
)
@pytest.mark.parametrize("scheme", list(CASES))
def test_export_is_qdq_with_8bit_2_4_cores(scheme, quantized, exports):
    from onnx import numpy_helper

    from armor_export.export.checks import two_four_violations
    from armor_export.prune.checkpoint import load_checkpoint

    folder = exports[scheme]
    model = _graph(folder)
    manifest = ExportManifest.read(folder)
    assert manifest.quant == {
        "scheme": scheme,
        "weights": "per-channel",
        "activations": "per-tensor",
        "wrappers": CASES[scheme],
    }
    assert manifest.config["opset"] == 19
    assert {o.version for o in model.opset_import if o.domain in ("", "ai.onnx")} == {19}
    assert manifest.counts["quantized_cores"] == manifest.counts["cores"] == 14
    inits = {i.name: i for i in model.graph.initializer}
    nodes = list(model.graph.node)
    producer = {out: n for n in nodes for out in n.output}
    consumers = {}
    for n in nodes:
        for name in n.input:
            consumers.setdefault(name, []).append(n)
    reference, _ = load_checkpoint(_folder(quantized, scheme))
    cores = [n for n in inits if n.endswith("sparse_core")]
    assert len(cores) == 14
    for name in cores:
        init = inits[name]
        assert init.data_type == ONNX_TYPES[scheme]
        values = numpy_helper.to_array(init).astype(np.float32)
        assert two_four_violations(values, axis=0) == 0
        # the stored values are the checkpoint's, transposed: zeros exactly where its mask is off
        module = reference.get_submodule(name.removeprefix("model.").rsplit(".", 1)[0])
        want = module.quant.values.float().numpy().T
        np.testing.assert_array_equal(values, want)
        assert not values[~module.mask.numpy().T].any()
        (dq,) = consumers[name]
        assert dq.op_type == "DequantizeLinear"
        assert {a.name: a.i for a in dq.attribute}.get("axis", 1) == 1
        assert list(inits[dq.input[1]].dims) == [values.shape[1]]
        (matmul,) = consumers[dq.output[0]]
        assert matmul.op_type == "MatMul" and matmul.input[1] == dq.output[0]
        act_dq = producer[matmul.input[0]]
        act_q = producer[act_dq.input[0]]
        assert (act_dq.op_type, act_q.op_type) == ("DequantizeLinear", "QuantizeLinear")
        for node in (dq, act_dq, act_q):
            zero_point = inits[node.input[2]]
            assert zero_point.data_type == ONNX_TYPES[scheme]
            assert not numpy_helper.to_array(zero_point).astype(np.float32).any()


@pytest.mark.fault(
    "export",
    "an 8-bit export whose int8 core has a third non-zero in a group of 4 along K, or whose "
    "weight zero point is not 0",
    "GraphCheckError naming the core (2:4 read on the quantized values; zero point not 0)",
)
def test_audit_reads_the_8bit_values_and_zero_points(exports, tmp_path):
    from armor_export.export.checks import check_graph

    def fill_group(w):
        w[:4, 0] = 5
        return w

    bad = damaged_export(exports["int8"], tmp_path / "dense-group", "sparse_core", fill_group)
    with pytest.raises(GraphCheckError, match=r"sparse_core \[\d+, \d+\]: not 2:4 along K"):
        check_graph(bad / "model.onnx", 14, 0, False, quant="int8")
    bad = damaged_export(
        exports["int8"], tmp_path / "zero-point", "weight_zero_point", lambda z: z + 3
    )
    with pytest.raises(GraphCheckError, match=r"zero point not 0"):
        check_graph(bad / "model.onnx", 14, 0, False, quant="int8")


def test_lowered_modules_compute_what_quantcore_computes(quantized, tmp_path):
    """The lowering's eager maths (what is traced) is the fake-quant model's, bit for bit,
    for ARMOR cores in the blocked gated-MLP form and for a baseline's QuantLinear."""
    import copy

    from armor_export.export import lowering
    from armor_export.export.wrapper import DecoderWithCache, example_inputs
    from armor_export.export_manifest import DecoderSpec
    from armor_export.prune.checkpoint import load_checkpoint
    from armor_export.quant.api import QuantSettings, quantize_checkpoint

    wanda = quantize_checkpoint(
        prune_tiny(tmp_path, "wanda"), tmp_path / "q-wanda", QuantSettings(scheme="fp8")
    )
    for folder in (_folder(quantized, "int8"), getattr(wanda, "output_dir", wanda)):
        model, manifest = load_checkpoint(folder)
        model.set_attn_implementation("eager")
        lowered = copy.deepcopy(model)
        sparse = [n for n, m in manifest["matrices"].items() if m.get("kind") == "sparse"]
        counts = lowering.lower_model_(lowered, sparse, plugin=False)
        assert counts["armor"] + counts["sparse"] == 14
        args = example_inputs(DecoderSpec.from_config(model.config), torch.float32)
        with torch.no_grad():
            want = DecoderWithCache(model.eval())(*args)
            got = DecoderWithCache(lowered.eval())(*args)
        for a, b in zip(want, got, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


# ---------------------------------------------------------------- parity


@pytest.mark.fault(
    "verify",
    "an 8-bit Q/DQ export checked against its fake-quant PyTorch model",
    "PASSED within the stated 8-bit tolerances and top-1 agreement, with PyTorch's activation "
    "saturation counts and the tolerance derivation in the report",
)
@pytest.mark.parametrize("scheme", list(CASES))
def test_verify_passes_with_stated_8bit_tolerances(scheme, exports, tmp_path):
    from armor_export.config import VerifyConfig
    from armor_export.verify.api import verify
    from armor_export.verify.tolerances import QUANT_ALLOWANCE, top1_required

    result = verify(VerifyConfig(export_dir=str(exports[scheme]), report_dir=str(tmp_path)))
    report = result.report
    assert result.passed, report.verdict()
    quant = report.quant
    assert quant["scheme"] == scheme and "rounding-boundary flips" in quant["tolerance"]
    saturation = quant["saturation"]
    assert saturation["seen"] > 0 and 0 <= saturation["saturated"] <= saturation["seen"]
    top1 = quant["top1"]["onnxruntime"]
    assert top1["agreement"] >= top1["required"] == top1_required(CASES[scheme], scheme)
    logits = [r for r in report.rows if r.output == "logits"]
    assert logits and all(r.atol > QUANT_ALLOWANCE[CASES[scheme]]["logits"] for r in logits)
    assert "top-1" in report.verdict()
    assert "activations beyond the format's range" in (tmp_path / "verify_report.md").read_text()


@pytest.mark.fault(
    "verify",
    "an int8 export on an x86 CPU without VNNI, where ONNX Runtime's fused int8 MatMul "
    "(MatMulIntegerToFloat) adds products in saturating int16",
    "that fusion is turned off for the session (the graph's float maths runs) and the "
    "report says why; fp8, VNNI and Arm CPUs keep ORT's defaults",
)
def test_int8_fusion_is_off_only_where_it_saturates(exports):
    from armor_export.runtime import compat

    manifest = ExportManifest.read(exports["int8"])
    cpu = [compat.CPU_PROVIDER]
    avx2 = "flags\t\t: fpu sse2 avx avx2 fma\n"
    vnni = "flags\t\t: fpu sse2 avx avx2 avx512f avx512_vnni\n"
    config, note = compat.quant_session_config(manifest, cpu, avx2)
    if not compat.int8_fusion_saturates(avx2):  # not an x86 machine: never turned off
        assert (config, note) == ({}, None)
        return
    assert config == compat.QDQ_FUSION_OFF and "saturates" in note
    assert compat.quant_session_config(manifest, cpu, vnni) == ({}, None)
    assert compat.quant_session_config(ExportManifest.read(exports["fp8"]), cpu, avx2) == (
        {},
        None,
    )


def test_ort_fused_int8_matmul_saturates_on_this_cpu_when_detected():
    """Where ``int8_fusion_saturates`` says so, ORT's fused kernel really is inexact on a
    full-range int8 product, and exact with the fusion off (the claim the note makes)."""
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    from armor_export.runtime import compat

    rs = np.random.RandomState(0)
    k, n = 64, 32
    w = rs.randint(-127, 128, (k, n)).astype(np.int8)
    ws = (rs.rand(n).astype(np.float32) + 0.5) * 0.01
    s = np.float32(0.05)
    x = (rs.rand(8, k).astype(np.float32) * 2 - 1) * 127 * s
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
        helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], axis=1),
        helper.make_node("MatMul", ["xd", "wd"], ["y"]),
    ]
    inits = [
        numpy_helper.from_array(np.array(s), "s"),
        numpy_helper.from_array(np.array(0, np.int8), "z"),
        numpy_helper.from_array(w, "w"),
        numpy_helper.from_array(ws, "ws"),
        numpy_helper.from_array(np.zeros(n, np.int8), "wz"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, n])],
        inits,
    )
    data = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)]).SerializeToString()
    ref = (np.clip(np.round(x / s), -128, 127) * s) @ (w.astype(np.float32) * ws)

    def error(config):
        options = ort.SessionOptions()
        for key, value in config.items():
            options.add_session_config_entry(key, value)
        session = ort.InferenceSession(data, options, providers=[compat.CPU_PROVIDER])
        return np.abs(session.run(None, {"x": x})[0] - ref).max() / np.abs(ref).max()

    assert error(compat.QDQ_FUSION_OFF) < 1e-5
    if compat.int8_fusion_saturates():
        assert error({}) > 1e-2


# ---------------------------------------------------------------- running it


@pytest.mark.fault(
    "runtime",
    "an 8-bit export run by `generate` (our runtime) and by ONNX Runtime GenAI on CPU",
    "the same greedy tokens as the fake-quant PyTorch model, in both",
)
@pytest.mark.parametrize("scheme", list(CASES))
def test_generate_and_genai_run_the_8bit_export(scheme, quantized, exports):
    from armor_export.runtime import GenerationConfig, Generator
    from tests.runtime.test_genai import PROMPTS, genai_or_skip, pytorch_greedy

    folder = exports[scheme]
    config = GenerationConfig(max_new_tokens=6)
    ours = Generator(folder, threads=1).generate(PROMPTS, config)
    eos = set(ExportManifest.read(folder).tokens.eos_token_ids)
    if CASES[scheme] == "float32":  # PyTorch's greedy run is float32
        for prompt_ids, tokens in zip(ours.prompt_token_ids, ours.token_ids, strict=True):
            assert tokens == pytorch_greedy(_folder(quantized, scheme), prompt_ids, 6, eos)
    genai_or_skip()
    from armor_export.runtime.genai import GenaiGenerator

    theirs = GenaiGenerator(folder).generate(PROMPTS, config)
    assert theirs.token_ids == ours.token_ids


@pytest.mark.fault(
    "export",
    "an 8-bit checkpoint exported with --lowering plugin (TensorRT plugin nodes for the "
    "block-diagonal wrappers)",
    "the plugin nodes around the Q/DQ core pass the graph checks, and the NumPy reference "
    "(onnx.reference with the plugin's reference op) matches the fake-quant PyTorch model",
)
def test_plugin_lowering_works_with_qdq(quantized, tmp_path):
    from armor_export.config import VerifyConfig
    from armor_export.verify.api import verify

    result = export_tiny(_folder(quantized, "int8"), tmp_path / "plugin", lowering="plugin")
    counts = result.manifest["counts"]
    assert counts["plugin_nodes"] == 2 * 14 and counts["quantized_cores"] == 14
    checked = verify(
        VerifyConfig(
            export_dir=str(result.output_dir),
            backends=["numpy-reference"],
            report_dir=str(tmp_path / "report"),
        )
    )
    assert checked.passed, checked.report.verdict()


@pytest.mark.fault(
    "export",
    "an int8 checkpoint whose down projections are weight-only (the scheme's default: their "
    "input stays in float)",
    "those cores' MatMul takes the float input and DQ(int8 weight); the others keep the "
    "activation Q/DQ; the audit passes and the manifest names the weight-only cores",
)
def test_weight_only_cores_export_without_activation_qdq(tmp_path):
    from armor_export.quant.api import QuantSettings, quantize_checkpoint

    checkpoint = prune_tiny(tmp_path)
    quantized = quantize_checkpoint(checkpoint, tmp_path / "q", QuantSettings("int8"))
    folder = export_tiny(quantized, tmp_path / "onnx").output_dir
    manifest = ExportManifest.read(folder)
    only = manifest.quant["weight_only"]
    assert only and all(n.endswith("down_proj") for n in only)
    model = _graph(folder)
    producer = {out: n for n in model.graph.node for out in n.output}
    consumers = {}
    for n in model.graph.node:
        for name in n.input:
            consumers.setdefault(name, []).append(n)
    for init in (i for i in model.graph.initializer if i.name.endswith("sparse_core")):
        (dq,) = consumers[init.name]
        (matmul,) = consumers[dq.output[0]]
        before = producer.get(matmul.input[0])
        quantized_input = before is not None and before.op_type == "DequantizeLinear"
        assert quantized_input != ("down_proj" in init.name), init.name
