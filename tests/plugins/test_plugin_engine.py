"""A plugin-lowered tiny model becomes a TensorRT-RTX engine on CPU (AOT, default targets) with
libarmor_blockdiag_plugin.so, and the build report names the plugin layers. The engine child
starts with the ``libtensorrt_rtx.so`` link its parser needs (the pip wheel lacks it:
plugins/armorBlockDiagPlugin/repro/README.md), so this works as installed; with that turned
off the engine verb refuses in one line instead of letting the parser abort the process.

The builds run in subprocesses: the dynamic loader reads LD_LIBRARY_PATH once at start, and a
regression to the abort must not take pytest with it.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest

from armor_export.engine.child import NO_LIBRARY_LINKS
from tests.plugins.plugin_build import env_with_library_path

trt = pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX missing: pip install '.[rtx]'")


def engine_cli(export_dir, out, library, env) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable, "-m", "armor_export.cli.main", "engine", str(export_dir),
        "-o", str(out), "--plugin-library", str(library),
    ]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)


def test_plugin_engine_builds_on_cpu_and_the_report_names_the_plugin_layers(
    tiny_fp16_plugin_export, plugin_build, tmp_path
):
    env = env_with_library_path(None)  # as installed: no link made by the user
    proc = engine_cli(
        tiny_fp16_plugin_export.output_dir, tmp_path / "engine", plugin_build.library, env
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (tmp_path / "engine" / "model.engine").stat().st_size > 100_000
    report = json.loads((tmp_path / "engine" / "build_report.json").read_text())
    manifest = tiny_fp16_plugin_export.manifest
    plugin = report["plugin"]
    # the engine folder carries its plugin library: the report names the copy, relative to it
    assert plugin["name"] == "ArmorBlockDiagMatMul"
    assert plugin["library"] == plugin_build.library.name
    copy = tmp_path / "engine" / plugin_build.library.name
    assert copy.read_bytes() == plugin_build.library.read_bytes()
    assert plugin["library_sha256"] == hashlib.sha256(copy.read_bytes()).hexdigest()
    assert len(plugin["layers"]) == manifest["counts"]["plugin_nodes"] == 28  # A and B of 14
    assert len(set(plugin["layers"])) == len(plugin["layers"])
    assert report["precision"] == "float16" and report["compute_capability"] == "default"
    assert report["sparsity"]["core_matmuls_2_4"] == manifest["counts"]["cores"]
    assert "(28 plugin layers)" in (tmp_path / "engine" / "build_report.md").read_text()


@pytest.mark.fault(
    "engine",
    "a plugin engine built where TensorRT-RTX 1.7's parser lacks its libtensorrt_rtx.so link (it "
    "would abort the process)",
    "one error line naming libtensorrt_rtx.so and --lowering plain; exit 1, no model.engine",
)
def test_without_the_link_the_engine_verb_refuses_in_one_line(
    tiny_fp16_plugin_export, plugin_build, tmp_path
):
    from armor_export.engine.backends import rtx_plugin_parse_problem

    if rtx_plugin_parse_problem(trt) is None:
        pytest.skip("libtensorrt_rtx.so is resolvable in this environment: nothing to refuse")
    env = {**env_with_library_path(None), NO_LIBRARY_LINKS: "1"}
    proc = engine_cli(
        tiny_fp16_plugin_export.output_dir, tmp_path / "engine", plugin_build.library, env
    )
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "libtensorrt_rtx.so" in errors[0], proc.stderr
    assert "--lowering plain" in errors[0]
    assert not (tmp_path / "engine" / "model.engine").exists()
