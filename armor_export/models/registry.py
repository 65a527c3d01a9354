"""Per-family adapters: where a causal LM keeps its decoder layers and which linears to prune.

Each supported family is a small registered class. Every family registered here must be
covered by ``tests/models/test_registry.py`` (a test enforces it).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from armor_export.errors import UnsupportedModelError


@dataclass(frozen=True)
class Adapter:
    """How to find the decoder layers and their prunable linears in one model family."""

    family: str
    model_types: tuple[str, ...]
    layers_path: str = "model.layers"
    linear_names: tuple[str, ...] = (
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.o_proj",
        "mlp.gate_proj",
        "mlp.up_proj",
        "mlp.down_proj",
    )
    # class names of this family's MLP modules that compute
    # ``down_proj(act_fn(gate_proj(x)) * up_proj(x))``: the export may then keep the
    # activation in block layout (export/lowering.LoweredArmorMLP); () = never
    gated_mlps: tuple[str, ...] = ()

    def layers(self, model: nn.Module) -> nn.ModuleList:
        return model.get_submodule(self.layers_path)

    def layer_prefix(self, index: int) -> str:
        return f"{self.layers_path}.{index}"

    def linears(self, model: nn.Module) -> dict[str, nn.Linear]:
        """Full module name -> linear, for every prunable linear of every decoder layer."""
        out: dict[str, nn.Linear] = {}
        for i, layer in enumerate(self.layers(model)):
            for name in self.linear_names:
                out[f"{self.layer_prefix(i)}.{name}"] = layer.get_submodule(name)
        return out


_REGISTRY: dict[str, Adapter] = {}


def register(adapter: Adapter) -> Adapter:
    for model_type in adapter.model_types:
        _REGISTRY[model_type] = adapter
    return adapter


register(Adapter("llama", ("llama",), gated_mlps=("LlamaMLP",)))
register(Adapter("mistral", ("mistral",), gated_mlps=("MistralMLP",)))
register(Adapter("qwen2", ("qwen2",), gated_mlps=("Qwen2MLP",)))
register(Adapter("qwen3", ("qwen3",), gated_mlps=("Qwen3MLP",)))
register(Adapter("gemma", ("gemma", "gemma2"), gated_mlps=("GemmaMLP", "Gemma2MLP")))


def registered_families() -> dict[str, Adapter]:
    """Family name -> adapter."""
    return {a.family: a for a in _REGISTRY.values()}


def gated_mlp_classes() -> frozenset[str]:
    """Class names of the MLP modules the registered families declare gated."""
    return frozenset(name for a in _REGISTRY.values() for name in a.gated_mlps)


def registered_model_types() -> dict[str, str]:
    """Hugging Face ``config.model_type`` -> family name, for every supported model type."""
    return {model_type: a.family for model_type, a in _REGISTRY.items()}


def adapter_for(model: nn.Module) -> Adapter:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in _REGISTRY:
        supported = ", ".join(sorted(_REGISTRY))
        raise UnsupportedModelError(
            f"unsupported architecture {model_type!r}; supported model types: {supported}"
        )
    return _REGISTRY[model_type]
