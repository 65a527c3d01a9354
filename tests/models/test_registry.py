"""Every registered model family prunes end to end with ARMOR; unknown families are refused.

Each registered *model type* is built tiny here (``gemma2`` shares the ``gemma`` adapter but
has its own layer code), and layer-by-layer calibration is checked against one ordinary
forward pass, including models whose layers mix sliding-window and full attention.
"""

import pytest
import torch
import torch.nn.functional as F

from armor_export.config import PruneConfig
from armor_export.errors import UnsupportedModelError
from armor_export.models.registry import (
    adapter_for,
    registered_families,
    registered_model_types,
)
from armor_export.prune import api
from armor_export.prune.calibrate import calibrate_layerwise
from armor_export.prune.linear import ArmorLinear
from armor_export.prune.statistics import collect_inputs
from tests.conftest import TINY_DIMS, tiny_config

FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "gemma"]
# model type -> family; every registered model type is built below
MODEL_TYPES = {
    "llama": "llama",
    "mistral": "mistral",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "gemma": "gemma",
    "gemma2": "gemma",
}
N_LINEARS = 14  # 2 layers x 7
# torch.compile of the solver costs ~20 s per process and block size: off in unit tests
ARMOR = {"block_size": 16, "iterations": 3, "compile": False}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def build(model_type: str, seed: int = 0, **overrides):
    """A tiny random model of ``model_type``; ``overrides`` change its config."""
    import transformers

    if model_type == "gemma2":
        config = transformers.Gemma2Config(**TINY_DIMS, head_dim=16, tie_word_embeddings=True)
    else:
        config = tiny_config(model_type)
    for key, value in overrides.items():
        setattr(config, key, value)
    torch.manual_seed(seed)
    return transformers.AutoModelForCausalLM.from_config(config).eval()


def test_every_registered_family_is_tested():
    assert sorted(registered_families()) == sorted(FAMILIES)
    assert set(MODEL_TYPES.values()) == set(FAMILIES)
    assert registered_model_types() == MODEL_TYPES


@pytest.mark.parametrize("model_type", sorted(MODEL_TYPES))
def test_armorize_every_model_type(model_type, calib_batches):
    model = build(model_type)
    adapter = adapter_for(model)
    assert adapter.family == MODEL_TYPES[model_type]
    cfg = PruneConfig.from_dict({"method": "armor", "armor": ARMOR})
    results = api.armorize_(model, cfg, calib_batches)
    linears = adapter.linears(model)
    assert len(linears) == N_LINEARS
    assert sorted(results) == sorted(linears)
    assert all(isinstance(mod, ArmorLinear) for mod in linears.values())
    with torch.no_grad():
        logits = model(input_ids=calib_batches[0], use_cache=False).logits
    assert torch.isfinite(logits).all()
    gen = torch.Generator().manual_seed(1)
    for name, mod in linears.items():
        x = torch.randn(3, 5, mod.in_features, generator=gen)
        with torch.no_grad():
            expected = F.linear(x, mod.dense_weight(), mod.bias)
            assert torch.allclose(mod(x), expected, atol=1e-5, rtol=1e-4), name


# sliding_window 8 < seqlen 32, so a layer fed another layer's mask computes other outputs
SLIDING = {
    "llama": {},
    "mistral": {"sliding_window": 8},
    "qwen2": {
        "use_sliding_window": True,
        "sliding_window": 8,
        "max_window_layers": 1,
        "layer_types": ["full_attention", "sliding_attention"],
    },
    "qwen3": {
        "use_sliding_window": True,
        "sliding_window": 8,
        "max_window_layers": 1,
        "layer_types": ["full_attention", "sliding_attention"],
    },
    "gemma": {},
    "gemma2": {"sliding_window": 8},
}


@pytest.mark.parametrize("model_type", sorted(MODEL_TYPES))
def test_layerwise_statistics_match_a_full_forward(model_type, calib_batches):
    model = build(model_type, **SLIDING[model_type])
    adapter = adapter_for(model)
    targets = adapter.linears(model)
    layerwise = {}

    def on_layer(_i, layer_stats):
        layerwise.update({name: st.hdiag(name) for name, st in layer_stats.items()})

    calibrate_layerwise(model, adapter, calib_batches, targets, on_layer)
    with torch.no_grad(), collect_inputs(targets) as stats:
        for ids in calib_batches:
            model(input_ids=ids, use_cache=False)
    assert sorted(layerwise) == sorted(targets)
    for name, st in stats.items():
        assert torch.allclose(layerwise[name], st.hdiag(name), rtol=1e-4, atol=1e-6), name


@pytest.mark.fault(
    "load",
    "an architecture without a registered adapter",
    "one line naming the supported model types",
)
def test_unsupported_architecture_names_supported_types():
    import transformers

    config = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100)
    model = transformers.AutoModelForCausalLM.from_config(config)
    with pytest.raises(UnsupportedModelError, match="'gpt2'") as info:
        api.armorize_(model, PruneConfig.from_dict({"method": "magnitude"}))
    for model_type in MODEL_TYPES:
        assert model_type in str(info.value)


@pytest.mark.parametrize("model_type", sorted(MODEL_TYPES))
def test_declared_gated_mlps_compute_the_gated_form(model_type):
    """``Adapter.gated_mlps`` is what lets the export keep an MLP's activation in block
    layout: every registered model type's MLP must be declared, and must compute
    ``down(act(gate(x)) * up(x))``, or the blocked lowering would compute something else."""
    model = build(model_type)
    mlp = model.model.layers[0].mlp
    assert type(mlp).__name__ in adapter_for(model).gated_mlps
    x = torch.randn(2, 3, TINY_DIMS["hidden_size"], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = mlp.down_proj(mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x))
        torch.testing.assert_close(mlp(x), want, rtol=0, atol=0)
