"""Pruned checkpoints: ``model.safetensors`` + ``armor_manifest.json`` + HF config/tokenizer.

Pruned matrices are stored compactly: ``<name>.core_values`` ``[d_out, d_in/2]``,
``<name>.core_positions`` (uint8, 2-bit positions) and, for ARMOR, ``<name>.a_blocks`` and
``<name>.b_blocks``. Everything else is the model's own state dict.
"""

from __future__ import annotations

import json
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
        block = int(res.a_blocks.shape[-1]) if res.is_armor else None
        matrices[name] = _matrix_entry(list(res.core.shape), block, res.metrics)
    state = {k: v.detach().clone().contiguous() for k, v in state.items()}
    model.config.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    write_tensors(out / WEIGHTS, state, {"format": FORMAT})
    _write_manifest(out, matrices, manifest_extra)
    return out


def _matrix_entry(shape: list[int], block_size: int | None, metrics: dict) -> dict:
    return {
        "kind": "armor" if block_size else "sparse",
        "shape": shape,
        "block_size": block_size,
        **{k: v for k, v in metrics.items() if k != "history"},
    }


def _write_manifest(out: Path, matrices: dict, manifest_extra: dict) -> None:
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "versions": versions(),
        "matrices": matrices,
        **manifest_extra,
    }
    write_json(out / MANIFEST, manifest)  # last: its presence marks a complete checkpoint


def save_checkpoint_streaming(
    out_dir: str | Path, lazy, tokenizer, store, names: list[str], manifest_extra: dict
) -> Path:
    """The checkpoint of a low-memory run, one tensor in memory at a time.

    ``lazy`` is a :class:`~armor_export.prune.lazy.LazyModel` (its tensors are read from the
    source files), ``store`` the :class:`~armor_export.prune.jobs.JobStore` holding the
    finished jobs ``names``, whose packed tensors are copied as they are. The file holds the
    same tensors as :func:`save_checkpoint` writes for the same results.
    """
    from dataclasses import replace

    from armor_export.io import read_metadata
    from armor_export.prune.lazy import TensorEntry, file_entries, write_safetensors_streaming

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model, source = lazy.model, lazy.source
    state = model.state_dict()  # meta tensors: names, shapes and dtypes only
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    pruned = set(names)
    entries, matrices = [], {}
    for name in names:
        path = store.path(name)
        job = {e.name: e for e in file_entries(path)}  # the job's packed tensors, as stored
        entries += [replace(e, name=f"{name}.{key}") for key, e in job.items()]
        metrics = json.loads(read_metadata(path)["metrics"])
        block = job["a_blocks"].shape[-1] if "a_blocks" in job else None
        rows, half = job["core_values"].shape
        matrices[name] = _matrix_entry([rows, 2 * half], block, metrics)
    for key, tensor in state.items():
        module, _, leaf = key.rpartition(".")
        if module in pruned and leaf in ("weight", "core", "mask", "a_blocks", "b_blocks"):
            continue
        # read in the stored dtype, converted as it is written (``TensorEntry.convert``)
        entries.append(TensorEntry(key, tensor.dtype, tuple(tensor.shape),
                                   _source_tensor(source, key), convert=True))  # fmt: skip
    model.config.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    write_safetensors_streaming(out / WEIGHTS, entries, {"format": FORMAT})
    _write_manifest(out, matrices, manifest_extra)
    return out


def _source_tensor(source, key: str):
    return lambda: source.get(key, dtype=None)


def is_pruned_checkpoint(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def load_checkpoint(path: str | Path, dtype: torch.dtype = torch.float32):
    """Load a pruned checkpoint into a transformers model with ArmorLinear modules.

    Returns ``(model, manifest)``. Anything malformed on disk (manifest, config, tensors that
    do not fit the model) raises :class:`CorruptFileError` naming the file and the matrix.
    """
    path = Path(path)
    manifest = read_checkpoint_manifest(path)
    state = read_tensors(path / WEIGHTS)
    config = _read_config(path)
    model = _empty_model(path, config, dtype)
    provided = set()
    for name, info in manifest["matrices"].items():
        try:
            result = _matrix_result(name, info, state, model, manifest.get("method", "?"))
            apply_result(model, result)
        except (KeyError, ValueError, AttributeError, TypeError, RuntimeError) as exc:
            raise CorruptFileError(f"{path}: matrix {name}: {_one_line(exc)}") from None
        module = model.get_submodule(name)
        provided.update(f"{name}.{k}" for k in module.state_dict())
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches are raised even with strict=False
        raise CorruptFileError(f"{path / WEIGHTS}: {_one_line(exc, last=True)}") from None
    tied = getattr(config, "tie_word_embeddings", False)
    missing = [k for k in missing if k not in provided and not (tied and k == "lm_head.weight")]
    if missing or unexpected:
        raise CorruptFileError(
            f"{path / WEIGHTS}: tensors missing {missing[:5]} / unexpected {unexpected[:5]}"
        )
    if tied:
        model.tie_weights()
    from armor_export.data.models import check_finite

    check_finite(model, path)
    model.eval()
    return model, manifest


def _one_line(exc: Exception, last: bool = False) -> str:
    if isinstance(exc, KeyError):  # str(KeyError('x')) is just "'x'"
        return f"missing entry {exc.args[0]!r}" if exc.args else "missing entry"
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    return (lines[-1] if last else lines[0])[:300]


def read_checkpoint_manifest(path: Path) -> dict:
    """The checked manifest of a pruned checkpoint folder (CorruptFileError otherwise)."""
    manifest = read_json(path / MANIFEST)
    if (
        not isinstance(manifest, dict)
        or manifest.get("format") != FORMAT
        or manifest.get("format_version") != FORMAT_VERSION
    ):
        raise CorruptFileError(
            f"{path / MANIFEST}: not an armor-export checkpoint of a known version"
        )
    if not isinstance(manifest.get("matrices"), dict):
        raise CorruptFileError(f"{path / MANIFEST}: no 'matrices' table")
    return manifest


def _read_config(path: Path):
    from transformers import AutoConfig

    if not (path / "config.json").is_file():
        raise CorruptFileError(f"missing file: {path / 'config.json'}")
    try:
        return AutoConfig.from_pretrained(path)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CorruptFileError(f"{path / 'config.json'}: {_one_line(exc)}") from None


def _empty_model(path: Path, config, dtype: torch.dtype) -> nn.Module:
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_config(config, dtype=dtype)
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptFileError(
            f"{path / 'config.json'}: cannot build the model ({_one_line(exc)})"
        ) from None


def _matrix_result(
    name: str, info: dict, state: dict[str, torch.Tensor], model: nn.Module, method: str
) -> MatrixResult:
    """One pruned matrix from the checkpoint tensors, checked against the model's layer.

    Consumes its tensors from ``state``; raises KeyError/ValueError on anything malformed.
    """
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
    if a_blocks is not None:
        d_out, d_in = core.shape
        b = info["block_size"]
        for label, blocks, dim in (("a_blocks", a_blocks, d_out), ("b_blocks", b_blocks, d_in)):
            if not isinstance(b, int) or b <= 0 or dim % b:
                raise ValueError(f"block size {b!r} does not divide the layer")
            if tuple(blocks.shape) != (dim // b, b, b):
                raise ValueError(
                    f"{label} has shape {tuple(blocks.shape)}, expected {(dim // b, b, b)}"
                )
    return MatrixResult(name, method, core, mask, a_blocks, b_blocks)
