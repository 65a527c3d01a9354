"""Which GPUs an engine is built for, and asking an engine which GPUs it runs on.

TensorRT-RTX builds ahead of time for a set of compute capabilities
(``IBuilderConfig.num_compute_capabilities`` / ``set_compute_capability``). With none set it
uses its own portable default: "an engine built by TensorRT-RTX can be run on GPU devices with
compute capability 8.0, 8.6, 8.9, 12.0, and later" (NVIDIA, TensorRT-RTX docs, "CPU-Only AOT
and TensorRT-RTX Engines"); Turing (sm75) must be named. ``--compute-capability`` takes
``default`` (that set; our default too), ``current`` (the GPU here, resolved through the
driver and built for by name, so the report names what it resolved to; refused where there
is no GPU), or a comma-separated list of the targets the installed TensorRT-RTX names
(``trt.ComputeCapability``: sm75, sm80, sm86, sm89, sm120, sm121 in 1.7).

An 8-bit export (its manifest's ``quant`` key) changes what ``default`` means: its cores are
INT8 or FP8 GEMMs, which run on tensor cores of some GPUs only, so ``default`` becomes the
scheme's ``engine_targets`` (int8: sm80, sm86; fp8: sm89, sm120) and a target below the
scheme's ``min_compute_capability`` is refused with one line (``for_scheme``), named or
resolved from ``current``: TensorRT-RTX itself builds FP8 for its portable default set
without complaint, and refuses a named sm80 only deep in its compiler.

Whether an engine runs on the GPU here is the engine's answer, not our record: TensorRT-RTX's
``IRuntime::getEngineValidity`` (1.1+) reads the engine's header and says VALID, SUBOPTIMAL or
INVALID with diagnostics (``UNSUPPORTED_CC``, ``VERSION_MISMATCH``, ...). It needs the GPU
(it reads the device's properties through CUDA), so where there is none the header's target
set is read directly (``engine_targets``): TensorRT-RTX 1.7 writes it as a bit mask, one bit
per ``ComputeCapability`` member in order, and a bit beyond them in its default set (the
docs' "and later"). That layout is not documented: it is read only from headers of the
installed TensorRT-RTX version, and tests/engine/test_engine_targets.py builds an engine for
every member to check it.
"""

from __future__ import annotations

import ctypes

from armor_export.errors import UserError

DEFAULT = "default"  # TensorRT-RTX's own portable set
CURRENT = "current"  # the GPU here
NEWER = "newer"  # in engine_targets: the header marks GPUs beyond the named targets too


class TargetError(UserError):
    """A compute-capability target that cannot be built for."""


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


def split_targets(spec: str) -> list[str]:
    """``"sm86,sm89"`` -> ``["sm86", "sm89"]`` (``EngineConfig.validate`` checked the names)."""
    return [part.strip().lower() for part in spec.split(",") if part.strip()]


def known_targets(trt) -> list[str]:
    """The targets this TensorRT-RTX can build for, in its enum's order (``sm75``...)."""
    members = getattr(trt, "ComputeCapability", None)
    if members is None:
        return []
    found = [(int(v), n.lower()) for n, v in members.__members__.items() if n.startswith("SM")]
    return [name for _, name in sorted(found)]


def resolve_targets(trt, spec: str, gpus: tuple[list[str], str] | None = None) -> list[str]:
    """What ``spec`` builds for: ``[]`` for TensorRT-RTX's default set, else sm names this
    TensorRT-RTX knows. ``current`` is the first GPU the driver reports (the one TensorRT-RTX
    would build for); without one it is refused, where TensorRT-RTX would otherwise fail
    deep in its build."""
    names = split_targets(spec)
    if names == [DEFAULT]:
        return []
    if names == [CURRENT]:
        found, reason = gpus if gpus is not None else cuda_gpus()
        if not found:
            raise TargetError(
                f"--compute-capability current needs a CUDA GPU here ({reason}): name the "
                "target instead (default, or e.g. sm86,sm89)"
            )
        names = found[:1]
    known = known_targets(trt)
    bad = [n for n in names if n not in known]
    if bad:
        hopper = " (Hopper and datacenter GPUs: --backend tensorrt)" if "sm90" in bad else ""
        raise TargetError(
            f"TensorRT-RTX {trt.__version__} cannot build for {', '.join(bad)}{hopper}: "
            f"it builds for {', '.join(known) or 'none'}, or default"
        )
    return names


def capability(name: str) -> tuple[int, int]:
    """``sm89`` -> ``(8, 9)``, ``sm120`` -> ``(12, 0)``: the last digit is the minor version."""
    digits = name.lower().removeprefix("sm")
    return int(digits[:-1]), int(digits[-1])


def for_scheme(trt, spec: str, scheme, gpus: tuple[list[str], str] | None = None) -> list[str]:
    """``resolve_targets`` for an export quantized by ``scheme`` (a ``QuantScheme``; None: a
    float export, resolved as before): ``default`` is the scheme's own targets, and a target
    whose tensor cores do not run the scheme's GEMMs is refused."""
    if scheme is None:
        return resolve_targets(trt, spec, gpus)
    names = split_targets(spec)
    default = names == [DEFAULT]
    names = resolve_targets(trt, ",".join(scheme.engine_targets) if default else spec, gpus)
    check_scheme_targets(scheme, names)
    return names


