"""Perplexity of an export folder through the torch-free runtime (``armor-export eval EXPORT``).

The shipped graph is measured on a whole corpus, not only on verify's one prefill and one
decode step. The windows are those of the PyTorch eval: the same text, tokenised whole by
the export's own ``tokenizer.json`` without special tokens (what the checkpoint's fast
tokenizer does with that file), cut by the same rule (``data.text.eval_window_count``), so
the two numbers are comparable on the same text. Each batch of windows is one prefill of the
export's KV-cache graph on an empty cache, through the session ``generate`` opens
(``runtime.session.open_session``); the next-token negative log-likelihood is numpy's.

Only numpy, ``tokenizers`` and ONNX Runtime are imported: no torch, no transformers. Nothing
here reads the graph's weights or assumes their dtype: a Q/DQ (8-bit) graph is run as any
other, and the logits it returns are read in float32.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from armor_export.config import EvalConfig
from armor_export.errors import ShapeError, StatisticsError
from armor_export.export_manifest import MANIFEST, ExportManifest
from armor_export.progress import NullReporter, Reporter

RUNTIME = "onnxruntime"
# what ONNX Runtime cannot run can still be measured on its checkpoint (runtime.compat)
ALTERNATIVES = {
    "plugin": "or evaluate its checkpoint in PyTorch (armor-export eval CHECKPOINT)",
    "bfloat16-cpu": "or evaluate its checkpoint in PyTorch (armor-export eval CHECKPOINT)",
}


def is_export_folder(path: str | Path) -> bool:
    """Whether ``path`` is an export folder: one that holds an export manifest (whether that
    export is whole and undamaged, ``ExportManifest.read`` says)."""
    return (Path(path) / MANIFEST).is_file()


def eval_threads(threads: int = 0) -> int:
    """ONNX Runtime intra-op threads for eval: ``threads``, or every core this process may
    use. A window's prefill is a chain of large matrix products that more cores do speed up,
    unlike generate's decode steps (``session.default_decode_threads``: half the cores)."""
    if threads:
        return threads
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def check_seqlen(manifest: ExportManifest, seqlen: int) -> None:
    """One line when a window of ``seqlen`` tokens is not one prefill this export's graph
    was made (and checked) for: longer than its ``limits.max_prompt`` or ``max_context``."""
    if seqlen < 2:
        raise ShapeError(
            f"eval.seqlen {seqlen}: a window of one token predicts none; use --seqlen 2 or more"
        )
    limits = manifest.limits
    max_prompt, max_context = int(limits.max_prompt), int(limits.max_context)
    if seqlen <= min(max_prompt, max_context):
        return
    name, bound = ("max_prompt", max_prompt) if max_prompt <= max_context else (
        "max_context", max_context
    )  # fmt: skip
    model_context = not manifest.config.get("limits", {}).get("max_context")
    if seqlen > max_context and model_context:
        wider = f" ({max_context} is the model's own max_position_embeddings)"
    else:
        flags = "--max-prompt" + (" and --max-context" if seqlen > max_context else "")
        wider = f", or export again with {flags} {seqlen}"
    raise ShapeError(
        f"eval.seqlen {seqlen} exceeds this export's limits.{name} {bound}, the longest "
        f"prefill its graph takes: use --seqlen {bound} or less{wider}"
    )


def window_ids(tokenizer, text: str, seqlen: int, n_windows: int | None) -> np.ndarray:
    """The PyTorch eval's windows (``data.text.eval_windows``) as int64 ``[n, seqlen]``, cut
    from ``text`` tokenised whole by a ``tokenizers.Tokenizer`` without special tokens."""
    from armor_export.data.text import eval_window_count

    ids = tokenizer.encode(text, add_special_tokens=False).ids
    count = eval_window_count(len(ids), seqlen, n_windows)
    return np.asarray(ids[: count * seqlen], dtype=np.int64).reshape(count, seqlen)


