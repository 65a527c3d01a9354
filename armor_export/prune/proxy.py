"""NoWag normalisation and the calibration-weighted proxy loss (docs/design.md §2)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from armor_export.errors import StatisticsError

EPS = 1e-5


@dataclass
class Normalized:
    """``W = diag(row_scale) · w_bar · diag(col_scale)``."""

    w_bar: torch.Tensor
    row_scale: torch.Tensor
    col_scale: torch.Tensor


def normalize(weight: torch.Tensor) -> Normalized:
    """Column norms first, then row norms of the column-normalised matrix (docs/design.md §2.3).

    ``weight`` is ``[d_out, d_in]`` or a batch ``[E, d_out, d_in]``.
    """
    col = weight.norm(dim=-2) + EPS
    w1 = weight / col[..., None, :]
    row = w1.norm(dim=-1) + EPS
    return Normalized(w1 / row[..., None], row, col)


def clean_hdiag(h: torch.Tensor, name: str = "layer") -> torch.Tensor:
    """Replace non-finite or non-positive entries of diag(XXᵀ)/N by the mean of the valid ones."""
    valid = torch.isfinite(h) & (h > 0)
    if not bool(valid.any()):
        raise StatisticsError(
            f"{name}: calibration statistics have no finite positive entry "
            "(did the calibration data reach this layer? are there NaN/Inf activations?)"
        )
    fill = h[valid].mean()
    return torch.where(valid, h, fill)


def proxy_loss(approx: torch.Tensor, w_bar: torch.Tensor, hdiag: torch.Tensor) -> float:
    """``Σ (approx − w_bar)² h_j / Σ w_bar² h_j`` — 0 is perfect, 1 is the all-zero matrix."""
    num = ((approx - w_bar).double().pow(2) * hdiag.double()).sum()
    den = (w_bar.double().pow(2) * hdiag.double()).sum()
    return float(num / den)
