"""Everything a pruning report shows, gathered from disk into plain data.

Sources, all optional except the manifest:

- ``<ckpt>/armor_manifest.json``: method, prune config, per-matrix shapes and losses;
- ``<ckpt>/work/jobs/<name>.safetensors``: each ARMOR job's ``history`` (only the
  safetensors metadata is read, never the tensors);
- ``<ckpt>/eval_results.json`` (written by ``evaluate``) and ``armor-export eval --json``
  files given by the user;
- a ``verify_report.json``: given, or found at ``<ckpt>/../verify/`` (the layout of
  ``armor-export build``);
- an 8-bit checkpoint's quantization (``quant`` in its manifest, per matrix the proxy loss
  pruned, quantized and re-fitted): the checkpoint's own, or, for a build that quantized,
  the one its quantize stage wrote;
- a build's other stages (:class:`BuildSources`): given by ``pipeline.build``, or found
  when the checkpoint's folder sits in a build folder (``build_manifest.json`` beside it):
  the 8-bit checkpoint, the export manifest, the engine's ``build_report.json`` and the
  verify report, at the paths the stage registry gives them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from armor_export.errors import CorruptFileError, UserError
from armor_export.io import read_json, read_metadata
from armor_export.prune import methods
from armor_export.prune.methods import PruneMethod

# the order projections are shown in; other names follow alphabetically
PROJECTION_ORDER = ("q", "k", "v", "o", "gate", "up", "down")
JOBS_DIR = Path("work") / "jobs"
RANKS_DIR = Path("work") / "ranks"


class NotACheckpointError(UserError):
    """The report's input is not a pruned checkpoint directory."""


@dataclass
class MatrixRow:
    """One pruned matrix: shape, wrappers and the proxy losses its job recorded."""

    name: str
    layer: int | None  # decoder layer index, None outside the decoder layers
    projection: str  # "q", "k", ..., "down", or the module's own last name
    kind: str  # "armor" | "sparse"
    d_out: int
    d_in: int
    block_size: int | None
    proxy_loss: float | None
    nowag_loss: float | None
    iterations: int | None = None
    seconds: float | None = None
    history: list[float] = field(default_factory=list)  # loss per iteration, [0] = start

    @property
    def ratio(self) -> float | None:
        """``proxy_loss / nowag_loss`` (≤ 1 is ARMOR's promise)."""
        if self.proxy_loss is None or self.nowag_loss is None or self.nowag_loss <= 0:
            return None
        return self.proxy_loss / self.nowag_loss

    @property
    def at_or_below_nowag(self) -> bool | None:
        if self.proxy_loss is None or self.nowag_loss is None:
            return None
        return self.proxy_loss <= self.nowag_loss


@dataclass
class QuantRow:
    """One quantized matrix: its proxy loss at each step of ``quant/api.quantize_matrix``."""

    name: str
    layer: int | None
    projection: str
    kind: str  # "armor" | "sparse"
    loss_pruned: float | None
    loss_quantized: float | None
    loss_refit: float | None = None  # ARMOR with the re-fit only
    loss_smoothed: float | None = None  # with smoothing only
    refit_rounds: int | None = None
    seconds: float | None = None

    @property
    def final(self) -> float | None:
        """The loss the checkpoint keeps: re-fitted when there was a re-fit."""
        return self.loss_refit if self.loss_refit is not None else self.loss_quantized

    @property
    def final_ratio(self) -> float | None:
        """``final / loss_pruned``: what quantization (and the re-fit) cost this matrix."""
        if self.final is None or self.loss_pruned is None or self.loss_pruned <= 0:
            return None
        return self.final / self.loss_pruned

    @property
    def quantized_ratio(self) -> float | None:
        if self.loss_quantized is None or self.loss_pruned is None or self.loss_pruned <= 0:
            return None
        return self.loss_quantized / self.loss_pruned

    @property
    def refit_raised(self) -> bool:
        """The re-fit ended above the quantized loss (it keeps its best iterate: never)."""
        return (
            self.loss_refit is not None
            and self.loss_quantized is not None
            and self.loss_refit > self.loss_quantized
        )

    @property
    def refit_improved(self) -> bool:
        return (
            self.loss_refit is not None
            and self.loss_quantized is not None
            and self.loss_refit < self.loss_quantized
        )


