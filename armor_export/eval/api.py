"""The ``eval`` verb: perplexity of a dense model or a pruned checkpoint."""

from __future__ import annotations

import time
from dataclasses import dataclass

from armor_export.config import EvalConfig
from armor_export.progress import NullReporter, Reporter


@dataclass
class EvalResult:
    model: str
    perplexity: float
    tokens: int
    seconds: float
    pruned: bool


def load_any_model(name_or_path: str):
    """(model, tokenizer, manifest|None): a pruned checkpoint or any dense HF model."""
    from armor_export.data.models import load_model_and_tokenizer
    from armor_export.prune.checkpoint import is_pruned_checkpoint, load_checkpoint

    if is_pruned_checkpoint(name_or_path):
        from transformers import AutoTokenizer

        from armor_export.errors import CorruptFileError

        model, manifest = load_checkpoint(name_or_path)
        try:
            tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        except (OSError, ValueError) as exc:
            raise CorruptFileError(f"{name_or_path}: no usable tokenizer files ({exc})") from None
        return model, tokenizer, manifest
    model, tokenizer = load_model_and_tokenizer(name_or_path)
    return model, tokenizer, None


def eval_windows_for(tokenizer, cfg: EvalConfig):
    from armor_export.data.text import eval_windows, load_text

    return eval_windows(tokenizer, load_text(cfg.text), cfg.seqlen, cfg.n_windows)


def evaluate(
    name_or_path: str, cfg: EvalConfig, reporter: Reporter | None = None, model=None, tokenizer=None
) -> EvalResult:
    """Perplexity of ``name_or_path`` (or of an already loaded ``model``) on ``cfg.text``."""
    from armor_export.eval.perplexity import perplexity

    cfg.validate()
    reporter = reporter or NullReporter()
    manifest = None
    if model is None:
        model, tokenizer, manifest = load_any_model(name_or_path)
    windows = eval_windows_for(tokenizer, cfg)
    start = time.perf_counter()
    ppl = perplexity(model, windows, cfg.batch_size, reporter, f"perplexity {cfg.text}")
    return EvalResult(
        name_or_path, ppl, windows.numel(), time.perf_counter() - start, manifest is not None
    )
