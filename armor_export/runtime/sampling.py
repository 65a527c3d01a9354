"""Next-token choice from logits: greedy, temperature, top-k and top-p (pure numpy).

Filters work on float64 scores of shape ``[batch, vocab]`` and mask dropped tokens with
``-inf``; they are applied in the usual order temperature -> top-k -> top-p, and every
filter keeps at least one token.
"""

from __future__ import annotations

import numpy as np

from armor_export.config import SamplingConfig


def softmax(scores: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64; ``-inf`` scores get probability 0."""
    scores = np.asarray(scores, dtype=np.float64)
    shifted = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def greedy(logits: np.ndarray) -> np.ndarray:
    """The highest-scoring token of each row (ties: the lowest id)."""
    return np.asarray(logits).argmax(axis=-1).astype(np.int64)


def top_k_filter(scores: np.ndarray, k: int) -> np.ndarray:
    """Keep exactly the ``k`` highest scores of each row (ties broken arbitrarily)."""
    scores = np.asarray(scores, dtype=np.float64)
    if k <= 0 or k >= scores.shape[-1]:
        return scores
    keep = np.argpartition(-scores, k - 1, axis=-1)[..., :k]
    out = np.full_like(scores, -np.inf)
    np.put_along_axis(out, keep, np.take_along_axis(scores, keep, axis=-1), axis=-1)
    return out


def top_p_filter(scores: np.ndarray, p: float) -> np.ndarray:
    """Keep the smallest highest-probability set whose total probability is >= ``p``."""
    scores = np.asarray(scores, dtype=np.float64)
    if p >= 1:
        return scores
    probs = softmax(scores)
    order = np.argsort(-probs, axis=-1, kind="stable")
    sorted_probs = np.take_along_axis(probs, order, axis=-1)
    # a token stays if the tokens before it hold less than p: the first one always stays
    before = np.cumsum(sorted_probs, axis=-1) - sorted_probs
    keep_sorted = before < p
    keep = np.zeros_like(keep_sorted)
    np.put_along_axis(keep, order, keep_sorted, axis=-1)
    return np.where(keep, scores, -np.inf)


class Sampler:
    """Picks next tokens per ``SamplingConfig``; seeded runs are reproducible."""

    def __init__(self, config: SamplingConfig | None = None) -> None:
        self.config = config or SamplingConfig()
        self.config.validate()
        self.rng = np.random.default_rng(self.config.seed)

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """The distribution tokens are drawn from, after temperature/top-k/top-p."""
        scores = np.asarray(logits, dtype=np.float64) / self.config.temperature
        scores = top_k_filter(scores, self.config.top_k)
        return softmax(top_p_filter(scores, self.config.top_p))

    def __call__(self, logits: np.ndarray) -> np.ndarray:
        """One token id per row of ``logits`` ``[batch, vocab]``."""
        if self.config.greedy:
            return greedy(logits)
        probs = self.probabilities(logits)
        return np.array([self.rng.choice(probs.shape[-1], p=row) for row in probs], dtype=np.int64)
