"""GPU checks: verify runs the shipped engine (TensorRT-RTX, built for this GPU) and compares it
with PyTorch and ONNX Runtime. Skipped without a CUDA GPU or without TensorRT-RTX."""

from __future__ import annotations

import shutil

import pytest

from armor_export.runtime.trt_session import cuda_gpus

GPUS, NO_GPU = cuda_gpus()
pytestmark = pytest.mark.skipif(not GPUS, reason=f"needs a CUDA GPU to run an engine: {NO_GPU}")
pytest.importorskip("onnxruntime")
trt = pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX missing: pip install '.[rtx]'")


def test_verify_runs_the_built_engine_on_this_gpu(tiny_fp16_export, tmp_path):
    from armor_export.config import EngineConfig, VerifyConfig
    from armor_export.engine import build_engine
    from armor_export.verify import verify

    export = tmp_path / "onnx"
    shutil.copytree(tiny_fp16_export.output_dir, export)
    build = build_engine(EngineConfig(export_dir=str(export), compute_capability="current"))
    result = verify(VerifyConfig(export_dir=str(export), report_dir=str(tmp_path / "verify")))
    report = result.report
    assert report.engine_executed, report.engine_not_run_reason
    assert "TensorRT-RTX engine" in report.runners
    assert result.passed, report.markdown()
    assert "PyTorch = TensorRT-RTX engine (max abs err" in report.verdict()
    assert report.engine["engine_sha256"] == build.report["engine_sha256"]


@pytest.mark.fault(
    "verify",
    "an engine built from an export whose weights give NaN outputs, run on the GPU",
    "FAILED: ... TensorRT-RTX engine produced non-finite logits at prefill (...): the export or "
    "its weights are damaged; exit 1, the reason in the report JSON",
)
def test_an_engine_with_nan_outputs_fails_verify_with_the_reason(tiny_fp16_export, tmp_path):
    from armor_export.config import EngineConfig, VerifyConfig
    from armor_export.engine import build_engine
    from armor_export.verify import verify
    from tests.conftest import nan_norm_export

    pytest.importorskip("onnx")
    export = nan_norm_export(tiny_fp16_export.output_dir, tmp_path / "onnx")
    build_engine(EngineConfig(export_dir=str(export), compute_capability="current"))
    result = verify(VerifyConfig(export_dir=str(export), report_dir=str(tmp_path / "verify")))
    report = result.report
    assert report.engine_executed, report.engine_not_run_reason
    assert result.passed is False
    assert "TensorRT-RTX engine produced non-finite logits at prefill (NaN in " in report.error
    assert report.verdict() == f"FAILED: {report.error}"
    assert not any(row.runner == "TensorRT-RTX engine" for row in report.rows)
