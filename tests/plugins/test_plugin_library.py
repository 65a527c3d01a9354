"""libarmor_blockdiag_plugin.so built with its CMake against TensorRT's public headers: the
creator and IPluginV3 answer as TensorRT's registry and ONNX parser expect (checked by a host
program, no TensorRT library or GPU), agree with armorBlockDiagPlugin.yaml and reference.py,
TensorRT-RTX parses and builds a one-node graph with it (plugins/armorBlockDiagPlugin/repro),
and, on a GPU, its enqueue matches a host reference.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from armor_export.export import reference
from tests.plugins.plugin_build import PLUGIN_DIR, env_with_library_path, rtx_link_dir

REPRO = PLUGIN_DIR / "repro" / "one_node_parse.py"
# nvinfer1::DataType values of the YAML's type names
TRT_TYPES = {"float32": 0, "float16": 1, "bfloat16": 7}


@pytest.fixture(scope="module")
def spec() -> dict:
    yaml = pytest.importorskip("yaml")
    return yaml.safe_load((PLUGIN_DIR / "armorBlockDiagPlugin.yaml").read_text())


@pytest.fixture(scope="module")
def contract(plugin_build) -> dict:
    proc = subprocess.run(
        [str(plugin_build.contract_check), str(plugin_build.library)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout)


def test_the_plugin_library_builds_against_the_tensorrt_headers(plugin_build):
    assert plugin_build.library.stat().st_size > 100_000
    assert (plugin_build.trt_include / "NvInferRuntime.h").is_file()
    assert plugin_build.seconds < 300, "keep the test build to one CUDA architecture"


def test_the_creator_is_what_the_yaml_spec_and_reference_name(contract, spec):
    (version, entry), *others = spec["versions"].items()
    assert not others
    assert contract["creators"] == 1 and contract["set_logger_finder"]
    names = (contract["name"], contract["version"], contract["namespace"])
    assert names == (spec["name"], version, entry["plugin_namespace"])
    assert names == (reference.PLUGIN_NAME, reference.PLUGIN_VERSION, reference.PLUGIN_NAMESPACE)
    plugin_names = (contract["plugin_name"], contract["plugin_version"])
    assert plugin_names + (contract["plugin_namespace"],) == names
    # the ONNX parser turns node attributes other than plugin_version/namespace into fields
    assert contract["field_names"] == entry["attributes"] == []
    assert contract["fields_to_serialize"] == []
    assert contract["nb_outputs"] == len(entry["outputs"])


def test_every_interface_is_the_v3_one_that_tensorrt_asks_for(contract):
    assert contract["creator_interface"] == {"kind": "PLUGIN CREATOR_V3ONE", "major": 1, "minor": 0}
    assert contract["plugin_interface"] == {"kind": "PLUGIN", "major": 1, "minor": 0}
    for capability in ("core", "build", "runtime"):
        kind = f"PLUGIN_V3ONE_{capability.upper()}"
        assert contract["capabilities"][capability] == {"kind": kind, "major": 1, "minor": 0}
    assert contract["clone"] and contract["runtime_plugin"] and contract["attach_to_context"]
    assert contract["complete"]


def test_types_formats_and_shapes_follow_the_spec(contract, spec):
    entry = next(iter(spec["versions"].values()))
    for config in entry["configs"].values():
        x, y = config["input_types"]["x"], config["output_types"]["y"]
        assert config["input_types"]["weight"] == x
        assert contract["output_types"][str(TRT_TYPES[x])] == TRT_TYPES[y]
    assert set(entry["formats"].values()) == {"linear"}
    formats = contract["formats"]
    assert formats["half_linear"] == [True, True, True]
    assert formats["float_linear"] and formats["bf16_linear"]
    assert not formats["int8_linear"] and not formats["half_chw2"]
    assert not formats["weight_float_x_half"]  # weight follows x's type
    assert contract["configure"] == {
        "ok": 0, "dynamic_rows": 0, "wrong_hidden": -1, "b_not_multiple_of_4": -1,
        "b_too_large": -1,
    }  # fmt: skip
    assert contract["workspace_bytes"] == 0


def run_repro(plugin_build, env, *args) -> subprocess.CompletedProcess:
    """The one-node reproducer in a subprocess: an abort must not take pytest with it."""
    return subprocess.run(
        [sys.executable, str(REPRO), str(plugin_build.library), *args],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_tensorrt_rtx_parses_and_builds_a_one_node_plugin_graph(plugin_build, tmp_path, dtype):
    pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX missing: pip install '.[rtx]'")
    env = env_with_library_path(rtx_link_dir(tmp_path / "rtx-link"))
    proc = run_repro(plugin_build, env, "--build", "--dtype", dtype)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PARSED 1 plugin layer(s): blockdiag_0" in proc.stdout
    assert "BUILT" in proc.stdout


def test_without_the_link_tensorrt_rtx_1_7_aborts_in_the_parser(plugin_build):
    """Documents the TensorRT-RTX bug that engine.backends.rtx_plugin_parse_problem guards."""
    trt = pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX missing: pip install '.[rtx]'")
    from armor_export.engine.backends import rtx_plugin_parse_problem

    if rtx_plugin_parse_problem(trt) is None:
        pytest.skip("libtensorrt_rtx.so is resolvable in this environment: nothing to show")
    proc = run_repro(plugin_build, env_with_library_path(None), "-v")
    if proc.returncode == 0:
        pytest.skip(
            f"TensorRT-RTX {trt.__version__} no longer aborts without libtensorrt_rtx.so: "
            "engine.backends.rtx_plugin_parse_problem can stop refusing"
        )
    assert proc.returncode == -6, proc.stdout + proc.stderr  # SIGABRT from std::terminate
    assert "Successfully created plugin: ArmorBlockDiagMatMul" in proc.stdout
    assert "terminate called" in proc.stderr


def test_enqueue_matches_the_reference_on_a_gpu(plugin_build):
    """The glue's enqueue (createPlugin(kRUNTIME), onShapeChange, enqueue on a stream) against
    a double-precision host reference, fp32/fp16/bf16 and b = 32..128, within the YAML's
    tolerances. Exit status 2: no usable CUDA device here."""
    proc = subprocess.run(
        [str(plugin_build.enqueue_check), str(plugin_build.library)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    if proc.returncode == 2:
        pytest.skip(f"needs a CUDA GPU ({proc.stderr.strip()})")
    cases = [json.loads(line) for line in proc.stdout.splitlines()]
    assert proc.returncode == 0 and len(cases) == 8, proc.stdout + proc.stderr
    assert all(case["ok"] for case in cases), proc.stdout
