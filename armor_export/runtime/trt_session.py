"""A built TensorRT / TensorRT-RTX engine behind the runtime's ``Session`` interface.

``TensorRTSession(engine_path, backend, plugin_library)`` deserialises ``model.engine`` with
the module that built it (``tensorrt`` or ``tensorrt_rtx``, same Python API), after loading
the plugin library where the export has plugin nodes (once per process:
``engine.backends.load_plugin_library``). Each call sets the input shapes of the engine's
dynamic profile from the feeds (a prefill of any length on an empty KV cache, or one decode
token on a cache of any length) and runs ``execute_async_v3`` on its own CUDA stream.
``run`` copies every feed in and every output out as numpy arrays (verify's path);
``run_keeping_cache`` leaves the KV cache on the device in a ``DeviceCache`` (the presents of
one step are bound, by device pointer, as the pasts of the next), so a decode step copies
only the token ids, attention mask and positions in and the logits out (``plan_copies``
says which; ``generate`` takes this path). On TensorRT-RTX the engine's runtime cache of
just-in-time compiled kernels is kept in a file keyed on the engine's sha256
(``runtime_cache``).

Device memory and the stream come from cuda-python (``cuda.bindings.runtime``), NVIDIA's
maintained CUDA binding: it links the CUDA runtime statically, so only the NVIDIA driver is
needed beside it. This is the one engine-run path: ``generate --backend tensorrt`` opens it
in-process, ``verify`` runs it in one child process for all its feeds (``run_engine_feeds``
through ``engine.child.run_in_child``, so a native crash is an error).

Running an engine lives here and building one in ``engine/``: this module reads the engine
folder's contract (``engine.folder``) and loads the backend and its plugin library
(``engine.backends``); nothing in ``engine/`` imports the runtime.

``runnable_engine`` (shared with ``verify``) and ``open_engine_session`` refuse, in one line
and before any CUDA call, an export without a
built engine, an engine of another export or TensorRT version, a missing plugin library or
backend, a machine without a CUDA GPU of the engine's target, and a missing cuda-python.
"""

from __future__ import annotations

import atexit
import logging
import weakref
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
from armor_export.engine.targets import (
    built_for,
    covers,
    cuda_gpus,
    describe,
    engine_targets,
    known_targets,
)
from armor_export.engine.targets import validity as engine_validity
from armor_export.errors import BackendUnavailableError, CorruptFileError, ShapeError
from armor_export.export_manifest import ExportManifest, Limits

log = logging.getLogger(__name__)

