"""One engine path for ``engine``, ``verify`` and the runtime: the backend's plugin library
(loaded once per process), whether a CUDA GPU can run an engine here, whether an engine belongs
to the export beside it (``runnable_engine``: the checks both ``verify`` and
``generate --backend tensorrt`` make), and a child process that turns a native crash into a
one-line error. Running an engine is ``runtime.trt_session.TensorRTSession`` for both.

TensorRT aborts or segfaults on some bad inputs (a plugin library built for another version,
a corrupt engine); in-process that kills the CLI with no message, so builds and engine runs
happen in a spawned child and the parent names the stage and the signal.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import pickle
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from armor_export.errors import BackendUnavailableError, CorruptFileError, UserError
from armor_export.export_manifest import MANIFEST, ExportManifest

ENGINE_FILE = "model.engine"
DEFAULT_ENGINE_DIR = "engine"  # <export>/engine: where the engine verb writes by default
REPORT_JSON = "build_report.json"
BUILDER_LOG = "builder.log"
# test hook: a child whose stage name is in this variable aborts before its work (real SIGABRT)
CRASH_HOOK = "ARMOR_EXPORT_ABORT_IN_CHILD"
# set to 1 to start the engine child with the library path exactly as it is
NO_LIBRARY_LINKS = "ARMOR_EXPORT_NO_LIBRARY_LINKS"


class PluginLibraryError(UserError):
    """The plugin library is missing or the backend's plugin registry refuses it."""


class EngineMismatchError(UserError):
    """The engine does not belong to the export beside it, or to the installed backend."""


class EngineNotRun(BackendUnavailableError):
    """The engine is there and belongs to the export, but cannot run on this machine."""


class NativeCrashError(UserError):
    """A child running TensorRT died from a signal (abort, segfault)."""


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
    handle = trt.get_plugin_registry().load_library(str(library))
    if handle is None:
        raise PluginLibraryError(
            f"{library}: {trt.__name__} {trt.__version__}'s plugin registry refused it "
            "(not a TensorRT plugin library, or built against another TensorRT)"
        )
    _LOADED_PLUGINS[key] = handle


def loaded_plugin_libraries() -> list[str]:
    return [path for _, path in _LOADED_PLUGINS]


def cuda_gpus() -> tuple[list[str], str]:
    """The compute capabilities (``sm80``...) of the CUDA GPUs here, or ``([], reason)``.

    Asks the driver (``libcuda``) directly: no CUDA Python package is needed to find out.
    """
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return [], "no CUDA GPU (no NVIDIA driver: libcuda.so.1 not found)"
    count = ctypes.c_int(0)
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0 or not count.value:
        return [], "no CUDA GPU (the NVIDIA driver reports none)"
    capabilities = []
    for index in range(count.value):
        major, minor = ctypes.c_int(0), ctypes.c_int(0)
        cuda.cuDeviceGetAttribute(ctypes.byref(major), 75, index)  # COMPUTE_CAPABILITY_MAJOR
        cuda.cuDeviceGetAttribute(ctypes.byref(minor), 76, index)  # COMPUTE_CAPABILITY_MINOR
        capabilities.append(f"sm{major.value}{minor.value}")
    return capabilities, ""


def read_build_report(engine_dir: str | Path) -> dict:
    engine_dir = Path(engine_dir)
    path = engine_dir / REPORT_JSON
    if not (engine_dir / ENGINE_FILE).is_file() or not path.is_file():
        raise CorruptFileError(
            f"{engine_dir}: no {ENGINE_FILE} with its {REPORT_JSON}: "
            "build it with armor-export engine"
        )
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CorruptFileError(f"{path}: unreadable build report ({exc})") from None


def export_binding(export_dir: Path, manifest: ExportManifest) -> dict:
    """What an engine records about the export it was built from."""
    return {
        "onnx_sha256": manifest.sha256.get(manifest.onnx),
        "export_manifest_sha256": _sha256(export_dir / MANIFEST),
    }


