"""``armor-export build``: prune → export → engine → verify, resumable stage by stage.

Every stage writes its artefacts under ``output_dir`` and a record into
``build_manifest.json`` (config hash, input hash, output hashes, versions, seconds). A
re-run skips a stage whose record still matches (same config, same input, outputs intact)
and redoes it otherwise; a failed stage is recorded as failed and simply runs again (the
prune stage also resumes its own finished jobs).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from armor_export.config import BuildConfig
from armor_export.errors import UserError
from armor_export.export.api import GRAPH_REVISION
from armor_export.io import read_json, sha256_file, write_json
from armor_export.progress import NullReporter, Reporter

log = logging.getLogger(__name__)

MANIFEST = "build_manifest.json"
FORMAT = "armor-export-build"


@dataclass
class StageResult:
    name: str
    status: str  # "done" | "skipped (up to date)" | "provided" | "failed" | "not selected"
    seconds: float = 0.0
    detail: str = ""


@dataclass
class BuildResult:
    output_dir: Path
    stages: list[StageResult] = field(default_factory=list)
    passed: bool = False


def stage_configs(cfg: BuildConfig) -> dict:
    """Each stage's own config with its paths inside ``cfg.output_dir``."""
    out = Path(cfg.output_dir)
    checkpoint = cfg.model if _is_checkpoint(cfg.model) else str(out / "checkpoint")
    return {
        "prune": replace(cfg.prune, model=cfg.model, output_dir=str(out / "checkpoint")),
        "export": replace(cfg.export, model=checkpoint, output_dir=str(out / "onnx")),
        "engine": replace(
            cfg.engine, export_dir=str(out / "onnx"), output_dir=str(out / "engine")
        ),  # fmt: skip
        "verify": replace(
            cfg.verify,
            export_dir=str(out / "onnx"),
            model=checkpoint,
            report_dir=str(out / "verify"),
        ),  # fmt: skip
    }


def _is_checkpoint(model: str) -> bool:
    from armor_export.prune.checkpoint import is_pruned_checkpoint

    return is_pruned_checkpoint(model)


def _hash_config(stage_cfg) -> str:
    text = json.dumps(stage_cfg.to_dict(), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _outputs(stage: str, cfg) -> list[Path]:
    """The files that prove a stage finished (their hashes chain the stages)."""
    if stage == "prune":
        root = Path(cfg.output_dir)
        return [root / "armor_manifest.json", root / "model.safetensors"]
    if stage == "export":
        return [Path(cfg.output_dir) / "export_manifest.json"]
    if stage == "engine":
        return [Path(cfg.output_dir) / "model.engine", Path(cfg.output_dir) / "build_report.json"]
    return [Path(cfg.report_dir) / "verify_report.json"]


def build(cfg: BuildConfig, reporter: Reporter | None = None, force: tuple = ()) -> BuildResult:
    """Run the selected stages in order; a finished, unchanged stage is skipped."""
    cfg.validate()
    reporter = reporter or NullReporter()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest = _read_manifest(out)
    configs = stage_configs(cfg)
    result = BuildResult(out)
    upstream = ""  # hash of the previous stage's outputs
    for stage in ("prune", "export", "engine", "verify"):
        stage_cfg = configs[stage]
        if stage == "prune" and _is_checkpoint(cfg.model):
            result.stages.append(StageResult("prune", "provided", detail=cfg.model))
            upstream = _hash_paths([Path(cfg.model) / "armor_manifest.json"])
            continue
        if stage not in cfg.stages:
            result.stages.append(StageResult(stage, "not selected"))
            if all(p.is_file() for p in _outputs(stage, stage_cfg)):
                upstream = _hash_paths(_outputs(stage, stage_cfg))
            continue
        key = {"config": _hash_config(stage_cfg), "input": upstream}
        if stage == "export":  # a newer graph form redoes the export (and what follows)
            key["graph_revision"] = GRAPH_REVISION
        record = manifest["stages"].get(stage, {})
        if stage not in force and _up_to_date(record, key, stage, stage_cfg):
            result.stages.append(StageResult(stage, "skipped (up to date)", detail="manifest"))
            upstream = record["outputs_hash"]
            continue
        start = time.perf_counter()
        try:
            detail, passed = _run_stage(stage, stage_cfg, reporter)
        except (UserError, KeyboardInterrupt) as exc:
            seconds = time.perf_counter() - start
            manifest["stages"][stage] = {**key, "status": "failed", "error": str(exc)[:500]}
            write_json(out / MANIFEST, manifest)
            result.stages.append(StageResult(stage, "failed", seconds, str(exc)[:200]))
            raise
        seconds = time.perf_counter() - start
        upstream = _hash_paths(_outputs(stage, stage_cfg))
        manifest["stages"][stage] = {
            **key,
            "status": "done" if passed else "failed",
            "outputs_hash": upstream,
            "seconds": round(seconds, 1),
            "detail": detail,
            "config_values": stage_cfg.to_dict(),
        }
        write_json(out / MANIFEST, manifest)
        result.stages.append(StageResult(stage, "done" if passed else "failed", seconds, detail))
        if not passed:
            break
    verify_rec = manifest["stages"].get("verify", {})
    result.passed = all(s.status != "failed" for s in result.stages) and (
        "verify" not in cfg.stages or verify_rec.get("status") == "done"
    )
    return result


def _hash_paths(paths: list[Path]) -> str:
    return hashlib.sha256("".join(sha256_file(p) for p in paths).encode()).hexdigest()[:16]


def _up_to_date(record: dict, key: dict, stage: str, stage_cfg) -> bool:
    if record.get("status") != "done" or any(record.get(k) != v for k, v in key.items()):
        return False
    outputs = _outputs(stage, stage_cfg)
    return all(p.is_file() for p in outputs) and _hash_paths(outputs) == record["outputs_hash"]


def _read_manifest(out: Path) -> dict:
    path = out / MANIFEST
    if path.is_file():
        data = read_json(path)
        if isinstance(data, dict) and data.get("format") == FORMAT:
            return data
        log.warning("%s is not a build manifest: starting a fresh one", path)
    from armor_export import __version__

    return {"format": FORMAT, "format_version": 1, "armor_export": __version__, "stages": {}}


def _run_stage(stage: str, stage_cfg, reporter) -> tuple[str, bool]:
    """Run one stage; returns (one-line summary, passed)."""
    if stage == "prune":
        from armor_export.prune.api import prune

        res = prune(stage_cfg, reporter)
        return f"{len(res.metrics)} matrices pruned ({stage_cfg.method})", True
    if stage == "export":
        from armor_export.export import export_onnx

        res = export_onnx(stage_cfg, reporter)
        counts = res.manifest["counts"]
        return f"{counts['cores']} 2:4 cores ({stage_cfg.dtype}, {stage_cfg.lowering})", True
    if stage == "engine":
        from armor_export.engine import build_engine

        res = build_engine(stage_cfg, reporter)
        rep = res.report
        return (
            f"{rep['backend']} {rep['compute_capability']}, {rep['engine_bytes'] / 2**20:.1f} MiB",
            True,
        )
    from armor_export.verify import verify

    res = verify(stage_cfg, reporter)
    worst = max((r.max_abs for r in res.report.rows), default=float("nan"))
    runners = ", ".join(res.report.runners)
    return f"{runners}: max abs err {worst:.2g}" + ("" if res.passed else " FAILED"), res.passed
