"""The ``export`` verb: a pruned checkpoint (or dense model) to ONNX with KV cache.

Artefacts in ``output_dir``: ``model.onnx`` (+ ``model.onnx.data`` for big models),
``tokenizer.json`` and ``tokenizer_config.json``, ``genai_config.json`` for a graph ONNX
Runtime can run (the folder then loads in ONNX Runtime GenAI) and ``export_manifest.json``,
which is written last: a folder with a manifest holds a complete, checked export.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

from armor_export import locks
from armor_export.config import ExportConfig
from armor_export.errors import ConfigError, CorruptFileError, GraphCheckError, UserError
from armor_export.export_manifest import (
    EXTERNAL_DATA_FILE,
    GENAI_CONFIG_FILE,
    MANIFEST,
    ONNX_FILE,
    TOKENIZER_CONFIG_FILE,
    TOKENIZER_FILE,
    ExportManifest,
    Limits,
    PluginInfo,
    Source,
    Tokens,
)
from armor_export.io import sha256_file, write_json
from armor_export.memory import log_memory
from armor_export.paths import check_apart
from armor_export.progress import NullReporter, Reporter

log = logging.getLogger(__name__)

EXTERNAL_DATA_THRESHOLD = 1_800_000_000  # protobuf's hard limit is 2 GiB; keep a margin
# the form of the exported graph, in the manifest; bumped whenever it changes, so builds
# and benchmarks redo older exports (1: per-linear lowering, 2: block-layout gated MLP,
# 3: + the layout pass of layout.py, 4: + eager attention)
GRAPH_REVISION = 4
# traced attention: HF's plain maths (MatMul, additive mask, Softmax, MatMul). The SDPA
# path exports a NaN guard (IsNaN + Where over every [heads, q, k] score) that took ~12% of
# an fp32 prefill on ORT CPU; the eager mask is finite, so no row can turn into NaN.
ATTENTION = "eager"
TMP_PREFIX = ".export-"  # an export's working folder inside its output folder


@dataclass
class ExportResult:
    output_dir: Path
    onnx_path: Path
    manifest: dict
    seconds: float
    counts: dict = field(default_factory=dict)


def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def load_for_export(name_or_path: str, dtype: str = "float32"):
    """(model, tokenizer, checkpoint manifest | None); partial prune folders are refused.

    A pruned checkpoint is loaded straight into the export's ``dtype``, never holding a
    float32 copy of the model (the same numbers as converting one: ``load_checkpoint``).
    """
    from armor_export.eval.api import load_any_model
    from armor_export.prune.checkpoint import MANIFEST as CKPT_MANIFEST

    path = Path(name_or_path)
    if path.is_dir() and not (path / CKPT_MANIFEST).is_file() and (path / "work").is_dir():
        raise CorruptFileError(
            f"{path}: partial checkpoint (prune has not finished: no {CKPT_MANIFEST}); "
            "run the same prune command again to resume it"
        )
    return load_any_model(name_or_path, checkpoint_dtype=torch_dtype(dtype))


def export_onnx(
    cfg: ExportConfig,
    reporter: Reporter | None = None,
    model=None,
    tokenizer=None,
    checkpoint_manifest: dict | None = None,
) -> ExportResult:
    """Export ``cfg.model`` (or the given ``model``) to ``cfg.output_dir``; checks included."""
    from armor_export.export import checks, lowering
    from armor_export.export.wrapper import DecoderSpec, DecoderWithCache
    from armor_export.memory import trim_heap
    from armor_export.models.registry import adapter_for

    cfg.validate()
    check_apart(cfg.output_dir, {"checkpoint": cfg.model}, "export")
    reporter = reporter or NullReporter()
    start = time.perf_counter()
    out = Path(cfg.output_dir)
    with reporter.task("export", total=4) as task:
        if model is None:
            model, tokenizer, checkpoint_manifest = load_for_export(cfg.model, cfg.dtype)
        log_memory(log, "loading")
        task.advance(1, stage="loaded")
        adapter_for(model)  # unsupported families fail here, before any tracing
        limits = _resolve_limits(cfg, model.config)
        spec = DecoderSpec.from_config(model.config)
        model = model.to(torch_dtype(cfg.dtype)).eval()
        model.set_attn_implementation(ATTENTION)
        matrices = (checkpoint_manifest or {}).get("matrices", {})
        sparse_names = [n for n, info in matrices.items() if info.get("kind") == "sparse"]
        quant = quant_form(checkpoint_manifest, cfg)
        if quant is not None and cfg.opset < lowering.QDQ_OPSET:
            # Q/DQ of float8 types (and their ``saturate``) exist from opset 19 on
            log.info("an 8-bit checkpoint: exporting at opset %d", lowering.QDQ_OPSET)
            cfg = replace(cfg, opset=lowering.QDQ_OPSET)
        counts = lowering.lower_model_(model, sparse_names, plugin=cfg.lowering == "plugin")
        trim_heap()  # the replaced modules' memory, before tracing needs more
        log_memory(log, "lowering")
        if not counts["armor"] and not counts["sparse"]:
            log.warning("%s has no ArmorLinear or 2:4 layers: exporting it as dense", cfg.model)
        with (
            locks.hold(out, "export"),
            tempfile.TemporaryDirectory(dir=_without_leftovers(out), prefix=TMP_PREFIX) as tmp,
        ):
            tmp_dir = Path(tmp)
            counts["merged_transposes"] = _trace_and_save(
                DecoderWithCache(model).eval(), spec, cfg, tmp_dir / ONNX_FILE
            )
            # what the writer wrote, not what we asked for: torch's writer moves the weights
            # to a data file on its own above its own threshold (1.5 GiB), below ours
            external = _external_data_written(tmp_dir / ONNX_FILE)
            task.advance(1, stage="traced")
            _save_tokenizer(tokenizer, tmp_dir)
            manifest = _manifest(
                cfg, model, tokenizer, spec, limits, counts, checkpoint_manifest, external
            )
            manifest = replace(manifest, quant=quant)
            _write_genai_config(manifest, tmp_dir)
            _move_in(tmp_dir, out, manifest)
            # what ships is what is checked: the published graph, its external data read
            # from beside it there; the manifest, written last, vouches for these bytes
            report = checks.check_graph(
                out / ONNX_FILE,
                counts["armor"],
                counts["sparse"],
                cfg.lowering == "plugin",
                quant=None if quant is None else quant["scheme"],
            )
            log_memory(log, "checking the graph")
            task.advance(1, stage="checked")
            manifest = replace(
                manifest,
                counts={**manifest.counts, **report.to_dict()},
                sha256={f: sha256_file(out / f) for f in manifest.files},
            ).sealed()  # its own digest: an edited manifest is refused by its readers
            write_json(out / MANIFEST, manifest.to_dict())
        task.advance(1, stage="written")
    return ExportResult(
        out, out / ONNX_FILE, manifest.to_dict(), time.perf_counter() - start, counts
    )


def quant_form(checkpoint_manifest: dict | None, cfg: ExportConfig) -> dict | None:
    """The export manifest's ``quant`` record for an 8-bit checkpoint (None for a float one):
    the scheme, its granularity, and the float dtype the wrappers stay in (docs/quant.md)."""
    quant = (checkpoint_manifest or {}).get("quant") or {}
    scheme = quant.get("scheme")
    if scheme is None:
        return None
    form = {
        "scheme": scheme,
        "weights": "per-channel",
        "activations": "per-tensor",
        "wrappers": cfg.dtype,
    }
    if quant.get("weight_only"):  # cores whose input stays in float (W8A16)
        form["weight_only"] = list(quant["weight_only"])
    return form


def _resolve_limits(cfg: ExportConfig, config) -> Limits:
    model_max = int(getattr(config, "max_position_embeddings", 0) or 0)
    max_context = cfg.limits.max_context or model_max
    if not max_context:
        raise ConfigError("limits.max_context: the model states no max_position_embeddings")
    if model_max and max_context > model_max:
        raise ConfigError(
            f"limits.max_context {max_context} exceeds the model's "
            f"max_position_embeddings {model_max}"
        )
    max_prompt = cfg.limits.max_prompt or min(1024, max_context)
    if max_prompt > max_context:
        raise ConfigError(f"limits.max_prompt {max_prompt} exceeds max_context {max_context}")
    return Limits(max_batch=cfg.limits.max_batch, max_prompt=max_prompt, max_context=max_context)


def _trace_and_save(wrapper, spec, cfg: ExportConfig, path: Path) -> int:
    """torch.export → ONNX (dynamo exporter); returns how many transpose chains the layout
    pass merged. Where the weights went is read back from the file (``_external_data_written``):
    the writer also moves them to external data on its own, above its own threshold."""
    import torch

    from armor_export.export.wrapper import dynamic_shapes, example_inputs

    args = example_inputs(spec, torch_dtype(cfg.dtype))
    # the exporter prints its progress on stdout (keep stdout for the verbs' results) and
    # warns about unrelated things (torchvision ops, pytree deprecations): keep it quiet
    with (
        contextlib.redirect_stdout(io.StringIO()),
        warnings.catch_warnings(),
        _quiet_logger("torch.onnx"),
        _quiet_logger("onnx_ir"),
        torch.no_grad(),
    ):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            wrapper,
            args,
            dynamo=True,
            input_names=spec.input_names(),
            output_names=spec.output_names(),
            dynamic_shapes=dynamic_shapes(spec),
            opset_version=cfg.opset,
            verbose=False,
            optimize=False,
        )
        log_memory(log, "tracing")
        merged = _optimize(program.model)
        log_memory(log, "optimising the graph")
    _name_output_dims(program.model)
    size = sum(
        init.const_value.nbytes
        for init in program.model.graph.initializers.values()
        if init.const_value is not None
    )
    external = cfg.external_data == "always" or (
        cfg.external_data == "auto" and size > EXTERNAL_DATA_THRESHOLD
    )
    program.save(path, external_data=external)
    log_memory(log, "saving the graph")
    return merged


def _external_data_written(path: Path) -> str | None:
    """The one data file the graph at ``path`` keeps tensors in (a name beside it), or None.

    Read from the written graph: ``program.save`` also externalises on its own once the
    initializers pass its threshold (1.5 GiB), whatever ``external_data`` said.
    """
    from armor_export.export import checks

    files = checks.external_data_files(path)
    if len(files) > 1 or any(Path(name).name != name for name in files):
        raise GraphCheckError(
            f"{path.name}: the writer put tensors in {files}, expected one file beside the "
            f"graph ({EXTERNAL_DATA_FILE})"
        )
    return files[0] if files else None


def _optimize(model) -> int:
    """Constant folding, the layout pass (``layout.py``) and clean-up passes, in place;
    returns the number of transpose chains merged.

    This is the exporter's default optimisation minus the onnxscript pattern rewriter,
    whose multi-output patterns are matched against every combination of candidate nodes:
    on a 30-layer decoder that pass alone took over 5 minutes, while ONNX Runtime and
    TensorRT do their own fusions when they load the graph anyway.
    """
    import onnx_ir.passes.common as common
    import onnxscript.optimizer

    from armor_export.export.layout import merge_transpose_chains

    common.InlinePass()(model)
    # an 8-bit core's DequantizeLinear is what TensorRT fuses into its 8-bit GEMM: folding
    # it (and a tiny model's weights are small enough) would ship the core in float
    onnxscript.optimizer.fold_constants(model, should_fold=_keep_qdq)
    common.RemoveUnusedNodesPass()(model)  # dead clones would hide single-use chains
    merged = merge_transpose_chains(model.graph)
    for cleanup in (
        common.RemoveUnusedNodesPass(),
        common.RemoveUnusedFunctionsPass(),
        common.RemoveUnusedOpsetsPass(),
        common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        common.DeduplicateInitializersPass(),
        common.CommonSubexpressionEliminationPass(),
        common.OutputFixPass(),
        common.NameFixPass(),
    ):
        cleanup(model)
    return merged


def _keep_qdq(node) -> bool | None:
    """``fold_constants``' verdict: never fold a Q/DQ node; the default rules otherwise."""
    return False if node.op_type in ("QuantizeLinear", "DequantizeLinear") else None


