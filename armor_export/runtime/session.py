"""Backend sessions that run an exported decoder graph on numpy feeds.

A ``Session`` is anything with ``input_names``, ``output_names`` and
``run(feeds) -> {name: array}``. ``onnxruntime`` runs the export's ONNX graph
(``OrtSession``); ``tensorrt`` runs the export's built engine, ``<export>/engine/model.engine``,
with the TensorRT or TensorRT-RTX module that built it (``trt_session.TensorRTSession``, on a
CUDA GPU). Every check that can refuse an export (``compat.ORT_RULES``: plugin nodes,
bfloat16 on the CPU provider; for an engine: none built, another export's, no GPU of its
target) runs before the backend touches a device, so the message is one line whether or not
the backend is installed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from armor_export.config import RUNTIME_BACKENDS
from armor_export.errors import BackendUnavailableError, ConfigError, CorruptFileError
from armor_export.export_manifest import MANIFEST, ExportManifest
from armor_export.runtime.compat import (
    CPU_PROVIDER,
    check_ort_compatible,
    quant_session_config,
)

log = logging.getLogger(__name__)

BACKENDS = RUNTIME_BACKENDS  # the names; _OPENERS below opens each
DEFAULT_PROVIDERS = (CPU_PROVIDER,)
NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16}
ORT_INSTALL_HINT = "pip install armor-export[onnx]"
# ONNX Runtime session config entries of every session we open: threads that sleep between
# operators instead of spinning. ORT's intra-op threads spin by default, which on a CPU whose
# cores other processes share takes cores from the thread with work to do. SmolLM2-135M fp32
# decode, 32 steps after 128 tokens, one interleaved 5-round run per line, 2-core Xeon,
# 2026-12-07 (tokens/s, ORT default threads): with another process keeping one core busy,
# 8.7 spinning, 15.5 not, ORT GenAI 11.4; on the otherwise idle machine 32.2 spinning, 26.2
# not, ORT GenAI 23.5 (ORT GenAI runs one intra-op thread here: half the cores, its
# default). docs/benchmarks/runtime.md has the benchmark run.
ORT_CONFIG_ENTRIES = {"session.intra_op.allow_spinning": "0"}


def default_decode_threads() -> int:
    """The intra-op threads of the runtime's ONNX Runtime session when none are asked for: half
    the cores this process may use (at least one), as ORT GenAI's default is (it ran one
    thread on a 2-core machine: CPU time / wall time 1.00). A decode step is a chain of small
    matrix-vector products, where more threads mostly wait for each other and for cores that
    other processes hold: in one interleaved 5-round run on a 2-core EPYC under load ~3.7
    (2026-12-07), ARMOR b=64 decoded at 0.89x ORT GenAI's tokens/s with two threads and 0.995x
    with one; on the idle machine one thread gave 1.02x. A prompt's prefill is the cost: it
    loses the other half of the cores (``generate --threads N`` gives them back)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, cores // 2)


class Session(Protocol):
    """One loaded graph: named numpy inputs in, named numpy outputs out."""

    input_names: list[str]
    output_names: list[str]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


def _import_ort():
    """onnxruntime, or a one-line error with the install hint."""
    try:
        import onnxruntime
    except ImportError:
        raise BackendUnavailableError(f"onnxruntime is not installed: {ORT_INSTALL_HINT}") from None
    return onnxruntime


# ONNX Runtime's exception classes for a file it cannot read as a model (by name: they live
# in its private pybind module)
ORT_UNREADABLE = ("InvalidProtobuf", "NoSuchFile")


def inference_session(
    path: str | Path,
    providers: Sequence[str],
    threads: int = 0,
    optimize: bool = True,
    config: dict[str, str] | None = None,
):
    """An ``onnxruntime.InferenceSession`` on ``path`` (errors only in its log), or one line:
    CorruptFileError for a file that is not a readable model (truncated, not ONNX),
    BackendUnavailableError for anything else ONNX Runtime refuses. Its threads do not
    spin between operators (``ORT_CONFIG_ENTRIES``).

    ``optimize=False`` skips ORT's graph optimisations: a session that only checks that the
    file loads (parsing, external data, a kernel for every node), without the copies of the
    weights that constant folding makes: measured on a float16 export with 0.6 GiB of
    weights, 58 MiB peak and 0.04 s instead of 2.3 GiB and 3 s.

    ``config``: more session config entries (an 8-bit export's, ``compat.quant_session_config``).
    """
    ort = _import_ort()
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: ORT warns about unused initialisers
    options.intra_op_num_threads = threads  # 0 = ORT's default (one per core)
    for key, value in {**ORT_CONFIG_ENTRIES, **(config or {})}.items():
        options.add_session_config_entry(key, value)
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=list(providers))
    except Exception as exc:  # ORT raises its own untyped errors; name the file
        if type(exc).__name__ in ORT_UNREADABLE:
            raise unreadable_onnx(path, exc) from None
        raise BackendUnavailableError(
            f"{path}: ONNX Runtime cannot load it ({first_line(exc)})"
        ) from None


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def unreadable_onnx(path: str | Path, exc: BaseException) -> CorruptFileError:
    """The one-line error for a model file that does not parse (truncated, not ONNX)."""
    return CorruptFileError(
        f"{path} is not a readable ONNX model, truncated or damaged ({first_line(exc)}): "
        "export again"
    )


