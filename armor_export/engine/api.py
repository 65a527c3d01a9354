"""The ``engine`` verb: an export folder to a TensorRT / TensorRT-RTX engine + build report."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from armor_export.config import EngineConfig
from armor_export.errors import (
    BackendUnavailableError,
    ConfigError,
    CorruptFileError,
    UserError,
)
from armor_export.export_manifest import ExportManifest, Limits
from armor_export.progress import NullReporter, Reporter

log = logging.getLogger(__name__)

ENGINE_FILE = "model.engine"
REPORT_JSON = "build_report.json"
REPORT_MD = "build_report.md"
TMP_PREFIX = ".engine-"  # a build's working folder inside its output folder
# what TensorRT prints about 2:4 weights (builder log, INFO/VERBOSE)
ELIGIBLE = re.compile(r"eligible for sparse math:\s*(.*)", re.IGNORECASE)
PICKED = re.compile(r"picked sparse implementation for layers:\s*(.*)", re.IGNORECASE)
SPARSE_DTYPES = ("float16", "bfloat16")


class EngineBuildError(UserError):
    """The backend refused the network (parser or builder errors are in the message)."""


@dataclass
class EngineResult:
    engine_path: Path
    report_path: Path
    report: dict
    seconds: float


def build_engine(cfg: EngineConfig, reporter: Reporter | None = None) -> EngineResult:
    """Parse ``cfg.export_dir``'s ONNX, build with SPARSE_WEIGHTS and profiles, write report.

    The build runs in a child process: a TensorRT abort or segfault becomes a one-line
    NativeCrashError naming the builder log (``builder.log``, kept beside the report). One
    engine build at a time writes an output folder (``locks.hold``). The child writes into a
    working folder inside it, and this process moves the engine and its report into place:
    a child whose parent was killed publishes nothing, and removes its working folder.
    """
    from armor_export.engine.backends import backend_spec, load_backend
    from armor_export.engine.child import run_in_child
    from armor_export.engine.folder import BUILDER_LOG
    from armor_export.locks import hold

    cfg.validate()
    reporter = reporter or NullReporter()
    export_dir = Path(cfg.export_dir)
    manifest = ExportManifest.read(export_dir)
    resolve_limits(cfg, manifest)  # bad limits fail here, before a child is started
    trt = load_backend(cfg.backend)  # the install hint without starting a child
    # current: the GPU here, or refused without one; an 8-bit export: its scheme's targets
    targets = build_targets(trt, cfg, manifest)
    out = output_dir(cfg)
    with hold(out, "engine"):
        log_path = out / BUILDER_LOG
        log_path.unlink(missing_ok=True)
        with (
            reporter.task(f"{backend_spec(cfg.backend).name} engine", total=1) as task,
            tempfile.TemporaryDirectory(dir=_without_leftovers(out), prefix=TMP_PREFIX) as tmp,
        ):
            # the manifest travels with the request: the child does not hash the export again
            built = run_in_child("engine build", build_engine_here,
                                 (cfg, manifest, tmp, targets), log_path,
                                 scratch=Path(tmp))  # fmt: skip
            _publish(Path(tmp), out)
            task.advance(1, stage="written")
    return EngineResult(out / ENGINE_FILE, out / REPORT_JSON, built.report, built.seconds)


def _without_leftovers(out: Path) -> Path:
    """``out`` without the working folders of builds whose child could not remove them (the
    caller holds ``out``'s lock, so no live build is using them)."""
    for leftover in out.glob(TMP_PREFIX + "*"):
        if leftover.is_dir():
            log.info("removing %s, left by an engine build that did not finish", leftover)
            shutil.rmtree(leftover, ignore_errors=True)
    return out


def _publish(built: Path, out: Path) -> None:
    """Move the engine, its plugin library copy (a plugin engine) and its reports from
    ``built`` into ``out``. The old JSON report goes first and the new one comes last: a
    folder caught half way holds an engine without a report (``read_build_report`` says to
    rebuild), never a report of another engine."""
    (out / REPORT_JSON).unlink(missing_ok=True)
    libraries = sorted(p.name for p in built.glob("*.so*") if p.is_file())
    for name in (ENGINE_FILE, *libraries, REPORT_MD, REPORT_JSON):
        os.replace(built / name, out / name)


def output_dir(cfg: EngineConfig) -> Path:
    """``-o``, else where every verb looks for the export's engine (``engine_dir_of``)."""
    from armor_export.engine.folder import engine_dir_of

    return Path(cfg.output_dir) if cfg.output_dir else engine_dir_of(cfg.export_dir)


def build_targets(
    trt, cfg: EngineConfig, manifest: ExportManifest | None = None, gpus=None
) -> list[str] | None:
    """The compute capabilities a TensorRT-RTX build sets (``[]``: its default set), resolved
    before the child starts (``current`` asks the driver here: engine/targets.py); for an
    8-bit export, ``default`` is its scheme's targets and targets that cannot run its GEMMs are
    refused (``targets.for_scheme``). None for datacenter TensorRT, which builds for the GPU it
    runs on: that GPU is refused the same way. ``gpus``: ``targets.cuda_gpus()``' answer."""
    from armor_export.engine.backends import backend_spec
    from armor_export.engine.targets import check_scheme_targets, cuda_gpus, for_scheme

    scheme = quant_scheme(manifest) if manifest is not None else None
    if backend_spec(cfg.backend).aot:
        return for_scheme(trt, cfg.compute_capability, scheme, gpus)
    if scheme is not None:
        found, _ = gpus if gpus is not None else cuda_gpus()
        check_scheme_targets(scheme, found[:1])  # no GPU: TensorRT says so when it builds
    return None


def quant_scheme(manifest: ExportManifest):
    """The ``QuantScheme`` of an 8-bit export (its manifest's top-level ``quant`` key, issue
    #26), or None for a float export; an unknown scheme is a damaged or newer export."""
    quant = getattr(manifest, "quant", None) or manifest.extra.get("quant")
    if not quant:
        return None
    from armor_export.quant import schemes

    name = quant.get("scheme") if isinstance(quant, dict) else getattr(quant, "scheme", None)
    try:
        return schemes.get(name)
    except KeyError as exc:
        raise CorruptFileError(
            f"the export's manifest names quantization scheme {name!r}, which this "
            f"armor-export does not know ({exc.args[0].split('; ')[-1]})"
        ) from None


def build_engine_here(
    cfg: EngineConfig,
    manifest: ExportManifest,
    folder: str | Path | None = None,
    targets: list[str] | None = None,
) -> EngineResult:
    """The build itself, in this process (``build_engine`` runs it in a child), from the
    export manifest ``build_engine`` has read and checked. The engine and its reports are
    written to ``folder`` (default: the output folder), the builder log to the output folder.
    ``targets``: ``build_targets``' (resolved here when not given)."""
    from armor_export.engine.backends import backend_spec, load_backend
    from armor_export.engine.folder import BUILDER_LOG

    export_dir = Path(cfg.export_dir)
    out = output_dir(cfg)
    dest = Path(folder) if folder is not None else out
    limits = resolve_limits(cfg, manifest)
    trt = load_backend(cfg.backend)
    spec = backend_spec(cfg.backend)
    if targets is None:
        targets = build_targets(trt, cfg, manifest)
    start = time.perf_counter()
    builder, network, _parser, logger, plugin = _parse(
        trt, cfg, manifest, export_dir, out / BUILDER_LOG
    )
    config, profile = _builder_config(trt, builder, network, cfg, manifest, limits, out, targets)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(
            f"{spec.name} could not build the engine: "
            + ("; ".join(logger.errors()[-5:]) or "no error message from the builder")
        )
    engine = bytes(serialized)
    seconds = time.perf_counter() - start
    from armor_export.io import write_bytes

    write_bytes(dest / ENGINE_FILE, engine)
    if plugin is not None:  # the engine folder carries its plugin library (engine_dir_of)
        plugin = carry_plugin_library(plugin, dest)
    _save_timing_cache(config, cfg, out)
    report = _report(
        trt, cfg, spec, manifest, limits, profile, logger, engine, seconds, plugin, out, targets
    )
    report_path = write_report(dest, report)
    return EngineResult(dest / ENGINE_FILE, report_path, report, seconds)


def resolve_limits(cfg: EngineConfig, manifest: ExportManifest) -> Limits:
    """Profile limits: the engine's own, never beyond what the export promised."""
    exported = manifest.limits.to_dict()
    limits = {}
    for key in exported:
        asked = getattr(cfg, key) or exported[key]
        if asked > exported[key]:
            flag = "--" + key.replace("_", "-")
            raise ConfigError(
                f"{key} {asked} exceeds the export's {exported[key]}: re-export with {flag} {asked}"
            )
        limits[key] = asked
    if limits["max_prompt"] > limits["max_context"]:
        raise ConfigError(
            f"max_prompt {limits['max_prompt']} exceeds max_context {limits['max_context']}"
        )
    return Limits(**limits)


def _parse(trt, cfg: EngineConfig, manifest: ExportManifest, export_dir: Path, log_path: Path):
    from armor_export.engine.backends import CollectingLogger, strongly_typed_flags

    logger = CollectingLogger(trt, log_path)
    trt_logger = logger.make()
    builder = trt.Builder(trt_logger)
    plugin = _load_plugin(trt, cfg, manifest)
    network = builder.create_network(strongly_typed_flags(trt))
    parser = trt.OnnxParser(network, trt_logger)
    onnx_path = export_dir / manifest.onnx
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i).desc()) for i in range(parser.num_errors)]
        raise EngineBuildError(f"{onnx_path}: the ONNX parser failed: {'; '.join(errors[:5])}")
    if plugin is not None:
        plugin["layers"] = plugin_layer_names(trt, network)
    # the caller keeps the parser alive until the build: it owns the parsed weights
    return builder, network, parser, logger, plugin


