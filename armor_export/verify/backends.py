"""The verify backends by name: what ``--backend`` accepts and where each runner is made.

Free of torch, onnx and Polygraphy, so ``config`` and the CLI can read the names: each
entry names its runner factory as ``module:attribute``, imported only when that backend is
asked for. Adding a backend is one factory ``(onnx_path, manifest, engine) -> BaseRunner``
(``engine``: the built engine's ``EngineTarget`` or None) and one line in ``RUNNERS``.

``tensorrt`` is the built ``model.engine`` itself, run with the runtime that built it
(TensorRT-RTX or TensorRT): verify never builds an engine of its own.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence

AUTO = "auto"

RUNNERS: dict[str, str] = {
    "onnxruntime": "armor_export.verify.runners:ort_factory",
    "numpy-reference": "armor_export.verify.runners:numpy_reference_runner",
    "tensorrt": "armor_export.verify.runners:engine_runner",
}

VERIFY_BACKENDS = (AUTO, *RUNNERS)


def runner_factory(name: str) -> Callable:
    """The factory registered for backend ``name`` (imports its module)."""
    module, _, attribute = RUNNERS[name].partition(":")
    return getattr(importlib.import_module(module), attribute)


def requested(backends: Sequence[str], lowering: str) -> dict[str, bool]:
    """The backends to run, in order, each with whether it is optional (skipped, with its
    reason, when it cannot run here).

    ``auto`` asks for ONNX Runtime, optional, or for a plugin-lowered graph (which ONNX
    Runtime cannot run) the NumPy reference; then the built engine, optional. A backend named on
    its own is required; asked for twice, it runs once.
    """
    wanted: dict[str, bool] = {}
    for backend in backends:
        if backend == AUTO:
            first = ("numpy-reference", False) if lowering == "plugin" else ("onnxruntime", True)
            asked = [first, ("tensorrt", True)]
        else:
            asked = [(backend, False)]
        for name, optional in asked:
            wanted[name] = wanted.get(name, optional) and optional  # required wins
    return wanted
