"""Layer-by-layer calibration: dense statistics, and sequential mode's pruned inputs."""

from __future__ import annotations

import torch

from armor_export.models.registry import adapter_for
from armor_export.prune.calibrate import calibrate_layerwise
from armor_export.prune.masks import mask_from_scores
from tests.conftest import tiny_model


def _stats(model, batches, on_layer=None, sequential=False):
    adapter = adapter_for(model)
    targets = adapter.linears(model)
    seen = {}

    def record(i, stats):
        seen.update({name: st.hdiag(name) for name, st in stats.items()})
        if on_layer is not None:
            on_layer(targets, stats)

    calibrate_layerwise(model, adapter, batches, targets, record, sequential=sequential)
    return seen


@torch.no_grad()
def test_sequential_mode_feeds_each_layer_the_outputs_of_the_pruned_layers(
    calib_batches, one_torch_thread
):
    model = tiny_model("llama")
    dense = _stats(model, calib_batches)

    def magnitude_prune(targets, stats):
        for name in stats:
            weight = targets[name].weight
            weight.mul_(mask_from_scores(weight.abs()))

    sequential = _stats(model, calib_batches, magnitude_prune, sequential=True)
    # the model is now pruned: a layer's first linears (q/k/v read the layer input) saw in
    # sequence what the pruned model's plain statistics say (later linears of a layer were
    # measured before their own layer was pruned)
    pruned = _stats(model, calib_batches)
    assert sequential.keys() == dense.keys() == pruned.keys()
    qkv = [n for n in sequential if n.endswith(("q_proj", "k_proj", "v_proj"))]
    assert len(qkv) == 6
    for name in qkv:
        torch.testing.assert_close(sequential[name], pruned[name], rtol=1e-6, atol=0)
    first = [n for n in dense if n.startswith("model.layers.0.self_attn")]
    later = [n for n in dense if n.startswith("model.layers.1.")]
    assert all(torch.equal(sequential[n], dense[n]) for n in first)  # nothing pruned before
    assert all(not torch.allclose(sequential[n], dense[n]) for n in later)
