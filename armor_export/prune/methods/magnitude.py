"""Magnitude 2:4: keep the two largest ``|W_ij|`` of every group of four; no calibration."""

from __future__ import annotations

from armor_export.prune.methods.base import NO_STATISTICS, masking_method, register


def _prune(job, cfg):
    from armor_export.prune import baselines

    return baselines.magnitude(job.weight)


METHOD = register(
    masking_method(
        "magnitude", "Magnitude", "largest |W| per group of 4", _prune, statistics=NO_STATISTICS
    )
)
