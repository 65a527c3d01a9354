"""verify knows the built engine: it checks that the engine belongs to the export, loads it
with the runtime that built it where a GPU can run it, and otherwise says why it did not."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("polygraphy")
trt = pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX missing: pip install '.[rtx]'")

from armor_export.cli.main import main  # noqa: E402
from armor_export.config import EngineConfig, VerifyConfig  # noqa: E402
from armor_export.engine import backends, build_engine, child, folder  # noqa: E402
from armor_export.runtime import trt_session  # noqa: E402
from armor_export.verify import verify  # noqa: E402

GPUS, NO_GPU = trt_session.cuda_gpus()
needs_no_gpu = pytest.mark.skipif(bool(GPUS), reason=f"a CUDA GPU is here ({GPUS})")


@pytest.fixture(scope="module")
def export_with_engine(tiny_export, tmp_path_factory):
    """A copy of the tiny export with its real TensorRT-RTX engine in <export>/engine."""
    export = tmp_path_factory.mktemp("verify-engine") / "onnx"
    shutil.copytree(tiny_export.output_dir, export)
    build_engine(EngineConfig(export_dir=str(export), compute_capability="sm80"))
    return export


@needs_no_gpu
def test_the_engine_found_beside_the_export_is_named_and_not_run_without_a_gpu(
    export_with_engine, tmp_path
):
    result = verify(VerifyConfig(export_dir=str(export_with_engine), report_dir=str(tmp_path)))
    assert result.passed
    data = json.loads((tmp_path / "verify_report.json").read_text())
    assert data["engine_executed"] is False
    assert data["engine_not_run_reason"] == f"engine built for sm80, not run: {NO_GPU}"
    assert data["engine"]["backend"] == "TensorRT-RTX"
    assert data["engine"]["dir"] == str(export_with_engine / "engine")
    assert data["verdict"].startswith("PASSED: PyTorch = ONNX Runtime (max abs err ")
    assert data["verdict"].endswith(f"; engine built for sm80, not run: {NO_GPU}")
    assert data["runners"] == ["onnxruntime"]


@pytest.mark.fault(
    "verify",
    "--backend tensorrt on a machine without a CUDA GPU",
    "one line: engine built for sm80, not run, and why (no CUDA GPU)",
)
@needs_no_gpu
def test_asking_for_the_engine_without_a_gpu_fails_with_the_reason(export_with_engine, tmp_path):
    from armor_export.verify.runners import EngineNotRun

    cfg = VerifyConfig(
        export_dir=str(export_with_engine), backends=["tensorrt"], report_dir=str(tmp_path)
    )
    with pytest.raises(EngineNotRun, match=re.escape(f"engine built for sm80, not run: {NO_GPU}")):
        verify(cfg)


@pytest.mark.fault(
    "verify",
    "--engine of another export",
    "one line: built from another graph; the failed report stays on disk",
)
def test_an_engine_of_another_export_is_refused(export_with_engine, tiny_fp16_export, tmp_path):
    cfg = VerifyConfig(
        export_dir=str(tiny_fp16_export.output_dir),
        engine_dir=str(export_with_engine / "engine"),
        report_dir=str(tmp_path),
    )
    with pytest.raises(folder.EngineMismatchError, match="built from another graph"):
        verify(cfg)
    assert (
        "built from another graph"
        in json.loads((tmp_path / "verify_report.json").read_text())["error"]
    )


@pytest.mark.fault(
    "verify",
    "an engine whose build report names another TensorRT-RTX version",
    "one line: built with TensorRT-RTX 1.0.0.1, not the installed one",
)
def test_an_engine_of_another_tensorrt_version_is_refused(export_with_engine, tmp_path):
    engine = tmp_path / "engine"
    shutil.copytree(export_with_engine / "engine", engine)
    report = json.loads((engine / "build_report.json").read_text())
    report["versions"]["tensorrt_rtx"] = "1.0.0.1"
    (engine / "build_report.json").write_text(json.dumps(report))
    cfg = VerifyConfig(
        export_dir=str(export_with_engine), engine_dir=str(engine), report_dir=str(tmp_path)
    )
    with pytest.raises(folder.EngineMismatchError, match=r"built with TensorRT-RTX 1\.0\.0\.1"):
        verify(cfg)


@needs_no_gpu
def test_datacenter_tensorrt_without_a_gpu_is_skipped_by_auto(
    export_with_engine, tmp_path, monkeypatch
):
    """``tensorrt`` importable, no GPU: auto skips the engine with "no CUDA GPU".

    Datacenter TensorRT is not installable here, so the ``tensorrt`` module is the real
    TensorRT-RTX module under that name (same Python API); the code path is the real one.
    """
    engine = tmp_path / "engine"
    shutil.copytree(export_with_engine / "engine", engine)
    report = json.loads((engine / "build_report.json").read_text())
    report.update(backend="TensorRT", backend_module="tensorrt", compute_capability="the local GPU")
    report["engine_targets"] = None  # what a datacenter TensorRT build report holds
    report["versions"] = {"tensorrt": trt.__version__}
    report["config"]["backend"] = "tensorrt"
    (engine / "build_report.json").write_text(json.dumps(report))
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    result = verify(
        VerifyConfig(
            export_dir=str(export_with_engine),
            engine_dir=str(engine),
            report_dir=str(tmp_path / "r"),
        )
    )
    assert result.passed
    assert result.report.skipped["tensorrt"].startswith("engine built for the local GPU, not run")
    assert "no CUDA GPU" in result.report.skipped["tensorrt"]
    assert result.report.runners == ["onnxruntime"]


@pytest.mark.fault(
    "verify",
    "a plugin engine whose recorded plugin library is gone",
    "one line: that library is not a file, pass --plugin-library",
)
def test_a_plugin_engine_needs_its_library(tiny_plugin_export, tmp_path):
    from armor_export.export_manifest import ExportManifest

    export = tmp_path / "onnx"
    shutil.copytree(tiny_plugin_export.output_dir, export)
    manifest = ExportManifest.read(export)
    engine = export / "engine"
    engine.mkdir()
    (engine / "model.engine").write_bytes(b"engine bytes")
    report = {
        "backend": "TensorRT-RTX",
        "backend_module": "tensorrt_rtx",
        "versions": {"tensorrt_rtx": trt.__version__},
        "compute_capability": "sm80",
        "config": {"backend": "tensorrt-rtx"},
        "plugin": {"library": str(tmp_path / "gone.so")},
        "engine_sha256": folder._sha256(engine / "model.engine"),
        **folder.export_binding(export, manifest),
    }
    (engine / "build_report.json").write_text(json.dumps(report))
    with pytest.raises(backends.PluginLibraryError, match="gone.so is not a file"):
        verify(VerifyConfig(export_dir=str(export), backends=["tensorrt"]))


@needs_no_gpu
def test_cli_verify_takes_the_engine_and_says_what_was_checked(
    export_with_engine, tmp_path, capsys
):
    args = ["verify", str(export_with_engine), "--engine", str(export_with_engine / "engine"),
            "--plugin-library", "", "--report-dir", str(tmp_path)]  # fmt: skip
    assert main(args) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("PASSED: PyTorch = ONNX Runtime (max abs err ")
    assert last.endswith(f"engine built for sm80, not run: {NO_GPU}")
    assert Path(tmp_path / "verify_report.md").read_text().count("not run") >= 1


@pytest.mark.fault(
    "verify",
    "a native crash (SIGABRT) in the engine's child process",
    "one line naming the signal; the verify process lives on",
)
def test_a_crash_while_running_the_engine_is_a_failed_check_not_a_dead_process(
    export_with_engine, monkeypatch
):
    from armor_export.verify.runners import EngineRunner, EngineTarget

    report = json.loads((export_with_engine / "engine" / "build_report.json").read_text())
    from armor_export.export_manifest import ExportManifest

    manifest = ExportManifest.read(export_with_engine)
    runner = EngineRunner(EngineTarget(export_with_engine / "engine", report), manifest, "")
    assert list(runner.get_input_metadata_impl()) == list(manifest.input_names)  # feeds checked
    monkeypatch.setenv(child.CRASH_HOOK, "engine run (verify)")  # the child calls os.abort()
    with pytest.raises(child.NativeCrashError, match=re.escape("(signal 6: SIGABRT)")):
        runner.infer_impl({"input_ids": [[1]]})


@pytest.mark.fault(
    "verify",
    "a native crash in the engine child during a whole verify (a GPU of the engine's target "
    "simulated)",
    "FAILED: engine run (verify) crashed (signal 6: SIGABRT), in the report on disk and as the "
    "error line",
)
def test_an_engine_crash_during_verify_is_recorded_and_raised(
    export_with_engine, tmp_path, monkeypatch
):
    """The whole verify path up to the engine child: a GPU of the engine's target is
    simulated (here there is none), the child really aborts through the runner's test hook."""
    monkeypatch.setattr(trt_session, "cuda_gpus", lambda: (["sm80"], ""))
    monkeypatch.setattr(trt_session, "engine_validity", lambda trt, engine: ("VALID", []))
    monkeypatch.setenv(child.CRASH_HOOK, "engine run (verify)")
    cfg = VerifyConfig(export_dir=str(export_with_engine), report_dir=str(tmp_path))
    with pytest.raises(child.NativeCrashError, match=re.escape("engine run (verify) crashed")):
        verify(cfg)
    data = json.loads((tmp_path / "verify_report.json").read_text())
    assert data["passed"] is False and data["engine_executed"] is True
    assert data["verdict"] == "FAILED: engine run (verify) crashed (signal 6: SIGABRT)"


