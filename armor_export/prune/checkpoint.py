"""Pruned checkpoints: ``model.safetensors`` + ``armor_manifest.json`` + HF config/tokenizer.

The manifest, written last, records the sha256 of ``model.safetensors`` as written
(``sha256``, as the export manifest does for its files); :func:`load_checkpoint`, which
export, eval and verify's reference all load through, checks it before reading a tensor,
so a damaged or edited weight file is one line, never a silently different model.

Pruned matrices are stored compactly: ``<name>.core_values`` ``[d_out, d_in/2]``,
``<name>.core_positions`` (uint8, 2-bit positions) and, for ARMOR, ``<name>.a_blocks`` and
``<name>.b_blocks``. Everything else is the model's own state dict.
"""

from __future__ import annotations

import json
import logging
import platform
from pathlib import Path

import torch
from torch import nn

from armor_export import __version__
from armor_export.errors import CorruptFileError, QuantScaleError
from armor_export.io import read_json, sha256_file, write_json
from armor_export.prune import masks
from armor_export.prune.jobs import MatrixResult
from armor_export.prune.linear import ArmorLinear, set_submodule

MANIFEST = "armor_manifest.json"
WEIGHTS = "model.safetensors"
FORMAT = "armor-export-checkpoint"
FORMAT_VERSION = 1

log = logging.getLogger(__name__)


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


def _apply_quant(model: nn.Module, name: str, quant, mask: torch.Tensor) -> None:
    """Run matrix ``name`` of ``model`` through ``quant`` (a QuantCore): an ArmorLinear's
    core, or a baseline's masked linear replaced by a QuantLinear."""
    from armor_export.prune.linear import QuantLinear

    module = model.get_submodule(name)
    if isinstance(module, ArmorLinear):
        module.set_quant(quant)
    else:
        bias = module.bias.detach() if module.bias is not None else None
        set_submodule(model, name, QuantLinear(quant, mask, bias))


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
    out, state = _folder_and_state(out_dir, model)
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
    return _write_from_state(out, model, tokenizer, state, matrices, manifest_extra)


