"""``armor-export build``: prune → quantize → export → engine → verify, resumable stage by
stage.

Every stage writes its artefacts under ``output_dir`` and a record into
``build_manifest.json`` (config hash, input hash, output hashes, versions, seconds). A
re-run skips a stage whose record still matches (same config, same input, outputs intact)
and redoes it otherwise; a failed stage is recorded as failed and simply runs again (the
prune stage also resumes its own finished jobs).

The stages and their order come from the registry in ``armor_export/stages/`` (how to add
one is written there); this module only knows the skip / run / record logic.

After the stages, run or skipped, failed or not, the build (re)writes one report of every
stage (``report_dir``): the pruning report plus the quantization (when the build
quantized), the export, the engine and the parity results, read from the folders the stage
registry gives them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from armor_export.config import BuildConfig
from armor_export.engine.folder import BUILD_MANIFEST
from armor_export.errors import UserError
from armor_export.io import read_json, sha256_file, user_os_error, write_json
from armor_export.progress import NullReporter, Reporter
from armor_export.stages import check_names, get, registered

if TYPE_CHECKING:
    from armor_export.report.collect import BuildSources

log = logging.getLogger(__name__)

MANIFEST = BUILD_MANIFEST  # "build_manifest.json": engine.folder.engine_dir_of reads it too
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
    report: Path | None = None  # the build's report.html
    report_error: str | None = None  # why it could not be written

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


def _hash_config(stage_cfg, places: dict[str, str]) -> str:
    text = json.dumps(_relocated(stage_cfg.to_dict(), places), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _places(cfg: BuildConfig) -> dict[str, str]:
    """The paths a stage config holds, as the build's record writes them: each stage's
    folder relative to the build folder (another spelling, a moved or copied build folder
    is the same build), and the model and the calibration text by role, since their
    content is keyed (the prune stage's ``inputs``, a given checkpoint's outputs hash)."""
    places = {cfg.model: "<model>", cfg.prune.calibration.text: "<calibration text>"}
    places.update({str(s.folder_in(cfg)): f"<build>/{s.folder}" for s in registered()})
    return places


def _relocated(value, places: dict[str, str]):
    if isinstance(value, dict):
        return {k: _relocated(v, places) for k, v in value.items()}
    if isinstance(value, list):
        return [_relocated(v, places) for v in value]
    return places.get(value, value) if isinstance(value, str) else value


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
    result = BuildResult(out)
    try:
        _run_stages(cfg, reporter, force, result)
    except (UserError, KeyboardInterrupt) as exc:
        # a failed or interrupted stage: the report shows what exists, and the exception
        # carries the stages so far (the CLI prints their summary above the error line)
        _write_report(cfg, result)
        if result.report is not None:
            log.info("build report: %s", result.report)
        exc.build_result = result
        raise
    # passed: nothing failed and every selected stage was reached (a failure stops the loop)
    reached = {s.name for s in result.stages}
    result.passed = all(s.status != "failed" for s in result.stages) and set(cfg.stages) <= reached
    _write_report(cfg, result)
    return result


def _run_stages(cfg: BuildConfig, reporter: Reporter, force: tuple, result: BuildResult) -> None:
    out = Path(cfg.output_dir)
    manifest = _read_manifest(out)
    configs = stage_configs(cfg)
    places = _places(cfg)
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
        key = {"config": _hash_config(stage_cfg, places), "input": upstream}
        start = time.perf_counter()
        try:
            # e.g. the prune's input content, export's graph revision: a change redoes the
            # stage and what follows
            key.update(stage.key_parts(stage_cfg))
            record = manifest["stages"].get(name, {})
            if name not in force and _up_to_date(record, key, stage.outputs(stage_cfg)):
                detail = record.get("detail") or "manifest"
                result.stages.append(StageResult(name, "skipped (up to date)", detail=detail))
                upstream = record["outputs_hash"]
                continue
            detail, passed = stage.run(stage_cfg, reporter)
        except (UserError, KeyboardInterrupt, OSError) as exc:
            error = _stage_error(exc, stage.folder_in(cfg))
            seconds = time.perf_counter() - start
            manifest["stages"][name] = {**key, "status": "failed", "error": str(error)[:500]}
            _record_failure(out / MANIFEST, manifest)
            result.stages.append(StageResult(name, "failed", seconds, str(error)[:200]))
            if error is exc:
                raise
            raise error from exc
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


def _stage_error(exc: BaseException, folder: Path) -> BaseException:
    """What a stage's failure is shown as: an OSError the user fixes (a full disk, a
    read-only folder) becomes one line naming the file, or the stage's folder; any other
    exception stays itself (another OSError is a bug: recorded, then its traceback)."""
    if isinstance(exc, OSError):
        return user_os_error(exc, exc.filename or folder) or exc
    return exc


def _record_failure(path: Path, manifest: dict) -> None:
    """Write the manifest with a failed stage; when that fails too (the disk is still full),
    say so and let the stage's own error be the one shown."""
    try:
        write_json(path, manifest)
    except UserError as exc:
        log.warning("could not record the failed stage in %s: %s", path, exc)


