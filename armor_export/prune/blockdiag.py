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
    """``blockdiag(blocks) @ matrix`` for ``matrix`` of shape ``[..., n*b, k]``.

    ``blocks`` is ``[..., n, b, b]`` with the same leading (batch) dimensions.
    """
    *lead, n, b, _ = blocks.shape
    return torch.matmul(blocks, matrix.reshape(*lead, n, b, -1)).reshape(matrix.shape)


def right_mul(matrix: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """``matrix @ blockdiag(blocks)`` for ``matrix`` of shape ``[..., k, n*b]``."""
    *lead, n, b, _ = blocks.shape
    k = matrix.shape[-2]
    cols = matrix.reshape(*lead, k, n, b).transpose(-3, -2)  # [..., n, k, b]
    return torch.matmul(cols, blocks).transpose(-3, -2).reshape(matrix.shape)


def apply_to_input(blocks: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``x @ blockdiag(blocks)ᵀ`` over the last dim of ``x`` (a Linear-style application)."""
    n, b, _ = blocks.shape
    lead = x.shape[:-1]
    xb = x.reshape(-1, n, b)
    y = torch.einsum("tni,noi->tno", xb, blocks)
    return y.reshape(*lead, n * b)


def to_tiles(matrix: torch.Tensor, block_size: int) -> torch.Tensor:
    """``[..., P*b, Q*b]`` -> ``[..., P, Q, b, b]`` view of its ``b x b`` tiles."""
    *lead, m, n = matrix.shape
    b = block_size
    return matrix.reshape(*lead, m // b, b, n // b, b).transpose(-3, -2)


def from_tiles(tiles: torch.Tensor) -> torch.Tensor:
    *lead, p, q, b, _ = tiles.shape
    return tiles.transpose(-3, -2).reshape(*lead, p * b, q * b)