def _folder_and_state(out_dir: str | Path, model: nn.Module) -> tuple[Path, dict]:
    """The (created) output folder and the model's state to write: a tied LM head is the
    embedding, not stored twice."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    return out, state


def _write_from_state(out: Path, model, tokenizer, state: dict, matrices: dict, extra: dict):
    """Config, tokenizer, ``model.safetensors`` from ``state`` and the manifest (last)."""
    from armor_export.prune.lazy import TensorEntry, write_safetensors_streaming

    model.config.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    # written one tensor at a time from the model's own storage: a copy of the state (and
    # safetensors' bytes of all of it) was the in-memory prune's peak, ~2x the model (#24)
    entries = [
        TensorEntry(key, t.dtype, tuple(t.shape), (lambda t=t: t)) for key, t in state.items()
    ]
    write_safetensors_streaming(out / WEIGHTS, entries, {"format": FORMAT})
    _write_manifest(out, matrices, extra)
    return out


def save_quantized_checkpoint(
    out_dir: str | Path,
    model: nn.Module,
    tokenizer,
    source_manifest: dict,
    results: dict,
    act_scales: dict[str, torch.Tensor],
    manifest_extra: dict,
) -> Path:
    """Write the 8-bit checkpoint: ``model`` holds the (re-fitted) wrappers and the rest of
    the weights; ``results`` (``quant/api.MatrixQuant`` per matrix) the stored 8-bit values
    and weight scales; ``act_scales`` each core's activation scale. The 8-bit values are
    stored compactly like float cores (``core_values`` in the scheme's dtype, 2-bit
    positions), the scales in float32."""
    out, state = _folder_and_state(out_dir, model)
    matrices = {}
    for name, q in results.items():
        module = model.get_submodule(name)
        for key in [k for k in state if k.startswith(f"{name}.")]:
            if key.rpartition(".")[2] != "bias":
                state.pop(key)
        if isinstance(module, ArmorLinear):
            mask = module.mask
            state[f"{name}.a_blocks"] = q.a_blocks.to(module.a_blocks.dtype)
            state[f"{name}.b_blocks"] = q.b_blocks.to(module.b_blocks.dtype)
        else:  # a baseline's float weight: its kept entries (a 2:4 mask holding every non-zero)
            mask = masks.mask_from_scores(module.weight.detach().abs())
        if bool((q.values.float() != 0)[~mask].any()):
            raise ValueError(f"{name}: quantized values outside the 2:4 mask")
        from armor_export.quant.core import stored_bits

        values, positions = masks.pack(stored_bits(q.values), mask)
        state[f"{name}.core_values"] = values.view(q.values.dtype)
        state[f"{name}.core_positions"] = positions
        state[f"{name}.weight_scale"] = q.weight_scale.float().contiguous()
        if act_scales.get(name) is not None:  # absent: a weight-only core (float input)
            state[f"{name}.act_scale"] = act_scales[name].float().reshape(())
        entry = dict(source_manifest["matrices"][name])
        entry["quant"] = {k: v for k, v in q.metrics.items()}
        matrices[name] = entry
    return _write_from_state(out, model, tokenizer, state, matrices, manifest_extra)


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
        # the weights as just written (read back once: about a GB a second)
        "sha256": {WEIGHTS: sha256_file(out / WEIGHTS)},
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

    Returns ``(model, manifest)``: the model equals loading every tensor in float32 and then
    calling ``model.to(dtype)`` (the same float32 values, rounded once), but it is built on
    the ``meta`` device and filled one matrix at a time, each converted to ``dtype`` as soon
    as it is built. So neither the file's tensors, nor the dense weights of the layers the
    checkpoint replaces, nor a float32 copy of the model are ever held at once: a float16
    export of a 1.5 B model peaks at 5.9 GiB while loading instead of 14.2 GiB (#19).

    Anything malformed on disk (manifest, config, tensors that do not fit the model) raises
    :class:`CorruptFileError` naming the file and the matrix.
    """
    from armor_export.data.models import check_finite
    from armor_export.memory import trim_heap

    path = Path(path)
    manifest = read_checkpoint_manifest(path)
    tensors = _FileTensors(_weights_source(path, manifest))
    config = _read_config(path)
    with torch.device("meta"):
        model = _empty_model(path, config, torch.float32)
    quant = _quant_scheme(path, manifest)
    for name, info in manifest["matrices"].items():
        try:
            _materialize_linear(model, name, tensors)
            result = _matrix_result(name, info, tensors, model, manifest.get("method", "?"))
            if (quant is None) != (result.quant_values is None):
                raise ValueError(
                    "8-bit core values in a checkpoint whose manifest records no quantization"
                    if quant is None
                    else f"float core values in a {quant} checkpoint"
                )
            apply_result(model, result)
            if quant is not None:
                _apply_quant(model, name, _quant_core(name, quant, tensors, result), result.mask)
            del result
            model.get_submodule(name).to(dtype)
            trim_heap()  # the matrix's float32 temporaries (heap fragments otherwise)
        except (KeyError, ValueError, AttributeError, TypeError, RuntimeError) as exc:
            raise CorruptFileError(f"{path}: matrix {name}: {_one_line(exc)}") from None
        except QuantScaleError as exc:
            raise QuantScaleError(f"{path}: {exc}") from None
    tied = bool(getattr(config, "tie_word_embeddings", False))
    skip = set(manifest["matrices"]) | ({"lm_head"} if tied else set())
    missing = _load_remaining(model, tensors, skip, dtype, path / WEIGHTS)
    unexpected = tensors.remaining()
    if missing or unexpected:
        raise CorruptFileError(
            f"{path / WEIGHTS}: tensors missing {missing[:5]} / unexpected {unexpected[:5]}"
        )
    if tied:
        model.tie_weights()
    model.to(dtype)  # what the file does not hold (rotary tables) was built in float32
    check_finite(model, path)
    model.eval()
    trim_heap()
    return model, manifest


