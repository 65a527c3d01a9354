"""``armor-export build``: prune → export → engine → verify, resumable stage by stage.

Every stage writes its artefacts under ``output_dir`` and a record into
``build_manifest.json`` (config hash, input hash, output hashes, versions, seconds). A
re-run skips a stage whose record still matches (same config, same input, outputs intact)
and redoes it otherwise; a failed stage is recorded as failed and simply runs again (the
prune stage also resumes its own finished jobs).

The stages and their order come from the registry in ``armor_export/stages/`` (how to add
one is written there); this module only knows the skip / run / record logic.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from armor_export.config import BuildConfig
from armor_export.errors import UserError
from armor_export.io import read_json, sha256_file, write_json
from armor_export.progress import NullReporter, Reporter
from armor_export.stages import check_names, registered

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

    def verdict(self) -> str:
        """The final line: PASSED/FAILED with what the verify stage compared (never bare)."""
        failed = next((s for s in self.stages if s.status == "failed"), None)
        if failed is not None:
            detail = failed.detail.removeprefix("FAILED: ")
            return f"FAILED: {failed.name}: {detail or 'failed'}"
        verify = next((s for s in self.stages if s.name == "verify"), None)
        if verify is None or verify.status in ("not selected", "provided"):
            return "PASSED: " + ", ".join(
                f"{s.name} {s.status}" for s in self.stages if s.status != "not selected"
            ) + "; nothing verified (verify not selected)"  # fmt: skip
        checked = verify.detail.removeprefix("PASSED: ")
        up_to_date = " (verify up to date)" if verify.status.startswith("skipped") else ""
        return f"{'PASSED' if self.passed else 'FAILED'}: {checked}{up_to_date}"


def stage_configs(cfg: BuildConfig) -> dict:
    """Each registered stage's own config with its paths inside ``cfg.output_dir``."""
    return {stage.name: stage.configure(cfg) for stage in registered()}


def _hash_config(stage_cfg) -> str:
    text = json.dumps(stage_cfg.to_dict(), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def build(cfg: BuildConfig, reporter: Reporter | None = None, force: tuple = ()) -> BuildResult:
    """Run the selected stages in order; a finished, unchanged stage is skipped. One build
    at a time writes a build folder (``locks.hold``)."""
    from armor_export.locks import hold

    cfg.validate()
    check_names(force, "force")
    with hold(cfg.output_dir, "build"):
        return _build(cfg, reporter, force)


def _build(cfg: BuildConfig, reporter: Reporter | None, force: tuple) -> BuildResult:
    reporter = reporter or NullReporter()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest = _read_manifest(out)
    configs = stage_configs(cfg)
    result = BuildResult(out)
    upstream = ""  # hash of the previous stage's outputs
    for stage in registered():
        name, stage_cfg = stage.name, configs[stage.name]
        provided = stage.provided(cfg)
        if provided is not None:
            result.stages.append(StageResult(name, "provided", detail=provided.detail))
            upstream = _hash_paths(provided.outputs)
            continue
        if name not in cfg.stages:
            result.stages.append(StageResult(name, "not selected"))
            if all(p.is_file() for p in stage.outputs(stage_cfg)):
                upstream = _hash_paths(stage.outputs(stage_cfg))
            continue
        # e.g. export's graph revision: a newer graph form redoes the export and what follows
        key = {"config": _hash_config(stage_cfg), "input": upstream, **stage.key_parts(stage_cfg)}
        record = manifest["stages"].get(name, {})
        if name not in force and _up_to_date(record, key, stage.outputs(stage_cfg)):
            detail = record.get("detail") or "manifest"
            result.stages.append(StageResult(name, "skipped (up to date)", detail=detail))
            upstream = record["outputs_hash"]
            continue
        start = time.perf_counter()
        try:
            detail, passed = stage.run(stage_cfg, reporter)
        except (UserError, KeyboardInterrupt) as exc:
            seconds = time.perf_counter() - start
            manifest["stages"][name] = {**key, "status": "failed", "error": str(exc)[:500]}
            write_json(out / MANIFEST, manifest)
            result.stages.append(StageResult(name, "failed", seconds, str(exc)[:200]))
            raise
        seconds = time.perf_counter() - start
        upstream = _hash_paths(stage.outputs(stage_cfg))
        manifest["stages"][name] = {
            **key,
            "status": "done" if passed else "failed",
            "outputs_hash": upstream,
            "seconds": round(seconds, 1),
            "detail": detail,
            "config_values": stage_cfg.to_dict(),
        }
        write_json(out / MANIFEST, manifest)
        result.stages.append(StageResult(name, "done" if passed else "failed", seconds, detail))
        if not passed:
            break
    # passed: nothing failed and every selected stage was reached (a failure stops the loop)
    reached = {s.name for s in result.stages}
    result.passed = all(s.status != "failed" for s in result.stages) and set(cfg.stages) <= reached
    return result


def _hash_paths(paths: list[Path]) -> str:
    return hashlib.sha256("".join(sha256_file(p) for p in paths).encode()).hexdigest()[:16]


def _up_to_date(record: dict, key: dict, outputs: list[Path]) -> bool:
    if record.get("status") != "done" or any(record.get(k) != v for k, v in key.items()):
        return False
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
