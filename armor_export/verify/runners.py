"""Polygraphy runners for the parity check.

PyTorch, the NumPy reference and the built engine are our own small ``BaseRunner``
subclasses (the engine runs through the runtime's ``TensorRTSession``, as ``generate --backend
tensorrt`` does); ONNX Runtime uses Polygraphy's runner. Every runner returns float32 NumPy
outputs so the comparison arithmetic never happens in fp16/bf16. Each backend's factory is
registered by name in ``verify/backends.py``.
"""

from __future__ import annotations

import functools
import gc
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from polygraphy.backend.base import BaseRunner
from polygraphy.common import TensorMetadata

from armor_export.errors import BackendUnavailableError
from armor_export.export_manifest import ExportManifest
from armor_export.memory import log_memory
from armor_export.runtime.trt_session import EngineNotRun  # noqa: F401 (verify's name for it)

log = logging.getLogger(__name__)


def _metadata(manifest: ExportManifest) -> TensorMetadata:
    from armor_export.verify.inputs import numpy_dtype

    meta = TensorMetadata()
    for name in manifest.token_inputs:
        meta.add(name, np.int64, (None, None))
    kv_dtype = numpy_dtype(manifest.dtype)
    for name in manifest.past_names:
        meta.add(name, kv_dtype, manifest.decoder.past_shape(None, None))
    return meta


def _to_float32(outputs) -> OrderedDict:
    return OrderedDict((k, np.asarray(v).astype(np.float32)) for k, v in outputs.items())


class TorchRunner(BaseRunner):
    """The PyTorch model (ArmorLinear modules, not lowered) behind the exported signature."""

    def __init__(self, model, manifest: ExportManifest, name: str = "pytorch"):
        super().__init__(name=name)
        self.model, self.manifest = model, manifest

    def activate_impl(self):
        from armor_export.export.wrapper import DecoderWithCache

        self.wrapper = DecoderWithCache(self.model).eval()

    def get_input_metadata_impl(self):
        return _metadata(self.manifest)

    def infer_impl(self, feed_dict):
        import torch

        from armor_export.export.api import torch_dtype

        dtype = torch_dtype(self.manifest.dtype)
        decoder = self.manifest.decoder
        args = []
        for name in decoder.input_names():  # the wrapper's signature order
            value = np.asarray(feed_dict[name])
            if value.dtype.kind == "f" or value.dtype.name == "bfloat16":
                args.append(torch.from_numpy(value.astype(np.float32)).to(dtype))
            else:
                args.append(torch.from_numpy(value))
        start = time.perf_counter()
        with torch.no_grad():
            outputs = self.wrapper(*args)
        self.inference_time = time.perf_counter() - start
        names = decoder.output_names()
        return OrderedDict((n, t.float().numpy()) for n, t in zip(names, outputs, strict=True))

    def deactivate_impl(self):
        del self.wrapper


class NumpyReferenceRunner(BaseRunner):
    """``onnx.reference`` with the NumPy plugin op: the oracle for plugin-lowered graphs."""

    def __init__(self, onnx_path: Path, manifest: ExportManifest, name: str = "numpy-reference"):
        """``onnx_path`` is read when the runner activates (``load_onnx``), not before."""
        super().__init__(name=name)
        self.onnx_path, self.manifest = onnx_path, manifest

    def activate_impl(self):
        from onnx.reference import ReferenceEvaluator

        from armor_export.export.reference import onnx_reference_ops

        model = load_onnx(self.onnx_path)
        log_memory(log, "loading the ONNX graph for the NumPy reference")
        self.evaluator = ReferenceEvaluator(model, new_ops=onnx_reference_ops())

    def get_input_metadata_impl(self):
        return _metadata(self.manifest)

    def infer_impl(self, feed_dict):
        names = list(self.manifest.output_names)
        start = time.perf_counter()
        outputs = self.evaluator.run(names, dict(feed_dict))
        self.inference_time = time.perf_counter() - start
        return _to_float32(dict(zip(names, outputs, strict=True)))

    def deactivate_impl(self):
        del self.evaluator
        release_freed_memory()


