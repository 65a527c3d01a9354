"""``ArmorLinear``: ``y = A (S (B x)) + bias`` with block-diagonal A, B and a 2:4 core S."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from armor_export.prune import blockdiag


class ArmorLinear(nn.Module):
    """Drop-in replacement for ``nn.Linear`` holding ARMOR factors (docs/design.md §2.1).

    ``a_blocks`` ``[d_out/b, b, b]`` and ``b_blocks`` ``[d_in/b, b, b]`` already include the
    NoWag scales; ``core`` is the 2:4 sparse matrix (zeros off ``mask``).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        block_size: int,
        bias: bool = False,
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        self.in_features, self.out_features, self.block_size = in_features, out_features, block_size
        b = block_size
        self.a_blocks = nn.Parameter(blockdiag.identity(out_features // b, b, dtype))
        self.b_blocks = nn.Parameter(blockdiag.identity(in_features // b, b, dtype))
        self.core = nn.Parameter(torch.zeros(out_features, in_features, dtype=dtype))
        self.register_buffer("mask", torch.zeros(out_features, in_features, dtype=torch.bool))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype)) if bias else None
        # a QuantCore (quant/core.py) once the core is quantized: it then runs the core, and
        # ``core`` holds its dequantized values (what dense_weight and the re-fit read)
        self.quant = None

    @classmethod
    def from_factors(
        cls,
        a_blocks: torch.Tensor,
        core: torch.Tensor,
        mask: torch.Tensor,
        b_blocks: torch.Tensor,
        bias: torch.Tensor | None = None,
    ) -> ArmorLinear:
        out_features, in_features = core.shape
        mod = cls(in_features, out_features, a_blocks.shape[-1], bias is not None, core.dtype)
        with torch.no_grad():
            mod.a_blocks.copy_(a_blocks)
            mod.b_blocks.copy_(b_blocks)
            mod.core.copy_(core * mask)
            mod.mask.copy_(mask)
            if bias is not None:
                mod.bias.copy_(bias)
        return mod

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = blockdiag.apply_to_input(self.b_blocks, x)
        x = F.linear(x, self.core) if self.quant is None else self.quant(x)
        x = blockdiag.apply_to_input(self.a_blocks, x)
        return x if self.bias is None else x + self.bias

    def dense_weight(self) -> torch.Tensor:
        """The equivalent dense weight ``A S B`` (``[d_out, d_in]``)."""
        return blockdiag.left_mul(self.a_blocks, blockdiag.right_mul(self.core, self.b_blocks))

    def set_quant(self, quant: nn.Module | None) -> None:
        """Run the core through ``quant`` (a QuantCore), whose dequantized values become
        ``core``; ``None`` goes back to the float core (which then keeps those values)."""
        self.quant = quant
        if quant is not None:
            with torch.no_grad():
                self.core.copy_(quant.weight(self.core.dtype) * self.mask)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"block_size={self.block_size}, bias={self.bias is not None}"
        )


class QuantLinear(nn.Module):
    """A 2:4 ``nn.Linear`` of a baseline method whose weight is quantized: ``quant`` (a
    QuantCore) runs it; ``weight`` holds the dequantized values and ``mask`` the 2:4 mask."""

    def __init__(self, quant: nn.Module, mask: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        self.out_features, self.in_features = mask.shape
        self.quant = quant
        dtype = torch.float32 if bias is None else bias.dtype
        self.weight = nn.Parameter(quant.weight(dtype) * mask)
        self.register_buffer("mask", mask.clone())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.quant(x)
        return x if self.bias is None else x + self.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, module)
