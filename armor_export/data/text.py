"""Calibration and evaluation text: where it comes from and how it becomes token windows.

torch is imported by the functions that return tensors only: ``load_text`` and
``eval_window_count`` serve the torch-free runtime too (``eval`` of an export folder).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from armor_export.data import assets
from armor_export.errors import CorruptFileError, UserError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

BUILTIN_TEXTS = ("botchan", "wikipedia")
DATASETS_PREFIX = "datasets:"
DATASETS_FORMAT = "datasets:NAME[:CONFIG]:SPLIT[:COLUMN]"
# Used to tell NAME:SPLIT:COLUMN from NAME:CONFIG:SPLIT when a spec has three fields.
_COMMON_SPLITS = {"train", "test", "validation", "valid", "dev", "eval", "evaluation"}


@dataclass(frozen=True)
class DatasetSpec:
    """A Hugging Face ``datasets`` text source: which dataset, config, split and column."""

    name: str
    config: str | None
    split: str
    column: str = "text"


def load_text(source: str) -> str:
    """Return the text of ``source``.

    ``source`` is ``"botchan"`` or ``"wikipedia"`` (the bundled corpora), a path to a UTF-8
    text file, or ``"datasets:NAME[:CONFIG]:SPLIT[:COLUMN]"`` (a Hugging Face dataset whose
    column, ``text`` by default, is joined with blank lines).
    """
    if source == "botchan":
        return assets.botchan_text()
    if source == "wikipedia":
        return assets.wikipedia_text()
    if source.startswith(DATASETS_PREFIX):
        return _load_dataset_text(parse_datasets_spec(source))
    return _load_text_file(Path(source).expanduser())


def _load_text_file(path: Path) -> str:
    if not path.is_file():
        raise UserError(
            f"text file not found: {path} (or use 'botchan', 'wikipedia' or {DATASETS_FORMAT})"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise CorruptFileError(
            f"{path} is not UTF-8 text: {exc.reason} at byte {exc.start}"
        ) from exc
    except OSError as exc:
        raise UserError(f"cannot read text file {path}: {exc.strerror}") from exc
    if not text.strip():
        raise UserError(f"text file {path} is empty")
    return text


def _split_fields(spec: str) -> list[str]:
    """Split on ':' except inside [...], so split slices like ``train[:1000]`` survive."""
    fields, current, depth = [], [], 0
    for char in spec:
        if char == "[":
            depth += 1
        elif char == "]":
            depth = max(depth - 1, 0)
        if char == ":" and depth == 0:
            fields.append("".join(current))
            current = []
        else:
            current.append(char)
    fields.append("".join(current))
    return fields


def parse_datasets_spec(source: str) -> DatasetSpec:
    """Parse ``datasets:NAME[:CONFIG]:SPLIT[:COLUMN]``.

    With three fields, ``NAME:X:Y`` means ``NAME:SPLIT:COLUMN`` when X is a usual split name
    (train, test, validation...) or a slice, else ``NAME:CONFIG:SPLIT``. An empty CONFIG
    (``NAME::SPLIT:COLUMN``) is allowed to say "no config" explicitly.
    """
    fields = [field.strip() for field in _split_fields(source.removeprefix(DATASETS_PREFIX))]
    bad = UserError(f"bad dataset source {source!r}: expected {DATASETS_FORMAT}")
    if len(fields) == 2:
        name, config, split, column = fields[0], None, fields[1], "text"
    elif len(fields) == 3:
        if _looks_like_split(fields[1]):
            name, config, split, column = fields[0], None, fields[1], fields[2]
        else:
            name, config, split, column = fields[0], fields[1], fields[2], "text"
    elif len(fields) == 4:
        name, config, split, column = fields
    else:
        raise bad
    if not name or not split or not column:
        raise bad
    return DatasetSpec(name=name, config=config or None, split=split, column=column)


def _looks_like_split(field: str) -> bool:
    return field.split("[", 1)[0].lower() in _COMMON_SPLITS or "[" in field


def _load_dataset_text(spec: DatasetSpec) -> str:
    try:
        import datasets
    except ImportError:
        raise UserError(
            "loading a 'datasets:' text source needs the datasets package: "
            "install armor-export[datasets]"
        ) from None
    label = ":".join(part for part in (spec.name, spec.config, spec.split) if part)
    logger.info("loading dataset %s", label)
    try:
        dataset = datasets.load_dataset(spec.name, spec.config, split=spec.split)
    except (OSError, ValueError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"could not load dataset {label}: {message} (no network? pass a local text file)"
        ) from exc
    if spec.column not in dataset.column_names:
        raise UserError(
            f"dataset {label} has no column {spec.column!r}; "
            f"columns: {', '.join(dataset.column_names)}"
        )
    rows = [row for row in dataset[spec.column] if isinstance(row, str) and row.strip()]
    if not rows:
        raise UserError(f"dataset {label} column {spec.column!r} holds no text")
    return "\n\n".join(rows)


def tokenize_text(tokenizer: PreTrainedTokenizerBase, text: str) -> torch.Tensor:
    """All token ids of ``text`` as one 1-D LongTensor, without special tokens.

    The whole text is tokenised at once (as perplexity evaluations usually do), so window
    boundaries never change how the text is split; ``verbose=False`` silences the
    "longer than the maximum sequence length" warning, which does not apply to a token stream.
    """
    import torch

    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise UserError(f"{name} must be at least 1, got {value}")


def calibration_samples(
    tokenizer: PreTrainedTokenizerBase, text: str, n_samples: int, seqlen: int, seed: int
) -> torch.Tensor:
    """``n_samples`` random windows of ``seqlen`` tokens from ``text``: a LongTensor [n, seqlen].

    Window starts come from ``torch.Generator().manual_seed(seed)``, so the same seed gives
    the same samples on every machine. Windows may overlap.
    """
    import torch

    _check_positive(n_samples=n_samples, seqlen=seqlen)
    tokens = tokenize_text(tokenizer, text)
    if tokens.numel() < seqlen + 1:
        raise UserError(
            f"calibration text has {tokens.numel()} tokens; "
            f"windows of {seqlen} tokens need at least {seqlen + 1}"
        )
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, tokens.numel() - seqlen, (n_samples,), generator=generator)
    offsets = torch.arange(seqlen)
    return tokens[starts[:, None] + offsets[None, :]]


def eval_windows(
    tokenizer: PreTrainedTokenizerBase, text: str, seqlen: int, n_windows: int | None
) -> torch.Tensor:
    """Consecutive, non-overlapping windows of ``seqlen`` tokens from the start of ``text``.

    Returns a LongTensor [n, seqlen] with n = ``n_windows`` or, if fewer fit (or
    ``n_windows`` is None), as many as fit. Raises UserError if not even one fits.
    """
    tokens = tokenize_text(tokenizer, text)
    n_windows = eval_window_count(tokens.numel(), seqlen, n_windows)
    return tokens[: n_windows * seqlen].view(n_windows, seqlen)


def eval_window_count(n_tokens: int, seqlen: int, n_windows: int | None) -> int:
    """How many windows of ``seqlen`` tokens ``eval_windows`` takes from ``n_tokens`` tokens:
    ``n_windows``, or as many as fit when fewer do (warned) or ``n_windows`` is None; a
    UserError when not even one fits. The one rule for PyTorch's windows and those the
    torch-free runtime cuts from the same token stream (``eval.exported``)."""
    _check_positive(seqlen=seqlen)
    if n_windows is not None:
        _check_positive(n_windows=n_windows)
    n_fit = n_tokens // seqlen
    if n_fit == 0:
        raise UserError(f"evaluation text has {n_tokens} tokens, fewer than one window of {seqlen}")
    if n_windows is None:
        return n_fit
    if n_fit < n_windows:
        logger.warning(
            "evaluation text has %d tokens: using %d windows of %d instead of %d",
            n_tokens,
            n_fit,
            seqlen,
            n_windows,
        )
        return n_fit
    return n_windows
