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
