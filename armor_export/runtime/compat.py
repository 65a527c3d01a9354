"""What ONNX Runtime cannot run: the rules both the runtime and ``verify`` apply to an export.

Each rule reads only the manifest and the provider list, so it refuses an export before
onnxruntime is imported and gives the same answer whether or not ONNX Runtime is installed.
A caller adds what it can offer instead (``alternatives``, by rule name): the runtime and
``verify`` have different backends to point to.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from armor_export.errors import BackendUnavailableError
from armor_export.export_manifest import ExportManifest

CPU_PROVIDER = "CPUExecutionProvider"


@dataclass(frozen=True)
class OrtRule:
    """One kind of export ONNX Runtime cannot run, and how to export one it can."""

    name: str
    applies: Callable[[ExportManifest, Sequence[str]], bool]
    reason: str
    re_export: str


def _runs_on_cpu(providers: Sequence[str]) -> bool:
    """ORT places a node on the first provider that has a kernel for it; CPU first = CPU."""
    return not providers or providers[0] == CPU_PROVIDER


ORT_RULES = (
    OrtRule(
        "plugin",
        lambda manifest, providers: manifest.lowering == "plugin",
        "this export has TensorRT plugin nodes (lowering 'plugin'), which ONNX Runtime cannot run",
        "export with --lowering plain for ONNX Runtime",
    ),
    OrtRule(
        "bfloat16-cpu",
        lambda manifest, providers: manifest.dtype == "bfloat16" and _runs_on_cpu(providers),
        "this export is bfloat16 and ONNX Runtime's CPU provider has no bfloat16 MatMul",
        "export with --dtype float16 or --dtype float32",
    ),
)


def check_ort_compatible(
    manifest: ExportManifest,
    providers: Sequence[str],
    alternatives: Mapping[str, str] | None = None,
) -> None:
    """Raise BackendUnavailableError if ONNX Runtime with ``providers`` cannot run the export.

    ``alternatives`` maps a rule's name to the caller's other way to run such an export
    (e.g. ``{"bfloat16-cpu": "run it on TensorRT"}``); it is added to the message.
    """
    for rule in ORT_RULES:
        if rule.applies(manifest, providers):
            instead = (alternatives or {}).get(rule.name)
            remedy = f"{rule.re_export}, or {instead}" if instead else rule.re_export
            raise BackendUnavailableError(f"{rule.reason}: {remedy}")
