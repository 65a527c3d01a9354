"""Finding and loading the causal LM to prune: the default SmolLM2, a local folder or a hub id."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from armor_export.data import assets
from armor_export.errors import ConfigError, CorruptFileError, UserError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m"
_DEFAULT_ALIASES = {DEFAULT_MODEL, assets.MODEL_NAME.lower()}
# Pickle-based checkpoints can run code when loaded: they are never loaded.
_PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".ckpt", ".pkl"}


def resolve_model_path(name_or_path: str) -> str:
    """Map a model argument to what ``from_pretrained`` should get.

    The default alias (``smollm2-135m`` or ``SmolLM2-135M-Instruct``, any case) becomes the
    cached SmolLM2 folder (prepared on first use); an existing folder must hold a
    ``config.json``; a missing path (``_looks_like_path``) is an error saying the folder does
    not exist; anything else is returned unchanged as a Hugging Face hub id.
    """
    if name_or_path.strip().lower() in _DEFAULT_ALIASES:
        return str(assets.default_model_dir())
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise CorruptFileError(f"{path} has no config.json: not a Hugging Face model folder")
        return str(path)
    if path.exists():
        raise UserError(f"{path} is a file; pass the model folder (with config.json) instead")
    if _looks_like_path(name_or_path):
        head = _local_org(name_or_path)
        if head is None:
            raise UserError(f"model folder not found: {path}")
        raise UserError(
            f"model folder not found: {path} ({head}/ is a folder here, so "
            f"{name_or_path!r} is read as a path; for the hub id {name_or_path}, run from "
            "another folder, or download it and pass its folder)"
        )
    return name_or_path


def _looks_like_path(name: str) -> bool:
    """Hub ids are ``name`` or ``org/name``; anything else that is not on disk is a bad path,
    and so is an ``org/name`` whose ``org`` is a folder here (``models/nope``)."""
    return (
        name.startswith(("/", ".", "~"))
        or "\\" in name
        or name.count("/") > 1
        or name.endswith("/")
        or _local_org(name) is not None
    )


def _local_org(name: str) -> str | None:
    """``org`` of an ``org/name`` argument whose ``org`` is a folder in the working folder."""
    org, slash, rest = name.partition("/")
    return org if slash and org and rest and "/" not in rest and Path(org).is_dir() else None


def _check_local_weights(folder: Path) -> None:
    """Refuse folders whose weights are not safetensors (pickle files are never loaded)."""
    names = [p.name for p in folder.iterdir() if p.is_file()]
    if any(name.endswith(".safetensors") for name in names):
        return
    pickles = sorted(name for name in names if Path(name).suffix in _PICKLE_SUFFIXES)
    if pickles:
        raise UserError(
            f"{folder} has only pickle weights ({', '.join(pickles[:3])}); armor-export loads "
            "safetensors only: convert the checkpoint to safetensors first"
        )
    raise CorruptFileError(f"{folder} has no model weights (*.safetensors)")


def load_model_and_tokenizer(
    name_or_path: str, dtype: torch.dtype = torch.float32
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM (safetensors weights only, eval mode) and its tokenizer."""
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path(name_or_path)
    is_local = Path(path).is_dir()
    if is_local:
        _check_local_weights(Path(path))
    logger.info("loading model %s (%s)", path, str(dtype).removeprefix("torch."))
    try:
        with quiet_transformers():  # _check_loading_info says what did not load, in a line
            model, info = AutoModelForCausalLM.from_pretrained(
                path, dtype=dtype, use_safetensors=True, output_loading_info=True
            )
            tokenizer = AutoTokenizer.from_pretrained(path)
    except SafetensorError as exc:  # a truncated or corrupt weights file
        raise CorruptFileError(
            f"{path}: a safetensors file is corrupt or truncated ({_first_line(exc)})"
        ) from None
    except (OSError, ValueError) as exc:
        hint = f" (no local folder {name_or_path} either; no network? pass a local folder)"
        hint = "" if is_local else hint
        raise _load_failure(name_or_path, exc, hint) from exc
    _check_loading_info(path, info)
    check_finite(model, path)
    model.eval()
    return model, tokenizer


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers' warnings off while the block runs: its load report (a ~40-line table of
    missing and unexpected keys) would come before our one-line error about the same keys,
    and the loaders check what they load themselves."""
    import warnings

    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(verbosity)


_FINITE_CHUNK = 4 * 1024 * 1024  # elements checked at a time by ``check_finite``


def check_finite(model: torch.nn.Module, where: str | Path) -> None:
    """Refuse a model with NaN/Inf in any parameter or buffer (a broken norm weight makes
    every output NaN, and the text that follows blank), naming the first such tensor.

    Each tensor is checked a slice at a time: ``torch.isfinite`` makes a full-size
    temporary (its ``abs``), which for the embedding of a large vocabulary was a copy of
    most of the model on top of it (``prune/plan.py`` models the load's peak without it)."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not all(
            bool(torch.isfinite(part).all()) for part in tensor.reshape(-1).split(_FINITE_CHUNK)
        ):
            # a model loaded in a narrower type: a float32 value too large for it is Inf
            as_type = "" if tensor.dtype == torch.float32 else f" (as {_dtype_name(tensor)})"
            raise CorruptFileError(f"{where}: tensor {name} contains NaN or Inf values{as_type}")


