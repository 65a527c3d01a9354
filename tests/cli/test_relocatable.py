"""Folders that move (#25 items 1 and 2): a build folder or an export folder copied elsewhere
works with every verb, run as a real process from another working folder, and every verb
finds an export's engine by one rule (``engine.folder.engine_dir_of``): ``<export>/engine``,
or ``<build>/engine`` for the export a build made.

The engines are real TensorRT-RTX engines built on the CPU for sm80 (named, so the message
is exact; tests/engine/test_engine_targets.py covers the default set); without a GPU they end
"not run: no CUDA GPU", which ``runnable_engine`` says only after it found the engine, checked
that it belongs to the export and found its plugin library.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
trt = pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX missing: pip install '.[rtx]'")

from armor_export.engine.folder import engine_dir_of  # noqa: E402
from armor_export.runtime import trt_session  # noqa: E402

GPUS, NO_GPU = trt_session.cuda_gpus()
needs_no_gpu = pytest.mark.skipif(bool(GPUS), reason=f"a CUDA GPU is here ({GPUS})")
NOT_RUN = f"engine built for sm80, not run: {NO_GPU}"


def cli(cwd: Path, *argv, timeout: int = 600) -> subprocess.CompletedProcess:
    """``armor-export ARGV`` as a real process in ``cwd`` (this checkout's package)."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "armor_export", *map(str, argv)]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def output(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.fixture(scope="module")
def moved_build(tiny_checkpoint, tmp_path_factory):
    """``build --stages export,engine`` run in one folder with relative paths (as a user types
    them: the checkpoint is the build's own ``runs/build/checkpoint``), then the whole build
    folder copied somewhere else and the original removed."""
    first = tmp_path_factory.mktemp("first-machine")
    shutil.copytree(tiny_checkpoint, first / "runs" / "build" / "checkpoint")
    proc = cli(first, "build", "--model", "runs/build/checkpoint", "-o", "runs/build",
               "--stages", "export,engine", "--compute-capability", "sm80")  # fmt: skip
    assert proc.returncode == 0, output(proc)
    moved = tmp_path_factory.mktemp("second-machine") / "shipped-build"
    shutil.copytree(first / "runs" / "build", moved)
    shutil.rmtree(first / "runs")
    return moved


@pytest.fixture
def elsewhere(tmp_path) -> Path:
    """A working folder that holds none of the artefacts."""
    (tmp_path / "cwd").mkdir()
    return tmp_path / "cwd"


def test_the_build_engine_is_where_the_one_rule_says(moved_build):
    assert engine_dir_of(moved_build / "onnx") == moved_build / "engine"
    assert (moved_build / "engine" / "model.engine").is_file()
    assert engine_dir_of(moved_build / "engine-less") == moved_build / "engine-less" / "engine"
    report = json.loads((moved_build / "engine" / "build_report.json").read_text())
    assert report["builder_log"] == "builder.log"  # relative to the engine folder
    manifest = json.loads((moved_build / "onnx" / "export_manifest.json").read_text())
    assert manifest["source"]["folder"] == "../checkpoint"


@pytest.mark.fault(
    "verify",
    "verify of a build folder copied elsewhere, run from another working folder, no --engine",
    "finds the source checkpoint and <build>/engine relative to the export; passes, engine "
    "checked and not run without a GPU",
)
@needs_no_gpu
def test_verify_of_a_moved_build_finds_its_model_and_engine(moved_build, elsewhere):
    pytest.importorskip("polygraphy")
    report_dir = elsewhere / "verify"
    proc = cli(elsewhere, "verify", moved_build / "onnx", "--report-dir", report_dir)
    assert proc.returncode == 0, output(proc)
    data = json.loads((report_dir / "verify_report.json").read_text())
    assert data["model"] == str(moved_build / "onnx" / "../checkpoint")
    assert data["engine"]["dir"] == str(moved_build / "engine")
    assert data["engine_not_run_reason"] == NOT_RUN
    assert data["verdict"].startswith("PASSED: PyTorch = ONNX Runtime")


@pytest.mark.fault(
    "runtime",
    "generate --backend tensorrt on a build's export (<build>/onnx), copied elsewhere and run "
    "from another working folder",
    "finds <build>/engine, checks it belongs; one line: not run, no CUDA GPU",
)
@needs_no_gpu
def test_generate_on_the_engine_of_a_moved_build(moved_build, elsewhere):
    proc = cli(elsewhere, "generate", moved_build / "onnx", "--backend", "tensorrt",
               "--prompt", "Once", "--max-new-tokens", "2")  # fmt: skip
    assert proc.returncode == 1, output(proc)
    assert proc.stderr.strip().splitlines()[-1] == f"armor-export generate: error: {NOT_RUN}", (
        output(proc)
    )
    # the flag names another engine folder: an export's engine in another folder is found too
    engine = elsewhere / "my-engine"
    shutil.copytree(moved_build / "engine", engine)
    proc = cli(elsewhere, "generate", moved_build / "onnx", "--backend", "tensorrt",
               "--engine", "my-engine", "--prompt", "Once", "--max-new-tokens", "2")  # fmt: skip
    assert proc.returncode == 1 and NOT_RUN in proc.stderr, output(proc)
    proc = cli(elsewhere, "generate", moved_build / "onnx", "--backend", "tensorrt",
               "--engine", "nowhere", "--prompt", "Once")  # fmt: skip
    assert proc.returncode == 1 and "nowhere/model.engine is not a file" in proc.stderr


def test_generate_on_onnx_runtime_and_the_report_of_a_moved_build(moved_build, elsewhere):
    proc = cli(elsewhere, "generate", moved_build / "onnx", "--prompt", "Once",
               "--max-new-tokens", "3", "--ignore-eos", "--json", "out.json")  # fmt: skip
    assert proc.returncode == 0, output(proc)
    assert json.loads((elsewhere / "out.json").read_text())["new_tokens"] == 3


@pytest.mark.fault(
    "verify",
    "verify of an export folder copied alone (its source model left behind), from another "
    "working folder",
    "one line naming --model; with --model it verifies",
)
def test_an_export_copied_alone_names_model_and_takes_it(moved_build, elsewhere, tmp_path):
    pytest.importorskip("polygraphy")
    lonely = tmp_path / "lonely" / "export"
    shutil.copytree(moved_build / "onnx", lonely)
    proc = cli(elsewhere, "verify", lonely, "--report-dir", "report")
    assert proc.returncode == 1, output(proc)
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith(
        "armor-export verify: error: the export's source model (runs/build/checkpoint) is not at "
    )
    assert line.endswith("pass its folder with --model"), line
    assert (
        "--model" in json.loads((elsewhere / "report" / "verify_report.json").read_text())["error"]
    )
    proc = cli(elsewhere, "verify", lonely, "--model", moved_build / "checkpoint",
               "--report-dir", "report")  # fmt: skip
    assert proc.returncode == 0, output(proc)


def test_onnx_runtime_genai_runs_a_moved_export(moved_build, elsewhere, tmp_path):
    pytest.importorskip("onnxruntime_genai")
    moved = tmp_path / "genai" / "export"
    shutil.copytree(moved_build / "onnx", moved)
    script = (
        "import sys\n"
        "from armor_export.config import GenerationConfig\n"
        "from armor_export.runtime.genai import GenaiGenerator\n"
        "result = GenaiGenerator(sys.argv[1]).generate(['Once'], "
        "GenerationConfig(3))\n"
        "print(result.new_tokens)\n"
    )
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-c", script, str(moved)], cwd=elsewhere,
                          capture_output=True, text=True, timeout=300, env=env)  # fmt: skip
    assert proc.returncode == 0, output(proc)
    assert 1 <= int(proc.stdout.strip().splitlines()[-1]) <= 3