# --- the build's report -------------------------------------------------------------------


def report_dir(cfg: BuildConfig) -> Path:
    """Where the build writes its report: ``<checkpoint>/report/`` (the pruning report's own
    place, which the build rewrites) when the checkpoint is the build folder's own
    ``checkpoint/``, else ``<output_dir>/report/``: a build never writes into a checkpoint
    given from elsewhere."""
    from armor_export.report.render import REPORT_DIR
    from armor_export.stages.prune import checkpoint_of

    checkpoint = Path(checkpoint_of(cfg))
    own = checkpoint.resolve() == get("prune").folder_in(cfg).resolve()
    return (checkpoint if own else Path(cfg.output_dir)) / REPORT_DIR


def report_sources(cfg: BuildConfig, stages: list[StageResult]) -> BuildSources:
    """The report's view of a build: each stage's status, and the 8-bit checkpoint, export,
    engine and verify folders of the stages that ran (done, up to date or failed) in it, at
    the paths their stage configs hold (a provided quantize stage wrote nothing)."""
    from armor_export.report.collect import BuildSources, StageRow

    rows = [StageRow(s.name, s.status, s.seconds or None, s.detail) for s in stages]
    status = {row.name: row.status for row in rows}
    configs = stage_configs(cfg)

    def ran(name: str) -> bool:
        return name in configs and status.get(name) not in (None, "not selected", "not reached")

    return BuildSources(
        folder=Path(cfg.output_dir),
        stages=rows,
        quantized_dir=(
            Path(configs["quantize"].output_dir)
            if ran("quantize") and status["quantize"] != "provided"
            else None
        ),
        export_dir=Path(configs["export"].output_dir) if ran("export") else None,
        engine_dir=Path(configs["engine"].output_dir) if ran("engine") else None,
        verify_report=get("verify").outputs(configs["verify"])[0] if ran("verify") else None,
    )


def recorded_sources(folder: Path, checkpoint: Path) -> BuildSources:
    """The report's view of the build in ``folder`` (whose checkpoint is ``checkpoint``), from
    its manifest: the stages it recorded, as last run (``armor-export report`` on a build's
    checkpoint)."""
    manifest = _read_manifest(folder)
    records = manifest["stages"]
    cfg = BuildConfig(model=str(checkpoint), output_dir=str(folder))
    stages = [
        StageResult(s.name, str(records[s.name].get("status", "?")),
                    float(records[s.name].get("seconds") or 0),
                    str(records[s.name].get("detail") or records[s.name].get("error") or ""))
        for s in registered()
        if isinstance(records.get(s.name), dict)
    ]  # fmt: skip
    return report_sources(cfg, stages)


def _write_report(cfg: BuildConfig, result: BuildResult) -> None:
    """(Re)write the build's report into ``result.report``; a report that cannot be written
    (no checkpoint yet, say) is a warning, never the build's failure."""
    from armor_export.report import write_report
    from armor_export.stages.prune import checkpoint_of

    reached = {s.name for s in result.stages}
    unreached = [StageResult(s.name, "not reached") for s in registered() if s.name not in reached]
    sources = report_sources(cfg, result.stages + unreached)
    sources.verdict = result.verdict()
    sources.command = "armor-export build"
    try:
        result.report = write_report(checkpoint_of(cfg), report_dir(cfg), build=sources)
    except Exception as exc:  # the stages' results stand; `armor-export report` can redo it
        result.report_error = str(exc) or type(exc).__name__
        log.warning("no build report: %s", result.report_error)


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