def check_positions(config, seqlen: int, name: str, flag: str) -> None:
    """Refuse windows longer than the model's positions (``max_position_embeddings``).

    Refused, not clamped: the window length decides what calibration sees and what a
    perplexity means, and it is recorded with the results (run_config.json, eval records);
    a window silently cut to the model's length would make them say something else. The
    rerun only needs the number the message gives.
    """
    limit = int(getattr(config, "max_position_embeddings", 0) or 0)
    if limit and seqlen > limit:
        raise ConfigError(
            f"{name} {seqlen} exceeds the model's max_position_embeddings {limit}: "
            f"use {flag} {limit} or less"
        )


def _dtype_name(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


# tensors only a pruned checkpoint stores (prune/checkpoint.py)
PRUNED_TENSORS = ("core_values", "core_positions", "a_blocks", "b_blocks")


def _check_loading_info(path: str, info: dict) -> None:
    """Refuse a model whose weights did not all load: transformers would initialise the
    missing ones randomly and every result after that would be wrong, silently."""
    missing = list(info.get("missing_keys") or [])
    mismatched = [
        str(k[0]) if isinstance(k, tuple) else str(k) for k in info.get("mismatched_keys") or []
    ]
    unexpected = list(info.get("unexpected_keys") or [])
    if not (missing or mismatched):
        if unexpected:  # transformers' report of them is silenced (quiet_transformers)
            logger.debug("%s: tensors the model does not use: %s", path, unexpected[:10])
        return
    pruned = [k for k in unexpected if k.rsplit(".", 1)[-1] in PRUNED_TENSORS]
    if pruned:
        raise CorruptFileError(
            f"{path} holds pruned weights ({pruned[0]}, ...) but no armor_manifest.json: "
            "it is an incomplete copy of a pruned checkpoint; copy the manifest too, or "
            "prune again"
        )
    names = missing or mismatched
    raise CorruptFileError(
        f"{path}: {len(names)} weight(s) are missing from its safetensors files or do not "
        f"fit the model (e.g. {names[0]}); they would be initialised randomly"
    )


def load_lazy_model_and_tokenizer(name_or_path: str):
    """(:class:`~armor_export.prune.lazy.LazyModel`, tokenizer) of a local safetensors model.

    Only the modules outside the decoder layers are read now; layers and weights are read
    when needed (low-memory pruning).
    """
    from transformers import AutoTokenizer

    from armor_export.prune.lazy import load_lazy_model

    path = resolve_model_path(name_or_path)
    if not Path(path).is_dir():
        raise UserError(
            f"low-memory mode reads the weights from a local folder; {name_or_path!r} is not "
            "one (download it first, e.g. with `huggingface-cli download`)"
        )
    _check_local_weights(Path(path))
    logger.info("opening model %s lazily (one decoder layer in memory at a time)", path)
    try:
        lazy = load_lazy_model(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise _load_failure(name_or_path, exc) from exc
    return lazy, tokenizer


def _first_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else type(exc).__name__


def _load_failure(name_or_path: str, exc: Exception, hint: str = "") -> UserError:
    """A one-line error from what ``from_pretrained`` raised (its first line)."""
    return UserError(f"could not load model {name_or_path!r}: {_first_line(exc)}{hint}")
