"""Engines from 8-bit Q/DQ exports (issue #26 item 6): real TensorRT-RTX builds on this CPU of
small hand-built Q/DQ graphs (tests/engine/qdq_graphs.py), their targets by scheme, and the
build report's core layers: precision as TensorRT typed them, sparse kernels chosen, not
chosen or unknown with the reason. The datacenter TensorRT path is followed with a recording
stand-in for the ``tensorrt`` module (not installed here), to see which flags it would set.
"""

from __future__ import annotations

import json
import sys
import types

import pytest

from armor_export.config import EngineConfig
from armor_export.engine import cores
from armor_export.engine.api import build_targets, report_rows, tactic_sparsity
from armor_export.engine.targets import TargetError, check_scheme_targets, for_scheme
from armor_export.quant import schemes
from tests.engine.qdq_graphs import qdq_export

# ---------------------------------------------------------------- without any TensorRT


def fake_rtx():
    """Just what target resolution asks of TensorRT-RTX: its version and targets."""
    names = ("SM75", "SM80", "SM86", "SM89", "SM120", "SM121")
    return types.SimpleNamespace(
        __version__="1.7.1.116",
        ComputeCapability=types.SimpleNamespace(__members__={n: i for i, n in enumerate(names)}),
    )


@pytest.mark.fault(
    "engine",
    "an 8-bit export built with --compute-capability default (TensorRT-RTX's portable set: "
    "sm80 to sm120 and newer)",
    "the scheme's targets instead: int8 sm80, sm86; fp8 sm89, sm120",
)
def test_default_targets_of_an_8_bit_export_are_its_schemes():
    trt = fake_rtx()
    assert for_scheme(trt, "default", schemes.get("int8")) == ["sm80", "sm86"]
    assert for_scheme(trt, "default", schemes.get("fp8")) == ["sm89", "sm120"]
    assert for_scheme(trt, "default", None) == []  # a float export: TensorRT-RTX's own set
    assert for_scheme(trt, "sm89,sm120", schemes.get("int8")) == ["sm89", "sm120"]  # as named


@pytest.mark.fault(
    "engine",
    "an fp8 export built for sm80 or sm86 (named, or current on an RTX 30), or with "
    "datacenter TensorRT on an A100",
    "one line before any build: FP8 GEMMs need sm89+ tensor cores; build for sm89,sm120",
)
def test_fp8_below_sm89_is_refused_saying_why():
    trt, fp8 = fake_rtx(), schemes.get("fp8")
    for spec, gpus in (("sm80", None), ("sm86,sm89", None), ("current", (["sm86"], ""))):
        with pytest.raises(TargetError, match=r"FP8 GEMMs need sm89\+ tensor cores") as err:
            for_scheme(trt, spec, fp8, gpus)
        assert "\n" not in str(err.value) and "sm89,sm120 (its default)" in str(err.value)
    with pytest.raises(TargetError, match="cannot be built for sm80"):  # datacenter: the GPU
        check_scheme_targets(fp8, ["sm80"])
    check_scheme_targets(schemes.get("int8"), ["sm80", "sm86"])  # INT8 from sm80 is fine
    check_scheme_targets(fp8, ["sm120", "sm121"])


def test_datacenter_targets_refuse_the_local_gpu_below_the_scheme(tmp_path):
    from armor_export.export_manifest import ExportManifest

    export = qdq_export(tmp_path / "fp8", "fp8", k=64, n=64)
    manifest = ExportManifest.read(export)
    cfg = EngineConfig(export_dir=str(export), backend="tensorrt")
    with pytest.raises(TargetError, match="FP8 GEMMs need sm89"):
        build_targets(None, cfg, manifest, gpus=(["sm80"], ""))
    assert build_targets(None, cfg, manifest, gpus=(["sm90"], "")) is None
    assert build_targets(None, cfg, manifest, gpus=([], "no GPU")) is None  # TensorRT says


def test_an_unknown_scheme_in_the_manifest_is_one_line(tmp_path):
    from dataclasses import replace

    from armor_export.errors import CorruptFileError
    from armor_export.export_manifest import ExportManifest

    manifest = ExportManifest.read(qdq_export(tmp_path / "int8", "int8", k=64, n=64))
    manifest = replace(manifest, quant={"scheme": "int3"})
    with pytest.raises(CorruptFileError, match="scheme 'int3'.*registered: int8, fp8"):
        build_targets(fake_rtx(), EngineConfig(), manifest)