class OrtSession:
    """An ONNX Runtime ``InferenceSession`` behind the ``Session`` interface."""

    def __init__(
        self,
        path: str | Path,
        providers: Sequence[str] = DEFAULT_PROVIDERS,
        threads: int = 0,
        config: dict[str, str] | None = None,
    ) -> None:
        self._session = inference_session(path, providers, threads, config=config)
        self.input_names = [i.name for i in self._session.get_inputs()]
        self.output_names = [o.name for o in self._session.get_outputs()]
        self.providers = self._session.get_providers()

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self._session.run(self.output_names, feeds)
        return dict(zip(self.output_names, outputs, strict=True))


def past_dtype(manifest: ExportManifest, backend: str = "onnxruntime") -> type[np.generic]:
    """The numpy dtype of the KV cache (and logits) of this export."""
    dtype = manifest.dtype
    if dtype not in NUMPY_DTYPES:
        raise BackendUnavailableError(
            f"the {backend} runtime feeds numpy arrays, which have no {dtype}: "
            "export with --dtype float16 or float32"
        )
    return NUMPY_DTYPES[dtype]


def check_session_matches(session: Session, manifest: ExportManifest) -> None:
    """The graph's inputs/outputs are the ones the manifest promises."""
    for kind in ("input_names", "output_names"):
        want, have = list(getattr(manifest, kind)), list(getattr(session, kind))
        if sorted(want) != sorted(have):
            missing = sorted(set(want) - set(have)) or sorted(set(have) - set(want))
            raise CorruptFileError(
                f"the graph's {kind.split('_')[0]}s differ from {MANIFEST} "
                f"(e.g. {missing[:3]}): export again"
            )


def _open_onnxruntime(
    folder: Path,
    manifest: ExportManifest,
    providers: Sequence[str] | None,
    threads: int,
    engine_dir: str | Path | None = None,  # an engine's: nothing for ONNX Runtime
    plugin_library: str = "",
) -> Session:
    providers = tuple(providers or DEFAULT_PROVIDERS)
    check_ort_compatible(manifest, providers, {"bfloat16-cpu": "run it on TensorRT"})
    past_dtype(manifest)  # the runtime feeds numpy arrays: no bfloat16 on any provider
    config, why = quant_session_config(manifest, providers)
    if why:
        log.info("%s", why)
    return OrtSession(
        folder / manifest.onnx, providers, threads or default_decode_threads(), config
    )


def _open_tensorrt(
    folder: Path,
    manifest: ExportManifest,
    providers: Sequence[str] | None,
    threads: int,
    engine_dir: str | Path | None = None,
    plugin_library: str = "",
) -> Session:
    from armor_export.runtime.trt_session import open_engine_session

    past_dtype(manifest, "tensorrt")  # numpy feeds: no bfloat16, refused before any GPU work
    return open_engine_session(folder, manifest, engine_dir, plugin_library)


_OPENERS: dict[str, Callable[..., Session]] = {
    "onnxruntime": _open_onnxruntime,
    "tensorrt": _open_tensorrt,
}


def open_session(
    folder: str | Path,
    manifest: ExportManifest,
    backend: str = "onnxruntime",
    providers: Sequence[str] | None = None,
    threads: int = 0,
    engine_dir: str | Path | None = None,
    plugin_library: str = "",
) -> Session:
    """Load the export in ``folder`` on ``backend`` (checked against its manifest);
    ``engine_dir`` / ``plugin_library`` for ``tensorrt`` (``generate --engine``,
    ``--plugin-library``; default the export's engine, ``engine.folder.engine_dir_of``)."""
    if backend not in _OPENERS:
        raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    session = _OPENERS[backend](
        Path(folder), manifest, providers, threads, engine_dir, plugin_library
    )
    check_session_matches(session, manifest)
    return session
