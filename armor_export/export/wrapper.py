"""The exported decoder signature: flat KV-cache tensors in, logits and presents out.

Names follow the common ONNX LLM convention (``past_key_values.{i}.key`` /
``present.{i}.key``) so other tools recognise them; ``armor_export.export_manifest``
defines them, with ``DecoderSpec``. One graph serves prefill (``past_seq`` = 0) and
decode steps (``seq`` = 1).
"""

from __future__ import annotations

import torch
from torch import nn

# the names and sizes of the graph's tensors are the export manifest's (torch-free) contract
from armor_export.export_manifest import DecoderSpec

# named dynamic dimensions of every input/output, by position
DIMS = {
    "input_ids": ("batch", "seq"),
    "attention_mask": ("batch", "total_seq"),
    "position_ids": ("batch", "seq"),
    "past": ("batch", None, "past_seq", None),
    "logits": ("batch", "seq", None),
    "present": ("batch", None, "total_seq", None),
}


class DecoderWithCache(nn.Module):
    """``(input_ids, attention_mask, position_ids, *past) -> (logits, *present)``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.num_layers = model.config.num_hidden_layers

    def forward(self, input_ids, attention_mask, position_ids, *past):
        from transformers.cache_utils import DynamicCache

        # no config: plain full-length layers, so present = concat(past, new) for every
        # family (a sliding-window cache would crop and change the output shapes)
        cache = DynamicCache()
        for i in range(self.num_layers):
            cache.update(past[2 * i], past[2 * i + 1], i)
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
        )
        presents = []
        for layer in out.past_key_values.layers:
            presents += [layer.keys, layer.values]
        return (out.logits, *presents)


def example_inputs(
    spec: DecoderSpec, dtype: torch.dtype, batch: int = 2, seq: int = 3, past: int = 4
) -> tuple[torch.Tensor, ...]:
    """Tracing inputs; sizes >= 2 and distinct so no dynamic dimension gets specialised."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, spec.vocab_size, (batch, seq), generator=gen)
    mask = torch.ones(batch, past + seq, dtype=torch.long)
    pos = torch.arange(past, past + seq).expand(batch, seq).contiguous()
    shape = (batch, spec.num_kv_heads, past, spec.head_dim)
    kv = [torch.randn(shape, generator=gen).to(dtype) for _ in range(2 * spec.num_layers)]
    return (ids, mask, pos, *kv)


def dynamic_shapes(spec: DecoderSpec) -> tuple:
    def named(dims):
        return {i: d for i, d in enumerate(dims) if d}

    past = tuple(named(DIMS["past"]) for _ in range(2 * spec.num_layers))
    return (
        named(DIMS["input_ids"]),
        named(DIMS["attention_mask"]),
        named(DIMS["position_ids"]),
        past,
    )