def layer(name, kind, tactic="__myelin_CASK_STUB", onnx="/m/MatMul"):
    return {"Name": name, "LayerType": kind, "TacticName": tactic,
            "Metadata": f"[ONNX Layer: {onnx}][ONNX Layer: /m/DequantizeLinear_weight]",
            "inputs": [([1, -1, 64], "Int8")], "outputs": [([1, -1, 64], "Half")],
            "constants": [([1, 64, 64], "Int8"), ([1], "Float")]}  # fmt: skip


@pytest.mark.fault(
    "engine",
    "a weight-only 8-bit core, which TensorRT-RTX fuses into a runtime_fusion "
    "__myl_CastMulCastFc layer instead of a gemm",
    "counted among the build log's GEMM layers (not 0 of 0)",
)
def test_tactic_sparsity_counts_8_bit_gemms_and_weight_only_fusions():
    fused = layer("__myl_CastMulCastFc_myl0_2", "runtime_fusion", tactic="")
    table = [layer("/m/MatMul_myl0_2", "gemm"), fused, layer("__myl_CastGath_myl0_1", "kgen")]
    assert tactic_sparsity(table)["gemm_layers"] == 2
    assert not cores.is_gemm_layer(layer("__myl_MulMulCast_myl0_3", "runtime_fusion"))


def test_a_core_is_chosen_sparse_only_by_its_tactic_or_the_builder_log():
    def status(lay, **kw):
        args = {"flag": True, "aot": False, "picked": None, "matmul": "/m/MatMul", **kw}
        return cores.sparse_status(lay, **args)[0]

    sparse = layer("/m/MatMul", "gemm", tactic="sm80_xmma_sparse_gemm_i8i8_tn")
    dense = layer("/m/MatMul", "gemm", tactic="sm80_xmma_gemm_i8i8_tn")
    stub = layer("/m/MatMul_myl0_2", "gemm")
    assert status(sparse) == cores.CHOSEN and status(dense) == cores.NOT_CHOSEN
    assert status(sparse, flag=False) == cores.NOT_CHOSEN  # --no-sparse
    assert status(dense, picked=["/m/MatMul"]) == cores.CHOSEN  # the builder log says so
    assert status(sparse, picked=[]) == cores.NOT_CHOSEN
    # a placeholder tactic, even on a layer named "sparse", is never reported as chosen
    assert status(stub, aot=True) == cores.UNKNOWN_AOT
    assert status(layer("sparse_core_MatMul", "gemm"), aot=True) == cores.UNKNOWN_AOT
    assert status(None) == cores.UNKNOWN
    assert cores.precision(stub) == "Int8 x Int8 -> Half"


# ---------------------------------------------------------------- real TensorRT-RTX builds


@pytest.fixture(scope="module")
def rtx_builds(tmp_path_factory):
    """``name -> report`` of real TensorRT-RTX engines of small Q/DQ graphs (two 256x256
    cores each), built once for this module."""
    pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX missing: pip install '.[rtx]'")
    pytest.importorskip("onnx", reason="onnx missing: pip install '.[onnx]'")
    pytest.importorskip("ml_dtypes", reason="ml_dtypes missing (FP8 initializers)")
    from armor_export.engine import build_engine

    root = tmp_path_factory.mktemp("quant-engines")
    builds = {
        "int8": ("int8", "default", {}),
        "int8-sm80": ("int8", "sm80", {}),
        "fp8-sm89": ("fp8", "sm89", {}),
        "int8-weight-only": ("int8", "sm80", {"activations": False}),
        "float": (None, "default", {}),
    }
    reports = {}
    for name, (scheme, target, kwargs) in builds.items():
        export = qdq_export(root / name, scheme, k=256, n=256, cores=2, **kwargs)
        cfg = EngineConfig(export_dir=str(export), output_dir=str(root / name / "engine"),
                           compute_capability=target)  # fmt: skip
        result = build_engine(cfg)
        reports[name] = (result.report, result.report_path.with_suffix(".md").read_text())
    return reports


AOT = cores.UNKNOWN_AOT


