"""The ``engine`` stage: the export folder to a TensorRT-RTX / TensorRT engine."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from armor_export.engine.folder import DEFAULT_ENGINE_DIR
from armor_export.stages.base import Stage, stage_dir


class EngineStage(Stage):
    name = "engine"
    section = "engine"
    folder = DEFAULT_ENGINE_DIR  # <build>/engine: where engine.folder.engine_dir_of looks

    def configure(self, build):
        return replace(
            self.settings(build),
            export_dir=str(stage_dir(build, "export")),
            output_dir=str(self.folder_in(build)),
        )

    def outputs(self, cfg) -> list[Path]:
        return [Path(cfg.output_dir) / "model.engine", Path(cfg.output_dir) / "build_report.json"]

    def run(self, cfg, reporter) -> tuple[str, bool]:
        from armor_export.engine import build_engine

        rep = build_engine(cfg, reporter).report
        size = rep["engine_bytes"] / 2**20
        sparse = rep["sparsity"]["inspector"].get("sparse_layers")
        sparse = (
            f"{len(sparse)} sparse layers"
            if isinstance(sparse, list)
            else f"sparse layers {sparse}"
        )
        return f"{rep['backend']} {rep['compute_capability']}, {size:.1f} MiB, {sparse}", True
