"""Perplexity of a causal LM on fixed token windows."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from armor_export.errors import StatisticsError
from armor_export.progress import NullReporter, Reporter


@torch.no_grad()
def perplexity(
    model: nn.Module,
    windows: torch.Tensor,
    batch_size: int = 4,
    reporter: Reporter | None = None,
    description: str = "perplexity",
) -> float:
    """``exp`` of the mean next-token negative log-likelihood over all windows ``[n, seqlen]``."""
    reporter = reporter or NullReporter()
    model.eval()
    nll_sum, count = 0.0, 0
    with reporter.task(description, len(windows)) as task:
        for batch in windows.split(batch_size):
            logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()
            targets = batch[:, 1:]
            nll = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum"
            )
            nll_sum += float(nll)
            count += targets.numel()
            task.advance(len(batch), ppl=f"{math.exp(nll_sum / count):.2f}")
    ppl = math.exp(nll_sum / count)
    if not math.isfinite(ppl):
        raise StatisticsError("perplexity is not finite: the model produced NaN/Inf logits")
    return ppl
