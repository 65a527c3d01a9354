"""Engine builds with the real TensorRT-RTX on CPU (AOT), reports, limits and bad input."""

from __future__ import annotations

import json

import pytest

from armor_export.config import EngineConfig
from armor_export.errors import BackendUnavailableError, ConfigError

trt = pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX missing: pip install '.[rtx]'")

from armor_export.engine import build_engine  # noqa: E402
from armor_export.engine.api import sparsity_from_log  # noqa: E402


def test_rtx_engine_builds_on_cpu_with_a_report(tiny_export, tmp_path):
    cfg = EngineConfig(export_dir=str(tiny_export.output_dir), output_dir=str(tmp_path))
    result = build_engine(cfg)
    assert result.engine_path.stat().st_size > 100_000
    report = json.loads(result.report_path.read_text())
    assert report["backend"] == "TensorRT-RTX"
    assert report["versions"]["tensorrt_rtx"] == trt.__version__
    assert report["compute_capability"] == "default"  # TensorRT-RTX's portable set
    assert {"sm86", "sm89", "sm120"} <= set(report["engine_targets"])
    assert report["precision"] == "float32" and report["sparse_weights_flag"] is True
    assert report["sparsity"]["core_matmuls_2_4"] == 14
    assert report["limits"] == tiny_export.manifest["limits"]
    assert report["profile"]["past_key_values.0.key"][2] == [8, 2, 255, 16]
    assert report["onnx_sha256"] == tiny_export.manifest["sha256"]["model.onnx"]
    assert any("fp16" in note for note in report["notes"])  # fp32 cores run dense
    assert "SPARSE_WEIGHTS | on" in (tmp_path / "build_report.md").read_text()
    assert "no-ops in TensorRT-RTX" in report["timing_cache"]


def test_fp16_engine_for_another_target_with_smaller_profiles(tiny_fp16_export, tmp_path):
    cfg = EngineConfig(
        export_dir=str(tiny_fp16_export.output_dir),
        output_dir=str(tmp_path),
        compute_capability="sm89",
        max_batch=2,
        max_prompt=64,
        max_context=128,
    )
    report = build_engine(cfg).report
    assert report["precision"] == "float16" and report["compute_capability"] == "sm89"
    assert report["limits"] == {"max_batch": 2, "max_prompt": 64, "max_context": 128}
    assert not any("fp16" in note for note in report["notes"])


@pytest.mark.fault(
    "engine",
    "engine limits beyond the export's (--max-context 4096)",
    "one line: re-export with --max-context 4096",
)
def test_limits_beyond_the_export_say_how_to_reexport(tiny_export, tmp_path):
    cfg = EngineConfig(
        export_dir=str(tiny_export.output_dir), output_dir=str(tmp_path), max_context=4096
    )
    with pytest.raises(ConfigError, match="re-export with --max-context 4096"):
        build_engine(cfg)


@pytest.mark.fault(
    "engine",
    "a plugin-lowered export built without --plugin-library",
    "one line asking for --plugin-library; no model.engine written",
)
def test_plugin_export_needs_the_plugin_library(tiny_plugin_export, tmp_path):
    cfg = EngineConfig(export_dir=str(tiny_plugin_export.output_dir), output_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="--plugin-library"):
        build_engine(cfg)
    assert not (tmp_path / "model.engine").exists()


@pytest.mark.fault(
    "engine",
    "--backend trt where datacenter TensorRT is not installed",
    "one line with the install hint (armor-export[trt])",
)
def test_missing_datacenter_tensorrt_gives_the_install_hint(tiny_export, tmp_path):
    try:
        import tensorrt  # noqa: F401

        pytest.skip("datacenter TensorRT is installed here")
    except ImportError:
        pass
    cfg = EngineConfig(
        export_dir=str(tiny_export.output_dir), output_dir=str(tmp_path), backend="trt"
    )
    with pytest.raises(BackendUnavailableError, match=r"armor-export\[trt\]"):
        build_engine(cfg)


def test_sparsity_lines_of_the_builder_log_are_parsed():
    messages = [
        ("INFO", "(Sparsity) Layers eligible for sparse math: mm_1, mm_2"),
        ("INFO", "(Sparsity) TRT inference plan picked sparse implementation for layers: mm_2"),
        ("VERBOSE", "something else"),
    ]
    assert sparsity_from_log(messages) == {
        "eligible_layers": ["mm_1", "mm_2"],
        "picked_layers": ["mm_2"],
    }
    assert sparsity_from_log([]) == {"eligible_layers": None, "picked_layers": None}


def test_cli_engine(tiny_export, tmp_path, capsys):
    from armor_export.cli.main import main

    assert main(["engine", str(tiny_export.output_dir), "-o", str(tmp_path), "--no-sparse"]) == 0
    out = capsys.readouterr().out
    assert "TensorRT-RTX" in out and "SPARSE_WEIGHTS | off" in out
    assert f"builder log: {tmp_path / 'builder.log'}" in out
    assert main(["engine", str(tmp_path / "none")]) == 1


@pytest.mark.fault(
    "engine",
    "a real engine build into a 64 KiB tmpfs that fills up as the engine is written",
    "exit 1 and one line: no space left on device writing <a file in the engine folder>: "
    "free some space, or choose another output folder",
)
def test_a_real_full_disk_while_writing_the_engine_is_one_line(tiny_export, tmp_path):
    import sys

    from tests.test_output_errors import run_with_mounts, the_error_line

    disk = tmp_path / "disk"
    disk.mkdir()
    argv = [sys.executable, "-m", "armor_export", "engine", str(tiny_export.output_dir),
            "-o", str(disk / "engine"), "--no-sparse"]  # fmt: skip
    run = run_with_mounts(f"mount -t tmpfs -o size=64k tmpfs {disk}", argv)
    assert run.returncode == 1, run.stderr
    line = the_error_line(run.stderr, "engine")
    assert f"no space left on device writing {disk / 'engine'}" in line, line
    assert line.endswith(": free some space, or choose another output folder"), line