@pytest.mark.fault(
    "engine",
    "an INT8 or FP8 Q/DQ export built by TensorRT-RTX on a CPU",
    "build_report's core_layers: each core MatMul's engine layer, its precision as TensorRT "
    "typed it (Int8 x Int8 -> Half), and sparse kernels unknown (ahead-of-time build) with "
    "the reason, never chosen",
)
@pytest.mark.parametrize(
    "name, title, targets",
    [("int8", "Int8", ["sm80", "sm86"]), ("int8-sm80", "Int8", ["sm80"]),
     ("fp8-sm89", "FP8", ["sm89"])],
)  # fmt: skip
def test_8_bit_engines_report_each_core_layers_precision_and_sparsity(
    rtx_builds, name, title, targets
):
    report, markdown = rtx_builds[name]
    assert report["compute_capability"] == ",".join(targets)
    assert report["engine_targets"] == targets  # the engine's own header says so
    assert report["quant"]["scheme"] == name.split("-")[0]
    assert report["quant"]["export"]["scheme"] == name.split("-")[0]
    records = report["sparsity"]["core_layers"]
    assert [r["matmul"] for r in records] == [f"/model/layers.{i}/mlp/down_proj/MatMul"
                                              for i in range(2)]  # fmt: skip
    for r in records:
        # the W8A8 form keeps the 8-bit 2:4 weight feeding a real GEMM (TensorRT issue 4694)
        assert r["layer_type"] == "gemm" and r["activation"] == "Q/DQ"
        assert r["inputs"] == [title] and r["weights"][0] == title
        assert r["precision"] == f"{title} x {title} -> Half"
        assert r["sparse_tactic"] == AOT and "first runs" in r["reason"]
    assert report["sparsity"]["build_log_layers"]["gemm_layers"] == 2
    assert "## Core layers" in markdown and f"{title} x {title} -> Half" in markdown
    assert f"| precision | {name.split('-')[0]} cores (Q/DQ)" in markdown
    assert not any("export with --dtype float16" in n for n in report["notes"])


def test_weight_only_cores_are_found_in_their_runtime_fusion(rtx_builds):
    report, _ = rtx_builds["int8-weight-only"]
    assert report["sparsity"]["build_log_layers"]["gemm_layers"] == 2
    for r in report["sparsity"]["core_layers"]:
        assert r["layer_type"] == "runtime_fusion" and "Fc" in r["layer"]
        assert r["activation"] == "float" and r["precision"] == "Half x Int8 -> Half"
        assert r["sparse_tactic"] == AOT
    assert any("TensorRT issue 4694" in n for n in report["notes"])


FLOAT_ROWS = [
    "backend", "target", "precision", "SPARSE_WEIGHTS", "limits", "plugin",
    "2:4 core MatMuls in the graph", "eligible for sparse math (builder log)",
    "picked sparse kernels (builder log)", "sparse GEMM tactics (builder log layer table)",
    "engine inspector", "engine size", "build time",
]  # fmt: skip


def test_a_float_export_report_is_unchanged(rtx_builds):
    report, markdown = rtx_builds["float"]
    assert report["compute_capability"] == "default" and "quant" not in report
    assert "core_layers" not in report["sparsity"] and "## Core layers" not in markdown
    assert [k for k, _ in report_rows(report)] == FLOAT_ROWS
    assert dict(report_rows(report))["precision"] == "float16 (strongly typed)"
    assert report["sparsity"]["build_log_layers"]["gemm_layers"] == 2