@contextlib.contextmanager
def _quiet_logger(name: str):
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _name_output_dims(model) -> None:
    """Give outputs the same dimension names as inputs (the exporter writes 'past_seq + seq')."""
    import onnx_ir as ir

    from armor_export.export.wrapper import DIMS

    for value in model.graph.outputs:
        key = "logits" if value.name == "logits" else "present"
        dims = list(value.shape) if value.shape is not None else []
        named = [
            ir.SymbolicDim(want) if want else dim
            for dim, want in zip(dims, DIMS[key], strict=False)
        ]
        value.shape = ir.Shape(named + dims[len(named) :])


def _save_tokenizer(tokenizer, folder: Path) -> None:
    """``tokenizer.json`` (our runtime's) and ``tokenizer_config.json`` (ORT GenAI's, too)."""
    if tokenizer is None:
        raise UserError("export needs the model's tokenizer (none found beside the model)")
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        src = Path(tmp) / TOKENIZER_FILE
        if not src.is_file():
            raise UserError(
                "the model's tokenizer has no tokenizer.json (a 'fast' tokenizer is needed "
                "by the torch-free runtime)"
            )
        shutil.copyfile(src, folder / TOKENIZER_FILE)
        shutil.copyfile(Path(tmp) / TOKENIZER_CONFIG_FILE, folder / TOKENIZER_CONFIG_FILE)


