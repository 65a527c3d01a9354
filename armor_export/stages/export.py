"""The ``export`` stage: the pruned checkpoint to ONNX (a newer graph form redoes it)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from armor_export.export_manifest import MANIFEST
from armor_export.stages.base import Stage
from armor_export.stages.prune import checkpoint_of


class ExportStage(Stage):
    name = "export"
    section = "export"
    folder = "onnx"

    def configure(self, build):
        return replace(
            self.settings(build), model=checkpoint_of(build), output_dir=str(self.folder_in(build))
        )

    def outputs(self, cfg) -> list[Path]:
        return [Path(cfg.output_dir) / MANIFEST]

    def key_parts(self, cfg) -> dict:
        from armor_export.export.api import GRAPH_REVISION

        return {"graph_revision": GRAPH_REVISION}

    def run(self, cfg, reporter) -> tuple[str, bool]:
        from armor_export.export import export_onnx

        res = export_onnx(cfg, reporter)
        counts = res.manifest["counts"]
        return f"{counts['cores']} 2:4 cores ({cfg.dtype}, {cfg.lowering})", True
