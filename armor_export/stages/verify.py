"""The ``verify`` stage: PyTorch vs the export (and engine) parity; a failure fails the build."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from armor_export.stages.base import Stage, stage_dir
from armor_export.stages.quantize import final_checkpoint_of


class VerifyStage(Stage):
    name = "verify"
    section = "verify"
    folder = "verify"

    def configure(self, build):
        """Paths inside the build; the engine stage's folder when that stage is built, so
        the engine that ``build`` ships is the one verify loads."""
        cfg = replace(
            self.settings(build),
            export_dir=str(stage_dir(build, "export")),
            model=final_checkpoint_of(build),
            report_dir=str(self.folder_in(build)),
        )
        if "engine" in build.stages:
            cfg.engine_dir = str(stage_dir(build, "engine"))
            cfg.plugin_library = cfg.plugin_library or build.engine.plugin_library
        return cfg

    def outputs(self, cfg) -> list[Path]:
        return [Path(cfg.report_dir) / "verify_report.json"]

    def run(self, cfg, reporter) -> tuple[str, bool]:
        from armor_export.verify import verify

        res = verify(cfg, reporter)
        return res.report.verdict(), res.passed