def prefill_feeds(
    manifest: ExportManifest, input_ids: np.ndarray, past_dtype: type[np.generic]
) -> dict[str, np.ndarray]:
    """The feeds of one prefill of whole windows (no padding) on an empty KV cache."""
    from armor_export.runtime.inputs import position_ids

    batch, _ = input_ids.shape
    mask = np.ones_like(input_ids, dtype=np.int64)
    shape = manifest.decoder.past_shape(batch, 0)
    feeds = {"input_ids": input_ids, "attention_mask": mask, "position_ids": position_ids(mask)}
    feeds.update({name: np.zeros(shape, dtype=past_dtype) for name in manifest.past_names})
    return feeds


def next_token_nll(logits: np.ndarray, input_ids: np.ndarray) -> float:
    """Sum over rows and positions t of ``-log softmax(logits[:, t])[input_ids[:, t + 1]]``:
    PyTorch eval's cross-entropy, in float32 with float64 sums, one row at a time (a row's
    logits are ``seqlen x vocab``: the batch's float64 copy could be GBs)."""
    total = 0.0
    for row_logits, row_ids in zip(logits, input_ids, strict=True):
        x = np.asarray(row_logits[:-1], dtype=np.float32)
        peak = x.max(axis=-1)
        lse = peak + np.log(np.exp(x - peak[:, None]).sum(axis=-1, dtype=np.float64))
        target = x[np.arange(len(x)), row_ids[1:]]
        total += float((lse - target).sum(dtype=np.float64))
    return total


def evaluate_export(
    folder: str | Path,
    cfg: EvalConfig,
    reporter: Reporter | None = None,
    providers: Sequence[str] | None = None,
    threads: int = 0,
):
    """Perplexity of the export in ``folder`` on ``cfg.text`` through ONNX Runtime
    (``providers``, default its CPU provider): an ``EvalResult`` whose ``runtime`` is
    ``onnxruntime``. Windows are run ``cfg.batch_size`` at a time, at most the export's
    ``limits.max_batch`` (the batch changes the time, not the number)."""
    from armor_export.data.text import load_text
    from armor_export.eval.api import EvalResult
    from armor_export.runtime.compat import check_ort_compatible
    from armor_export.runtime.finite import check_finite
    from armor_export.runtime.generate import load_tokenizer
    from armor_export.runtime.session import DEFAULT_PROVIDERS, open_session, past_dtype

    cfg.validate()
    reporter = reporter or NullReporter()
    folder = Path(folder)
    manifest = ExportManifest.read(folder)  # a damaged or unfinished export: one line
    providers = tuple(providers or DEFAULT_PROVIDERS)
    check_ort_compatible(manifest, providers, ALTERNATIVES)
    check_seqlen(manifest, cfg.seqlen)
    tokenizer = load_tokenizer(folder / manifest.tokenizer)
    windows = window_ids(tokenizer, load_text(cfg.text), cfg.seqlen, cfg.n_windows)
    session = open_session(folder, manifest, RUNTIME, providers, eval_threads(threads))
    dtype = past_dtype(manifest)
    batch = min(cfg.batch_size, int(manifest.limits.max_batch))

    start = time.perf_counter()
    nll_sum, count = 0.0, 0
    with reporter.task(f"perplexity {cfg.text} (ONNX Runtime)", len(windows)) as task:
        for first in range(0, len(windows), batch):
            ids = windows[first : first + batch]
            logits = session.run(prefill_feeds(manifest, ids, dtype))[manifest.logits]
            where = f"windows {first + 1}-{first + len(ids)} of {len(windows)}"
            check_finite(logits, "logits", where)
            nll_sum += next_token_nll(logits, ids)
            count += ids.shape[0] * (ids.shape[1] - 1)
            task.advance(len(ids), ppl=f"{math.exp(nll_sum / count):.2f}")
    ppl = math.exp(nll_sum / count)
    if not math.isfinite(ppl):
        raise StatisticsError("perplexity is not finite: the export's logits overflow it")
    return EvalResult(
        model=str(folder),
        perplexity=ppl,
        tokens=int(windows.size),
        seconds=time.perf_counter() - start,
        pruned=manifest.source.pruned,
        text=cfg.text,
        seqlen=cfg.seqlen,
        windows=len(windows),
        runtime=RUNTIME,
        providers=list(getattr(session, "providers", providers)),
        dtype=manifest.dtype,
    )
