"""Block-diagonal matrices stored as ``[n_blocks, b, b]`` and the products ARMOR needs."""

from __future__ import annotations

import torch


def to_dense(blocks: torch.Tensor) -> torch.Tensor:
    """The full ``[n*b, n*b]`` matrix of a block-diagonal ``[n, b, b]``."""
    return torch.block_diag(*blocks.unbind(0))


def identity(n_blocks: int, block_size: int, dtype=torch.float32, device=None) -> torch.Tensor:
    eye = torch.eye(block_size, dtype=dtype, device=device)
    return eye.expand(n_blocks, block_size, block_size).clone()


def left_mul(blocks: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """``blockdiag(blocks) @ matrix`` for ``matrix`` of shape ``[n*b, k]``."""
    n, b, _ = blocks.shape
    return torch.bmm(blocks, matrix.reshape(n, b, -1)).reshape(matrix.shape)


def right_mul(matrix: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """``matrix @ blockdiag(blocks)`` for ``matrix`` of shape ``[k, n*b]``."""
    n, b, _ = blocks.shape
    k = matrix.shape[0]
    out = torch.bmm(matrix.reshape(k, n, b).transpose(0, 1), blocks)  # [n, k, b]
    return out.transpose(0, 1).reshape(k, n * b)


def apply_to_input(blocks: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``x @ blockdiag(blocks)ᵀ`` over the last dim of ``x`` (a Linear-style application)."""
    n, b, _ = blocks.shape
    lead = x.shape[:-1]
    xb = x.reshape(-1, n, b)
    y = torch.einsum("tni,noi->tno", xb, blocks)
    return y.reshape(*lead, n * b)


def to_tiles(matrix: torch.Tensor, block_size: int) -> torch.Tensor:
    """``[P*b, Q*b]`` -> ``[P, Q, b, b]`` view-copy of its ``b x b`` tiles."""
    m, n = matrix.shape
    b = block_size
    return matrix.reshape(m // b, b, n // b, b).permute(0, 2, 1, 3)


def from_tiles(tiles: torch.Tensor) -> torch.Tensor:
    p, q, b, _ = tiles.shape
    return tiles.permute(0, 2, 1, 3).reshape(p * b, q * b)