CUDA_INSTALL_HINT = (
    "pip install 'armor-export[rtx]' (or [trt]); with a CUDA 12 driver: pip install "
    "tensorrt-rtx-cu12 'cuda-python>=12,<13' (docs/engines.md)"
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


@dataclass(frozen=True)
class Copies:
    """Which tensors one engine call moves across the bus (``plan_copies``)."""

    to_device: tuple[str, ...]  # inputs copied host -> device
    from_cache: tuple[str, ...]  # past inputs read where the last step's presents lie
    to_host: tuple[str, ...]  # outputs copied device -> host
    kept: tuple[str, ...]  # present outputs left on the device (the next step's pasts)


def plan_copies(
    input_names, output_names, feedback, cache_in: bool = False, keep: bool = False
) -> Copies:
    """The copies of one call: ``run`` (``keep`` False) copies every input in and every
    output out, the KV cache included; ``run_keeping_cache`` (``keep``) leaves the presents on
    the device, and with a cache there (``cache_in``) reads the pasts from it, so a decode step
    copies only the token ids, the attention mask and the positions in and the logits out."""
    pasts = {past for past, _ in feedback} if keep and cache_in else set()
    presents = {present for _, present in feedback} if keep else set()
    return Copies(
        to_device=tuple(n for n in input_names if n not in pasts),
        from_cache=tuple(n for n in input_names if n in pasts),
        to_host=tuple(n for n in output_names if n not in presents),
        kept=tuple(n for n in output_names if n in presents),
    )


class DeviceCache:
    """A batch's KV cache left on the GPU between calls of ``run_keeping_cache``.

    For each (past input, present output) pair two device buffers: the one holding the
    latest present, bound as the next call's past, and a spare the next call writes its
    present into; after the call they swap (an engine input and output never share memory).
    ``positions`` is how many positions the cache holds (the last call's attention mask's
    length): a call must extend exactly that cache, so a decode state already stepped from
    is refused rather than run on a cache that moved on. ``read``/``to_host`` copy it back.
    """

    def __init__(self, session: TensorRTSession, feedback) -> None:
        self.session = session
        self.feedback = [(past, present) for past, present in feedback]
        cudart = session._cudart
        self._current = {present: _DeviceBuffer(cudart) for _, present in self.feedback}
        self._spare = {present: _DeviceBuffer(cudart) for _, present in self.feedback}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.positions = 0

    def bound(self, present: str) -> tuple[int, tuple[int, ...]]:
        """Where the latest ``present`` lies and its shape (a past input's binding)."""
        return self._current[present].ptr, self.shapes[present]

    def swap(self, shapes: dict[str, tuple[int, ...]], positions: int) -> None:
        """The spares now hold the presents of the call that just ran."""
        self._current, self._spare = self._spare, self._current
        self.shapes.update(shapes)
        self.positions = positions

    def read(self, present: str) -> np.ndarray:
        """A host copy of ``present`` (for checks and tests: decoding never needs it)."""
        return self.session._to_host(
            self._current[present].ptr, self.shapes[present], self.session.dtypes[present]
        )

    def to_host(self) -> dict[str, np.ndarray]:
        return {present: self.read(present) for _, present in self.feedback}

    def free(self) -> None:
        for buffer in (*self._current.values(), *self._spare.values()):
            buffer.free()

    def __del__(self) -> None:
        try:
            self.free()
        except Exception:  # at interpreter exit CUDA may already be gone
            pass


class TensorRTSession:
    """One deserialised engine: named numpy inputs in, named numpy outputs out.

    ``run`` moves every tensor across the bus (verify, one feed at a time);
    ``run_keeping_cache`` keeps the KV cache on the device between decode steps (``generate``).
    On TensorRT-RTX the engine's runtime cache is loaded from, and saved to, its file
    (``runtime_cache``).
    """

    def __init__(
        self, engine_path: str | Path, backend: str, plugin_library: str = "", sha256: str = ""
    ) -> None:
        """``sha256``: the engine's, where the caller has checked it (``open_engine_session``:
        ``check_engine_belongs``), so the runtime cache's key does not hash the engine again."""
        from armor_export.runtime.runtime_cache import RuntimeCache

        trt = load_backend(backend)
        cudart = import_cudart()
        if plugin_library:
            load_plugin_library(trt, plugin_library)  # before deserialising: it names creators
        self._trt, self._cudart = trt, cudart
        self._logger = CollectingLogger(trt)
        self._runtime = trt.Runtime(self._logger.make())
        engine_bytes = Path(engine_path).read_bytes()
        self._engine = self._runtime.deserialize_cuda_engine(engine_bytes)
        if self._engine is None:
            said = self._logger.errors()[-1][:300] if self._logger.errors() else "no message"
            raise EngineMismatchError(
                f"{engine_path}: {trt.__name__} {trt.__version__} could not deserialise it "
                "(built by another version, for another GPU, or without its plugin library): "
                f"{said}"
            )
        self.runtime_cache = RuntimeCache.attach(trt, self._engine, engine_bytes, sha256)
        del engine_bytes
        if self.runtime_cache is not None:
            self._context = self._engine.create_execution_context(self.runtime_cache.config)
            atexit.register(_save_at_exit, weakref.ref(self))
        else:
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
        """Every input copied in, every output (the KV cache included) copied out."""
        copies = plan_copies(self.input_names, self.output_names, ())
        outputs, _ = self._execute(feeds, copies, None)
        return outputs

    def run_keeping_cache(
        self, feeds: dict[str, np.ndarray], cache: DeviceCache | None, feedback
    ) -> tuple[dict[str, np.ndarray], DeviceCache]:
        """One call whose presents stay on the device: the outputs but the presents, and the
        ``DeviceCache`` holding them. ``cache`` None (a prefill): the pasts come from
        ``feeds``; else they are ``cache``'s, read in place, and ``feeds`` need none.
        ``feedback``: the (past input, present output) pairs."""
        (positions,) = np.shape(feeds.get("attention_mask", ()))[-1:] or (0,)
        if cache is None:
            cache = DeviceCache(self, feedback)
            copies = plan_copies(self.input_names, self.output_names, cache.feedback, keep=True)
        else:
            if cache.session is not self:
                raise ValueError("this KV cache belongs to another engine session")
            (new,) = np.shape(feeds.get("input_ids", ()))[-1:] or (0,)
            if positions != cache.positions + new:
                raise ValueError(
                    f"the attention mask covers {positions} positions, the KV cache on the "
                    f"device holds {cache.positions} and {new} come now: a decode state "
                    "can be stepped from only once"
                )
            copies = plan_copies(
                self.input_names, self.output_names, cache.feedback, cache_in=True, keep=True
            )
        outputs, shapes = self._execute(feeds, copies, cache)
        cache.swap({name: shapes[name] for name in copies.kept}, positions)
        return outputs, cache

    def _execute(self, feeds, copies: Copies, cache: DeviceCache | None):
        """Bind, run and copy as ``copies`` says; the host outputs and every output's shape."""
        cudart, context = self._cudart, self._context
        missing = [name for name in copies.to_device if name not in feeds]
        if missing:
            raise ValueError(f"the engine's inputs {missing[:3]} are not in the feeds")
        hosts, addresses = {}, {}
        present_of = {past: present for past, present in (cache.feedback if cache else ())}
        for name in copies.from_cache:
            ptr, shape = cache.bound(present_of[name])
            if not context.set_input_shape(name, shape):
                raise ShapeError(self._profile_message(name, shape))
            addresses[name] = ptr
        for name in copies.to_device:
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
        outputs = {name: np.empty(shapes[name], self.dtypes[name]) for name in copies.to_host}
        for name in copies.kept:
            nbytes = int(np.prod(shapes[name])) * self.dtypes[name].itemsize
            addresses[name] = cache._spare[name].reserve(nbytes)
        to_device = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        for name, array in {**hosts, **outputs}.items():
            addresses[name] = self._buffers[name].reserve(array.nbytes)
            if name in hosts and array.nbytes:
                result = cudart.cudaMemcpyAsync(
                    addresses[name], array.ctypes.data, array.nbytes, to_device, self._stream
                )
                _check(cudart, result, f"copy of {name} to the GPU")
        for name, ptr in addresses.items():
            context.set_tensor_address(name, ptr)
        if not context.execute_async_v3(int(self._stream)):
            raise BackendUnavailableError(f"the engine failed to run: {self._last_error()}")
        for name, array in outputs.items():
            self._copy_to_host(array, self._buffers[name].ptr, name)
        _check(cudart, cudart.cudaStreamSynchronize(self._stream), "engine run")
        return outputs, shapes

    def _copy_to_host(self, array: np.ndarray, ptr: int, name: str) -> None:
        if array.nbytes:
            cudart = self._cudart
            to_host = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
            result = cudart.cudaMemcpyAsync(
                array.ctypes.data, ptr, array.nbytes, to_host, self._stream
            )
            _check(cudart, result, f"copy of {name} from the GPU")

    def _to_host(self, ptr: int, shape, dtype) -> np.ndarray:
        array = np.empty(shape, dtype)
        self._copy_to_host(array, ptr, "the KV cache")
        _check(self._cudart, self._cudart.cudaStreamSynchronize(self._stream), "copy")
        return array

    def _profile_message(self, name: str, shape) -> str:
        low, _, high = self._engine.get_tensor_profile_shape(name, 0)
        return (
            f"{name} of shape {tuple(shape)} is outside the engine's profile "
            f"({tuple(low)} to {tuple(high)}): rebuild the engine with larger limits"
        )

    def _last_error(self) -> str:
        errors = self._logger.errors()
        return errors[-1][:300] if errors else "no message from TensorRT"

    def save_runtime_cache(self) -> bool:
        """Write TensorRT-RTX's runtime cache to its file if it grew (also done on close and
        at interpreter exit); False where nothing was written."""
        if getattr(self, "runtime_cache", None) is None or getattr(self, "_context", None) is None:
            return False
        return self.runtime_cache.save()

    def close(self) -> None:
        """Save the runtime cache, free the device buffers and the stream (also done when the
        session is collected)."""
        try:
            self.save_runtime_cache()
        finally:
            for buffer in getattr(self, "_buffers", {}).values():
                buffer.free()
            if getattr(self, "_stream", None) is not None:
                self._cudart.cudaStreamDestroy(self._stream)
                self._stream = None
            self._context = None  # the context before the engine, the engine before the runtime
            self.runtime_cache = None
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


def _save_at_exit(ref) -> None:
    """atexit: a session still open when the interpreter exits saves its runtime cache
    (``generate`` never closes its session; CUDA is still up while atexit runs)."""
    session = ref()
    if session is not None:
        try:
            session.save_runtime_cache()
        except Exception:  # a cache is an optimisation: never fail an exit over it
            pass


class HostCacheSession:
    """A ``TensorRTSession`` seen through ``run`` only: the KV cache goes host -> device -> host
    at every step, as before the cache stayed on the device. For comparisons (tests,
    ``tools/bench_trt_decode.py``); ``generate`` never uses it."""

    def __init__(self, session: TensorRTSession) -> None:
        self.session = session
        self.input_names, self.output_names = session.input_names, session.output_names
        self.limits = session.limits

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.session.run(feeds)


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
    session = TensorRTSession(
        engine.path, engine.backend, engine.plugin_library, report["engine_sha256"]
    )  # the sha256 check_engine_belongs has just compared with the engine's bytes
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


def not_run_reason(
    report: dict, gpus: list[str], gpu_reason: str, trt=None, engine: bytes | None = None
) -> str:
    """Why this engine cannot run here ("" when it can).

    A TensorRT-RTX engine (``engine``: its first bytes, ``trt``: the module) is asked, not our
    report: the targets its header names (``engine.targets.engine_targets``) and then
    TensorRT-RTX's own ``get_engine_validity`` for this GPU (``engine_validity``), which has the
    last word. A datacenter TensorRT engine runs on the GPU it was built on: the report's.
    """
    if not gpus:
        return gpu_reason or "no CUDA GPU"
    gpu = gpus[0]  # the device a session runs on (CUDA's first visible one)
    if trt is not None and engine is not None and hasattr(trt, "ComputeCapability"):
        targets = engine_targets(trt, engine)
        if targets is not None and covers(targets, gpu, known_targets(trt)) is False:
            return f"the engine runs on {describe(targets)}, this GPU is {gpu}"
        answer, diagnostics = engine_validity(trt, engine)
        if answer == "INVALID":
            return (
                f"{trt.__name__} {trt.__version__} says the engine is invalid on this GPU "
                f"({gpu}): {'; '.join(diagnostics)}"
            )
        if answer == "SUBOPTIMAL":
            log.warning("%s: the engine runs on %s, but may run slower (%s)", trt.__name__, gpu,
                        "; ".join(diagnostics) or "no reason given")  # fmt: skip
        return ""
    target = report.get("compute_capability", "")
    if target.startswith("sm") and target not in gpus:
        return f"built for {target}, this GPU is {', '.join(gpus)}"
    return ""


ENGINE_HEAD = 1 << 16  # bytes of model.engine read for its header (64 in TensorRT-RTX 1.7)


def _engine_head(path: Path) -> bytes | None:
    try:
        with path.open("rb") as f:
            return f.read(ENGINE_HEAD)
    except OSError:
        return None


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
    engine = _engine_head(Path(engine_dir) / ENGINE_FILE) if gpus else None
    why = not_run_reason(report, gpus, reason, trt, engine)
    if why:
        raise EngineNotRun(f"engine built for {built_for(report)}, not run: {why}")
    return RunnableEngine(str(Path(engine_dir) / ENGINE_FILE), backend, library)


def run_engine(engine_path: str, backend: str, plugin_library: str, feed: dict) -> dict:
    """Float32 outputs of the engine at ``engine_path`` for one feed (``run_engine_feeds``)."""
    return run_engine_feeds(engine_path, backend, plugin_library, [feed])[0][0]


def run_engine_feeds(
    engine_path: str, backend: str, plugin_library: str, feeds: list[dict]
) -> list[tuple[dict, float]]:
    """Float32 outputs of the engine at ``engine_path`` for each of ``feeds``, and the seconds
    each took, through the runtime's ``TensorRTSession`` (the one engine-run path), the
    engine deserialised once for all of them. Needs a CUDA GPU; ``verify`` runs it in one
    child (``run_in_child``) so a native crash is an error."""
    import time

    results = []
    with TensorRTSession(engine_path, backend, plugin_library) as session:
        for feed in feeds:
            start = time.perf_counter()
            outputs = session.run(feed)
            seconds = time.perf_counter() - start
            results.append(
                ({name: np.asarray(v).astype(np.float32) for name, v in outputs.items()}, seconds)
            )
    return results
