"""Content keys: what a statistic or a job result was computed from, as a digest.

A resumed prune reuses earlier work only when its key matches, never because a file sits
at the same path. A model folder overwritten in place, or an edited calibration text,
therefore redoes exactly the work whose inputs changed.
- The calibration statistics are keyed on the model's weight files, the calibration token
  ids and the kind of statistics.
- Each job is keyed on its own weight, its statistics and the method's settings.
Layers whose inputs did not change get bit-identical statistics (calibration is
deterministic), so their jobs are reused.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

import torch

from armor_export.config import PruneConfig
from armor_export.prune import methods

CHUNK = 1 << 22


def _update_tensor(digest, tensor: torch.Tensor | None) -> None:
    if tensor is None:
        digest.update(b"none;")
        return
    tensor = tensor.detach().contiguous().cpu()
    digest.update(f"{tensor.dtype}{tuple(tensor.shape)};".encode())
    digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")


def tensor_digest(*tensors: torch.Tensor | None) -> str:
    """sha256 of the tensors' dtypes, shapes and bytes, in order (None counts too)."""
    digest = hashlib.sha256()
    for tensor in tensors:
        _update_tensor(digest, tensor)
    return digest.hexdigest()


def files_digest(paths: Iterable[Path]) -> str:
    """sha256 of the files' names and bytes, in the order given."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(f"{path.name};".encode())
        with open(path, "rb") as fh:
            for chunk in iter(lambda fh=fh: fh.read(CHUNK), b""):
                digest.update(chunk)
    return digest.hexdigest()


def model_digest(model_path: str) -> str:
    """The content of a local model: its config and every safetensors file. A hub id that
    is not a local folder can only be keyed by its name."""
    folder = Path(model_path)
    if not folder.is_dir():
        return hashlib.sha256(f"hub:{model_path}".encode()).hexdigest()
    files = [folder / "config.json"] if (folder / "config.json").is_file() else []
    files += sorted(folder.glob("*.safetensors"))
    return files_digest(files)


def model_source(model: str) -> dict:
    """Which model a run reads: its resolved folder (or hub id) and its content
    (:func:`model_digest`). Two runs read the same model when either matches: another
    spelling of the folder, or a moved or copied folder with the same files."""
    from armor_export.data.models import resolve_model_path

    resolved = resolve_model_path(model)
    folder = Path(resolved)
    path = str(folder.resolve()) if folder.is_dir() else resolved
    return {"path": path, "sha256": model_digest(resolved)}


def text_source(text: str) -> dict:
    """Which calibration text a run reads: a bundled corpus or dataset by its name, a file
    by its resolved path and the sha256 of its bytes (None when it is not a file)."""
    from armor_export.data.text import DATASETS_PREFIX
    from armor_export.io import sha256_file

    if text in ("botchan", "wikipedia") or text.startswith(DATASETS_PREFIX):
        return {"path": text, "sha256": None}
    path = Path(text).expanduser()
    return {
        "path": str(path.resolve()),
        "sha256": sha256_file(path) if path.is_file() else None,
    }


def same_source(previous, current: dict) -> bool:
    """Whether a recorded source (:func:`model_source`, :func:`text_source`; a bare string
    in records from before they existed) names the same input: the same resolved path, or
    the same content."""
    if isinstance(previous, str):
        folder = Path(previous).expanduser()
        previous = {"path": str(folder.resolve()) if folder.exists() else previous}
    if not isinstance(previous, dict):
        return False
    if previous.get("path") == current["path"]:
        return True
    return current["sha256"] is not None and previous.get("sha256") == current["sha256"]


def statistics_key(model_key: str, batches: list[torch.Tensor], gram: bool) -> str:
    """Key of the dense calibration statistics: model, calibration token ids, Gram or not."""
    data = {"model": model_key, "calibration": tensor_digest(*batches), "gram": gram}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def inputs_key(cfg: PruneConfig) -> str:
    """What a prune of ``cfg`` reads, as one key: the model's content and, for a method that
    calibrates, the calibration token ids (which the tokenizer and the text decide): the
    parts of :func:`statistics_key`. ``build`` keys its prune stage on it, so the same
    paths with other content redo the prune."""
    from armor_export.data.models import resolve_model_path
    from armor_export.errors import UserError

    resolved = resolve_model_path(cfg.model)
    method = methods.get(cfg.method)
    batches: list[torch.Tensor] = []
    if method.needs_statistics:
        from transformers import AutoConfig, AutoTokenizer

        from armor_export.prune.api import calibration_batches

        try:
            tokenizer = AutoTokenizer.from_pretrained(resolved)
            model_config = AutoConfig.from_pretrained(resolved)
        except (OSError, ValueError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise UserError(f"{cfg.model}: cannot load its tokenizer or config ({first})") from None
        batches = calibration_batches(tokenizer, cfg, model_config)
    return statistics_key(model_digest(resolved), batches, method.needs_gram)


def solver_config(cfg: PruneConfig) -> dict:
    """The settings that decide one job's result: the method and its own settings (not
    scheduling: workers, batching, compile; not selection or calibration, which reach a
    job through its weight and statistics)."""
    method = methods.get(cfg.method)
    data: dict = {"method": cfg.method}
    if method.settings:
        settings = dict(getattr(cfg, method.settings).__dict__)
        settings.pop("compile", None)  # a faster path to the same numbers
        data[method.settings] = settings
    return data


def job_key(
    weight: torch.Tensor,
    hdiag: torch.Tensor | None,
    gram: torch.Tensor | None,
    cfg: PruneConfig,
) -> str:
    """Key of one job's result: its weight, its statistics and the solver settings."""
    settings = json.dumps(solver_config(cfg), sort_keys=True)
    return hashlib.sha256((tensor_digest(weight, hdiag, gram) + settings).encode()).hexdigest()
