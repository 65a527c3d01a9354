"""Pruned checkpoints: ``model.safetensors`` + ``armor_manifest.json`` + HF config/tokenizer.

Pruned matrices are stored compactly: ``<name>.core_values`` ``[d_out, d_in/2]``,
``<name>.core_positions`` (uint8, 2-bit positions) and, for ARMOR, ``<name>.a_blocks`` and
``<name>.b_blocks``. Everything else is the model's own state dict.
"""

from __future__ import annotations

import platform
from pathlib import Path

import torch
from torch import nn

from armor_export import __version__
from armor_export.errors import CorruptFileError
from armor_export.io import read_json, read_tensors, write_json, write_tensors
from armor_export.prune import masks
from armor_export.prune.jobs import MatrixResult
from armor_export.prune.linear import ArmorLinear, set_submodule

MANIFEST = "armor_manifest.json"
WEIGHTS = "model.safetensors"
FORMAT = "armor-export-checkpoint"
FORMAT_VERSION = 1


def apply_result(model: nn.Module, result: MatrixResult) -> None:
    """Put one pruned matrix into ``model`` (ArmorLinear for ARMOR, masked weight otherwise)."""
    linear = model.get_submodule(result.name)
    bias = linear.bias.detach() if getattr(linear, "bias", None) is not None else None
    dtype = linear.core.dtype if isinstance(linear, ArmorLinear) else linear.weight.dtype
    if result.is_armor:
        module = ArmorLinear.from_factors(
            result.a_blocks, result.core, result.mask, result.b_blocks, bias
        ).to(dtype)
        set_submodule(model, result.name, module)
    else:
        with torch.no_grad():
            linear.weight.copy_(result.core.to(linear.weight.dtype))


def versions() -> dict[str, str]:
    import transformers

    return {
        "armor_export": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def save_checkpoint(
    out_dir: str | Path,
    model: nn.Module,
    tokenizer,
    results: dict[str, MatrixResult],
    manifest_extra: dict,
) -> Path:
    """Write the pruned model (with ``results`` already applied) into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    matrices = {}
    for name, res in results.items():
        for suffix in ("weight", "core", "mask", "a_blocks", "b_blocks"):
            state.pop(f"{name}.{suffix}", None)
        values, positions = masks.pack(res.core, res.mask)
        state[f"{name}.core_values"] = values
        state[f"{name}.core_positions"] = positions
        if res.is_armor:
            state[f"{name}.a_blocks"] = res.a_blocks
            state[f"{name}.b_blocks"] = res.b_blocks
        metrics = {k: v for k, v in res.metrics.items() if k != "history"}
        matrices[name] = {
            "kind": "armor" if res.is_armor else "sparse",
            "shape": list(res.core.shape),
            "block_size": int(res.a_blocks.shape[-1]) if res.is_armor else None,
            **metrics,
        }
    state = {k: v.detach().clone().contiguous() for k, v in state.items()}
    model.config.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    write_tensors(out / WEIGHTS, state, {"format": FORMAT})
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "versions": versions(),
        "matrices": matrices,
        **manifest_extra,
    }
    write_json(out / MANIFEST, manifest)
    return out


def is_pruned_checkpoint(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def load_checkpoint(path: str | Path, dtype: torch.dtype = torch.float32):
    """Load a pruned checkpoint into a transformers model with ArmorLinear modules.

    Returns ``(model, manifest)``.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path)
    manifest = read_json(path / MANIFEST)
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise CorruptFileError(
            f"{path / MANIFEST}: not an armor-export checkpoint of a known version"
        )
    state = read_tensors(path / WEIGHTS)
    config = AutoConfig.from_pretrained(path)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    provided = set()
    for name, info in manifest["matrices"].items():
        try:
            values = state.pop(f"{name}.core_values")
            positions = state.pop(f"{name}.core_positions")
            core, mask = masks.unpack(values, positions)
            linear = model.get_submodule(name)
            if list(core.shape) != list(info["shape"]) or tuple(core.shape) != (
                linear.out_features,
                linear.in_features,
            ):
                raise ValueError(f"shape {tuple(core.shape)} does not fit the model")
            a_blocks = state.pop(f"{name}.a_blocks", None)
            b_blocks = state.pop(f"{name}.b_blocks", None)
            if (info["kind"] == "armor") != (a_blocks is not None and b_blocks is not None):
                raise ValueError("ARMOR factors missing or unexpected")
        except (KeyError, ValueError, AttributeError) as exc:
            raise CorruptFileError(f"{path}: matrix {name}: {exc}") from None
        result = MatrixResult(name, manifest.get("method", "?"), core, mask, a_blocks, b_blocks)
        apply_result(model, result)
        module = model.get_submodule(name)
        provided.update(f"{name}.{k}" for k in module.state_dict())
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = getattr(config, "tie_word_embeddings", False)
    missing = [k for k in missing if k not in provided and not (tied and k == "lm_head.weight")]
    if missing or unexpected:
        raise CorruptFileError(
            f"{path / WEIGHTS}: tensors missing {missing[:5]} / unexpected {unexpected[:5]}"
        )
    if tied:
        model.tie_weights()
    model.eval()
    return model, manifest
