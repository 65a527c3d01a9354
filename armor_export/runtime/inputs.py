"""Prompts to graph inputs: tokenise, check against the export's limits, left-pad.

Left padding keeps every row's last token in the last column, so one logits column gives
every row its next token; position ids count real tokens only, as in the PyTorch model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from armor_export.config import check_prompt_text
from armor_export.errors import ConfigError, ShapeError
from armor_export.export_manifest import Limits


@dataclass
class Batch:
    """A left-padded batch of prompts, ready for the prefill step."""

    input_ids: np.ndarray  # int64 [batch, seq]
    attention_mask: np.ndarray  # int64 [batch, seq]; 0 = padding
    position_ids: np.ndarray  # int64 [batch, seq]
    prompt_lengths: list[int]


def encode_prompts(tokenizer, prompts: list[str]) -> list[list[int]]:
    """Token ids of each prompt (with the tokenizer's special tokens, e.g. BOS)."""
    if isinstance(prompts, str) or not prompts:
        raise ConfigError("give a list of one or more prompts")
    for index, prompt in enumerate(prompts):
        if not prompt.strip():
            raise ConfigError(
                f"prompt {index} is empty or only whitespace: give some text to continue"
            )
        check_prompt_text(index, prompt)
    encodings = tokenizer.encode_batch(list(prompts), add_special_tokens=True)
    ids = [list(enc.ids) for enc in encodings]
    for index, row in enumerate(ids):
        if not row:
            raise ConfigError(f"prompt {index} encodes to no tokens: give some text to continue")
    return ids


def check_limits(
    prompt_ids: list[list[int]],
    max_new_tokens: int,
    limits: Limits,
    model_context: bool = False,
    export_limits: Limits | None = None,
) -> None:
    """Refuse batches and lengths beyond what the export was built (and checked) for;
    ``model_context``: its max_context is the model's own (no re-export can raise it).
    ``export_limits``: given when ``limits`` are a built engine's, smaller than its export's;
    the messages then say to rebuild the engine (up to the export's limits)."""
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    max_batch, max_prompt = int(limits.max_batch), int(limits.max_prompt)
    max_context = int(limits.max_context)
    owner = "engine" if export_limits else "export"

    def larger(key: str, size: int | None = None) -> str:
        flag = "--" + key.replace("_", "-")
        what = f"{flag} {size}" if size else f"a larger {flag}"
        if export_limits is None:
            return f"export again with {what}"
        bound = getattr(export_limits, key)
        return f"rebuild the engine with {what} (armor-export engine; at most the export's {bound})"

    if len(prompt_ids) > max_batch:
        raise ShapeError(
            f"{len(prompt_ids)} prompts exceed this {owner}'s limits.max_batch {max_batch}: "
            f"give fewer prompts, or {larger('max_batch')}"
        )
    longest = max(len(row) for row in prompt_ids)
    if longest > max_prompt:
        raise ShapeError(
            f"a prompt of {longest} tokens exceeds this {owner}'s limits.max_prompt "
            f"{max_prompt}: shorten it, or {larger('max_prompt')}"
        )
    if longest + max_new_tokens > max_context:
        fit = f"lower --max-new-tokens to at most {max(max_context - longest, 0)}"
        if export_limits is not None:
            wider = f", or {larger('max_context', longest + max_new_tokens)}"
        elif model_context:
            wider = (
                f"; {max_context} is the model's own max_position_embeddings, so no export "
                "allows more"
            )
        else:
            wider = (
                f", or export again with --max-context {longest + max_new_tokens} (at most "
                "the model's max_position_embeddings)"
            )
        raise ShapeError(
            f"{longest} prompt tokens + {max_new_tokens} new tokens exceed this {owner}'s "
            f"limits.max_context {max_context}: {fit}{wider}"
        )


def left_pad(prompt_ids: list[list[int]], pad_id: int) -> Batch:
    """Pad every prompt on the left to the longest one."""
    lengths = [len(row) for row in prompt_ids]
    width = max(lengths)
    input_ids = np.full((len(prompt_ids), width), pad_id, dtype=np.int64)
    attention_mask = np.zeros((len(prompt_ids), width), dtype=np.int64)
    for row, ids in enumerate(prompt_ids):
        input_ids[row, width - len(ids) :] = ids
        attention_mask[row, width - len(ids) :] = 1
    return Batch(input_ids, attention_mask, position_ids(attention_mask), lengths)


def position_ids(attention_mask: np.ndarray) -> np.ndarray:
    """Positions of real tokens (padding gets 0): ``cumsum(mask) - 1`` clipped at 0."""
    return np.clip(np.cumsum(attention_mask, axis=-1) - 1, 0, None).astype(np.int64)
