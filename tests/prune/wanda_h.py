"""A test-only pruning method in its own module, as a user's would be: importing it
registers it (worker processes import it by ``PruneMethod.defining_module``)."""

from armor_export.prune.masks import mask_from_scores
from armor_export.prune.methods import INPUT_NORMS, masking_method, register

NAME = "wanda-h"  # Wanda's score with h_j instead of sqrt(h_j)


def _prune(job, cfg):
    mask = mask_from_scores(job.weight.abs() * job.hdiag)
    return job.weight * mask, mask


METHOD = register(masking_method(NAME, "Wanda-h", "|W| times h", _prune, statistics=INPUT_NORMS))