def _load_plugin(trt, cfg: EngineConfig, manifest: ExportManifest) -> dict | None:
    from armor_export.engine.backends import load_plugin_library

    plugin = manifest.plugin
    if manifest.lowering != "plugin":
        return None
    library = Path(cfg.plugin_library) if cfg.plugin_library else None
    if library is None or not library.is_file():
        raise ConfigError(
            f"this export uses the {plugin.name} plugin node: build "
            "plugins/armorBlockDiagPlugin (see its README) and pass --plugin-library "
            "libarmor_blockdiag_plugin.so, or export with --lowering plain"
        )
    from armor_export.engine.backends import backend_spec, rtx_plugin_parse_problem

    if backend_spec(cfg.backend).module == "tensorrt_rtx":
        problem = rtx_plugin_parse_problem(trt)
        if problem is not None:
            raise BackendUnavailableError(problem)
    load_plugin_library(trt, library)
    return {**plugin.to_dict(), "library": str(library)}


def carry_plugin_library(plugin: dict, folder: Path) -> dict:
    """Copy the plugin library the engine was built with into its engine ``folder``; the
    report then names the copy relative to the folder, with its sha256, which the runtime
    checks before loading it (``engine.folder.plugin_library_of``): a shipped engine folder
    needs nothing from the machine or the folder it was built in."""
    from armor_export.io import sha256_file

    source = Path(plugin["library"])
    copy = Path(folder) / source.name
    shutil.copyfile(source, copy)
    return {**plugin, "library": copy.name, "library_sha256": sha256_file(copy)}


