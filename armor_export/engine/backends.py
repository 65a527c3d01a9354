"""The two real engine builders behind one small interface, imported lazily.

Datacenter TensorRT (``tensorrt``, 10.x/11.x) and TensorRT-RTX (``tensorrt_rtx``) share the
builder API used here (Builder, OnnxParser, SPARSE_WEIGHTS, optimisation profiles, timing
cache, plugin registry). TensorRT-RTX also builds ahead of time for a chosen compute
capability on a machine without a GPU; datacenter TensorRT needs the GPU it builds for.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path

from armor_export.config import ENGINE_BACKEND_ALIASES, TENSORRT, TENSORRT_RTX
from armor_export.errors import BackendUnavailableError, UserError


@dataclass(frozen=True)
class BackendSpec:
    name: str
    module: str
    install_hint: str
    aot: bool  # builds for a stated compute capability without that GPU
    timing_cache: bool  # keeps a timing cache (TensorRT-RTX 1.2+ made those no-ops)


# keyed by config.ENGINE_BACKENDS (the names every verb uses; a test checks they match)
BACKENDS = {
    TENSORRT_RTX: BackendSpec(
        "TensorRT-RTX", "tensorrt_rtx", "pip install 'armor-export[rtx]'", True, False
    ),
    TENSORRT: BackendSpec(
        "TensorRT",
        "tensorrt",
        "pip install 'armor-export[trt]' (NVIDIA's wheels; needs NVIDIA's package index)",
        False,
        True,
    ),
}


def backend_spec(kind: str) -> BackendSpec:
    """The spec of a backend by name (the old names ``rtx``/``trt`` are read as aliases)."""
    return BACKENDS[ENGINE_BACKEND_ALIASES.get(kind, kind)]


def load_backend(kind: str):
    """The backend's Python module, or a clear error with the install hint."""
    spec = backend_spec(kind)
    try:
        return importlib.import_module(spec.module)
    except ImportError as exc:
        raise BackendUnavailableError(
            f"{spec.name} is not importable ({exc}): {spec.install_hint}"
        ) from None


@dataclass
class CollectingLogger:
    """A TensorRT logger that keeps every message (the build report reads sparsity lines)
    and, with ``log_path``, writes each to that file as it comes (kept if the build crashes).
    """

    trt: object
    log_path: Path | None = None
    messages: list[tuple[str, str]] = field(default_factory=list)
    log_error: OSError | None = None  # why the log file stopped being written

    def make(self):
        trt = self.trt
        outer = self

        class _Logger(trt.ILogger):
            def __init__(self):
                trt.ILogger.__init__(self)

            def log(self, severity, msg):
                level = str(severity).rsplit(".", 1)[-1]
                outer.messages.append((level, msg))
                if outer.log_path is not None:
                    try:
                        with outer.log_path.open("a") as f:
                            f.write(f"[{level}] {msg}\n")
                    except OSError as exc:  # a full disk: the build goes on, and its
                        # own write then fails with the error that names the engine
                        outer.log_error, outer.log_path = exc, None

        return _Logger()

    def errors(self) -> list[str]:
        return [m for s, m in self.messages if s in ("ERROR", "INTERNAL_ERROR")]


def strongly_typed_flags(trt) -> int:
    """Network creation flags: strongly typed (TensorRT 11 / RTX: precision from ONNX types)."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)


RTX_PARSER_DLOPENS = "libtensorrt_rtx.so"  # the unversioned name TensorRT-RTX's parser asks for


def rtx_plugin_parse_problem(trt) -> str | None:
    """Why parsing a plugin node with this TensorRT-RTX would abort the process, or None.

    TensorRT-RTX 1.7's ONNX parser dlopen()s the unversioned ``libtensorrt_rtx.so`` when it
    imports a plugin node and dies in ``std::terminate`` when that fails; the pip wheel ships
    only ``libtensorrt_rtx.so.1`` (plugins/armorBlockDiagPlugin/repro/README.md). The parser
    looks beside itself (RPATH ``$ORIGIN``) first, then where any dlopen looks, so: that
    folder, then a dlopen of the same name from here (what the parser would load next).
    """
    import ctypes
    import os
    import sys

    if not sys.platform.startswith("linux"):
        return None  # seen with the Linux wheel; Windows resolves DLLs differently
    libs = _loaded_library_dir("libtensorrt_onnxparser_rtx")
    if libs is not None and os.path.exists(os.path.join(libs, RTX_PARSER_DLOPENS)):
        return None
    try:
        ctypes.CDLL(RTX_PARSER_DLOPENS)
        return None
    except OSError:
        pass
    target = os.path.join(libs or "<tensorrt_rtx_libs>", RTX_PARSER_DLOPENS)
    return (
        f"TensorRT-RTX {trt.__version__}'s ONNX parser aborts the process on plugin nodes "
        f"unless it can dlopen {RTX_PARSER_DLOPENS}, which its pip wheel lacks: run "
        f"'ln -s {RTX_PARSER_DLOPENS}.1 {target}' (or start with LD_LIBRARY_PATH naming a "
        "folder holding that link), or export with --lowering plain"
    )


def _loaded_library_dir(stem: str) -> str | None:
    """The folder of a shared library this process has mapped (Linux), else None."""
    import os

    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.split(maxsplit=5)[-1].strip()
                if os.path.basename(path).startswith(stem + ".so"):
                    return os.path.dirname(path)
    except OSError:
        return None
    return None


class PluginLibraryError(UserError):
    """The plugin library is missing or the backend's plugin registry refuses it."""


# (backend module, resolved path) -> the registry's handle: a second load_library of the
# same file fails in TensorRT ("creator exists already"), so each file is loaded once
_LOADED_PLUGINS: dict[tuple[str, str], object] = {}


def load_plugin_library(trt, path: str | Path) -> None:
    """Load ``path`` into ``trt``'s plugin registry, once per process."""
    library = Path(path)
    if not library.is_file():
        raise PluginLibraryError(
            f"{library}: no such plugin library (build plugins/, see its README)"
        )
    key = (trt.__name__, str(library.resolve()))
    if key in _LOADED_PLUGINS:
        return
    # resolved: dlopen reads a bare file name as a library search, never the working folder
    handle = trt.get_plugin_registry().load_library(str(library.resolve()))
    if handle is None:
        raise PluginLibraryError(
            f"{library}: {trt.__name__} {trt.__version__}'s plugin registry refused it "
            "(not a TensorRT plugin library, or built against another TensorRT)"
        )
    _LOADED_PLUGINS[key] = handle


def loaded_plugin_libraries() -> list[str]:
    return [path for _, path in _LOADED_PLUGINS]
