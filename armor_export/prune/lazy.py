"""Models larger than memory: decoder layers stay in their safetensors files until needed.

``low_memory`` pruning builds the model on the ``meta`` device, materialises only what runs
outside the decoder layers (embeddings, rotary tables, final norm), and loads one decoder
layer at a time for calibration (:class:`LazyModel`). Each job reads its own weight from
disk, and the checkpoint is streamed tensor by tensor (:func:`write_safetensors_streaming`),
so peak memory is one layer plus activations and statistics, not the model.
"""

from __future__ import annotations

import json
import logging
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch import nn

from armor_export.errors import CorruptFileError
from armor_export.io import atomic_path
from armor_export.memory import trim_heap

log = logging.getLogger(__name__)


class SafetensorsSource:
    """Read single tensors from a model folder's safetensors file(s), on demand.

    Tensors are read with plain file reads into memory they own, not through a memory map:
    a mapped file's touched pages count towards the process's resident size for the whole
    run, while what is read here is freed with the tensor (the OS still caches the file).
    """

    def __init__(self, folder: str | Path, files: list[str] | None = None):
        """``files``: read only these files of ``folder`` (default: the model's files)."""
        self.folder = Path(folder)
        index = self.folder / "model.safetensors.index.json"
        if files is not None:
            weight_map = None
        elif index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            files = sorted(set(weight_map.values()))
        else:
            files = sorted(p.name for p in self.folder.glob("*.safetensors"))
            weight_map = None
        if not files:
            raise CorruptFileError(f"{self.folder} has no model weights (*.safetensors)")
        # key -> (file, absolute byte offset, byte length, dtype, shape)
        self._where: dict[str, tuple[Path, int, int, torch.dtype, tuple[int, ...]]] = {}
        for name in files:
            path = self.folder / name
            for key, entry in _read_header(path).items():
                if weight_map is None or weight_map.get(key) == name:
                    self._where[key] = (path, *entry)

    def __contains__(self, key: str) -> bool:
        return key in self._where

    def keys(self) -> list[str]:
        return list(self._where)

    def stored_dtype(self, key: str) -> torch.dtype:
        return self._where[key][3]

    def nbytes(self, key: str) -> int:
        """Bytes of tensor ``key`` as stored."""
        return self._where[key][2]

    def largest_nbytes(self) -> int:
        """Bytes of the largest stored tensor (what streaming a checkpoint holds at once)."""
        return max((entry[2] for entry in self._where.values()), default=0)

    def all_finite(self, key: str) -> bool:
        """Whether tensor ``key`` holds no NaN/Inf, read ``_CHECK_BYTES`` at a time (never
        whole: the check adds a slice to the process's memory, not the tensor)."""
        if key not in self._where:
            raise CorruptFileError(f"{self.folder}: tensor {key!r} is missing")
        path, offset, length, dtype, _ = self._where[key]
        if not dtype.is_floating_point or not length:
            return True
        buf = bytearray(min(length, _CHECK_BYTES - _CHECK_BYTES % dtype.itemsize))
        with open(path, "rb") as fh:
            fh.seek(offset)
            while length:
                view = memoryview(buf)[: min(length, len(buf))]
                if fh.readinto(view) != len(view):
                    raise CorruptFileError(f"{path}: {key} is cut short (truncated file?)")
                part = torch.frombuffer(view, dtype=dtype)
                if dtype.itemsize == 1:  # float8: isfinite has no kernel for it
                    part = part.float()
                if not bool(torch.isfinite(part).all()):
                    return False
                length -= len(view)
        return True

    def get(self, key: str, dtype: torch.dtype | None = torch.float32) -> torch.Tensor:
        """A copy of tensor ``key`` (converted to ``dtype`` when floating point)."""
        if key not in self._where:
            raise CorruptFileError(f"{self.folder}: tensor {key!r} is missing")
        path, *entry = self._where[key]
        tensor = _read_tensor(path, key, *entry)
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        return tensor


_CHECK_BYTES = 16 * 1024 * 1024  # read at a time by ``SafetensorsSource.all_finite``


def _read_tensor(
    path: Path, key: str, offset: int, length: int, dtype: torch.dtype, shape: tuple[int, ...]
) -> torch.Tensor:
    """One tensor's bytes, read into a buffer the returned tensor owns."""
    buf = bytearray(length)
    with open(path, "rb") as fh:
        fh.seek(offset)
        if fh.readinto(buf) != length:
            raise CorruptFileError(f"{path}: {key} is cut short (truncated file?)")
    if not length:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(buf, dtype=dtype).reshape(shape)


