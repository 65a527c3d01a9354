"""The plugin's CMake from a folder other than the repository root: TRT_ROOT does not depend on
where cmake runs (it used to default to a path that held only from the repository root)."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.plugins.plugin_build import CUDA_ARCH, PLUGIN_DIR, SHARED_TRT_ROOT, find_nvcc
from tests.plugins.plugin_build import missing_tools as plugin_missing_tools


def missing_tools() -> list[str]:
    missing = [m for m in plugin_missing_tools() if not m.startswith("TensorRT headers")]
    if not (SHARED_TRT_ROOT / "include" / "NvInferRuntime.h").is_file():
        missing.append(f"TensorRT headers beside the repository ({SHARED_TRT_ROOT}/include)")
    return missing


def configure_args() -> list[str]:
    return [f"-DCMAKE_CUDA_COMPILER={find_nvcc()}", f"-DCMAKE_CUDA_ARCHITECTURES={CUDA_ARCH}"]


def cmake(args: list[str], cwd, env) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        ["cmake", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, f"cmake {' '.join(args)}:\n{proc.stdout[-3000:]}{proc.stderr}"
    return proc


@pytest.fixture
def elsewhere(tmp_path):
    """A working folder outside the repository, and an environment without $TRT_ROOT."""
    if missing := missing_tools():
        pytest.skip("cannot build the plugin here: missing " + ", ".join(missing))
    cwd = tmp_path / "somewhere" / "else"
    cwd.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k != "TRT_ROOT"}
    return cwd, env


def cached(build_dir, name: str) -> str:
    for line in (build_dir / "CMakeCache.txt").read_text().splitlines():
        if line.startswith(name + ":"):
            return line.split("=", 1)[1]
    raise AssertionError(f"{name} not in {build_dir}/CMakeCache.txt")


@pytest.mark.fault(
    "engine",
    "the plugin configured and built with cmake from another folder, no TRT_ROOT given",
    "it finds TensorRT's headers from its own CMakeLists.txt and builds",
)
def test_the_plugin_builds_from_another_folder_without_trt_root(elsewhere):
    cwd, env = elsewhere
    cmake([*configure_args(), "-S", str(PLUGIN_DIR), "-B", "build"], cwd, env)
    include = cached(cwd / "build", "TRT_INCLUDE_DIR")
    assert os.path.samefile(include, SHARED_TRT_ROOT / "include")
    cmake(["--build", "build", "--target", "armor_blockdiag_plugin", "-j", "2"], cwd, env)
    assert (cwd / "build" / "libarmor_blockdiag_plugin.so").stat().st_size > 100_000


def test_a_relative_trt_root_is_read_from_where_cmake_runs(elsewhere):
    cwd, env = elsewhere
    relative = os.path.relpath(SHARED_TRT_ROOT, cwd)
    cmake([*configure_args(), "-S", str(PLUGIN_DIR), "-B", "build", f"-DTRT_ROOT={relative}"],
          cwd, env)  # fmt: skip
    assert os.path.samefile(cached(cwd / "build", "TRT_INCLUDE_DIR"), SHARED_TRT_ROOT / "include")