def plugin_layer_names(trt, network) -> list[str]:
    """The network's IPluginV3 layers (the parsed plugin nodes), by name."""
    layers = (network.get_layer(i) for i in range(network.num_layers))
    return [layer.name for layer in layers if layer.type == trt.LayerType.PLUGIN_V3]


def profile_shapes(manifest: ExportManifest, limits: Limits) -> dict[str, tuple]:
    """min / opt / max per input: opt is a one-sequence prefill of half the prompt limit."""
    batch, prompt, context = limits.max_batch, limits.max_prompt, limits.max_context
    decoder = manifest.decoder
    opt_prompt = max(1, prompt // 2)
    shapes = {
        "input_ids": ((1, 1), (1, opt_prompt), (batch, prompt)),
        "position_ids": ((1, 1), (1, opt_prompt), (batch, prompt)),
        "attention_mask": ((1, 1), (1, opt_prompt), (batch, context)),
    }
    for name in manifest.past_names:
        shapes[name] = (decoder.past_shape(1, 0), decoder.past_shape(1, 0),
                        decoder.past_shape(batch, context - 1))  # fmt: skip
    return shapes


def _builder_config(trt, builder, network, cfg, manifest, limits, out: Path, targets=None):
    from armor_export.engine.targets import set_targets

    config = builder.create_builder_config()
    if cfg.sparse_weights:
        config.set_flag(trt.BuilderFlag.SPARSE_WEIGHTS)
    config.builder_optimization_level = cfg.optimization_level
    if hasattr(trt, "ProfilingVerbosity"):
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # for the inspector
    if targets:
        set_targets(trt, config, targets)
    profile = builder.create_optimization_profile()
    shapes = profile_shapes(manifest, limits)
    for index in range(network.num_inputs):
        name = network.get_input(index).name
        if name not in shapes:
            raise CorruptFileError(f"the ONNX input {name!r} is not in the export manifest")
        profile.set_shape(name, *shapes[name])
    config.add_optimization_profile(profile)
    if uses_timing_cache(cfg):
        path = timing_cache_path(cfg, out)
        cache = config.create_timing_cache(path.read_bytes() if path.is_file() else b"")
        config.set_timing_cache(cache, ignore_mismatch=True)
    return config, {k: [list(s) for s in v] for k, v in shapes.items() if k in shapes}


def uses_timing_cache(cfg: EngineConfig) -> bool:
    """TensorRT-RTX made timing-cache operations no-ops (1.2+): only TensorRT keeps one."""
    from armor_export.engine.backends import backend_spec

    return backend_spec(cfg.backend).timing_cache


def timing_cache_path(cfg: EngineConfig, out: Path) -> Path:
    return Path(cfg.timing_cache) if cfg.timing_cache else out / "timing.cache"


def _save_timing_cache(config, cfg: EngineConfig, out: Path) -> None:
    from armor_export.io import write_bytes

    cache = config.get_timing_cache() if uses_timing_cache(cfg) else None
    if cache is not None:
        write_bytes(timing_cache_path(cfg, out), bytes(cache.serialize()))


def sparsity_from_log(messages: list[tuple[str, str]]) -> dict:
    """Layers TensorRT reported as eligible for / running sparse kernels (None: not reported)."""
    eligible, picked = None, None
    for _, msg in messages:
        if m := ELIGIBLE.search(msg):
            eligible = (eligible or []) + [s.strip() for s in m.group(1).split(",") if s.strip()]
        if m := PICKED.search(msg):
            picked = (picked or []) + [s.strip() for s in m.group(1).split(",") if s.strip()]
    return {"eligible_layers": eligible, "picked_layers": picked}


def _inspect(trt, engine: bytes, logger) -> tuple[dict, list[dict]]:
    """Engine-inspector layer info (deserialising needs a GPU); a reason when unavailable.
    With it, the inspector's layers in the layer table's form (``cores.inspector_layers``).

    A layer counts as sparse when the tactic TensorRT picked for it is a sparse kernel
    (the inspector's ``TacticName``), never from layer or weight names: every 2:4 core's
    initializer is named ``..._sparse...``.
    """
    from armor_export.engine.cores import inspector_layers

    try:
        runtime = trt.Runtime(logger.make())
        deserialized = runtime.deserialize_cuda_engine(engine)
    except Exception as exc:  # no GPU / driver: the backend raises its own error types
        return {
            "available": False,
            "sparse_layers": "unknown",
            "reason": f"cannot deserialise here ({exc})"[:300],
        }, []
    if deserialized is None:
        return {
            "available": False,
            "sparse_layers": "unknown",
            "reason": "deserialising needs a GPU of the target kind",
        }, []
    information = deserialized.create_engine_inspector().get_engine_information(
        trt.LayerInformationFormat.JSON
    )
    return inspector_sparsity(information), inspector_layers(information)


def inspector_sparsity(information: str) -> dict:
    """Layers whose chosen tactic is a sparse kernel, from the inspector's JSON."""
    import json

    layers = [
        layer for layer in json.loads(information).get("Layers", []) if isinstance(layer, dict)
    ]
    sparse = [
        layer.get("Name", "?")
        for layer in layers
        if "sparse" in str(layer.get("TacticName", "")).lower()
    ]
    return {"available": True, "layers": len(layers), "sparse_layers": sparse}


LAYER_FIELD = re.compile(r"(?:^|, )(Name|LayerType|TacticName|Metadata): ([^,]*)")


def layers_from_log(messages: list[tuple[str, str]]) -> list[dict]:
    """The verbose builder log's layer table (the inspector's fields, printed at build time):
    ``Name``, ``LayerType``, ``TacticName`` and ``Metadata`` of every layer, and the
    ``(dims, Datatype)`` of its ``inputs``, ``constants`` and ``outputs`` (engine/cores.py)."""
    from armor_export.engine.cores import tensor_types

    layers = []
    for _, msg in messages:
        if not msg.lstrip().startswith("Layers:"):
            continue
        for line in msg.splitlines():
            fields = dict(LAYER_FIELD.findall(line.strip()))
            if "Name" in fields and "LayerType" in fields:
                layers.append({**fields, **tensor_types(line.strip())})
    return layers


def tactic_sparsity(layers: list[dict]) -> dict:
    """Sparse GEMM layers by the tactic TensorRT chose (never by layer or weight names).

    GEMM layers are ``engine.cores.is_gemm_layer``'s: ``gemm`` layers, whatever their input
    types (8-bit ones after a Q/DQ pair), and the runtime fusions TensorRT-RTX makes of a
    weight-only 8-bit MatMul (``__myl_CastMulCastFc``), which hold a core GEMM too.
    """
    from armor_export.engine.cores import STUB_TACTICS, is_gemm_layer

    gemms = [layer for layer in layers if is_gemm_layer(layer)]
    chosen = [layer for layer in gemms if layer.get("TacticName", "") not in STUB_TACTICS]
    sparse = [layer["Name"] for layer in chosen if "sparse" in layer.get("TacticName", "").lower()]
    if gemms and not chosen:
        sparse = "unknown (kernels are picked on the GPU when the engine first runs)"
    return {"gemm_layers": len(gemms), "sparse_gemm_layers": sparse if layers else None}


NO_INSPECTOR = {
    "available": False,
    "sparse_layers": "unknown (needs a GPU to inspect)",
    "reason": "TensorRT-RTX has no inspector before the engine is deserialised, and "
    "deserialising needs the target GPU",
}


def _report(trt, cfg, spec, manifest, limits, profile, logger, engine, seconds, plugin, out,
            targets=None):  # fmt: skip
    from armor_export import __version__
    from armor_export.engine.folder import BUILDER_LOG, export_binding

    layers = layers_from_log(logger.messages)
    sparsity = {
        **sparsity_from_log(logger.messages),
        "build_log_layers": tactic_sparsity(layers),
    }
    scheme = quant_scheme(manifest)
    notes = []
    if manifest.dtype not in SPARSE_DTYPES and scheme is None:
        notes.append(
            f"{manifest.dtype} engine: TensorRT's 2:4 kernels are for fp16/bf16 (and int8/"
            "fp8); export with --dtype float16 to run the cores on sparse tensor cores"
        )
    if sparsity["eligible_layers"] is None and spec.aot:
        notes.append(
            f"{spec.name} picks kernels on the GPU when the engine first runs, so the build "
            "log names no sparse layers; the 2:4 core MatMuls counted in this report are "
            "the candidates"
        )
    if spec.aot:
        inspector, inspected = dict(NO_INSPECTOR), []
    else:
        inspector, inspected = _inspect(trt, engine, logger)
    quant, core_records = {}, []
    if scheme is not None:
        quant, core_records, more = _quant_fields(
            cfg, spec, manifest, scheme, layers or inspected, sparsity
        )
        notes += more
    return {
        "backend": spec.name,
        "backend_module": spec.module,
        "versions": {"armor_export": __version__, spec.module: trt.__version__},
        **_target_fields(trt, spec, engine, targets),
        "precision": manifest.dtype,
        **quant,
        "strongly_typed": True,
        "sparse_weights_flag": cfg.sparse_weights,
        "optimization_level": cfg.optimization_level,
        "limits": limits.to_dict(),
        "profile": profile,
        "plugin": plugin,
        "sparsity": {
            "core_matmuls_2_4": manifest.counts["cores"],
            "armor_linears": manifest.counts["armor"],
            **sparsity,
            "inspector": inspector,
            **({"core_layers": core_records} if scheme is not None else {}),
        },
        "timing_cache": _in_folder(timing_cache_path(cfg, out), out)
        if uses_timing_cache(cfg)
        else "not used: timing-cache operations are no-ops in TensorRT-RTX",
        "engine_bytes": len(engine),
        "engine_sha256": hashlib.sha256(engine).hexdigest(),
        **export_binding(Path(cfg.export_dir), manifest),
        "builder_log": BUILDER_LOG,  # beside the report, as every file it names there
        "build_seconds": round(seconds, 2),
        "warnings": [m for s, m in logger.messages if s == "WARNING"][:20],
        "notes": notes,
        "config": cfg.to_dict(),
    }


def _quant_fields(cfg, spec, manifest, scheme, layers, sparsity) -> tuple[dict, list, list]:
    """An 8-bit export's report fields: ``quant`` (its scheme and how its targets were
    chosen), the core layers (engine/cores.py: each core MatMul's engine layer, precision as
    TensorRT typed it, and sparse kernel status) and notes."""
    from armor_export.engine import cores
    from armor_export.engine.targets import DEFAULT, split_targets

    notes = []
    by_scheme = spec.aot and split_targets(cfg.compute_capability) == [DEFAULT]
    quant = {
        "quant": {
            "scheme": scheme.name,
            "export": manifest.extra.get("quant") or getattr(manifest, "quant", None),
            "targets": "the scheme's engine targets" if by_scheme else "as asked",
        }
    }
    if by_scheme:
        floor = "sm{}{}".format(*scheme.min_compute_capability)
        notes.append(
            f"{scheme.name} export: default targets are the scheme's "
            f"({', '.join(scheme.engine_targets)}); {scheme.title} GEMMs need {floor}+"
        )
    try:
        found = cores.core_matmuls(Path(cfg.export_dir) / manifest.onnx)
    except ImportError as exc:
        notes.append(f"core layers not listed: the onnx package is missing ({exc})")
        return quant, [], notes
    records = cores.core_layers(
        found, layers, flag=cfg.sparse_weights, aot=spec.aot, picked=sparsity["picked_layers"]
    )
    if any(r["activation"] == "float" for r in found):
        notes.append(
            "weight-only cores (no Q/DQ on the activation): TensorRT dequantizes the 8-bit "
            "weight inside the GEMM; a 2:4 weight keeps its sparse kernels only where it "
            "feeds the GEMM itself, as in W8A8 (TensorRT issue 4694)"
        )
    return quant, records, notes


def _target_fields(trt, spec, engine: bytes, targets: list[str] | None) -> dict:
    """``compute_capability``: what the build set (``default``, ``sm86,sm89``; ``current`` as
    the GPU it resolved to); ``engine_targets``: what the built engine's header says it runs on
    (engine/targets.py), None where it cannot be read. Datacenter TensorRT: the GPU here."""
    from armor_export.engine.targets import cuda_gpus, engine_targets, spelled

    if not spec.aot:
        gpus, _ = cuda_gpus()
        return {"compute_capability": gpus[0] if gpus else "the local GPU", "engine_targets": None}
    return {"compute_capability": spelled(targets or []),
            "engine_targets": engine_targets(trt, engine)}  # fmt: skip


def _in_folder(path: Path, folder: Path) -> str:
    """``path`` relative to the engine ``folder`` when it is inside it (the folder moves with
    its files), else as given (a file of the user's outside the folder)."""
    try:
        return str(Path(path).resolve().relative_to(Path(folder).resolve()))
    except ValueError:
        return str(path)


def write_report(out: Path, report: dict) -> Path:
    from armor_export.io import write_json, write_text

    write_json(out / REPORT_JSON, report)
    write_text(out / REPORT_MD, report_markdown(report))
    return out / REPORT_JSON


def plugin_summary(plugin: dict | None) -> str:
    if not plugin:
        return "none (plain MatMuls)"
    layers = plugin.get("layers")
    return plugin["library"] + ("" if layers is None else f" ({len(layers)} plugin layers)")


def _tactics_row(info: dict | None) -> str:
    if not info or info["sparse_gemm_layers"] is None:
        return "no layer table in the log"
    sparse = info["sparse_gemm_layers"]
    found = sparse if isinstance(sparse, str) else f"{len(sparse)}"
    return f"{found} of {info['gemm_layers']} GEMM layers"


def _target_row(report: dict) -> str:
    from armor_export.engine.targets import describe

    built = report["compute_capability"]
    if "engine_targets" not in report or report["engine_targets"] is None:
        return built
    return f"{built} (the engine's header: runs on {describe(report['engine_targets'])})"


def _precision_row(report: dict) -> str:
    quant = report.get("quant")
    if not quant:
        return f"{report['precision']} (strongly typed)"
    return f"{quant['scheme']} cores (Q/DQ), {report['precision']} elsewhere (strongly typed)"


def _core_rows(sparsity: dict) -> list[tuple[str, str]]:
    """An 8-bit engine's core layers in one row (``core_table`` lists them one by one)."""
    from armor_export.engine.cores import summary

    if "core_layers" not in sparsity:
        return []
    return [("core layers (TensorRT)", summary(sparsity["core_layers"]))]


def core_table(report: dict) -> list[str]:
    """build_report.md's table of an 8-bit engine's core layers: layer, precision, sparse."""
    records = report["sparsity"].get("core_layers")
    if records is None:
        return []
    lines = ["", "## Core layers", "",
             "| core MatMul | engine layer | precision | sparse kernel | why |",
             "|---|---|---|---|---|"]  # fmt: skip
    for r in records:
        layer = f"{r['layer']} ({r['layer_type']})" if r["layer"] else "not found"
        lines.append(f"| {r['matmul']} | {layer} | {r['precision'] or '?'} | "
                     f"{r['sparse_tactic']} | {r['reason']} |")  # fmt: skip
    return lines


def report_markdown(report: dict) -> str:
    lines = ["# Engine build report", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in report_rows(report)]
    lines += core_table(report)
    lines += [""] + [f"- {note}" for note in report["notes"]] + [""]
    return "\n".join(lines)


def report_rows(report: dict) -> list[tuple[str, str]]:
    """(what, value) rows of a build report: build_report.md and the build's report show them."""
    sp = report["sparsity"]

    def layers(value):
        return "not reported" if value is None else f"{len(value)}"

    return [
        ("backend", f"{report['backend']} {report['versions'][report['backend_module']]}"),
        ("target", _target_row(report)),
        ("precision", _precision_row(report)),
        ("SPARSE_WEIGHTS", "on" if report["sparse_weights_flag"] else "off"),
        ("limits", ", ".join(f"{k} {v}" for k, v in report["limits"].items())),
        ("plugin", plugin_summary(report["plugin"])),
        ("2:4 core MatMuls in the graph", str(sp["core_matmuls_2_4"])),
        ("eligible for sparse math (builder log)", layers(sp["eligible_layers"])),
        ("picked sparse kernels (builder log)", layers(sp["picked_layers"])),
        ("sparse GEMM tactics (builder log layer table)", _tactics_row(sp.get("build_log_layers"))),
        (
            "engine inspector",
            "; ".join(f"{k}: {v}" for k, v in sp["inspector"].items() if k != "available"),
        ),  # fmt: skip
        *_core_rows(sp),
        ("engine size", f"{report['engine_bytes'] / 2**20:.1f} MiB"),
        ("build time", f"{report['build_seconds']:.1f} s"),
    ]