def _read_header(path: Path) -> dict[str, tuple[int, int, torch.dtype, tuple[int, ...]]]:
    """key -> (absolute offset, length, dtype, shape) from a safetensors file's header."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            n = struct.unpack("<Q", fh.read(8))[0]
            if n > size - 8:
                raise ValueError("header longer than the file")
            header = json.loads(fh.read(n))
    except (OSError, ValueError, struct.error) as exc:
        raise CorruptFileError(f"{path}: unreadable safetensors file ({exc})") from None
    out = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            dtype = _FROM_NAME[info["dtype"]]
            begin, end = info["data_offsets"]
            shape = tuple(int(d) for d in info["shape"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptFileError(f"{path}: bad header entry for {key} ({exc})") from None
        if not 0 <= begin <= end or 8 + n + end > size:
            raise CorruptFileError(f"{path}: {key} lies outside the file (truncated?)")
        out[key] = (8 + n + begin, end - begin, dtype, shape)
    return out


def _set_tensor(module: nn.Module, name: str, value: torch.Tensor, is_param: bool) -> None:
    if is_param:
        module._parameters[name] = nn.Parameter(value, requires_grad=False)
    else:
        module._buffers[name] = value


def materialize(
    model: nn.Module, root: nn.Module, prefix: str, source: SafetensorsSource,
    skip: Callable[[nn.Module], bool] = lambda m: False,
) -> None:  # fmt: skip
    """Load every parameter and buffer under ``root`` (named ``prefix``) from ``source``.

    Buffers absent from the files (rotary tables) are rebuilt by the model's own
    ``_init_weights``; a missing parameter is a damaged checkpoint.
    """
    for mname, module in root.named_modules():
        if skip(module):
            continue
        full = f"{prefix}.{mname}" if mname else prefix
        present, missing_buffers = [], False
        for kind, tensors in (("param", module._parameters), ("buffer", module._buffers)):
            for tname, tensor in list(tensors.items()):
                if tensor is None:
                    continue
                key = f"{full}.{tname}" if full else tname
                if key in source:
                    present.append((kind, tname, key, tensor))
                elif kind == "param":
                    raise CorruptFileError(f"{source.folder}: tensor {key!r} is missing")
                else:
                    missing_buffers = True
                _set_tensor(module, tname, torch.empty(tensor.shape, dtype=tensor.dtype),
                            kind == "param")  # fmt: skip
        if missing_buffers:  # e.g. rotary tables; this may also initialise the parameters
            model._init_weights(module)
        for kind, tname, key, tensor in present:
            value = source.get(key, tensor.dtype if tensor.is_floating_point() else None)
            if tuple(value.shape) != tuple(tensor.shape):
                raise CorruptFileError(
                    f"{source.folder}: {key} has shape {tuple(value.shape)}, the model "
                    f"expects {tuple(tensor.shape)}"
                )
            _set_tensor(module, tname, value, kind == "param")


def release(root: nn.Module) -> None:
    """Drop the storage of every tensor under ``root`` (back to ``meta``)."""
    root.to("meta")
    trim_heap()


@dataclass
class LazyModel:
    """A model whose decoder layers are loaded one at a time from ``source``."""

    model: nn.Module
    source: SafetensorsSource
    layers_path: str

    def layer(self, index: int) -> nn.Module:
        return self.model.get_submodule(self.layers_path)[index]

    def load_layer(self, index: int) -> nn.Module:
        layer = self.layer(index)
        materialize(self.model, layer, f"{self.layers_path}.{index}", self.source)
        return layer

    def release_layer(self, index: int) -> None:
        release(self.layer(index))

    def release_all(self) -> None:
        """Back to a skeleton (after calibration: jobs and the checkpoint read from disk)."""
        release(self.model)

    def weight(self, module_name: str) -> torch.Tensor:
        return self.source.get(f"{module_name}.weight")

    def check_finite(self) -> None:
        """Refuse NaN/Inf in any tensor of the model's files, naming the first one: what
        ``data.models.check_finite`` does for a loaded model, here read from disk a slice at a
        time (the tensors outside the pruned weights are copied into the checkpoint as read)."""
        for key in self.model.state_dict():
            if key in self.source and not self.source.all_finite(key):
                raise CorruptFileError(
                    f"{self.source.folder}: tensor {key} contains NaN or Inf values"
                )


def load_lazy_model(folder: str | Path) -> LazyModel:
    """The model on ``meta``; the modules that run outside the decoder layers materialised.

    ``lm_head`` stays on ``meta``: calibration runs only the base model.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    from armor_export.models.registry import adapter_for

    config = AutoConfig.from_pretrained(folder)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.eval()
    layers_path = adapter_for(model).layers_path
    source = SafetensorsSource(folder)
    parent_path, _, _ = layers_path.rpartition(".")
    layers = model.get_submodule(layers_path)
    in_layers = {id(m) for m in layers.modules()}
    base = model.get_submodule(parent_path) if parent_path else model
    embedding = _embedding_in_stored_dtype(model, source)
    skip = {id(m) for m in (embedding,) if m is not None} | in_layers
    materialize(model, base, parent_path, source, skip=lambda m: id(m) in skip)
    return LazyModel(model, source, layers_path)