@dataclass
class QuantInfo:
    """An 8-bit checkpoint's quantization: its manifest's ``quant`` and one row per core."""

    checkpoint: Path
    settings: dict  # the manifest's "quant": scheme, refit, refit_iterations, smoothing, ...
    rows: list[QuantRow]

    @property
    def scheme(self) -> str:
        return str(self.settings.get("scheme", "?"))

    @property
    def scheme_title(self) -> str:
        """The scheme as TensorRT and papers spell it (INT8, FP8)."""
        from armor_export.quant import schemes

        return schemes.get(self.scheme).title if self.scheme in schemes.names() else self.scheme

    @property
    def refitted(self) -> list[QuantRow]:
        return [r for r in self.rows if r.loss_refit is not None]

    @property
    def raised(self) -> list[QuantRow]:
        """Matrices whose re-fit ended above their quantized loss (none, by construction)."""
        return [r for r in self.rows if r.refit_raised]


@dataclass
class EvalRow:
    """One perplexity measurement."""

    model: str
    pruned: bool
    text: str
    seqlen: int | None
    windows: int | None
    tokens: int | None
    perplexity: float
    source: str  # the file it came from


@dataclass
class Parity:
    """A verify report, reduced to what the pruning report shows."""

    path: Path
    passed: bool
    export_dir: str
    model: str
    dtype: str
    lowering: str
    runners: list[str]
    skipped: dict[str, str]
    error: str | None
    rows: list[dict]  # VerifyReport.summary_rows()
    verdict: str = ""  # VerifyReport.verdict(): what was compared, and what was not
    reference: str = "pytorch"
    engine: dict | None = None  # the engine verify was given (dir, backend, target, sha)
    engine_executed: bool = False
    engine_not_run_reason: str | None = None


@dataclass
class StageRow:
    """One stage of a build as the build ran (or last recorded) it."""

    name: str
    status: str  # "done", "skipped (up to date)", "provided", "failed", "not selected", ...
    seconds: float | None = None
    detail: str = ""


@dataclass
class BuildSources:
    """Where a build's stages wrote and how each went (``pipeline.report_sources``).

    A folder is None when its stage did not run in this build (not selected, not reached):
    the report then says so instead of showing files an earlier build left.
    """

    folder: Path
    stages: list[StageRow]
    quantized_dir: Path | None = None  # the 8-bit checkpoint, when the quantize stage ran
    export_dir: Path | None = None
    engine_dir: Path | None = None
    verify_report: Path | None = None
    verdict: str | None = None  # the build's final line, when the build itself writes
    command: str = "armor-export report"  # what wrote the report (its footer says so)

    def status(self, name: str) -> str:
        row = next((s for s in self.stages if s.name == name), None)
        return row.status if row is not None else "not reached"

    def detail(self, name: str) -> str:
        row = next((s for s in self.stages if s.name == name), None)
        return row.detail if row is not None else ""


@dataclass
class ExportInfo:
    """An export folder, from its ``export_manifest.json`` (files are sized, not hashed)."""

    folder: Path
    dtype: str
    lowering: str
    family: str
    attention: str | None
    graph_revision: int | None
    counts: dict
    external_data: str | None
    plugin: str | None  # the plugin op (name, domain) of a plugin-lowered graph
    limits: dict
    files: list[tuple[str, int | None]]  # name, bytes (None: missing)


@dataclass
class EngineInfo:
    """An engine folder, from its ``build_report.json``."""

    folder: Path
    report: dict
    rows: list[tuple[str, str]]  # engine.api.report_rows
    engine_bytes: int | None  # size of model.engine on disk (None: missing)

    @property
    def built(self) -> bool:
        return self.engine_bytes is not None and self.engine_bytes == self.report.get(
            "engine_bytes"
        )


@dataclass
class BuildInfo:
    """What a build's stages left on disk; ``problems`` names a file that could not be read."""

    sources: BuildSources
    quantize: QuantInfo | None = None
    export: ExportInfo | None = None
    engine: EngineInfo | None = None
    problems: dict[str, str] = field(default_factory=dict)  # stage -> why it is not shown