@pytest.mark.fault(
    "engine",
    "a plugin engine built with --plugin-library as typed (relative), its folder and export "
    "copied elsewhere and run from another working folder",
    "the engine folder carries the library (sha256 checked): found without --plugin-library; "
    "a changed copy is refused in one line; --plugin-library overrides it",
)
@needs_no_gpu
def test_a_plugin_engine_folder_carries_its_library(tiny_fp16_plugin_export, plugin_build,
                                                    elsewhere, tmp_path):  # fmt: skip
    from tests.plugins.plugin_build import env_with_library_path

    env = env_with_library_path(None)
    library = plugin_build.library
    cmd = [sys.executable, "-m", "armor_export", "engine", str(tiny_fp16_plugin_export.output_dir),
           "-o", str(tmp_path / "built"), "--plugin-library", library.name,
           "--compute-capability", "sm80"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=library.parent, capture_output=True, text=True,
                          timeout=600, env=env)  # fmt: skip
    assert proc.returncode == 0, output(proc)
    shipped = tmp_path / "shipped"
    shutil.copytree(tiny_fp16_plugin_export.output_dir, shipped / "export")
    shutil.copytree(tmp_path / "built", shipped / "engine")
    shutil.rmtree(tmp_path / "built")
    report = json.loads((shipped / "engine" / "build_report.json").read_text())
    assert report["plugin"]["library"] == library.name
    assert (shipped / "engine" / library.name).read_bytes() == library.read_bytes()
    run = ("generate", shipped / "export", "--backend", "tensorrt", "--prompt", "Once",
           "--engine", shipped / "engine")  # fmt: skip
    proc = cli(elsewhere, *run)
    assert proc.returncode == 1 and f"error: {NOT_RUN}" in proc.stderr, output(proc)
    (shipped / "engine" / library.name).write_bytes(b"not the library")
    proc = cli(elsewhere, *run)
    assert proc.returncode == 1, output(proc)
    assert "is not the plugin library the engine was built with" in proc.stderr, output(proc)
    proc = cli(elsewhere, *run, "--plugin-library", library)
    assert proc.returncode == 1 and f"error: {NOT_RUN}" in proc.stderr, output(proc)
