"""Parity inputs: a left-padded prefill batch from real prompts and the decode steps after it."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from armor_export.errors import ShapeError
from armor_export.export_manifest import LOGITS, ExportManifest
from armor_export.runtime.inputs import left_pad, position_ids


def numpy_dtype(name: str):
    if name == "bfloat16":
        import ml_dtypes

        return ml_dtypes.bfloat16
    return np.dtype(name)


def prefill_feed(tokenizer_path, prompts: list[str], manifest: ExportManifest) -> OrderedDict:
    """Token inputs for ``prompts`` (left-padded) and an empty KV cache."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    ids = [tokenizer.encode(p).ids for p in prompts]
    limits = manifest.limits
    longest = max(len(i) for i in ids)
    if len(ids) > limits.max_batch:
        raise ShapeError(f"{len(ids)} prompts exceed the export's max_batch {limits.max_batch}")
    if longest > limits.max_prompt:
        raise ShapeError(
            f"a prompt of {longest} tokens exceeds the export's max_prompt {limits.max_prompt}"
        )
    batch = left_pad(ids, manifest.tokens.pad_token_id)
    feed = OrderedDict(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
    )
    shape = manifest.decoder.past_shape(len(ids), 0)
    for name in manifest.past_names:
        feed[name] = np.zeros(shape, dtype=numpy_dtype(manifest.dtype))
    return feed


def decode_feed(previous: OrderedDict, outputs: dict, manifest: ExportManifest) -> OrderedDict:
    """The next single-token step after ``previous``, fed with the reference's outputs."""
    next_ids = outputs[manifest.logits][:, -1].astype(np.float32).argmax(-1).astype(np.int64)
    mask = np.concatenate([previous["attention_mask"], np.ones((len(next_ids), 1), np.int64)], 1)
    if mask.shape[1] > manifest.limits.max_context:
        raise ShapeError(
            f"{mask.shape[1]} tokens exceed the export's max_context {manifest.limits.max_context}"
        )
    feed = OrderedDict(
        input_ids=next_ids[:, None], attention_mask=mask, position_ids=position_ids(mask)[:, -1:]
    )
    dtype = numpy_dtype(manifest.dtype)
    for past, present in manifest.cache_feedback():
        feed[past] = np.ascontiguousarray(outputs[present]).astype(dtype)
    return feed


def valid_positions(feed: OrderedDict, output_name: str, shape: tuple[int, ...]) -> np.ndarray:
    """Boolean mask broadcastable to an output: False where the position is padding."""
    mask = feed["attention_mask"].astype(bool)
    if output_name == LOGITS:
        return mask[:, -shape[1] :, None]
    return mask[:, None, :, None]  # present.*: [batch, heads, total_seq, head_dim]
