"""Wanda 2:4 (Sun et al. 2023): score ``|W_ij| · ||X_j||`` from the input norms."""

from __future__ import annotations

from armor_export.prune.methods.base import INPUT_NORMS, masking_method, register


def _prune(job, cfg):
    from armor_export.prune import baselines

    return baselines.wanda(job.weight, job.hdiag)


METHOD = register(
    masking_method("wanda", "Wanda", "|W| times input norm", _prune, statistics=INPUT_NORMS)
)
