"""A built TensorRT / TensorRT-RTX engine behind the runtime's ``Session`` interface.

``TensorRTSession(engine_path, backend, plugin_library)`` deserialises ``model.engine`` with
the module that built it (``tensorrt`` or ``tensorrt_rtx``, same Python API), after loading
the plugin library where the export has plugin nodes (once per process:
``engine.backends.load_plugin_library``). Each ``run`` sets the input shapes of the engine's
dynamic profile from the feeds (a prefill of any length on an empty KV cache, or one decode
token on a cache of any length), copies the feeds into device buffers, runs
``execute_async_v3`` on its own CUDA stream and copies the outputs back as numpy arrays.

Device memory and the stream come from cuda-python (``cuda.bindings.runtime``), NVIDIA's
maintained CUDA binding: it links the CUDA runtime statically, so only the NVIDIA driver is
needed beside it. This is the one engine-run path: ``generate --backend tensorrt`` opens it
in-process, ``verify`` runs it in a child process (``run_engine`` through
``engine.child.run_in_child``, so a native crash is an error).

Running an engine lives here and building one in ``engine/``: this module reads the engine
folder's contract (``engine.folder``) and loads the backend and its plugin library
(``engine.backends``); nothing in ``engine/`` imports the runtime.

``runnable_engine`` (shared with ``verify``) and ``open_engine_session`` refuse, in one line
and before any CUDA call, an export without a
built engine, an engine of another export or TensorRT version, a missing plugin library or
backend, a machine without a CUDA GPU of the engine's target, and a missing cuda-python.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from armor_export.engine.backends import (
    CollectingLogger,
    PluginLibraryError,
    load_backend,
    load_plugin_library,
)
from armor_export.engine.folder import (
    ENGINE_FILE,
    REPORT_JSON,
    EngineMismatchError,
    check_backend_version,
    check_engine_belongs,
    engine_dir_of,
    plugin_library_of,
)
from armor_export.errors import BackendUnavailableError, CorruptFileError, ShapeError
from armor_export.export_manifest import ExportManifest, Limits

CUDA_INSTALL_HINT = (
    "pip install 'armor-export[rtx]' (or [trt]; cuda-python 12.x for a CUDA 12 driver)"
)


def import_cudart():
    """cuda-python's CUDA runtime module, or a one-line error with the install hint."""
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError:
            raise BackendUnavailableError(
                "cuda-python is not installed (a TensorRT engine needs it for its device "
                f"buffers): {CUDA_INSTALL_HINT}"
            ) from None
    return cudart


def _check(cudart, result, what: str):
    """The values of a cuda-python call (``(error, *values)``), or a one-line error."""
    error, *values = result
    if error != cudart.cudaError_t.cudaSuccess:
        _, text = cudart.cudaGetErrorString(error)
        text = text.decode() if isinstance(text, bytes) else str(text)
        raise BackendUnavailableError(f"CUDA {what} failed: {error.name} ({text})")
    return values[0] if len(values) == 1 else values


def numpy_dtype(trt, dtype) -> np.dtype:
    """The numpy dtype of a TensorRT tensor type (bfloat16 through ml_dtypes)."""
    if dtype == getattr(trt.DataType, "BF16", None):
        try:
            import ml_dtypes
        except ImportError:
            raise BackendUnavailableError(
                "this engine takes bfloat16, which numpy has no type for: pip install ml_dtypes"
            ) from None
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(trt.nptype(dtype))


class _DeviceBuffer:
    """One device allocation, grown (doubling) when a tensor outgrows it."""

    def __init__(self, cudart) -> None:
        self._cudart, self.ptr, self.nbytes = cudart, 0, 0

    def reserve(self, nbytes: int) -> int:
        if nbytes > self.nbytes or not self.ptr:
            self.free()
            size = max(nbytes, 2 * self.nbytes, 256)  # never 0: an empty tensor gets an address
            self.ptr = int(_check(self._cudart, self._cudart.cudaMalloc(size), "cudaMalloc"))
            self.nbytes = size
        return self.ptr

    def free(self) -> None:
        if self.ptr:
            self._cudart.cudaFree(self.ptr)
        self.ptr, self.nbytes = 0, 0