@dataclass
class ReportData:
    checkpoint: Path
    manifest: dict
    matrices: list[MatrixRow]
    evals: list[EvalRow] = field(default_factory=list)
    parity: Parity | None = None
    history_note: str | None = None  # why there are no curves, when there are none
    # wall time of the prune run per process (work/ranks/rank<r>.json): one record for a
    # single-process run, one per rank under torchrun
    rank_seconds: list[float] = field(default_factory=list)
    build: BuildInfo | None = None  # the build's other stages, when the checkpoint is a build's
    # the checkpoint's own quantization when it is 8-bit, else the build's 8-bit checkpoint's
    quant: QuantInfo | None = None

    @property
    def method(self) -> str:
        return str(self.manifest.get("method", "?"))

    @property
    def method_info(self) -> PruneMethod | None:
        """The registered method that made the checkpoint (None: unknown to this build)."""
        return methods.find(self.method)

    @property
    def method_name(self) -> str:
        """The method as papers spell it."""
        info = self.method_info
        return info.title if info else self.method.capitalize()

    @property
    def bounded_by_nowag(self) -> bool:
        """The method promises every matrix at or below its NoWag-P loss (ARMOR)."""
        info = self.method_info
        return bool(info and info.bounded_by_nowag)

    @property
    def prune_config(self) -> dict:
        cfg = self.manifest.get("prune_config")
        return cfg if isinstance(cfg, dict) else {}

    @property
    def with_losses(self) -> list[MatrixRow]:
        return [m for m in self.matrices if m.ratio is not None]

    @property
    def above_nowag(self) -> list[MatrixRow]:
        """Matrices that ended above their NoWag-P proxy loss (none, for ARMOR)."""
        return [m for m in self.matrices if m.at_or_below_nowag is False]


def collect(
    checkpoint_dir: str | Path,
    verify_report: str | Path | None = None,
    eval_files: tuple[str | Path, ...] | list[str | Path] = (),
    build: BuildSources | None = None,
) -> ReportData:
    """Read a pruned checkpoint (and optional eval/verify files) into :class:`ReportData`.

    ``build`` names the other stages' folders; without it they are looked up beside the
    checkpoint when it sits in a build folder. A given ``verify_report`` wins over both.
    """
    ckpt = Path(checkpoint_dir)
    manifest = read_manifest(ckpt)
    matrices = [_matrix_row(name, info, ckpt) for name, info in manifest["matrices"].items()]
    matrices.sort(key=_matrix_order)
    history_note = _attach_histories(_job_checkpoint(ckpt, manifest), matrices)
    evals = read_eval_results(ckpt) + [row for f in eval_files for row in read_eval_file(f)]
    build = build if build is not None else find_build(ckpt)
    if verify_report is None and build is not None:
        found = build.verify_report
        verify_report = found if found is not None and found.is_file() else None
    elif verify_report is None:
        found = ckpt.resolve().parent / "verify" / "verify_report.json"
        verify_report = found if found.is_file() else None
    parity = read_parity(verify_report) if verify_report is not None else None
    info = read_build(build) if build is not None else None
    quant = read_quant(ckpt, manifest) if manifest.get("quant") else None
    if quant is None and info is not None:
        quant = info.quantize
    return ReportData(
        ckpt, manifest, matrices, evals, parity, history_note, _rank_seconds(ckpt), info, quant
    )


def read_manifest(ckpt: Path) -> dict:
    """The checkpoint's manifest, or a one-line error saying what ``ckpt`` is instead."""
    from armor_export.prune.checkpoint import MANIFEST, read_checkpoint_manifest

    if not ckpt.is_dir():
        raise NotACheckpointError(f"{ckpt}: no such directory")
    if not (ckpt / MANIFEST).is_file():
        raise NotACheckpointError(
            f"{ckpt} is not a pruned checkpoint (no {MANIFEST}); "
            "make one with `armor-export prune -o DIR`"
        )
    manifest = read_checkpoint_manifest(ckpt)  # format, version and matrix table checked
    if not manifest["matrices"]:
        raise CorruptFileError(f"{ckpt / MANIFEST}: no pruned matrices listed")
    return manifest


def split_name(name: str) -> tuple[int | None, str]:
    """(decoder layer index, projection) of a module name such as
    ``model.layers.3.self_attn.q_proj`` -> ``(3, "q")``."""
    parts = name.split(".")
    layer = next((int(p) for p in parts if p.isdigit()), None)
    projection = parts[-1]
    return layer, projection[: -len("_proj")] if projection.endswith("_proj") else projection


