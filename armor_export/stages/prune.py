"""The ``prune`` stage: the model to a pruned checkpoint (given when the model is one)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from armor_export.stages.base import Provided, Stage, stage_dir


def checkpoint_of(build) -> str:
    """The pruned checkpoint later stages read: the model itself when it already is one."""
    return build.model if is_checkpoint(build.model) else str(stage_dir(build, "prune"))


def checkpoint_files(folder: str) -> list[Path]:
    """What a pruned checkpoint is, for the next stage's input hash: its manifest and its
    weights (a changed or damaged weight file redoes what follows)."""
    return [Path(folder) / "armor_manifest.json", Path(folder) / "model.safetensors"]


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
        return checkpoint_files(cfg.output_dir)

    def key_parts(self, cfg) -> dict:
        """The content the prune reads (``prune/provenance.inputs_key``): the same paths
        holding another model or another calibration text redo the prune."""
        from armor_export.prune.provenance import inputs_key

        return {"inputs": inputs_key(cfg)}

    def provided(self, build) -> Provided | None:
        if not is_checkpoint(build.model):
            return None
        return Provided(build.model, checkpoint_files(build.model))  # the weights too

    def run(self, cfg, reporter) -> tuple[str, bool]:
        from armor_export.prune.api import prune

        res = prune(cfg, reporter)
        return f"{len(res.metrics)} matrices pruned ({cfg.method})", True
