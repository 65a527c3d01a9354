"""The ``verify`` stage: PyTorch vs the export (and engine) parity; a failure fails the build."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from armor_export.stages.base import Stage, stage_dir
from armor_export.stages.prune import checkpoint_of


class VerifyStage(Stage):
    name = "verify"
    section = "verify"
    folder = "verify"

    def configure(self, build):
        return replace(
            self.settings(build),
            export_dir=str(stage_dir(build, "export")),
            model=checkpoint_of(build),
            report_dir=str(self.folder_in(build)),
        )

    def outputs(self, cfg) -> list[Path]:
        return [Path(cfg.report_dir) / "verify_report.json"]

    def run(self, cfg, reporter) -> tuple[str, bool]:
        from armor_export.verify import verify

        res = verify(cfg, reporter)
        worst = max((r.max_abs for r in res.report.rows), default=float("nan"))
        runners = ", ".join(res.report.runners)
        return f"{runners}: max abs err {worst:.2g}" + ("" if res.passed else " FAILED"), res.passed