def test_fp8_on_sm80_is_refused_before_a_build(tmp_path, capsys):
    pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX missing: pip install '.[rtx]'")
    from armor_export.cli.main import main

    export = qdq_export(tmp_path / "fp8", "fp8", k=64, n=64)
    out = tmp_path / "engine"
    assert main(["engine", str(export), "-o", str(out), "--compute-capability", "sm80"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "FP8 GEMMs need sm89+" in err[0], err
    assert not (out / "model.engine").exists()


# ---------------------------------------------------------------- datacenter TensorRT


class _Recorder:
    """A stand-in for the ``tensorrt`` module: the builder API build_engine_here uses, with
    every network flag and builder flag it is given recorded."""

    def __init__(self):
        self.calls: dict[str, list] = {"network_flags": [], "builder_flags": [], "parsed": []}
        calls = self.calls

        class ILogger:
            def __init__(self):
                pass

        flags = ("FP16", "BF16", "INT8", "FP8", "INT4", "FP4", "TF32", "SPARSE_WEIGHTS")
        self.module = mod = types.ModuleType("tensorrt")
        mod.__version__ = "10.99 (stand-in)"
        mod.ILogger = ILogger
        mod.BuilderFlag = types.SimpleNamespace(**{f: f for f in flags})
        mod.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=3)
        mod.ProfilingVerbosity = types.SimpleNamespace(DETAILED="DETAILED")

        class Config:
            def set_flag(self, flag):
                calls["builder_flags"].append(flag)

            def add_optimization_profile(self, profile):
                pass

            def create_timing_cache(self, data):
                return data

            def set_timing_cache(self, cache, ignore_mismatch):
                pass

            def get_timing_cache(self):
                return types.SimpleNamespace(serialize=lambda: b"cache")

        class Network:
            num_inputs, num_layers = 1, 0

            def get_input(self, index):
                return types.SimpleNamespace(name="input_ids")

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                calls["network_flags"].append(flags)
                return Network()

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return types.SimpleNamespace(set_shape=lambda *a: None)

            def build_serialized_network(self, network, config):
                return b"a stand-in engine"

        class OnnxParser:
            def __init__(self, network, logger):
                pass

            def parse_from_file(self, path):
                calls["parsed"].append(path)
                return True

        def runtime(logger):
            raise RuntimeError("no GPU in this stand-in")

        mod.Builder, mod.OnnxParser, mod.Runtime = Builder, OnnxParser, runtime


@pytest.mark.fault(
    "engine",
    "an INT8 or FP8 Q/DQ export built with datacenter TensorRT (11.4 removed the FP16/INT8/FP8 "
    "builder flags)",
    "a strongly typed network and SPARSE_WEIGHTS only: no precision builder flag is set",
)
@pytest.mark.parametrize("scheme", ["int8", "fp8"])
def test_datacenter_tensorrt_gets_the_qdq_graph_without_precision_flags(
    tmp_path, monkeypatch, scheme
):
    pytest.importorskip("onnx", reason="onnx missing: pip install '.[onnx]'")
    pytest.importorskip("ml_dtypes", reason="ml_dtypes missing (FP8 initializers)")
    from armor_export.engine.api import build_engine_here
    from armor_export.export_manifest import ExportManifest

    stand_in = _Recorder()
    monkeypatch.setitem(sys.modules, "tensorrt", stand_in.module)
    export = qdq_export(tmp_path / scheme, scheme, k=64, n=64)
    out = tmp_path / "engine"
    out.mkdir()
    cfg = EngineConfig(export_dir=str(export), output_dir=str(out), backend="tensorrt")
    cfg.validate()
    result = build_engine_here(cfg, ExportManifest.read(export))
    calls = stand_in.calls
    assert calls["parsed"] == [str(export / "model.onnx")]  # the Q/DQ graph as exported
    assert calls["network_flags"] == [1 << 3]  # STRONGLY_TYPED, nothing else
    assert calls["builder_flags"] == ["SPARSE_WEIGHTS"]
    report = json.loads(result.report_path.read_text())
    assert report["quant"]["scheme"] == scheme and report["strongly_typed"] is True
    # no layer table without a GPU to deserialise on: unknown, never chosen
    assert {r["sparse_tactic"] for r in report["sparsity"]["core_layers"]} == {cores.UNKNOWN}


def test_datacenter_tensorrt_builds_the_int8_graph(tmp_path):
    """The same graph through the real datacenter TensorRT, where it and a GPU are here."""
    trt = pytest.importorskip("tensorrt", reason="datacenter TensorRT (tensorrt) not installed")
    from armor_export.engine import build_engine
    from armor_export.engine.targets import cuda_gpus

    found, why = cuda_gpus()
    if not found:
        pytest.skip(f"datacenter TensorRT {trt.__version__} builds on a GPU: {why}")
    export = qdq_export(tmp_path / "int8", "int8", k=256, n=256, cores=2)
    cfg = EngineConfig(export_dir=str(export), output_dir=str(tmp_path / "e"), backend="tensorrt")
    report = build_engine(cfg).report
    for r in report["sparsity"]["core_layers"]:
        assert r["sparse_tactic"] in (cores.CHOSEN, cores.NOT_CHOSEN, cores.UNKNOWN)
        assert r["precision"] is None or "Int8" in r["precision"]