class Float32Runner(BaseRunner):
    """Wraps a Polygraphy runner so its outputs come back as float32."""

    def __init__(self, inner: BaseRunner, name: str):
        super().__init__(name=name)
        self.inner = inner
        self.note: str | None = None  # how the backend was set up differently, for the report

    def activate_impl(self):
        self.inner.activate()

    def get_input_metadata_impl(self):
        return self.inner.get_input_metadata_impl()

    def infer_impl(self, feed_dict):
        outputs = self.inner.infer(feed_dict, check_inputs=False)
        self.inference_time = self.inner.inference_time
        return _to_float32(outputs)

    def deactivate_impl(self):
        self.inner.deactivate()
        release_freed_memory()


@dataclass
class Skipped:
    backend: str
    reason: str


GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


# what verify offers instead when ONNX Runtime cannot run an export (runtime/compat.py)
ORT_ALTERNATIVES = {
    "plugin": "use the numpy-reference backend",
    "bfloat16-cpu": "verify it with TensorRT (--backend tensorrt, on a GPU)",
}


def ort_runner(onnx_path: Path, manifest: ExportManifest) -> BaseRunner:
    """Polygraphy's ONNX Runtime runner, or one line: graphs ORT cannot run, and a model.onnx
    it cannot read (truncated), are refused here, before PyTorch runs.

    A session without graph optimisations is opened here to find that out, and closed again
    (it parses the graph and checks the external data, without the weight copies that
    optimising makes); the runner opens the real one when it activates and closes it when it
    deactivates. So ONNX Runtime's copy of the weights is never held while the PyTorch model
    is (#19). A graph that loads only unoptimised fails verify when the runner activates.
    """
    from armor_export.runtime.compat import (
        CPU_PROVIDER,
        check_ort_compatible,
        quant_session_config,
    )

    try:
        import onnxruntime as ort
    except ImportError:
        raise BackendUnavailableError(
            "onnxruntime is not installed: pip install 'armor-export[onnx]'"
        ) from None
    available = ort.get_available_providers()
    providers = [p for p in GPU_PROVIDERS if p in available] + [CPU_PROVIDER]
    check_ort_compatible(manifest, providers, ORT_ALTERNATIVES)
    from polygraphy.backend.onnxrt import OnnxrtRunner

    _ort_session(onnx_path, providers, optimize=False)  # the refusals, now; closed at once
    # an int8 export on a CPU whose fused int8 MatMul saturates runs without that fusion;
    # the report says so (``note``)
    config, note = quant_session_config(manifest, providers)
    open_session = functools.partial(_ort_session, onnx_path, providers, config=config)
    runner = Float32Runner(OnnxrtRunner(open_session), name="onnxruntime")
    runner.note = note
    return runner


def _ort_session(
    onnx_path: Path, providers: list[str], optimize: bool = True, config: dict | None = None
):
    from armor_export.runtime.session import inference_session

    session = inference_session(onnx_path, providers, optimize=optimize, config=config)
    log_memory(log, "opening the ONNX Runtime session" + ("" if optimize else " (unoptimised)"))
    return session


def release_freed_memory() -> None:
    """Hand what a released model, session or graph freed back to the OS before the next
    runner (collected first: the objects may sit in reference cycles)."""
    from armor_export.memory import trim_heap

    gc.collect()
    trim_heap()


@dataclass
class EngineTarget:
    """The built engine that ``verify`` checks: its folder, build report and plugin library."""

    engine_dir: Path
    report: dict
    plugin_library: str = ""

    @property
    def name(self) -> str:
        return f"{self.report.get('backend', 'TensorRT')} engine"

    @property
    def built_for(self) -> str:
        from armor_export.engine.targets import built_for

        return built_for(self.report)


