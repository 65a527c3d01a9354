"""Layer-by-layer calibration: statistics of every prunable linear, one decoder layer at a time.

The inputs of the first decoder layer (and every layer's keyword arguments: masks differ
per layer in models mixing sliding and full attention) are captured once; then each layer
runs on them, its linears' inputs are summed by hooks, and its outputs become the next
layer's inputs.
Between statistics and outputs a callback may replace the layer's linears (sequential
mode: pruned outputs propagate, as SparseGPT does). Without it the statistics are those of
the dense model (ARMOR, NoWag-P, Wanda). Only one layer's activations are alive at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from armor_export.models.registry import Adapter
from armor_export.prune.statistics import InputStatistics, collect_inputs

if TYPE_CHECKING:
    from armor_export.prune.lazy import LazyModel


@dataclass
class _Captured:
    hidden: list[torch.Tensor]  # per batch: the inputs of decoder layer 0
    kwargs: list[list[dict]]  # per layer, per batch: the keyword arguments of that layer


class _InputCatcher(nn.Module):
    """Stands in for one decoder layer: records its keyword arguments and passes through.

    Every layer gets a catcher because the arguments may differ per layer: models that mix
    sliding-window and full attention (Gemma2, Qwen2/3 with ``use_sliding_window``) pass
    each layer the mask of its ``layer_types`` entry. The first catcher also records the
    hidden states; passing them through unchanged keeps the later catchers cheap.
    """

    def __init__(self, layer: nn.Module, store: _Captured, index: int):
        super().__init__()
        self.store, self.index = store, index
        self.attention_type = getattr(layer, "attention_type", None)

    def forward(self, hidden_states, *args, **kwargs):
        if self.index == 0:
            self.store.hidden.append(hidden_states.detach())
        kwargs = {k: v for k, v in kwargs.items() if k not in ("past_key_values", "use_cache")}
        self.store.kwargs[self.index].append(kwargs)
        return hidden_states


@torch.no_grad()
def capture_layer_inputs(
    model: nn.Module, adapter: Adapter, batches: list[torch.Tensor]
) -> _Captured:
    """Inputs of decoder layer 0 and keyword arguments of every layer, for every batch."""
    layers = adapter.layers(model)
    store = _Captured([], [[] for _ in layers])
    parent_path, _, attr = adapter.layers_path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    catchers = [_InputCatcher(layer, store, i) for i, layer in enumerate(layers)]
    setattr(parent, attr, nn.ModuleList(catchers))
    try:
        for ids in batches:
            parent(input_ids=ids, use_cache=False)
    finally:
        setattr(parent, attr, layers)
    if any(len(kw) != len(batches) for kw in store.kwargs):
        raise RuntimeError("the model did not call every decoder layer once per batch")
    return store


def _layer_forward(layer: nn.Module, hidden: torch.Tensor, kwargs: dict) -> torch.Tensor:
    out = layer(hidden, use_cache=False, **kwargs)
    return out[0] if isinstance(out, tuple) else out


def _run_layer(layer: nn.Module, hidden: list[torch.Tensor], kwargs: list[dict]):
    return [_layer_forward(layer, h, kw) for h, kw in zip(hidden, kwargs, strict=True)]


LayerCallback = Callable[[int, dict[str, InputStatistics]], None]


@torch.no_grad()
def calibrate_layerwise(
    model: nn.Module,
    adapter: Adapter,
    batches: list[torch.Tensor],
    targets: dict[str, nn.Linear],
    on_layer: LayerCallback,
    gram: bool = False,
    sequential: bool = False,
    progress: Callable[[int, int], None] | None = None,
    lazy: LazyModel | None = None,
) -> None:
    """Run the calibration batches layer by layer; call ``on_layer(i, stats)`` for each layer.

    ``targets`` maps full module names to the linears whose inputs are summed. With
    ``sequential=True`` the layer's outputs are computed after ``on_layer`` returns (so a
    callback that prunes the layer propagates pruned outputs); otherwise before.
    With ``lazy`` (a model whose decoder layers are on ``meta``) each layer is loaded from
    disk before it runs and released after, so one layer is resident at a time.
    """
    captured = capture_layer_inputs(model, adapter, batches)
    hidden, captured.hidden = captured.hidden, []  # one reference: old inputs can be freed
    if lazy is not None and not sequential:
        # the embeddings (and final norm) ran in the capture; the layers need only their
        # captured inputs and keyword arguments, so the activations need not sit beside
        # the embedding matrix (113 MiB for SmolLM2, 500 MiB for a 7B Llama)
        lazy.release_all()
    layers = adapter.layers(model)
    for i, layer in enumerate(layers):
        if lazy is not None:
            layer = lazy.load_layer(i)
        prefix = adapter.layer_prefix(i) + "."
        mine = {n: m for n, m in targets.items() if n.startswith(prefix)}
        kwargs = captured.kwargs[i]
        with collect_inputs(mine, gram=gram) as stats:
            if sequential:  # statistics only: the outputs come after on_layer
                for h, kw in zip(hidden, kwargs, strict=True):
                    _layer_forward(layer, h, kw)
            else:  # each batch's output replaces its input: one copy of the activations
                for j, kw in enumerate(kwargs):
                    hidden[j] = _layer_forward(layer, hidden[j], kw)
        on_layer(i, stats)
        if sequential:  # the inputs again, through the layer as on_layer left it
            hidden = _run_layer(layer, hidden, kwargs)
        if lazy is not None:
            lazy.release_layer(i)
        if progress is not None:
            progress(i + 1, len(layers))