def check_scheme_targets(scheme, names: list[str]) -> None:
    """Refuse the ``names`` below ``scheme.min_compute_capability``, saying why."""
    floor = scheme.min_compute_capability
    low = [name for name in names if capability(name) < floor]
    if low:
        need = f"sm{floor[0]}{floor[1]}"
        raise TargetError(
            f"an {scheme.name} export cannot be built for {', '.join(low)}: {scheme.title} GEMMs "
            f"need {need}+ tensor cores; build for {','.join(scheme.engine_targets)} (its "
            f"default) or another target from {need} up"
        )


def set_targets(trt, config, names: list[str]) -> None:
    """Set ``names`` (from ``resolve_targets``) on a builder config; ``[]`` leaves
    TensorRT-RTX's default set."""
    if not names:
        return
    config.num_compute_capabilities = len(names)
    for index, name in enumerate(names):
        if not config.set_compute_capability(getattr(trt.ComputeCapability, name.upper()), index):
            raise TargetError(f"TensorRT-RTX refused compute capability {name}")


def spelled(names: list[str]) -> str:
    """The report's ``compute_capability``: ``default`` or ``sm86,sm89``."""
    return ",".join(names) if names else DEFAULT


# TensorRT-RTX 1.7's engine header (its first Runtime.engine_header_size bytes), as written:
# b"vtrt", 4 bytes, the header version (2) as 8 bytes, 8 bytes, the library version as 4
# bytes (major, minor, patch, build), b"vtrt", then the target bit mask as 8 bytes
HEADER_MAGIC = b"vtrt"
HEADER_VERSION_AT, HEADER_VERSION = 8, 2
LIBRARY_VERSION_AT = 24
TARGET_MASK_AT = 32


def engine_targets(trt, engine: bytes) -> list[str] | None:
    """The compute capabilities the engine's header says it runs on (``NEWER`` last where it
    marks GPUs beyond the named ones), or None where the header is not one this TensorRT-RTX
    wrote (another version, datacenter TensorRT, a corrupt file)."""
    version = [int(p) for p in trt.__version__.split(".")[:4]]
    if (
        len(engine) < TARGET_MASK_AT + 8
        or engine[:4] != HEADER_MAGIC
        or engine[LIBRARY_VERSION_AT + 4 : LIBRARY_VERSION_AT + 8] != HEADER_MAGIC
        or int.from_bytes(engine[HEADER_VERSION_AT : HEADER_VERSION_AT + 8], "little")
        != HEADER_VERSION
        or list(engine[LIBRARY_VERSION_AT : LIBRARY_VERSION_AT + 4]) != version
    ):
        return None
    mask = int.from_bytes(engine[TARGET_MASK_AT : TARGET_MASK_AT + 8], "little")
    known = known_targets(trt)
    names = [name for bit, name in enumerate(known) if mask >> bit & 1]
    return names + ([NEWER] if mask >> len(known) else [])


def covers(targets: list[str], gpu: str, known: list[str]) -> bool | None:
    """Whether an engine of header ``targets`` runs on ``gpu``: True, False, or None where the
    header cannot say (a GPU outside the named targets, and the header marks newer ones)."""
    if gpu in targets:
        return True
    if NEWER in targets and gpu not in known:
        return None
    return False


def describe(targets: list[str] | None) -> str:
    """``sm80, sm86, sm89, sm120, sm121 and newer`` for reports."""
    if targets is None:
        return "unknown (not a header this TensorRT-RTX wrote)"
    named = ", ".join(t for t in targets if t != NEWER) or "none"
    return named + (" and newer" if NEWER in targets else "")


def built_for(report: dict) -> str:
    """What a build report says the engine runs on, for messages: the targets its engine's
    header named at build time, else the report's ``compute_capability``."""
    targets = report.get("engine_targets")
    return describe(targets) if targets else report.get("compute_capability", "?")


def validity(trt, engine: bytes) -> tuple[str, list[str]]:
    """TensorRT-RTX's own answer for the GPU here: ``(VALID|SUBOPTIMAL|INVALID, [diagnostics])``
    from ``Runtime.get_engine_validity`` on the engine's header; ``("", [])`` where the backend
    has no such API (datacenter TensorRT). Needs a CUDA GPU to mean anything."""
    from armor_export.engine.backends import CollectingLogger

    runtime_cls = getattr(trt, "Runtime", None)
    if runtime_cls is None or not hasattr(runtime_cls, "get_engine_validity"):
        return "", []
    logger = CollectingLogger(trt)
    runtime = trt.Runtime(logger.make())
    answer, flags = runtime.get_engine_validity(engine[: runtime.engine_header_size])
    if answer.name == "INVALID" and not int(flags):  # it could not read the GPU: say why
        return answer.name, [m for _, m in logger.messages[-1:]] or ["no reason given"]
    names = [name for name, flag in trt.EngineInvalidityDiagnostics.__members__.items()
             if int(flags) & int(flag)]  # fmt: skip
    return answer.name, names