def _write_genai_config(manifest: ExportManifest, folder: Path) -> None:
    """``genai_config.json`` for the graphs ONNX Runtime (so ORT GenAI) can run at all."""
    from armor_export.genai_config import genai_config

    if manifest.genai_config is not None:
        write_json(folder / manifest.genai_config, genai_config(manifest))


def _token_ids(model, tokenizer) -> Tokens:
    gen = getattr(model, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None) if gen is not None else None
    if eos is None:
        eos = getattr(model.config, "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    eos_ids = [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]) if e is not None]
    # padded positions are masked, but the graph still looks their id up in the embedding:
    # a pad token the tokenizer added beyond the model's vocabulary (Qwen2's tokenizer class
    # adds "<|endoftext|>" when a folder's tokenizer lacks it) would index past the table
    vocab = int(model.config.vocab_size)
    pad = tokenizer.pad_token_id
    if pad is None or not 0 <= pad < vocab:
        pad = next((e for e in eos_ids if 0 <= e < vocab), 0)
    return Tokens(
        eos_token_ids=tuple(eos_ids),
        bos_token_id=tokenizer.bos_token_id,
        pad_token_id=pad,
    )


def model_folder(cfg) -> str | None:
    """A local model's folder relative to the export folder (``Source.folder``); None for a
    hub id or an alias of the cached default model (a name that resolves on any machine)."""
    model = Path(cfg.model).expanduser()
    if not model.is_dir():
        return None
    relative = os.path.relpath(model.resolve(), Path(cfg.output_dir).expanduser().resolve())
    return Path(relative).as_posix()


def _manifest(cfg, model, tokenizer, spec, limits, counts, ckpt, external) -> ExportManifest:
    """The manifest of the files in the export's temporary folder (``external``: the data
    file the graph references, or None); the checks' counts and ``sha256`` still to come."""
    from armor_export.export import reference
    from armor_export.models.registry import adapter_for

    source = Source(model=cfg.model, pruned=ckpt is not None, folder=model_folder(cfg))
    if ckpt is not None:
        blocks = {m["block_size"] for m in ckpt["matrices"].values() if m.get("block_size")}
        source = replace(source, method=ckpt.get("method"), block_sizes=tuple(sorted(blocks)))
    plugin = None
    if cfg.lowering == "plugin":
        plugin = PluginInfo(
            name=reference.PLUGIN_NAME,
            domain=reference.PLUGIN_DOMAIN,
            version=reference.PLUGIN_VERSION,
            namespace=reference.PLUGIN_NAMESPACE,
        )
    return ExportManifest(
        versions=export_versions(),
        config=cfg.to_dict(),
        source=source,
        family=adapter_for(model).family,
        external_data=external,
        tokenizer_config=TOKENIZER_CONFIG_FILE,
        # ORT GenAI runs the graph on ONNX Runtime: no genai_config.json for plugin graphs
        genai_config=None if plugin is not None else GENAI_CONFIG_FILE,
        dtype=cfg.dtype,
        lowering=cfg.lowering,
        graph_revision=GRAPH_REVISION,
        attention=ATTENTION,
        plugin=plugin,
        decoder=spec,
        input_names=tuple(spec.input_names()),
        output_names=tuple(spec.output_names()),
        limits=limits,
        tokens=_token_ids(model, tokenizer),
        counts=dict(counts),
        sha256={},
    )


def export_versions() -> dict:
    import onnx
    import torch
    import transformers

    from armor_export import __version__

    return {
        "armor_export": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnx": onnx.__version__,
    }


def _without_leftovers(out: Path) -> Path:
    """``out`` without the working folders of exports that were killed before they could
    clean up (the caller holds ``out``'s lock, so no live export is using them)."""
    for leftover in out.glob(TMP_PREFIX + "*"):
        if leftover.is_dir():
            log.info("removing %s, left by an export that did not finish", leftover)
            shutil.rmtree(leftover, ignore_errors=True)
    return out


def _move_in(tmp_dir: Path, out: Path, manifest: ExportManifest) -> None:
    """Move the export's files into ``out``; the old manifest goes first (the new one is
    written after the checks), so the folder is no finished export in between.

    An optional file of an earlier export that this one lacks is removed, so that e.g. a
    plugin export does not keep a plain export's genai_config.json.
    """
    files = manifest.files
    (out / MANIFEST).unlink(missing_ok=True)
    for optional in (EXTERNAL_DATA_FILE, GENAI_CONFIG_FILE):
        if optional not in files:
            (out / optional).unlink(missing_ok=True)
    for name in files:
        os.replace(tmp_dir / name, out / name)


def read_export_manifest(folder: str | Path) -> dict:
    """The JSON form of a finished export's manifest, or a clear error (torch-free).

    Kept for scripts that index the JSON; code reads ``ExportManifest.read(folder)``.
    """
    return ExportManifest.read(folder).to_dict()
