"""SparseGPT 2:4 (Frantar & Alistarh 2023): OBS pruning with error feedback from the
input Gram matrix; by default each layer is calibrated on the pruned layers before it."""

from __future__ import annotations

from armor_export.prune.methods.base import GRAM, masking_method, register


def _prune(job, cfg):
    from armor_export.prune import baselines

    return baselines.sparsegpt(job.weight, job.gram, cfg.sparsegpt.block_size, cfg.sparsegpt.damp)


def _sequential(cfg) -> bool:
    return cfg.sparsegpt.sequential


def _report_rows(prune_config: dict, matrices: list) -> list[tuple[str, str]]:
    settings = prune_config.get("sparsegpt", {})
    keys = ("block_size", "damp", "sequential")
    return [("SparseGPT", ", ".join(f"{k} {settings.get(k, '?')}" for k in keys))]


METHOD = register(
    masking_method(
        "sparsegpt",
        "SparseGPT",
        "OBS with error feedback (Gram matrix)",
        _prune,
        statistics=GRAM,
        settings="sparsegpt",
        sequential=_sequential,
        report_rows=_report_rows,
    )
)
