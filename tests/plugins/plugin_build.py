"""Builds plugins/armorBlockDiagPlugin with its CMake against TensorRT's public headers.

The headers come from ``$TRT_ROOT`` or, by default, ``../shared/third_party/tensorrt-11.1``
beside the repository (CI clones the repository with ``shared/`` next to it). One CUDA
architecture keeps the build to ~10 s on two cores. Also makes the ``libtensorrt_rtx.so`` link
that TensorRT-RTX 1.7's ONNX parser needs for plugin nodes (plugins/armorBlockDiagPlugin/repro).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PLUGIN_DIR = ROOT / "plugins" / "armorBlockDiagPlugin"
SHARED_TRT_ROOT = ROOT.parent / "shared" / "third_party" / "tensorrt-11.1"
CUDA_ARCH = "80"


@dataclass(frozen=True)
class PluginBuild:
    library: Path  # libarmor_blockdiag_plugin.so
    contract_check: Path  # armor_plugin_contract_check (tests/pluginContractCheck.cpp)
    enqueue_check: Path  # armor_plugin_enqueue_check (tests/pluginEnqueueCheck.cpp, GPU)
    trt_include: Path
    seconds: float


def find_nvcc() -> str | None:
    found = shutil.which("nvcc")
    if found:
        return found
    fallback = Path("/usr/local/bin/nvcc")
    return str(fallback) if fallback.is_file() and os.access(fallback, os.X_OK) else None


def trt_root() -> Path:
    return Path(os.environ.get("TRT_ROOT") or SHARED_TRT_ROOT)


def missing_tools() -> list[str]:
    """What the plugin build lacks here, named for a skip reason (empty: it can build)."""
    missing = [tool for tool in ("cmake", "g++") if shutil.which(tool) is None]
    if find_nvcc() is None:
        missing.append("nvcc (neither on PATH nor /usr/local/bin/nvcc)")
    if not (trt_root() / "include" / "NvInferRuntime.h").is_file():
        missing.append(f"TensorRT headers ({trt_root()}/include/NvInferRuntime.h; set TRT_ROOT)")
    return missing


def build_plugin(build_dir: Path) -> PluginBuild:
    """Configure and build the plugin library and the contract check; raise with the log."""
    import time

    start = time.perf_counter()
    configure = [
        "cmake", "-S", str(PLUGIN_DIR), "-B", str(build_dir),
        f"-DTRT_ROOT={trt_root()}", f"-DCMAKE_CUDA_COMPILER={find_nvcc()}",
        f"-DCMAKE_CUDA_ARCHITECTURES={CUDA_ARCH}", "-DARMOR_BUILD_CHECKS=ON",
    ]  # fmt: skip
    for cmd in (configure, ["cmake", "--build", str(build_dir), "-j", "2"]):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            raise RuntimeError(
                f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
            )
    return PluginBuild(
        library=build_dir / "libarmor_blockdiag_plugin.so",
        contract_check=build_dir / "armor_plugin_contract_check",
        enqueue_check=build_dir / "armor_plugin_enqueue_check",
        trt_include=trt_root() / "include",
        seconds=time.perf_counter() - start,
    )


def rtx_link_dir(folder: Path) -> Path | None:
    """A folder with ``libtensorrt_rtx.so -> <wheel>/libtensorrt_rtx.so.1`` for LD_LIBRARY_PATH
    (None without the TensorRT-RTX wheel's libraries)."""
    try:
        import tensorrt_rtx_libs
    except ImportError:
        return None
    target = Path(tensorrt_rtx_libs.__file__).parent / "libtensorrt_rtx.so.1"
    if not target.is_file():
        return None
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / "libtensorrt_rtx.so"
    if not link.exists():
        link.symlink_to(target)
    return folder


def env_with_library_path(folder: Path | None) -> dict[str, str]:
    """This process's environment, with ``folder`` first on LD_LIBRARY_PATH when given and
    the repository first on PYTHONPATH (subprocesses import this checkout)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    if folder is not None:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            filter(None, [str(folder), env.get("LD_LIBRARY_PATH")])
        )
    return env
