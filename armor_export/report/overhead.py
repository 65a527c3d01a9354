"""Cost of ARMOR's block-diagonal wrappers next to the dense and the 2:4 matmul.

One pruned matrix ``W ≈ A · S · B`` with ``W`` of shape ``[d_out, d_in]`` and block size
``b`` stores ``d_out/b`` blocks of ``b x b`` in ``A`` and ``d_in/b`` in ``B``, i.e.
``b · (d_out + d_in)`` extra parameters. Per token the wrappers cost
``2 · b · (d_in + d_out)`` FLOPs (one multiply-add per stored entry), the dense matmul
``2 · d_in · d_out`` and the 2:4 core half of that, ``d_in · d_out``. The benchmark script
``tools/bench_onnx.py`` counts a checkpoint's wrappers with it (``tools/benchlib.py``,
``wrapper_flops_per_token``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


def wrapper_flops_per_token(d_out: int, d_in: int, block_size: int) -> int:
    """Extra FLOPs per token of ``A`` and ``B``: ``2 · b · (d_in + d_out)``."""
    return 2 * block_size * (d_in + d_out)


@dataclass(frozen=True)
class WrapperOverhead:
    """Parameter and FLOP counts of one matrix (or a sum of matrices)."""

    wrapper_params: int  # A and B blocks: nb·b² on each side
    dense_params: int  # d_out · d_in
    wrapper_flops: int  # per token
    dense_flops: int  # per token, 2 · d_in · d_out
    core_flops: int  # per token, the 2:4 core: d_in · d_out

    @classmethod
    def of(cls, d_out: int, d_in: int, block_size: int | None) -> WrapperOverhead:
        """A matrix with wrappers of ``block_size`` (``None``: a plain 2:4 matrix)."""
        b = block_size or 0
        return cls(
            wrapper_params=(d_out // b) * b * b + (d_in // b) * b * b if b else 0,
            dense_params=d_out * d_in,
            wrapper_flops=wrapper_flops_per_token(d_out, d_in, b),
            dense_flops=2 * d_in * d_out,
            core_flops=d_in * d_out,
        )

    def __add__(self, other: WrapperOverhead) -> WrapperOverhead:
        return WrapperOverhead(
            self.wrapper_params + other.wrapper_params,
            self.dense_params + other.dense_params,
            self.wrapper_flops + other.wrapper_flops,
            self.dense_flops + other.dense_flops,
            self.core_flops + other.core_flops,
        )

    @property
    def params_vs_dense(self) -> float:
        return self.wrapper_params / self.dense_params if self.dense_params else 0.0

    @property
    def flops_vs_dense(self) -> float:
        return self.wrapper_flops / self.dense_flops if self.dense_flops else 0.0

    @property
    def flops_vs_core(self) -> float:
        return self.wrapper_flops / self.core_flops if self.core_flops else 0.0


def total(items: Iterable[WrapperOverhead]) -> WrapperOverhead:
    """Sum of several matrices' counts (ratios of the sums, not means of ratios)."""
    out = WrapperOverhead(0, 0, 0, 0, 0)
    for item in items:
        out = out + item
    return out