def projection_key(projection: str) -> tuple[int, str]:
    if projection in PROJECTION_ORDER:
        return PROJECTION_ORDER.index(projection), ""
    return len(PROJECTION_ORDER), projection


def _matrix_order(row: MatrixRow) -> tuple:
    layer = -1 if row.layer is None else row.layer
    return (row.layer is None, layer, projection_key(row.projection), row.name)


def _finite(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _matrix_row(name: str, info, ckpt: Path) -> MatrixRow:
    where = f"{ckpt / 'armor_manifest.json'}: matrix {name}"
    if not isinstance(info, dict):
        raise CorruptFileError(f"{where}: entry is not a table")
    shape = info.get("shape")
    if not (isinstance(shape, list) and len(shape) == 2 and all(isinstance(d, int) for d in shape)):
        raise CorruptFileError(f"{where}: bad shape {shape!r}")
    kind = info.get("kind")
    block_size = info.get("block_size")
    if kind == "armor" and not (isinstance(block_size, int) and block_size > 0):
        raise CorruptFileError(f"{where}: ARMOR matrix without a block size")
    layer, projection = split_name(name)
    iterations = info.get("iterations")
    return MatrixRow(
        name=name,
        layer=layer,
        projection=projection,
        kind=str(kind),
        d_out=shape[0],
        d_in=shape[1],
        block_size=block_size if kind == "armor" else None,
        proxy_loss=_finite(info.get("proxy_loss")),
        nowag_loss=_finite(info.get("nowag_loss")),
        iterations=iterations if isinstance(iterations, int) else None,
        seconds=_finite(info.get("seconds")),
    )


def _job_checkpoint(ckpt: Path, manifest: dict) -> Path:
    """Where the ARMOR jobs' histories are: the checkpoint itself, or for an 8-bit checkpoint
    without a job store the pruned checkpoint it was quantized from, when that is still the
    same file (its weights' sha256 is the one the quantization recorded)."""
    quant = manifest.get("quant")
    if not isinstance(quant, dict) or (ckpt / JOBS_DIR).is_dir():
        return ckpt
    source = quant.get("source") if isinstance(quant.get("source"), dict) else {}
    path = source.get("checkpoint")
    if not isinstance(path, str) or not (Path(path) / JOBS_DIR).is_dir():
        return ckpt
    from armor_export.prune.checkpoint import MANIFEST, WEIGHTS

    try:
        recorded = read_json(Path(path) / MANIFEST).get("sha256", {}).get(WEIGHTS)
    except (UserError, AttributeError):
        return ckpt
    return Path(path) if recorded and recorded == source.get("sha256") else ckpt


def _attach_histories(ckpt: Path, matrices: list[MatrixRow]) -> str | None:
    """Read each ARMOR job's ``history`` from its job file's metadata.

    Returns a note when no curve can be drawn. A job store that exists but lacks the file
    of an ARMOR matrix (or holds a corrupt one) is an error; a checkpoint copied without
    its ``work/`` folder only loses the curves.
    """
    armor = [m for m in matrices if m.kind == "armor"]
    if not armor:
        return "no ARMOR matrices: loss curves exist only for ARMOR runs"
    jobs = ckpt / JOBS_DIR
    if not jobs.is_dir():
        return f"no job store ({jobs} is missing), so no per-iteration losses"
    missing = [m.name for m in armor if not (jobs / f"{m.name}.safetensors").is_file()]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise CorruptFileError(
            f"{jobs}: no job file for {', '.join(missing[:3])}{more} "
            "(an interrupted or different run?)"
        )
    for m in armor:
        m.history = _job_history(jobs / f"{m.name}.safetensors", m.name)
    return None


def _job_history(path: Path, name: str) -> list[float]:
    meta = read_metadata(path)
    if meta.get("name") != name:
        raise CorruptFileError(f"{path}: holds matrix {meta.get('name')!r}, not {name!r}")
    try:
        metrics = json.loads(meta["metrics"])
    except (KeyError, json.JSONDecodeError):
        raise CorruptFileError(f"{path}: no readable metrics in its metadata") from None
    history = metrics.get("history") if isinstance(metrics, dict) else None
    if not isinstance(history, list):
        raise CorruptFileError(f"{path}: metrics hold no loss history")
    return [v if (v := _finite(x)) is not None else math.nan for x in history]


# --- quantization ---------------------------------------------------------------------


def read_quant(ckpt: Path, manifest: dict) -> QuantInfo:
    """The ``quant`` record of an 8-bit checkpoint's manifest and each core's losses; a core
    without its losses is a corrupt manifest (``quantize_checkpoint`` records every one)."""
    where = ckpt / "armor_manifest.json"
    settings = manifest.get("quant")
    if not isinstance(settings, dict) or not isinstance(settings.get("scheme"), str):
        raise CorruptFileError(f"{where}: 'quant' names no scheme")
    rows = []
    for name, info in manifest["matrices"].items():
        entry = info.get("quant") if isinstance(info, dict) else None
        if not isinstance(entry, dict):
            raise CorruptFileError(f"{where}: matrix {name} has no quantization losses")
        pruned, quantized = _finite(entry.get("loss_pruned")), _finite(entry.get("loss_quantized"))
        if pruned is None or quantized is None:
            raise CorruptFileError(
                f"{where}: matrix {name}: loss_pruned / loss_quantized missing or not finite"
            )
        if "loss_refit" in entry and _finite(entry["loss_refit"]) is None:
            raise CorruptFileError(f"{where}: matrix {name}: loss_refit is not finite")
        layer, projection = split_name(name)
        rounds = entry.get("refit_rounds")
        rows.append(
            QuantRow(
                name=name,
                layer=layer,
                projection=projection,
                kind=str(info.get("kind")),
                loss_pruned=pruned,
                loss_quantized=quantized,
                loss_refit=_finite(entry.get("loss_refit")),
                loss_smoothed=_finite(entry.get("loss_smoothed")),
                refit_rounds=rounds if isinstance(rounds, int) else None,
                seconds=_finite(entry.get("seconds")),
            )
        )
    rows.sort(key=lambda r: (r.layer is None, -1 if r.layer is None else r.layer,
                             projection_key(r.projection), r.name))  # fmt: skip
    return QuantInfo(ckpt, settings, rows)


def read_quantized(folder: Path) -> QuantInfo | None:
    """A build's 8-bit checkpoint (the quantize stage's folder), or None when the stage has
    not finished it."""
    from armor_export.prune.checkpoint import MANIFEST

    if not (folder / MANIFEST).is_file():
        return None
    manifest = read_manifest(folder)
    if not manifest.get("quant"):
        raise CorruptFileError(f"{folder / MANIFEST}: not an 8-bit checkpoint (no 'quant')")
    return read_quant(folder, manifest)


# --- perplexity results ---------------------------------------------------------------


def read_eval_results(ckpt: Path) -> list[EvalRow]:
    """The rows ``evaluate`` recorded in ``<ckpt>/eval_results.json`` (none if absent)."""
    from armor_export.eval.api import EVAL_RESULTS, read_recorded

    path = ckpt / EVAL_RESULTS
    return [_eval_row(entry, path, str(ckpt), True) for entry in read_recorded(path)]


def read_eval_file(path: str | Path) -> list[EvalRow]:
    """Rows of an ``armor-export eval --json`` file (or of another ``eval_results.json``)."""
    path = Path(path)
    data = read_json(path)
    if isinstance(data, dict) and "results" in data:
        from armor_export.eval.api import read_recorded

        model = str(path.parent)
        return [_eval_row(entry, path, model, True) for entry in read_recorded(path)]
    if not isinstance(data, dict):
        raise CorruptFileError(f"{path}: not an `armor-export eval --json` result")
    return [_eval_row(data, path, None, None)]


def _eval_row(entry: dict, path: Path, model: str | None, pruned: bool | None) -> EvalRow:
    ppl = _finite(entry.get("perplexity")) if isinstance(entry, dict) else None
    if ppl is None:
        raise CorruptFileError(f"{path}: not an `armor-export eval --json` result (no perplexity)")

    def opt_int(key: str) -> int | None:
        value = entry.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    return EvalRow(
        model=str(entry.get("model", "?")) if model is None else model,
        pruned=bool(entry.get("pruned", False)) if pruned is None else pruned,
        text=str(entry.get("text", "?")),
        seqlen=opt_int("seqlen"),
        windows=opt_int("windows"),
        tokens=opt_int("tokens"),
        perplexity=ppl,
        source=str(path),
    )


# --- parity ---------------------------------------------------------------------------


def read_parity(path: str | Path) -> Parity:
    """A ``verify_report.json`` as written by ``armor_export/verify/report.py``."""
    from dataclasses import fields

    from armor_export.verify.report import OutputParity, VerifyReport

    path = Path(path)
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
        raise CorruptFileError(f"{path}: not a verify report (no 'rows')")
    names = {f.name for f in fields(VerifyReport)} - {"rows"}
    row_names = [f.name for f in fields(OutputParity)]
    try:
        rows = [OutputParity(**{k: row[k] for k in row_names}) for row in data["rows"]]
        report = VerifyReport(**{k: v for k, v in data.items() if k in names}, rows=rows)
        summary, verdict = report.summary_rows(), report.verdict()
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptFileError(f"{path}: malformed verify report ({exc})") from None
    return Parity(
        path=path,
        passed=report.passed,
        export_dir=str(report.export_dir),
        model=str(report.model),
        dtype=str(report.dtype),
        lowering=str(report.lowering),
        runners=[str(r) for r in report.runners],
        skipped={str(k): str(v) for k, v in dict(report.skipped).items()},
        error=report.error,
        rows=summary,
        verdict=verdict,
        reference=str(report.reference),
        engine=report.engine if isinstance(report.engine, dict) else None,
        engine_executed=bool(report.engine_executed),
        engine_not_run_reason=report.engine_not_run_reason,
    )


def _rank_seconds(ckpt: Path) -> list[float]:
    """Wall time of each process of the prune run, as it recorded it in ``work/ranks/``."""
    seconds = []
    for path in sorted((ckpt / RANKS_DIR).glob("rank*.json")):
        record = read_json(path)
        value = _finite(record.get("seconds")) if isinstance(record, dict) else None
        if value is not None:
            seconds.append(value)
    return seconds


# --- the other stages of a build -------------------------------------------------------


def find_build(ckpt: Path) -> BuildSources | None:
    """The build whose checkpoint ``ckpt`` is (its folder holds ``build_manifest.json``)."""
    from armor_export.pipeline import MANIFEST, recorded_sources

    folder = ckpt.resolve().parent
    return recorded_sources(folder, ckpt) if (folder / MANIFEST).is_file() else None


def read_build(sources: BuildSources) -> BuildInfo:
    """The 8-bit checkpoint, export and engine a build left; an unreadable file is named,
    never fatal (the report of a failed build shows what exists)."""
    info = BuildInfo(sources)
    for stage, folder, read in (
        ("quantize", sources.quantized_dir, read_quantized),
        ("export", sources.export_dir, read_export),
        ("engine", sources.engine_dir, read_engine),
    ):
        try:
            setattr(info, stage, read(folder) if folder is not None else None)
        except UserError as exc:
            info.problems[stage] = str(exc)
    return info


def read_export(folder: Path) -> ExportInfo | None:
    """An export folder's manifest (parsed and checked for form; its files only sized), or
    None when the export has not finished."""
    from armor_export.export_manifest import MANIFEST, ExportManifest

    path = folder / MANIFEST
    if not path.is_file():
        return None
    manifest = ExportManifest.from_dict(read_json(path), where=path)
    files = [(name, _size(folder / name)) for name in [MANIFEST, *manifest.files]]
    plugin = manifest.plugin
    return ExportInfo(
        folder=folder,
        dtype=manifest.dtype,
        lowering=manifest.lowering,
        family=manifest.family,
        attention=manifest.attention,
        graph_revision=manifest.graph_revision,
        counts=dict(manifest.counts),
        external_data=manifest.external_data,
        plugin=f"{plugin.name} ({plugin.domain})" if plugin is not None else None,
        limits=manifest.limits.to_dict(),
        files=files,
    )


def read_engine(folder: Path) -> EngineInfo | None:
    """An engine folder's ``build_report.json`` and whether its ``model.engine`` is there, or
    None when no engine was built."""
    from armor_export.engine.api import ENGINE_FILE, REPORT_JSON, report_rows

    path = folder / REPORT_JSON
    if not path.is_file():
        return None
    report = read_json(path)
    try:
        rows = report_rows(report)
    except (KeyError, TypeError, AttributeError) as exc:
        raise CorruptFileError(f"{path}: not an engine build report ({exc!r})") from None
    return EngineInfo(folder, report, rows, _size(folder / ENGINE_FILE))


def _size(path: Path) -> int | None:
    return path.stat().st_size if path.is_file() else None
