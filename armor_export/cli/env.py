"""``armor-export env``: versions and which backends are usable here."""

from __future__ import annotations

import importlib
import platform


def add_parser(sub):
    return sub.add_parser("env", help="print versions and available backends")


def _version(module: str) -> str:
    try:
        mod = importlib.import_module(module)
    except Exception as exc:  # report any import failure, never crash the env report
        return (
            f"not usable ({type(exc).__name__}: {str(exc).splitlines()[0][:80]})"
            if str(exc)
            else f"not usable ({type(exc).__name__})"
        )
    return getattr(mod, "__version__", "installed")


# the oldest Linux driver branch that runs each CUDA major (CUDA's minor version compatibility)
DRIVER_BRANCH = {12: "R525", 13: "R580"}


def _distribution(*names: str) -> tuple[str, str] | None:
    """(name, version) of the first of ``names`` installed, else None."""
    from importlib import metadata

    for name in names:
        try:
            return name, metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def _cuda_major(version: int) -> str:
    """``13040`` (CUDA's encoding of 13.4) -> ``13.4``."""
    return f"{version // 1000}.{version % 1000 // 10}"


def cuda_python_rows() -> list[tuple[str, str]]:
    """What runs a built engine's device memory: cuda-python's version and the CUDA runtime
    linked into it, the driver's CUDA version, and whether the two fit (a CUDA 13 runtime needs
    a CUDA 13 driver, R580 or newer; with a CUDA 12 driver install ``cuda-python<13``)."""
    found = _distribution("cuda-python", "cuda-bindings")
    if found is None:
        return [("cuda-python", "not installed (a TensorRT engine needs it: pip install "
                 "'armor-export[rtx]' or [trt])")]  # fmt: skip
    name, version = found
    try:
        from armor_export.runtime.trt_session import import_cudart

        cudart = import_cudart()  # the module the engine session uses, found the same way
        _, runtime = cudart.cudaRuntimeGetVersion()
        _, driver = cudart.cudaDriverGetVersion()
    except Exception as exc:  # never crash the env report
        return [("cuda-python", f"{version} ({name}), not usable ({type(exc).__name__})")]
    major = runtime // 1000
    branch = f", {DRIVER_BRANCH[major]} or newer" if major in DRIVER_BRANCH else ""
    rows = [("cuda-python", f"{version} (CUDA {_cuda_major(runtime)} runtime linked in; "
             f"needs an NVIDIA driver for CUDA {major}{branch})")]  # fmt: skip
    if not driver:
        rows.append(("driver", "none found"))
    elif driver // 1000 < major:
        rows.append(("driver", f"CUDA {_cuda_major(driver)}: too old for this "
                     f"cuda-python; install 'cuda-python<{major}' or a newer driver"))  # fmt: skip
    else:
        rows.append(("driver", f"CUDA {_cuda_major(driver)}"))
    return rows


def tensorrt_rtx_build() -> str | None:
    """Which CUDA build of TensorRT-RTX is installed (the ``tensorrt-rtx`` metapackage pulls
    ``tensorrt_rtx_cu13``; ``tensorrt-rtx-cu12`` is the CUDA 12 one), or None."""
    found = _distribution("tensorrt_rtx_cu13", "tensorrt_rtx_cu12")
    return None if found is None else f"CUDA {found[0][-2:]} build, {found[0]}"


def run(args) -> int:
    from armor_export import __version__
    from armor_export.data.assets import cache_dir

    rows = [
        ("armor-export", __version__),
        ("python", platform.python_version()),
        ("platform", platform.platform()),
    ]
    for module in (
        "torch",
        "transformers",
        "safetensors",
        "numpy",
        "tokenizers",
        "gguf",
        "onnx",
        "onnxscript",
        "onnxruntime",
        "onnxruntime_genai",
        "polygraphy",
        "tensorrt",
        "tensorrt_rtx",
    ):
        rows.append((module, _version(module)))
        if module == "tensorrt_rtx" and (build := tensorrt_rtx_build()):
            rows[-1] = (module, f"{rows[-1][1]} ({build})")
    rows += cuda_python_rows()
    try:
        import torch

        cuda = f"{torch.cuda.device_count()} device(s)" if torch.cuda.is_available() else "none"
    except ImportError:
        cuda = "torch missing"
    rows.append(("cuda", cuda))
    rows.append(("cache", str(cache_dir())))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0
