"""The ``prune`` stage: the model to a pruned checkpoint (given when the model is one)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from armor_export.stages.base import Provided, Stage, stage_dir


def checkpoint_of(build) -> str:
    """The pruned checkpoint later stages read: the model itself when it already is one."""
    return build.model if is_checkpoint(build.model) else str(stage_dir(build, "prune"))


def is_checkpoint(model: str) -> bool:
    from armor_export.prune.checkpoint import is_pruned_checkpoint

    return is_pruned_checkpoint(model)


class PruneStage(Stage):
    name = "prune"
    section = "prune"
    folder = "checkpoint"

    def configure(self, build):
        return replace(
            self.settings(build), model=build.model, output_dir=str(self.folder_in(build))
        )

    def outputs(self, cfg) -> list[Path]:
        root = Path(cfg.output_dir)
        return [root / "armor_manifest.json", root / "model.safetensors"]

    def provided(self, build) -> Provided | None:
        if not is_checkpoint(build.model):
            return None
        return Provided(build.model, [Path(build.model) / "armor_manifest.json"])

    def run(self, cfg, reporter) -> tuple[str, bool]:
        from armor_export.prune.api import prune

        res = prune(cfg, reporter)
        return f"{len(res.metrics)} matrices pruned ({cfg.method})", True
