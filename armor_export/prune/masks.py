"""2:4 masks along the input dimension and their compact storage.

A 2:4 mask keeps exactly 2 of every 4 consecutive entries of each row (the input /
reduction dimension of an ``nn.Linear`` weight ``[d_out, d_in]``). Compact storage keeps
the ``d_in / 2`` kept values per row and a 2-bit position (0..3, within its group) for
each, four positions per byte.
"""

from __future__ import annotations

import torch

from armor_export.errors import ShapeError

GROUP = 4
KEEP = 2

# The six supports of a 2:4 group, as index pairs (ascending).
SUPPORTS = torch.tensor([[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]])
# The same supports as boolean rows of length 4.
SUPPORT_MASKS = torch.zeros(6, GROUP, dtype=torch.bool).scatter_(1, SUPPORTS, True)


def check_divisible(d_in: int, name: str = "weight") -> None:
    if d_in % GROUP:
        raise ShapeError(f"{name}: input dimension {d_in} is not divisible by {GROUP} (2:4 groups)")


def mask_from_scores(scores: torch.Tensor) -> torch.Tensor:
    """Boolean 2:4 mask keeping the 2 largest scores of each group of 4 along the last dim.

    Ties are broken towards the lower index, so the result is deterministic.
    """
    *lead, d_in = scores.shape
    check_divisible(d_in)
    groups = scores.reshape(*lead, d_in // GROUP, GROUP)
    # stable sort on -score: equal scores keep their index order
    order = torch.sort(-groups, dim=-1, stable=True).indices[..., :KEEP]
    mask = torch.zeros_like(groups, dtype=torch.bool)
    mask.scatter_(-1, order, True)
    return mask.reshape(scores.shape)


def is_two_four(mask: torch.Tensor) -> bool:
    """True when every group of 4 along the last dim has exactly 2 kept entries."""
    if mask.shape[-1] % GROUP:
        return False
    counts = mask.reshape(*mask.shape[:-1], -1, GROUP).sum(-1)
    return bool((counts == KEEP).all())


def pack(core: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Compact 2:4 form: (values ``[d_out, d_in/2]``, positions uint8 ``[d_out, d_in/8]``).

    ``positions`` holds, for each kept value in order, its 2-bit index inside its group,
    four per byte (first value in the low bits). ``d_in`` must be a multiple of 8.
    """
    if not is_two_four(mask):
        raise ValueError("pack() needs a valid 2:4 mask")
    d_out, d_in = mask.shape
    if d_in % 8:
        raise ShapeError(f"compact 2:4 storage needs d_in divisible by 8, got {d_in}")
    groups = mask.reshape(d_out, d_in // GROUP, GROUP)
    # indices of the two kept entries in each group, ascending
    idx = torch.sort(torch.where(groups, torch.arange(GROUP), GROUP), dim=-1).values[..., :KEEP]
    values = torch.gather(core.reshape(d_out, d_in // GROUP, GROUP), -1, idx).reshape(d_out, -1)
    pos = idx.reshape(d_out, -1, 4).to(torch.uint8)
    packed = pos[..., 0] | (pos[..., 1] << 2) | (pos[..., 2] << 4) | (pos[..., 3] << 6)
    return values.contiguous(), packed.contiguous()


def unpack(values: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`pack`: (dense core with zeros, boolean mask)."""
    d_out, half = values.shape
    if positions.dtype != torch.uint8 or positions.shape != (d_out, half // 4):
        raise ValueError(
            f"positions must be uint8 [{d_out}, {half // 4}], got {positions.dtype} "
            f"{tuple(positions.shape)}"
        )
    p = positions.to(torch.int64)
    idx = torch.stack([(p >> s) & 3 for s in (0, 2, 4, 6)], dim=-1).reshape(d_out, -1, KEEP)
    if not bool((idx[..., 0] < idx[..., 1]).all()):
        raise ValueError("corrupt 2:4 positions: kept indices must be distinct and ascending")
    n_groups = idx.shape[1]
    core = torch.zeros(d_out, n_groups, GROUP, dtype=values.dtype)
    core.scatter_(-1, idx, values.reshape(d_out, n_groups, KEEP))
    mask = torch.zeros(d_out, n_groups, GROUP, dtype=torch.bool)
    mask.scatter_(-1, idx, True)
    return core.reshape(d_out, -1), mask.reshape(d_out, -1)
