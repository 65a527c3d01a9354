"""The shared engine path: the builder child, its crash handling, the real verbose log, the
plugin library loaded once per process, and engines checked against their export."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from armor_export.config import EngineConfig
from armor_export.errors import ConfigError

trt = pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX missing: pip install '.[rtx]'")

from armor_export.engine import backends, build_engine, child, folder  # noqa: E402
from armor_export.engine.api import layers_from_log, sparsity_from_log, tactic_sparsity  # noqa: E402
from armor_export.runtime import trt_session  # noqa: E402


def read_log(path: Path) -> list[tuple[str, str]]:
    """builder.log back into (severity, message) pairs (multi-line messages kept whole)."""
    messages = []
    for line in path.read_text().splitlines():
        if line.startswith("[") and "] " in line:
            level, _, text = line[1:].partition("] ")
            messages.append((level, text))
        elif messages:
            messages[-1] = (messages[-1][0], messages[-1][1] + "\n" + line)
    return messages


@pytest.mark.fault(
    "engine",
    "a native crash (SIGABRT) in the engine builder's child process",
    "one line: engine build crashed (signal 6: SIGABRT), with the builder log's path; no "
    "model.engine",
)
def test_a_crash_in_the_builder_child_is_a_one_line_error(tiny_export, tmp_path, monkeypatch):
    monkeypatch.setenv(child.CRASH_HOOK, "engine build")  # the child calls os.abort()
    cfg = EngineConfig(export_dir=str(tiny_export.output_dir), output_dir=str(tmp_path))
    with pytest.raises(child.NativeCrashError) as err:
        build_engine(cfg)
    assert str(err.value) == (
        f"engine build crashed (signal 6: SIGABRT); builder log: {tmp_path / 'builder.log'}"
    )
    assert not (tmp_path / "model.engine").exists()


def test_the_real_verbose_build_log_is_kept_and_parsed(tiny_fp16_export, tmp_path):
    cfg = EngineConfig(export_dir=str(tiny_fp16_export.output_dir), output_dir=str(tmp_path))
    report = build_engine(cfg).report
    assert report["builder_log"] == "builder.log"  # relative to the engine folder
    messages = read_log(tmp_path / "builder.log")
    assert any(level == "VERBOSE" for level, _ in messages)
    # TensorRT-RTX 1.7 AOT prints no sparsity lines: the kernels are picked on the GPU
    assert sparsity_from_log(messages) == {"eligible_layers": None, "picked_layers": None}
    layers = layers_from_log(messages)
    gemms = [layer for layer in layers if layer["LayerType"] == "gemm"]
    assert gemms and all("TacticName" in layer for layer in gemms)
    assert any("ONNX Layer: node_matmul" in layer.get("Metadata", "") for layer in gemms)
    tactics = tactic_sparsity(layers)
    assert tactics["gemm_layers"] == len(gemms)
    assert tactics["sparse_gemm_layers"].startswith("unknown")  # placeholder tactics
    assert report["sparsity"]["build_log_layers"] == tactics
    assert report["sparsity"]["inspector"]["sparse_layers"] == "unknown (needs a GPU to inspect)"


def test_sparse_layers_come_from_tactic_names_not_layer_names():
    layers = [
        {"Name": "core_sparse_weight_mm", "LayerType": "gemm", "TacticName": "sm80_xmma_gemm"},
        {"Name": "mm_2", "LayerType": "gemm", "TacticName": "sm80_xmma_sparse_gemm_f16"},
    ]
    assert tactic_sparsity(layers) == {"gemm_layers": 2, "sparse_gemm_layers": ["mm_2"]}


@pytest.mark.fault(
    "engine",
    "an engine checked against another export, an engine file changed after its build report, a "
    "report of another TensorRT-RTX version",
    "one line each: built from another graph / its sha256 differs / built with TensorRT-RTX "
    "1.0.0.1, this is the installed one",
)
def test_the_engine_is_bound_to_its_export(tiny_export, tiny_fp16_export, tmp_path):
    from armor_export.export_manifest import ExportManifest

    export = Path(tiny_export.output_dir)
    report = build_engine(EngineConfig(export_dir=str(export), output_dir=str(tmp_path))).report
    manifest = ExportManifest.read(export)
    assert report["onnx_sha256"] == manifest.sha256[manifest.onnx]
    assert (
        report["export_manifest_sha256"]
        == folder.export_binding(export, manifest)["export_manifest_sha256"]
    )
    assert folder.check_engine_belongs(tmp_path, export, manifest)["engine_sha256"]

    other = Path(tiny_fp16_export.output_dir)
    with pytest.raises(folder.EngineMismatchError, match="built from another graph"):
        folder.check_engine_belongs(tmp_path, other, ExportManifest.read(other))

    stale = tmp_path / "stale"
    shutil.copytree(tmp_path, stale, ignore=shutil.ignore_patterns("stale"))
    with (stale / "model.engine").open("ab") as f:
        f.write(b"\0")
    with pytest.raises(folder.EngineMismatchError, match="sha256 differs"):
        folder.check_engine_belongs(stale, export, manifest)

    report["versions"]["tensorrt_rtx"] = "1.0.0.1"
    with pytest.raises(folder.EngineMismatchError, match=r"TensorRT-RTX 1\.0\.0\.1, this is"):
        folder.check_backend_version(trt, report)


@pytest.mark.fault(
    "engine",
    "a --plugin-library that is not a plugin library, or not a file",
    "one line: the plugin registry refused it / a config error naming --plugin-library",
)
def test_a_wrong_plugin_library_is_one_line(tiny_plugin_export, tmp_path):
    not_a_library = tmp_path / "libnot_a_plugin.so"
    not_a_library.write_bytes(b"not an ELF file")
    cfg = EngineConfig(
        export_dir=str(tiny_plugin_export.output_dir),
        output_dir=str(tmp_path / "engine"),
        plugin_library=str(not_a_library),
    )
    with pytest.raises(backends.PluginLibraryError, match="plugin registry refused it"):
        build_engine(cfg)
    with pytest.raises(ConfigError, match="--plugin-library"):
        build_engine(EngineConfig(**{**cfg.to_dict(), "plugin_library": str(tmp_path / "no.so")}))


def test_the_plugin_library_is_loaded_once_per_process(plugin_build):
    """A second ``load_library`` of the same file fails in TensorRT; ours does not call it."""
    library = str(plugin_build.library)
    backends.load_plugin_library(trt, library)
    backends.load_plugin_library(trt, library)  # no second registry call, no error
    assert str(Path(library).resolve()) in backends.loaded_plugin_libraries()
    creators = [c.name for c in trt.get_plugin_registry().all_creators]
    assert "ArmorBlockDiagMatMul" in creators
    # the registry itself refuses a second load: the reason for the guard
    assert trt.get_plugin_registry().load_library(library) is None


def test_no_gpu_is_found_here_and_named():
    gpus, reason = trt_session.cuda_gpus()
    if gpus:
        pytest.skip(f"a CUDA GPU is here ({gpus})")
    assert reason.startswith("no CUDA GPU")
    report = {"compute_capability": "sm80"}
    assert trt_session.not_run_reason(report, gpus, reason) == reason
    assert trt_session.not_run_reason(report, ["sm89"], "") == "built for sm80, this GPU is sm89"
    assert trt_session.not_run_reason(report, ["sm80"], "") == ""


@pytest.mark.fault(
    "engine",
    "an engine checked against a re-export of its graph whose manifest differs (other limits)",
    "one line: built from another export_manifest.json, rebuild it",
)
def test_the_engine_is_bound_to_its_exports_manifest(tiny_export, tmp_path):
    from armor_export.export_manifest import MANIFEST, ExportManifest, seal

    export = tmp_path / "export"
    shutil.copytree(tiny_export.output_dir, export)
    manifest = ExportManifest.read(export)
    engine = tmp_path / "engine"
    engine.mkdir()
    (engine / "model.engine").write_bytes(b"engine bytes")
    report = {
        "engine_sha256": folder._sha256(engine / "model.engine"),
        **folder.export_binding(export, manifest),
    }
    (engine / "build_report.json").write_text(json.dumps(report))
    assert folder.check_engine_belongs(engine, export, manifest) == report

    data = json.loads((export / MANIFEST).read_text())
    data["limits"]["max_context"] //= 2  # the same graph, exported for other limits
    (export / MANIFEST).write_text(json.dumps(seal(data), indent=2))
    other = ExportManifest.read(export)
    with pytest.raises(
        folder.EngineMismatchError, match=f"built from another {MANIFEST} than .*rebuild it"
    ) as info:
        folder.check_engine_belongs(engine, export, other)
    assert "\n" not in str(info.value)


def test_build_report_json_names_the_log(tmp_path):
    with pytest.raises(Exception, match="no model.engine"):
        folder.read_build_report(tmp_path)
    (tmp_path / "model.engine").write_bytes(b"x")
    (tmp_path / "build_report.json").write_text(json.dumps({}))
    assert folder.read_build_report(tmp_path) == {}