class _FileTensors:
    """The checkpoint file as the ``state`` dict :func:`_matrix_result` pops from: each
    ``pop`` reads one tensor, as stored, and marks it used."""

    def __init__(self, source):
        self.source, self.used = source, set()

    def __contains__(self, key: str) -> bool:
        return key in self.source

    def pop(self, key: str, *default):
        if key not in self.source:
            if default:
                return default[0]
            raise KeyError(key)
        self.used.add(key)
        return self.source.get(key, None)

    def remaining(self) -> list[str]:
        return [k for k in self.source.keys() if k not in self.used]


def _weights_source(path: Path, manifest: dict):
    """Single-tensor reads of ``path/model.safetensors``; a damaged file is one line here."""
    from armor_export.io import read_metadata
    from armor_export.prune.lazy import SafetensorsSource

    weights = path / WEIGHTS
    if not weights.is_file():
        raise CorruptFileError(f"missing file: {weights}")
    read_metadata(weights)  # safetensors checks the header against the file's size
    check_weights(path, manifest)
    return SafetensorsSource(path, files=[WEIGHTS])


def check_weights(path: Path, manifest: dict) -> None:
    """``model.safetensors`` must still have the sha256 its manifest recorded (one streamed
    read of the file). A checkpoint written before the manifest recorded it is loaded with a
    warning: a prune can take hours, and its file is as trustworthy as it was before."""
    weights = Path(path) / WEIGHTS
    recorded = manifest.get("sha256")
    if recorded is None:
        log.warning(
            "%s records no sha256 of %s (written by an older armor-export): its weights are "
            "not checked; re-run prune to get a checked checkpoint",
            path / MANIFEST,
            WEIGHTS,
        )
        return
    if not isinstance(recorded, dict) or not isinstance(recorded.get(WEIGHTS), str):
        raise CorruptFileError(f"{path / MANIFEST}: 'sha256' has no entry for {WEIGHTS}")
    if sha256_file(weights) != recorded[WEIGHTS]:
        raise CorruptFileError(
            f"{weights} is not the file prune wrote (its sha256 differs from {MANIFEST}): "
            "it was changed or damaged; re-run prune to write it again"
        )


def _materialize_linear(model: nn.Module, name: str, tensors: _FileTensors) -> None:
    """Give the (meta) linear ``name`` what :func:`apply_result` reads or writes: its bias
    from the file and an unfilled weight (never touched for ARMOR, which replaces it)."""
    linear = model.get_submodule(name)
    if not isinstance(linear, nn.Linear):
        raise TypeError(f"{type(linear).__name__} is not a linear layer")
    linear.weight = nn.Parameter(torch.empty(linear.weight.shape, dtype=linear.weight.dtype))
    if linear.bias is not None:
        bias = tensors.pop(f"{name}.bias").to(linear.bias.dtype)
        if tuple(bias.shape) != tuple(linear.bias.shape):
            raise ValueError(f"bias has shape {tuple(bias.shape)}, expected {linear.out_features}")
        linear.bias = nn.Parameter(bias)


def _load_remaining(
    model: nn.Module, tensors: _FileTensors, skip: set[str], dtype: torch.dtype, where: Path
) -> list[str]:
    """Fill every meta tensor outside the modules in ``skip`` from the file (converted to
    ``dtype``); buffers the file lacks (rotary tables) are rebuilt by the model's own
    ``_init_weights``, as for low-memory pruning. Returns the parameters the file lacks."""
    missing = []
    for mname, module in model.named_modules():
        if mname in skip:
            continue
        present, rebuild = [], False
        for kind, table in (("param", module._parameters), ("buffer", module._buffers)):
            for tname, tensor in list(table.items()):
                key = f"{mname}.{tname}" if mname else tname
                if tensor is None:
                    continue
                if key in tensors:
                    present.append((kind, tname, key, tensor))
                elif not tensor.is_meta:
                    continue
                elif kind == "param":
                    missing.append(key)
                else:  # _init_weights fills it in place: it needs storage
                    module._buffers[tname] = torch.empty(tensor.shape, dtype=tensor.dtype)
                    rebuild = True
        if rebuild:
            with torch.no_grad():
                model._init_weights(module)
        for kind, tname, key, tensor in present:
            value = tensors.pop(key)
            if tuple(value.shape) != tuple(tensor.shape):
                raise CorruptFileError(
                    f"{where}: {key} has shape {tuple(value.shape)}, the model expects "
                    f"{tuple(tensor.shape)}"
                )
            if value.is_floating_point():  # through float32, as the model was built
                value = value.to(tensor.dtype).to(dtype)
            else:
                value = value.to(tensor.dtype)
            _set_tensor(module, tname, value, kind)
    return missing