def _embedding_in_stored_dtype(model: nn.Module, source: SafetensorsSource) -> nn.Module | None:
    """Keep a plain input embedding in its stored (16-bit) dtype; upcast the rows looked up.

    The embedding is the largest tensor outside the layers (151936 x 1536 is 890 MiB in
    fp32, 445 MiB in bf16). Looking rows up and then upcasting gives exactly what the fp32
    table gives (a 16-bit float widens to fp32 exactly). The fp32 ``weight`` parameter stays
    on ``meta``, so the model's dtype and its state dict (what the checkpoint is streamed
    from) are unchanged. Returns the module, or None where this does not apply (a subclass
    that scales or normalises its rows, an fp32 checkpoint).
    """
    emb = model.get_input_embeddings()
    if type(emb) is not nn.Embedding or emb.max_norm is not None:
        return None
    name = next(n for n, m in model.named_modules() if m is emb)
    key = f"{name}.weight"
    if key not in source:
        return None
    stored = source.stored_dtype(key)
    if not stored.is_floating_point or stored.itemsize >= emb.weight.dtype.itemsize:
        return None
    table = source.get(key, dtype=None)
    if tuple(table.shape) != tuple(emb.weight.shape):
        raise CorruptFileError(
            f"{source.folder}: {key} has shape {tuple(table.shape)}, the model expects "
            f"{tuple(emb.weight.shape)}"
        )
    emb.register_buffer("stored_weight", table, persistent=False)
    emb.forward = partial(_upcast_lookup, emb)
    return emb


def _upcast_lookup(emb: nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
    return nn.functional.embedding(ids, emb.stored_weight, emb.padding_idx).to(emb.weight.dtype)


# ---------------------------------------------------------------------------------------
# streaming safetensors writer

_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3",
}  # fmt: skip
_FROM_NAME = {v: k for k, v in _DTYPES.items()}


def file_entries(path: str | Path) -> list[TensorEntry]:
    """Every tensor of a safetensors file as an entry that reads it when written out."""
    path = Path(path)
    return [
        TensorEntry(key, dtype, shape, partial(_read_tensor, path, key, off, n, dtype, shape))
        for key, (off, n, dtype, shape) in _read_header(path).items()
    ]


@dataclass
class TensorEntry:
    """One tensor of a streamed file: its header data and how to produce its values."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    load: Callable[[], torch.Tensor]
    # ``load`` may give another floating dtype, converted to ``dtype`` as it is written, a
    # slice at a time (a bf16 embedding stored as fp32 is never whole in both dtypes)
    convert: bool = False

    @property
    def nbytes(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n * torch.empty((), dtype=self.dtype).element_size()


_WRITE_ELEMENTS = 4 * 1024 * 1024  # converted and written at a time (16 MiB in fp32)


def write_safetensors_streaming(
    path: str | Path, entries: Iterable[TensorEntry], metadata: dict[str, str] | None = None
) -> None:
    """Write a safetensors file holding one tensor in memory at a time (atomically).

    The header is computed from the declared dtypes and shapes; each loaded tensor is
    checked against its declaration.
    """
    entries = sorted(entries, key=lambda e: e.name)
    header: dict = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for e in entries:
        if e.dtype not in _DTYPES:
            raise TypeError(f"{e.name}: dtype {e.dtype} cannot be stored")
        header[e.name] = {
            "dtype": _DTYPES[e.dtype], "shape": list(e.shape),
            "data_offsets": [offset, offset + e.nbytes],
        }  # fmt: skip
        offset += e.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(struct.pack("<Q", len(raw)))
            fh.write(raw)
            for e in entries:
                t = e.load()
                converts = e.convert and t.is_floating_point() and e.dtype.is_floating_point
                if (t.dtype != e.dtype and not converts) or tuple(t.shape) != tuple(e.shape):
                    raise ValueError(
                        f"{e.name}: produced {t.dtype}{tuple(t.shape)}, "
                        f"declared {e.dtype}{tuple(e.shape)}"
                    )
                flat = t.detach().contiguous().cpu().reshape(-1)
                for part in flat.split(_WRITE_ELEMENTS):
                    fh.write(part.to(e.dtype).view(torch.uint8).numpy())

    atomic_path(path, write)
