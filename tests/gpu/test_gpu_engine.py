"""GPU checks: verify runs the shipped engine (TensorRT-RTX, built for this GPU) and compares it
with PyTorch and ONNX Runtime. Skipped without a CUDA GPU or without TensorRT-RTX."""

from __future__ import annotations

import shutil

import pytest

from armor_export.engine.runtime import cuda_gpus

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