def check_engine_belongs(engine_dir: Path, export_dir: Path, manifest: ExportManifest) -> dict:
    """The build report of ``engine_dir`` after checking the engine is the one it describes,
    built from this export's graph; an EngineMismatchError saying which does not hold."""
    report = read_build_report(engine_dir)
    engine = engine_dir / ENGINE_FILE
    if report.get("engine_sha256") != _sha256(engine):
        raise EngineMismatchError(
            f"{engine} is not the engine its {REPORT_JSON} describes (sha256 differs): rebuild it"
        )
    onnx_sha = manifest.sha256.get(manifest.onnx)
    if report.get("onnx_sha256") != onnx_sha:
        raise EngineMismatchError(
            f"{engine} was built from another graph than {export_dir / manifest.onnx} "
            f"(onnx sha256 {str(report.get('onnx_sha256'))[:12]} vs {str(onnx_sha)[:12]}): "
            "rebuild it from this export"
        )
    # the limits and tokens it was built for: a manifest rewritten since (another export of
    # the same graph) is another export (an edited one fails ExportManifest.read already)
    recorded = report.get("export_manifest_sha256")
    if recorded is not None and recorded != _sha256(export_dir / MANIFEST):
        raise EngineMismatchError(
            f"{engine} was built from another {MANIFEST} than {export_dir / MANIFEST} "
            "(its sha256 differs: limits or tokens may differ): rebuild it from this export"
        )
    return report


def check_backend_version(trt, report: dict) -> None:
    """TensorRT engines are tied to the version that built them: say so before loading."""
    built = report.get("versions", {}).get(report.get("backend_module", ""))
    if built and built != trt.__version__:
        raise EngineMismatchError(
            f"the engine was built with {report.get('backend')} {built}, this is "
            f"{trt.__version__}: rebuild it with armor-export engine"
        )


def not_run_reason(report: dict, gpus: list[str], gpu_reason: str) -> str:
    """Why this engine cannot run here ("" when it can)."""
    target = report.get("compute_capability", "")
    if not gpus:
        return gpu_reason or "no CUDA GPU"
    if target.startswith("sm") and target not in gpus:
        return f"built for {target}, this GPU is {', '.join(gpus)}"
    return ""


@dataclass(frozen=True)
class RunnableEngine:
    """An engine that passed ``runnable_engine``: what a session needs to load it."""

    path: str
    backend: str  # an engine backend name (config.ENGINE_BACKENDS)
    plugin_library: str


def runnable_engine(
    engine_dir: Path, report: dict, manifest: ExportManifest, plugin_library: str = ""
) -> RunnableEngine:
    """The checks before an engine is loaded, shared by ``verify`` and the runtime: its plugin
    library (``plugin_library``, else the one its build recorded) where the export has plugin
    nodes, the backend that built it, importable and of the same version, and a CUDA GPU of
    its target here; a one-line error naming what is missing otherwise."""
    from armor_export.engine.backends import load_backend

    library = ""
    if manifest.lowering == "plugin":
        library = plugin_library or (report.get("plugin") or {}).get("library", "")
        if not library or not Path(library).is_file():
            raise PluginLibraryError(
                f"the engine needs the {manifest.plugin.name} plugin library "
                f"({library or 'none recorded'} is not a file): pass --plugin-library"
            )
    backend = report.get("config", {}).get("backend", "tensorrt-rtx")
    trt = load_backend(backend)
    check_backend_version(trt, report)
    gpus, reason = cuda_gpus()
    why = not_run_reason(report, gpus, reason)
    if why:
        built_for = report.get("compute_capability", "?")
        raise EngineNotRun(f"engine built for {built_for}, not run: {why}")
    return RunnableEngine(str(Path(engine_dir) / ENGINE_FILE), backend, library)


def run_engine(engine_path: str, backend: str, plugin_library: str, feed: dict) -> dict:
    """Float32 outputs of the engine at ``engine_path`` for one feed, through the runtime's
    ``TensorRTSession`` (the one engine-run path). Needs a CUDA GPU; run it in a child
    (``run_in_child``) so a native crash is an error."""
    import numpy as np

    from armor_export.runtime.trt_session import TensorRTSession

    with TensorRTSession(engine_path, backend, plugin_library) as session:
        outputs = session.run(feed)
    return {name: np.asarray(value).astype(np.float32) for name, value in outputs.items()}


def _sha256(path: Path) -> str | None:
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def signal_name(exitcode: int) -> str:
    try:
        return f"signal {-exitcode}: {signal.Signals(-exitcode).name}"
    except ValueError:
        return f"signal {-exitcode}"