@pytest.mark.fault(
    "verify",
    "a verify with a built engine and several feeds (the prefill and decode steps; a GPU of "
    "the engine's target simulated)",
    "the engine is deserialised once: every feed runs in one child process",
)
@needs_no_gpu
def test_verify_runs_every_feed_in_one_engine_child(export_with_engine, tmp_path, monkeypatch):
    """Before: one child, and one deserialisation of the engine, per feed. Here the real
    child really starts, and fails where a real GPU would run the feeds (there is none)."""
    calls = []
    real = child.run_in_child

    def counted(stage, target, args, *rest, **kwargs):
        calls.append((target.__name__, args))
        return real(stage, target, args, *rest, **kwargs)

    monkeypatch.setattr(trt_session, "cuda_gpus", lambda: (["sm80"], ""))
    monkeypatch.setattr(trt_session, "engine_validity", lambda trt, engine: ("VALID", []))
    monkeypatch.setattr(child, "run_in_child", counted)
    cfg = VerifyConfig(export_dir=str(export_with_engine), report_dir=str(tmp_path), decode_steps=2)
    with pytest.raises(folder.EngineMismatchError, match="could not deserialise it"):
        verify(cfg)
    assert len(calls) == 1
    name, (engine, _backend, _library, feeds) = calls[0]
    assert name == "run_engine_feeds" and engine.endswith("model.engine")
    assert len(feeds) == 1 + cfg.decode_steps  # the prefill, then each decode step
    assert [f["input_ids"].shape[1] for f in feeds][1:] == [1, 1]


@pytest.mark.fault(
    "verify",
    "the real engine loaded where there is no GPU",
    "one line quoting the backend's reason (could not deserialise it, CUDA)",
)
@needs_no_gpu
def test_loading_the_real_engine_without_a_gpu_fails_in_one_line(export_with_engine):
    """run_engine's real load path (the runtime's TensorRTSession on TensorRT-RTX, in a
    child; generate --backend tensorrt runs the same class): with no GPU the backend refuses
    to deserialise, and the error quotes why."""
    import numpy as np

    engine = export_with_engine / "engine" / "model.engine"
    feed = {"input_ids": np.zeros((1, 1), np.int64)}
    with pytest.raises(folder.EngineMismatchError, match="could not deserialise it") as err:
        child.run_in_child(
            "engine run (verify)", trt_session.run_engine, (str(engine), "tensorrt-rtx", "", feed)
        )
    assert "\n" not in str(err.value) and "CUDA" in str(err.value)