class TensorRTSession:
    """One deserialised engine: named numpy inputs in, named numpy outputs out."""

    def __init__(self, engine_path: str | Path, backend: str, plugin_library: str = "") -> None:
        trt = load_backend(backend)
        cudart = import_cudart()
        if plugin_library:
            load_plugin_library(trt, plugin_library)  # before deserialising: it names creators
        self._trt, self._cudart = trt, cudart
        self._logger = CollectingLogger(trt)
        self._runtime = trt.Runtime(self._logger.make())
        self._engine = self._runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self._engine is None:
            said = self._logger.errors()[-1][:300] if self._logger.errors() else "no message"
            raise EngineMismatchError(
                f"{engine_path}: {trt.__name__} {trt.__version__} could not deserialise it "
                "(built by another version, for another GPU, or without its plugin library): "
                f"{said}"
            )
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise BackendUnavailableError(
                f"{engine_path}: no execution context ({self._last_error()})"
            )
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        is_input = {n: self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.input_names = [n for n in names if is_input[n]]
        self.output_names = [n for n in names if not is_input[n]]
        self.dtypes = {n: numpy_dtype(trt, self._engine.get_tensor_dtype(n)) for n in names}
        self.limits: Limits | None = None  # set by open_engine_session from the build report
        self._stream = _check(cudart, cudart.cudaStreamCreate(), "cudaStreamCreate")
        self._buffers = {name: _DeviceBuffer(cudart) for name in names}

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cudart, context = self._cudart, self._context
        missing = [name for name in self.input_names if name not in feeds]
        if missing:
            raise ValueError(f"the engine's inputs {missing[:3]} are not in the feeds")
        hosts = {}
        for name in self.input_names:
            host = np.ascontiguousarray(feeds[name])
            if host.dtype != self.dtypes[name]:
                raise TypeError(f"{name}: the engine takes {self.dtypes[name]}, got {host.dtype}")
            if not context.set_input_shape(name, tuple(host.shape)):
                raise ShapeError(self._profile_message(name, host.shape))
            hosts[name] = host
        shapes = {name: tuple(context.get_tensor_shape(name)) for name in self.output_names}
        unknown = [name for name, shape in shapes.items() if any(d < 0 for d in shape)]
        if unknown:
            raise ShapeError(f"the engine cannot tell the shapes of {unknown[:3]} from the feeds")
        outputs = {name: np.empty(shape, self.dtypes[name]) for name, shape in shapes.items()}
        to_device = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        to_host = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for name, array in {**hosts, **outputs}.items():
            ptr = self._buffers[name].reserve(array.nbytes)
            context.set_tensor_address(name, ptr)
            if name in hosts and array.nbytes:
                result = cudart.cudaMemcpyAsync(
                    ptr, array.ctypes.data, array.nbytes, to_device, self._stream
                )
                _check(cudart, result, f"copy of {name} to the GPU")
        if not context.execute_async_v3(int(self._stream)):
            raise BackendUnavailableError(f"the engine failed to run: {self._last_error()}")
        for name, array in outputs.items():
            if array.nbytes:
                result = cudart.cudaMemcpyAsync(
                    array.ctypes.data, self._buffers[name].ptr, array.nbytes, to_host,
                    self._stream,
                )  # fmt: skip
                _check(cudart, result, f"copy of {name} from the GPU")
        _check(cudart, cudart.cudaStreamSynchronize(self._stream), "engine run")
        return outputs

    def _profile_message(self, name: str, shape) -> str:
        low, _, high = self._engine.get_tensor_profile_shape(name, 0)
        return (
            f"{name} of shape {tuple(shape)} is outside the engine's profile "
            f"({tuple(low)} to {tuple(high)}): rebuild the engine with larger limits"
        )

    def _last_error(self) -> str:
        errors = self._logger.errors()
        return errors[-1][:300] if errors else "no message from TensorRT"

    def close(self) -> None:
        """Free the device buffers and the stream (also done when the session is collected)."""
        for buffer in getattr(self, "_buffers", {}).values():
            buffer.free()
        if getattr(self, "_stream", None) is not None:
            self._cudart.cudaStreamDestroy(self._stream)
            self._stream = None
        self._context = None  # the context before the engine, the engine before the runtime
        self._engine = None

    def __enter__(self) -> TensorRTSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # at interpreter exit CUDA may already be gone
            pass


def open_engine_session(
    export_dir: str | Path,
    manifest: ExportManifest,
    engine_dir: str | Path | None = None,
    plugin_library: str = "",
) -> TensorRTSession:
    """The export's built engine (``engine_dir``, else where every verb looks for it:
    ``engine.folder.engine_dir_of``), checked to belong to it and to be runnable here
    (``runnable_engine``), as a session whose ``limits`` are the engine's own (never beyond
    the export's)."""
    export_dir = Path(export_dir)
    engine_dir = Path(engine_dir) if engine_dir else engine_dir_of(export_dir)
    if not (engine_dir / ENGINE_FILE).is_file():
        raise BackendUnavailableError(
            f"{export_dir} has no built engine ({engine_dir / ENGINE_FILE} is not a file): "
            f"build one with 'armor-export engine {export_dir}', pass --engine, "
            "or use --backend onnxruntime"
        )
    report = check_engine_belongs(engine_dir, export_dir, manifest)
    limits = engine_limits(report, manifest, engine_dir)
    engine = runnable_engine(engine_dir, report, manifest, plugin_library)
    import_cudart()  # the install hint before the engine is read
    session = TensorRTSession(engine.path, engine.backend, engine.plugin_library)
    session.limits = limits
    return session


def engine_limits(report: dict, manifest: ExportManifest, engine_dir: Path) -> Limits:
    """The limits the engine's profile was built for (its build report's), else the export's."""
    recorded = report.get("limits")
    if recorded is None:
        return manifest.limits
    try:
        return Limits(*(int(recorded[key]) for key in ("max_batch", "max_prompt", "max_context")))
    except (KeyError, TypeError, ValueError):
        raise CorruptFileError(
            f"{engine_dir / REPORT_JSON}: unreadable limits {recorded!r}: rebuild the engine"
        ) from None


class EngineNotRun(BackendUnavailableError):
    """The engine is there and belongs to the export, but cannot run on this machine."""


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
    library (``plugin_library``, else the copy in the engine folder, checked against its
    recorded sha256: ``engine.folder.plugin_library_of``) where the export has plugin nodes,
    the backend that built it, importable and of the same version, and a CUDA GPU of its
    target here; a one-line error naming what is missing otherwise."""
    library = ""
    if manifest.lowering == "plugin":
        library = str(plugin_library_of(engine_dir, report, plugin_library))
        if not Path(library).is_file():
            raise PluginLibraryError(
                f"the engine needs the {manifest.plugin.name} plugin library "
                f"({library} is not a file): pass --plugin-library"
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

    with TensorRTSession(engine_path, backend, plugin_library) as session:
        outputs = session.run(feed)
    return {name: np.asarray(value).astype(np.float32) for name, value in outputs.items()}
