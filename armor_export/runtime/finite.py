"""The one check that a model's outputs are numbers, shared by ``generate`` and ``verify``.

NaN or Inf logits come from a damaged export or damaged weights; sampled from, they give
blank or arbitrary text with exit 0. ``generate`` checks the logits it samples from at the
prefill and at every decode step; ``verify`` checks every runner's outputs. numpy only, so
the runtime stays torch-free.
"""

from __future__ import annotations

import numpy as np

from armor_export.errors import NonFiniteOutputError

DAMAGED = "the export or its weights are damaged"


def non_finite(values: np.ndarray) -> str | None:
    """``"NaN in 3 of 300 values"`` (or Inf, or NaN and Inf), None when every value is finite."""
    values = np.asarray(values)
    if np.isfinite(values).all():
        return None
    nan, inf = int(np.isnan(values).sum()), int(np.isinf(values).sum())
    kinds = " and ".join(kind for kind, count in (("NaN", nan), ("Inf", inf)) if count)
    return f"{kinds} in {nan + inf} of {values.size} values"


def non_finite_message(
    values: np.ndarray, what: str, where: str, who: str = "the model"
) -> str | None:
    """``"<who> produced non-finite <what> at <where> (NaN in ...)"``, None when all finite."""
    found = non_finite(values)
    return None if found is None else f"{who} produced non-finite {what} at {where} ({found})"


def check_finite(values: np.ndarray, what: str, where: str, who: str = "the model") -> None:
    """Raise NonFiniteOutputError (one line, naming the step) when ``values`` hold NaN/Inf."""
    message = non_finite_message(values, what, where, who)
    if message is not None:
        raise NonFiniteOutputError(f"{message}: {DAMAGED}")
