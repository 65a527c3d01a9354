"""Baseline 2:4 pruners: magnitude, Wanda, NoWag-P and SparseGPT.

Each returns ``(pruned_weight, mask)`` with a valid 2:4 mask along the input dimension.
"""

from __future__ import annotations

import torch

from armor_export.prune.armor import nowag_p_mask
from armor_export.prune.masks import GROUP, KEEP, mask_from_scores
from armor_export.prune.proxy import normalize


def magnitude(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the two largest ``|W_ij|`` of each group."""
    mask = mask_from_scores(weight.abs())
    return weight * mask, mask


def wanda(weight: torch.Tensor, hdiag: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Wanda: score ``|W_ij| · ||X_j||`` (``||X_j||² ∝ h_j``), 2:4 per output row."""
    mask = mask_from_scores(weight.abs() * hdiag.sqrt())
    return weight * mask, mask


def nowag_p(weight: torch.Tensor, hdiag: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """NoWag-P: score ``w_bar_ij² · h_j`` on the NoWag-normalised weight (docs/design.md §4.3)."""
    mask = nowag_p_mask(normalize(weight).w_bar, hdiag)
    return weight * mask, mask


@torch.no_grad()
def sparsegpt(
    weight: torch.Tensor,
    gram: torch.Tensor,
    block_size: int = 128,
    damp: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT (Frantar & Alistarh 2023) for 2:4: OBS pruning with error feedback.

    ``gram`` is ``(1/N) Σ x xᵀ`` of the layer input. Columns are processed left to right
    in blocks; at the first column of each group of 4 the two entries with the smallest
    saliency ``w² / [H⁻¹]_jj²`` are pruned, and every pruned column's error is spread over
    the columns not yet processed through the upper Cholesky factor of ``H⁻¹``.
    """
    w = weight.clone().float()
    h = gram.clone().float()
    d_in = w.shape[1]
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += damp * torch.diagonal(h).mean() * torch.eye(d_in, dtype=h.dtype, device=h.device)
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    pruned = torch.zeros_like(w, dtype=torch.bool)
    for start in range(0, d_in, block_size):
        stop = min(start + block_size, d_in)
        w_blk = w[:, start:stop].clone()
        hinv_blk = hinv[start:stop, start:stop]
        err_blk = torch.zeros_like(w_blk)
        for col in range(stop - start):
            if col % GROUP == 0:
                diag = torch.diagonal(hinv_blk)[col : col + GROUP]
                saliency = w_blk[:, col : col + GROUP].pow(2) / diag.pow(2)
                drop = saliency.topk(GROUP - KEEP, dim=1, largest=False).indices
                pruned[:, start + col : start + col + GROUP].scatter_(1, drop, True)
            w_col = w_blk[:, col]
            q_col = torch.where(pruned[:, start + col], torch.zeros_like(w_col), w_col)
            err = (w_col - q_col) / hinv_blk[col, col]
            w_blk[:, col:] -= err[:, None] * hinv_blk[col, col:][None, :]
            w_blk[:, col] = q_col
            err_blk[:, col] = err
        w[:, start:stop] = w_blk
        w[:, stop:] -= err_blk @ hinv[start:stop, stop:]
    mask = ~pruned
    return (w * mask).to(weight.dtype), mask
