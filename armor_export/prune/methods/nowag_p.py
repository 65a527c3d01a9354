"""NoWag-P 2:4: the mask that minimises the proxy loss of the NoWag-normalised weight
(ARMOR's starting point and the bound it is held to)."""

from __future__ import annotations

from armor_export.prune.methods.base import INPUT_NORMS, masking_method, register


def _prune(job, cfg):
    from armor_export.prune import baselines

    return baselines.nowag_p(job.weight, job.hdiag)


METHOD = register(
    masking_method(
        "nowag-p", "NoWag-P", "normalised |W|² times input norm", _prune, statistics=INPUT_NORMS
    )
)
