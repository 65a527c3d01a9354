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


# ONNX Runtime fuses an int8 ``DequantizeLinear → MatMul ← DequantizeLinear(QuantizeLinear)``
# into MatMulIntegerToFloat. On x86 CPUs without VNNI its u8s8 kernel adds pairs of products
# in int16 (vpmaddubsw), which saturates for full-range int8 operands: 22 % relative error on
# a 64×32 product measured with ORT 1.32 on an AVX2 CPU, 1e-7 with the fusion off, which
# leaves the graph's own float maths. VNNI (vpdpbusd) and Arm's dot products add in int32.
QDQ_FUSION_OFF = {"session.disable_quant_qdq": "1"}
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def int8_fusion_saturates(cpuinfo: str | None = None) -> bool:
    """True where ORT's fused int8 MatMul is inexact: an x86 CPU without VNNI (an x86 CPU
    whose flags cannot be read counts as one)."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return False
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                cpuinfo = f.read()
        except OSError:
            return True
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return not flags & set(VNNI_FLAGS)


def quant_session_config(
    manifest: ExportManifest, providers: Sequence[str], cpuinfo: str | None = None
) -> tuple[dict[str, str], str | None]:
    """ONNX Runtime session config entries for an 8-bit export, and the sentence saying why
    (None: nothing to change). Only int8 on the CPU provider of a CPU without VNNI needs any."""
    scheme = (manifest.quant or {}).get("scheme")
    if scheme != "int8" or not _runs_on_cpu(providers) or not int8_fusion_saturates(cpuinfo):
        return {}, None
    return dict(QDQ_FUSION_OFF), (
        "ONNX Runtime's fused int8 MatMul (MatMulIntegerToFloat) saturates int16 sums on this "
        "CPU (x86 without VNNI): its Q/DQ fusion is off, the graph's MatMuls run in float"
    )
