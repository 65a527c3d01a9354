"""The ``eval`` verb: perplexity of a dense model or a pruned checkpoint in PyTorch, or of an
export folder through the torch-free runtime (``eval.exported``: ONNX Runtime, no torch).

Evaluating a pruned checkpoint by its path also records the result in
``<checkpoint>/eval_results.json`` (one entry per text, seqlen and window count; a
re-evaluation replaces its entry), which ``armor-export report`` shows.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from armor_export.config import EvalConfig
from armor_export.errors import CorruptFileError
from armor_export.io import read_json, write_json
from armor_export.progress import NullReporter, Reporter

log = logging.getLogger(__name__)

EVAL_RESULTS = "eval_results.json"
EVAL_FORMAT = "armor-export-eval-results"
_KEY = ("text", "seqlen", "windows")
RUNTIME_NAMES = {"pytorch": "PyTorch", "onnxruntime": "ONNX Runtime"}


@dataclass
class EvalResult:
    """One perplexity and what produced it: ``runtime`` ``pytorch`` (a model or checkpoint,
    in ``dtype``) or ``onnxruntime`` (an export folder, on ``providers``)."""

    model: str
    perplexity: float
    tokens: int
    seconds: float
    pruned: bool
    text: str = ""
    seqlen: int = 0
    windows: int = 0
    runtime: str = "pytorch"
    providers: list[str] = field(default_factory=list)  # ONNX Runtime's, in its order
    dtype: str = ""
    # an 8-bit checkpoint: its scheme, and the activations beyond the format's range that
    # its cores saturated (quant.core.saturation), never clipped silently
    quant: dict | None = None

    def summary(self) -> str:
        """``perplexity on wikipedia through ONNX Runtime (CPUExecutionProvider, export
        runs/onnx): 34.10``: the number and what produced it, in one line."""
        runtime = RUNTIME_NAMES.get(self.runtime, self.runtime)
        if self.runtime == "pytorch":
            what = f"{'checkpoint' if self.pruned else 'model'} {self.model}"
            detail = f"{self.dtype}, {what}" if self.dtype else what
        else:
            detail = ", ".join([*self.providers, f"export {self.model}"])
        line = f"perplexity on {self.text} through {runtime} ({detail}): {self.perplexity:.2f}"
        if self.quant and self.quant.get("saturated"):
            q = self.quant
            line += (
                f"; {q['saturated']} of {q['seen']} core input values were beyond the "
                f"{q['scheme']} range and saturated (most in {q['worst_core']})"
            )
        return line


def load_any_model(name_or_path: str, checkpoint_dtype=None):
    """(model, tokenizer, manifest|None): a pruned checkpoint or any dense HF model.

    A pruned checkpoint is loaded straight into ``checkpoint_dtype`` (float32 by default),
    equal to loading it in float32 and calling ``.to(checkpoint_dtype)``. Dense models load
    in float32: transformers' own loading in another dtype is not that (it keeps the rotary
    tables in float32 and records the dtype in the config).
    """
    from armor_export.data.models import load_model_and_tokenizer
    from armor_export.prune.checkpoint import is_pruned_checkpoint, load_checkpoint

    if is_pruned_checkpoint(name_or_path):
        from transformers import AutoTokenizer

        if checkpoint_dtype is None:
            model, manifest = load_checkpoint(name_or_path)
        else:
            model, manifest = load_checkpoint(name_or_path, checkpoint_dtype)
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
    name_or_path: str,
    cfg: EvalConfig,
    reporter: Reporter | None = None,
    model=None,
    tokenizer=None,
    threads: int = 0,
) -> EvalResult:
    """Perplexity of ``name_or_path`` (or of an already loaded ``model``) on ``cfg.text``.

    An export folder (one with an export manifest) is measured through ONNX Runtime without
    importing torch (``eval.exported.evaluate_export``, on ``threads`` threads, 0 = every
    core); anything else is loaded into PyTorch.
    """
    from armor_export.eval.exported import evaluate_export, is_export_folder

    if model is None and is_export_folder(name_or_path):
        return evaluate_export(name_or_path, cfg, reporter, threads=threads)
    from armor_export.data.models import check_positions
    from armor_export.eval.perplexity import perplexity

    cfg.validate()
    reporter = reporter or NullReporter()
    manifest = None
    if model is None:
        model, tokenizer, manifest = load_any_model(name_or_path)
    check_positions(model.config, cfg.seqlen, "eval.seqlen", "--seqlen/--eval-seqlen")
    windows = eval_windows_for(tokenizer, cfg)
    start = time.perf_counter()
    from armor_export.quant.core import reset_saturation

    reset_saturation(model)
    ppl = perplexity(model, windows, cfg.batch_size, reporter, f"perplexity {cfg.text}")
    result = EvalResult(
        name_or_path,
        ppl,
        windows.numel(),
        time.perf_counter() - start,
        manifest is not None,
        cfg.text,
        cfg.seqlen,
        len(windows),
        dtype=str(next(model.parameters()).dtype).removeprefix("torch."),
        quant=_saturation_summary(model, manifest),
    )
    if manifest is not None:
        record_result(name_or_path, result)
    return result


def _saturation_summary(model, manifest: dict | None) -> dict | None:
    """The scheme of an 8-bit checkpoint and how many core inputs its cores saturated."""
    from armor_export.quant.core import QuantCore, saturation

    scheme = ((manifest or {}).get("quant") or {}).get("scheme")
    cores = [m for m in model.modules() if isinstance(m, QuantCore)]
    scheme = scheme or (cores[0].scheme_name if cores else None)
    counts = saturation(model)
    if scheme is None and not counts:
        return None
    worst = max(counts, key=lambda n: counts[n][0]) if counts else None
    return {
        "scheme": scheme,
        "saturated": sum(c[0] for c in counts.values()),
        "seen": sum(c[1] for c in counts.values()),
        "worst_core": worst,
    }


def read_recorded(path: str | Path) -> list[dict]:
    """The entries of an ``eval_results.json`` (none when the file does not exist)."""
    path = Path(path)
    if not path.exists():
        return []
    data = read_json(path)
    if (
        not isinstance(data, dict)
        or data.get("format") != EVAL_FORMAT
        or not isinstance(data.get("results"), list)
        or not all(isinstance(entry, dict) for entry in data["results"])
    ):
        raise CorruptFileError(f"{path}: not an armor-export eval results file")
    return data["results"]


def record_result(checkpoint_dir: str | Path, result: EvalResult) -> Path | None:
    """Add ``result`` to ``<checkpoint_dir>/eval_results.json`` atomically.

    An entry with the same text, seqlen and window count is replaced. A checkpoint that
    cannot be written (read-only) or holds a broken results file keeps it as it is: the
    measurement itself was fine, so this only warns.
    """
    path = Path(checkpoint_dir) / EVAL_RESULTS
    entry = asdict(result)
    entry.pop("model")
    entry.pop("pruned")
    entry["date"] = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    key = [entry[k] for k in _KEY]
    try:
        kept = [e for e in read_recorded(path) if [e.get(k) for k in _KEY] != key]
        write_json(path, {"format": EVAL_FORMAT, "format_version": 1, "results": kept + [entry]})
    except (CorruptFileError, OSError) as exc:
        log.warning("perplexity not recorded in %s: %s", path, exc)
        return None
    log.info("perplexity recorded in %s", path)
    return path
