"""The ``export`` stage: the pruned checkpoint to ONNX (a newer graph form redoes it)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from armor_export.engine.folder import BUILD_EXPORT_DIR
from armor_export.export_manifest import MANIFEST
from armor_export.stages.base import Stage
from armor_export.stages.quantize import final_checkpoint_of


class ExportStage(Stage):
    name = "export"
    section = "export"
    folder = BUILD_EXPORT_DIR  # its engine is <build>/engine (engine.folder.engine_dir_of)

    def configure(self, build):
        return replace(
            self.settings(build),
            model=final_checkpoint_of(build),
            output_dir=str(self.folder_in(build)),
        )

    def outputs(self, cfg) -> list[Path]:
        """The manifest and every file it lists: the stage's record then covers the bytes of
        the graph, its weights and tokenizer, so a damaged one redoes the export."""
        folder = Path(cfg.output_dir)
        listed: list[str] = []
        try:
            listed = sorted(json.loads((folder / MANIFEST).read_text()).get("sha256", {}))
        except (OSError, ValueError, AttributeError):
            pass  # no or unreadable manifest: the stage has not finished
        return [folder / MANIFEST] + [folder / name for name in listed]

    def key_parts(self, cfg) -> dict:
        from armor_export.export.api import GRAPH_REVISION

        return {"graph_revision": GRAPH_REVISION}

    def run(self, cfg, reporter) -> tuple[str, bool]:
        from armor_export.export import export_onnx

        res = export_onnx(cfg, reporter)
        counts = res.manifest["counts"]
        return f"{counts['cores']} 2:4 cores ({cfg.dtype}, {cfg.lowering})", True