def crash_hook(stage: str) -> None:
    """Abort (a real SIGABRT) when the test hook names ``stage``."""
    if stage and os.environ.get(CRASH_HOOK) == stage:
        os.abort()


def run_in_child(stage: str, target, args: tuple, log_path: Path | None = None,
                 scratch: Path | None = None):  # fmt: skip
    """``target(*args)`` in a child Python; its result, its error, or a NativeCrashError.

    A fresh interpreter (``python -m armor_export.engine.child``), not multiprocessing: a
    spawned child re-runs the caller's main script, which breaks scripts that call the verbs
    at top level. ``target`` must be a module-level function, its arguments and result
    picklable.

    The child does not outlive this process: it reads a pipe whose only write end is here,
    and when this process exits (``kill -9`` included) it removes ``scratch`` (a folder of the
    caller's that holds what the child writes) and the request's temporary folder, and
    exits. An interrupt here (Ctrl-C, SIGTERM) kills the child before the folder goes.
    """
    # the request and reply live in the system's temporary folder, not in ``scratch``: an
    # output folder on a full disk must not swallow the child's report of that very error
    with tempfile.TemporaryDirectory(prefix="armor-child-") as tmp:
        request, reply = Path(tmp) / "request.pkl", Path(tmp) / "reply.pkl"
        request.write_bytes(pickle.dumps((stage, target.__module__, target.__qualname__, args)))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        links = library_links(Path(tmp) / "libs")
        if links is not None:
            env["LD_LIBRARY_PATH"] = os.pathsep.join(
                p for p in (str(links), os.environ.get("LD_LIBRARY_PATH", "")) if p
            )
        watched, alive = os.pipe()  # neither is inherited but by pass_fds
        try:
            child = subprocess.run(  # kills the child on any exception here, then waits
                [sys.executable, "-m", "armor_export.engine.child", str(request), str(reply),
                 str(watched), str(scratch or tmp), tmp],
                env=env, pass_fds=(watched,), check=False,
            )  # fmt: skip
        finally:
            os.close(watched)
            os.close(alive)
        try:
            message = pickle.loads(reply.read_bytes())
        except (OSError, EOFError, pickle.UnpicklingError):  # none, or cut short: it died
            raise NativeCrashError(crash_message(stage, child.returncode, log_path)) from None
    if message[0] == "ok":
        return message[1]
    if message[0] == "user-error":
        raise message[1]
    _, name, text = message
    raise RuntimeError(f"{stage} failed in its child process: {name}: {text}")


def library_links(folder: Path) -> Path | None:
    """A folder holding the unversioned ``libtensorrt_rtx.so`` link that TensorRT-RTX's ONNX
    parser dlopen()s when it imports a plugin node, where the pip wheel ships only
    ``libtensorrt_rtx.so.1`` (without the link the parser aborts the process:
    plugins/armorBlockDiagPlugin/repro/README.md). The engine child starts with it on
    ``LD_LIBRARY_PATH``, read once at process start. None: not needed, or not wanted
    (``ARMOR_EXPORT_NO_LIBRARY_LINKS=1``)."""
    import importlib.util

    from armor_export.engine.backends import RTX_PARSER_DLOPENS

    if os.environ.get(NO_LIBRARY_LINKS) == "1" or not sys.platform.startswith("linux"):
        return None
    spec = importlib.util.find_spec("tensorrt_rtx_libs")
    if spec is None or not spec.submodule_search_locations:
        return None
    wheel = Path(next(iter(spec.submodule_search_locations)))
    versioned = wheel / (RTX_PARSER_DLOPENS + ".1")
    if (wheel / RTX_PARSER_DLOPENS).exists() or not versioned.is_file():
        return None
    folder.mkdir(parents=True, exist_ok=True)
    (folder / RTX_PARSER_DLOPENS).symlink_to(versioned)
    return folder


def crash_message(stage: str, exitcode: int | None, log_path: Path | None) -> str:
    how = signal_name(exitcode) if exitcode and exitcode < 0 else f"exit code {exitcode}"
    tail = f"; builder log: {log_path}" if log_path else ""
    return f"{stage} crashed ({how}){tail}"
