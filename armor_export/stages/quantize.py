"""The ``quantize`` stage: the pruned checkpoint's 2:4 cores to 8 bits (``--quant``).

With ``quantize.scheme = "none"`` (the default) the stage is *provided*: the pruned
checkpoint goes on to the export as it is. Otherwise it writes an 8-bit checkpoint into
``<build>/quantized`` (``quant/api.py``), resumable per matrix, and the later stages read it.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from armor_export.stages.base import Provided, Stage, stage_dir
from armor_export.stages.prune import checkpoint_files, checkpoint_of


def final_checkpoint_of(build) -> str:
    """The checkpoint export and verify read: the 8-bit one when the build quantizes."""
    if build.quantize.enabled:
        return str(stage_dir(build, "quantize"))
    return checkpoint_of(build)


def _all_files(paths: list[Path]) -> bool:
    return all(p.is_file() for p in paths)


class QuantizeStage(Stage):
    name = "quantize"
    section = "quantize"
    folder = "quantized"

    def configure(self, build):
        return replace(
            self.settings(build), model=checkpoint_of(build), output_dir=str(self.folder_in(build))
        )

    def outputs(self, cfg) -> list[Path]:
        return checkpoint_files(cfg.output_dir)

    def key_parts(self, cfg) -> dict:
        from armor_export.quant.api import QUANT_REVISION

        return {"quant_revision": QUANT_REVISION}

    def provided(self, build) -> Provided | None:
        if build.quantize.enabled:
            return None
        files = checkpoint_files(checkpoint_of(build))
        # the pruned checkpoint goes on as it is (nothing to hash before the prune ran)
        return Provided("not quantized (float 2:4 cores)", files if _all_files(files) else [])

    def run(self, cfg, reporter) -> tuple[str, bool]:
        from armor_export.quant.api import quantize_checkpoint, summary_line

        out = quantize_checkpoint(
            cfg.model, cfg.output_dir, cfg.settings(), reporter, dense_model=cfg.dense_model
        )
        return summary_line(out), True
