"""Calibration statistics of linear inputs, accumulated by forward hooks.

The accumulator is tiny on purpose (SparseGPT's ``add_batch`` pattern): it only sums. The
maths that uses the statistics lives in pure functions elsewhere.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from armor_export.errors import StatisticsError


class InputStatistics:
    """Running ``Σ x_j²`` (and optionally ``Σ x xᵀ``) over all tokens fed to one linear."""

    def __init__(self, d_in: int, gram: bool = False, device: str | torch.device = "cpu"):
        self.sq_sum = torch.zeros(d_in, dtype=torch.float64, device=device)
        self.gram_sum = (
            torch.zeros(d_in, d_in, dtype=torch.float64, device=device) if gram else None
        )
        self.n_tokens = 0

    CHUNK = 1024  # tokens converted to float64 at a time (bounds the hook's extra memory)

    def add_batch(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1])
        for part in x.split(self.CHUNK):
            part = part.to(self.sq_sum.device, torch.float64)
            self.sq_sum += part.square().sum(0)
            if self.gram_sum is not None:
                self.gram_sum += part.T @ part
        self.n_tokens += x.shape[0]

    def hdiag(self, name: str = "layer") -> torch.Tensor:
        """``h_j = (1/N) Σ_t x_{t,j}²`` as float32 (raw: see proxy.clean_hdiag)."""
        self._check(name)
        h = (self.sq_sum / self.n_tokens).float()
        if not bool(torch.isfinite(h).all()):
            raise StatisticsError(
                f"{name}: calibration statistics contain NaN/Inf "
                "(the model produced non-finite activations on the calibration text)"
            )
        return h

    def gram(self, name: str = "layer") -> torch.Tensor:
        """``(1/N) Σ x xᵀ`` as float32 (needs ``gram=True``)."""
        self._check(name)
        if self.gram_sum is None:
            raise ValueError("statistics were collected without the full Gram matrix")
        g = (self.gram_sum / self.n_tokens).float()
        if not bool(torch.isfinite(g).all()):
            raise StatisticsError(f"{name}: calibration Gram matrix contains NaN/Inf")
        return g

    def _check(self, name: str) -> None:
        if self.n_tokens == 0:
            raise StatisticsError(f"{name}: no calibration tokens reached this layer")


@contextmanager
def collect_inputs(modules: dict[str, nn.Linear], gram: bool = False):
    """Within the block, every forward of ``modules[name]`` feeds ``stats[name]``."""
    stats = {name: InputStatistics(mod.in_features, gram) for name, mod in modules.items()}
    handles = []
    for name, mod in modules.items():

        def hook(_mod, args, _out, _stats=stats[name]):
            _stats.add_batch(args[0].detach())

        handles.append(mod.register_forward_hook(hook))
    try:
        yield stats
    finally:
        for h in handles:
            h.remove()