class EngineRunner(BaseRunner):
    """The shipped ``model.engine``, run with the backend that built it in one child process
    (``engine.child.run_in_child``; a TensorRT abort fails verify with a message) that
    deserialises it once and runs every feed: ``take_feeds`` hands it verify's feeds before
    the comparison, the first ``infer`` runs them all, and each ``infer`` returns its own."""

    def __init__(self, engine: EngineTarget, manifest: ExportManifest, plugin_library: str):
        super().__init__(name=engine.name)
        self.engine, self.manifest, self.plugin_library = engine, manifest, plugin_library
        self.backend = engine.report.get("config", {}).get("backend", "tensorrt-rtx")
        self.feeds: list[dict] = []
        self._results: list[tuple[dict, float]] | None = None
        self._next = 0

    def take_feeds(self, feeds: list[dict]) -> None:
        """The feeds ``infer`` will be called with, in order (all run in one child)."""
        self.feeds, self._results, self._next = [dict(f) for f in feeds], None, 0

    def activate_impl(self):
        self._results, self._next = None, 0

    def get_input_metadata_impl(self):
        return _metadata(self.manifest)  # the comparator checks every feed against it

    def infer_impl(self, feed_dict):
        if self._next >= len(self.feeds) or not _same_feed(self.feeds[self._next], feed_dict):
            self.take_feeds([feed_dict])  # a feed it was not handed: run it on its own
        if self._results is None:
            self._results = self._run_all(self.feeds)
        outputs, self.inference_time = self._results[self._next]
        self._next += 1
        return OrderedDict(outputs)

    def _run_all(self, feeds: list[dict]) -> list[tuple[dict, float]]:
        from armor_export.engine.child import run_in_child
        from armor_export.engine.folder import ENGINE_FILE
        from armor_export.runtime.trt_session import run_engine_feeds

        args = (str(self.engine.engine_dir / ENGINE_FILE), self.backend, self.plugin_library,
                feeds)  # fmt: skip
        return run_in_child("engine run (verify)", run_engine_feeds, args)

    def deactivate_impl(self):
        self._results = None


def _same_feed(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def engine_runner(onnx_path: Path, manifest: ExportManifest, engine: EngineTarget | None):
    """The built engine, loaded with the runtime that built it (TensorRT-RTX or TensorRT)
    and the plugin library where the export has plugin nodes; EngineNotRun says why it
    cannot run here (no CUDA GPU, another compute capability). The checks are the runtime's
    (``runtime.trt_session.runnable_engine``): ``generate --backend tensorrt`` refuses the same."""
    from armor_export.runtime.trt_session import runnable_engine

    if engine is None:
        raise BackendUnavailableError(
            "no built engine: build one (armor-export engine) or pass --engine DIR"
        )
    runnable = runnable_engine(engine.engine_dir, engine.report, manifest, engine.plugin_library)
    return EngineRunner(engine, manifest, runnable.plugin_library)


def ort_factory(onnx_path: Path, manifest: ExportManifest, engine=None) -> BaseRunner:
    return ort_runner(onnx_path, manifest)


def load_onnx(onnx_path: Path):
    """The ``onnx.ModelProto`` in ``onnx_path``, or a one-line CorruptFileError when it does
    not parse (truncated, not ONNX)."""
    import onnx

    from armor_export.runtime.session import unreadable_onnx

    try:
        return onnx.load(str(onnx_path))
    except Exception as exc:  # protobuf's DecodeError, or onnx's own for external data
        raise unreadable_onnx(onnx_path, exc) from None


def numpy_reference_runner(onnx_path: Path, manifest: ExportManifest, engine=None) -> BaseRunner:
    """The NumPy reference; a model.onnx that does not parse is refused here, before PyTorch
    runs (read once to find out, then again when the runner activates: see ``ort_runner``)."""
    load_onnx(onnx_path)  # dropped at once
    release_freed_memory()
    return NumpyReferenceRunner(onnx_path, manifest)


def make_runners(
    backends: list[str],
    onnx_path: Path,
    manifest: ExportManifest,
    engine: EngineTarget | None = None,
) -> tuple[list[BaseRunner], list[Skipped]]:
    """Runners for ``backends`` ("auto" picks what can run here); skipped ones with reasons."""
    from armor_export.verify.backends import requested, runner_factory

    runners, skipped = [], []
    for backend, optional in requested(backends, manifest.lowering).items():
        try:
            runners.append(runner_factory(backend)(onnx_path, manifest, engine))
        except BackendUnavailableError as exc:
            if not optional:
                raise
            skipped.append(Skipped(backend, str(exc)))
    if not runners:
        raise BackendUnavailableError(
            "no backend can run this export here: " + "; ".join(s.reason for s in skipped)
        )
    return runners, skipped