def _set_tensor(module: nn.Module, name: str, value: torch.Tensor, kind: str) -> None:
    if kind == "param":
        module._parameters[name] = nn.Parameter(value, requires_grad=value.is_floating_point())
    else:
        module._buffers[name] = value


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

    from armor_export.data.models import quiet_transformers

    if not (path / "config.json").is_file():
        raise CorruptFileError(f"missing file: {path / 'config.json'}")
    try:
        with quiet_transformers():  # what is wrong is our one line, not its warnings
            return AutoConfig.from_pretrained(path)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CorruptFileError(f"{path / 'config.json'}: {_one_line(exc)}") from None


def _empty_model(path: Path, config, dtype: torch.dtype) -> nn.Module:
    from transformers import AutoModelForCausalLM

    from armor_export.data.models import quiet_transformers

    try:
        with quiet_transformers():
            return AutoModelForCausalLM.from_config(config, dtype=dtype)
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptFileError(
            f"{path / 'config.json'}: cannot build the model ({_one_line(exc)})"
        ) from None


def _quant_scheme(path: Path, manifest: dict) -> str | None:
    """The scheme of a quantized checkpoint (``manifest["quant"]``), None for a float one."""
    from armor_export.quant import schemes

    quant = manifest.get("quant")
    if quant is None:
        return None
    scheme = quant.get("scheme") if isinstance(quant, dict) else None
    if scheme not in schemes.names():
        raise CorruptFileError(
            f"{path / MANIFEST}: unknown quantization scheme {scheme!r} "
            f"(this armor-export knows {', '.join(schemes.names())})"
        )
    return scheme


def _quant_core(name: str, scheme: str, tensors, result: MatrixResult):
    """The QuantCore of matrix ``name``: its stored 8-bit values (``result.core`` as read)
    and scales. Wrong dtypes and shapes are ValueErrors; bad scales QuantScaleError."""
    from armor_export.quant.core import QuantCore

    weight_scale = tensors.pop(f"{name}.weight_scale")
    act_scale = tensors.pop(f"{name}.act_scale", None)  # None: weight only (float input)
    act = None if act_scale is None else act_scale.float()
    return QuantCore(scheme, result.quant_values, weight_scale.float(), act, name)


def _matrix_result(
    name: str, info: dict, state: dict[str, torch.Tensor], model: nn.Module, method: str
) -> MatrixResult:
    """One pruned matrix from the checkpoint tensors, checked against the model's layer.

    Consumes its tensors from ``state``; raises KeyError/ValueError on anything malformed.
    """
    values = state.pop(f"{name}.core_values")
    positions = state.pop(f"{name}.core_positions")
    if values.dtype == torch.float8_e4m3fn:  # 8-bit cores: unpacked as raw bytes
        core, mask = masks.unpack(values.view(torch.uint8), positions)
        core = core.view(values.dtype)
    else:
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
    result = MatrixResult(name, method, core, mask, a_blocks, b_blocks)
    if not core.is_floating_point() or core.dtype.itemsize == 1:  # stored 8-bit values
        # the float core is filled from the QuantCore; its 8-bit values wait for it
        result.quant_values = core
        result.core = torch.zeros(core.shape, dtype=torch.float32)
    return result
