"""Text generation with an exported decoder: prefill, then one token per step on the KV cache.

Only numpy, ``tokenizers`` and the backend (ONNX Runtime, or TensorRT / TensorRT-RTX with
cuda-python for a built engine) are imported: no torch, no transformers, nothing of the
exporter. The graph contract is the export manifest's
(``armor_export.export_manifest``): ``input_ids``/``attention_mask``/``position_ids`` plus
``past_key_values.{i}.{key,value}`` in, ``logits`` plus ``present.{i}.{key,value}`` out,
the presents becoming the next step's past. A session that can keep the cache where it
computes it (``run_keeping_cache``: the TensorRT session, on the GPU) is handed back its
cache handle instead of the presents, so the cache does not cross the bus at every step.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from armor_export.config import GenerationConfig
from armor_export.errors import CorruptFileError, ShapeError
from armor_export.export_manifest import ExportManifest
from armor_export.runtime.finite import check_finite
from armor_export.runtime.inputs import check_limits, encode_prompts, left_pad, position_ids
from armor_export.runtime.sampling import Sampler
from armor_export.runtime.session import (
    Session,
    check_session_matches,
    open_session,
    past_dtype,
)
from armor_export.runtime.streaming import IncrementalDecoder

TextCallback = Callable[[int, str], None]
"""Called as ``on_text(row, new_text)`` whenever a prompt's continuation grows."""


@dataclass
class GenerationResult:
    """Generated ids (an eos that stopped a row included) and text per prompt, and timings."""

    prompts: list[str]
    prompt_token_ids: list[list[int]]
    token_ids: list[list[int]]
    texts: list[str]
    finish_reasons: list[str]  # "eos" | "length"
    new_tokens: int
    prefill_seconds: float
    decode_seconds: float
    decode_tokens_per_second: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class DecodeState:
    """Where a batch stands after a prefill or a step: the graph's outputs (``logits`` and
    the presents, i.e. the KV cache) and the attention mask of every position so far. Where
    the session keeps the cache itself (on the GPU), ``outputs`` holds no presents and
    ``cache`` is the session's handle to them (``present`` reads one either way)."""

    outputs: dict[str, np.ndarray]
    attention_mask: np.ndarray  # int64 [batch, positions]; 0 = left padding
    cache: Any = None  # the session's KV cache handle (e.g. trt_session.DeviceCache), or None

    def present(self, name: str) -> np.ndarray:
        """The present output ``name`` (a host copy where the session keeps the cache)."""
        if name in self.outputs or self.cache is None:
            return self.outputs[name]
        if self.cache.positions != self.attention_mask.shape[1]:
            raise ValueError("this decode state's KV cache was stepped past already")
        return self.cache.read(name)

    @property
    def next_logits(self) -> np.ndarray:
        """Each row's logits for its next token, ``[batch, vocab]``."""
        return self.outputs["logits"][:, -1, :]


@dataclass
class _Row:
    """One prompt's continuation while it is being generated."""

    decoder: IncrementalDecoder
    finish_reason: str | None = None

    @property
    def ids(self) -> list[int]:
        return self.decoder.ids


def load_tokenizer(path: str | Path):
    """A ``tokenizers.Tokenizer`` from ``tokenizer.json``, with padding/truncation off."""
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception for unreadable files
        raise CorruptFileError(f"{path}: not a readable tokenizer.json ({exc})") from None
    tokenizer.no_padding()  # the runtime pads itself (on the left)
    tokenizer.no_truncation()  # a too-long prompt is an error, never silently cut
    return tokenizer


class Generator:
    """An export folder loaded for generation: session, tokenizer, limits, special ids."""

    def __init__(
        self,
        folder: str | Path,
        backend: str = "onnxruntime",
        providers: Sequence[str] | None = None,
        threads: int = 0,
        session: Session | None = None,
        engine_dir: str | Path | None = None,
        plugin_library: str = "",
    ) -> None:
        """``session``: one already open on this export (e.g. with profiling on) to run
        instead of opening one on ``backend``; ``engine_dir`` / ``plugin_library``: the
        engine ``tensorrt`` runs (default the export's, ``engine.folder.engine_dir_of``)."""
        self.folder = Path(folder)
        self.manifest = ExportManifest.read(self.folder)
        if session is not None:
            check_session_matches(session, self.manifest)
        self.session: Session = session or open_session(
            self.folder, self.manifest, backend, providers, threads,
            engine_dir=engine_dir, plugin_library=plugin_library,
        )  # fmt: skip
        self.dtype = past_dtype(self.manifest, backend)
        self.tokenizer = load_tokenizer(self.folder / self.manifest.tokenizer)
        self.cache = self.manifest.cache_feedback()  # (past input, present output) pairs
        # the cache stays where the session computes it (TensorRT: on the GPU) where it can
        self.keeps_cache = callable(getattr(self.session, "run_keeping_cache", None))
        # an engine may be built for smaller limits than its export: its own then apply
        self.limits = getattr(self.session, "limits", None) or self.manifest.limits
        self.export_limits = None if self.limits == self.manifest.limits else self.manifest.limits
        tokens = self.manifest.tokens
        self.eos_ids = {int(i) for i in tokens.eos_token_ids}
        pad = tokens.pad_token_id
        self.pad_id = int(pad) if pad is not None else min(self.eos_ids, default=0)

    def generate(
        self,
        prompts: str | Sequence[str],
        config: GenerationConfig | None = None,
        on_text: TextCallback | None = None,
    ) -> GenerationResult:
        """Continue each prompt; ``on_text(row, text)`` receives the text as it is made."""
        config = config or GenerationConfig()
        config.validate()
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        prompt_ids = encode_prompts(self.tokenizer, prompts)
        model_context = not self.manifest.config.get("limits", {}).get("max_context")
        check_limits(
            prompt_ids, config.max_new_tokens, self.limits, model_context, self.export_limits
        )
        sampler = Sampler(config.sampling)
        rows = [_Row(IncrementalDecoder(self.tokenizer)) for _ in prompts]

        start = time.perf_counter()
        state = self.prefill(prompt_ids)
        next_ids = sampler(_finite_logits(state, "prefill"))
        prefill_seconds = time.perf_counter() - start

        start = time.perf_counter()
        step = 0
        while not self._record(rows, next_ids, config, on_text):
            finished = np.array([row.finish_reason is not None for row in rows])
            state = self.step(state, np.where(finished, self.pad_id, next_ids))
            step += 1
            next_ids = sampler(_finite_logits(state, f"decode step {step}"))
        return self._result(prompts, prompt_ids, rows, prefill_seconds, start)

    def prefill(self, prompt_ids: Sequence[Sequence[int]]) -> DecodeState:
        """Run the prompts' token ids (left-padded into one batch) on an empty KV cache."""
        rows = [list(row) for row in prompt_ids]
        check_limits(rows, 1, self.limits, export_limits=self.export_limits)
        batch = left_pad(rows, self.pad_id)
        past = self._empty_past(len(batch.input_ids))
        outputs, cache = self._run(
            batch.input_ids, batch.attention_mask, batch.position_ids, past, None
        )
        return DecodeState(outputs, batch.attention_mask, cache)

    def step(self, state: DecodeState, token_ids: np.ndarray) -> DecodeState:
        """Append one token per row (``token_ids``, ``[batch]``) to the KV cache in ``state``."""
        mask = state.attention_mask
        if mask.shape[1] >= int(self.limits.max_context):
            raise ShapeError(
                f"one more token would exceed this export's limits.max_context "
                f"{self.limits.max_context}"
            )
        mask = np.concatenate([mask, np.ones_like(mask[:, :1])], axis=1)
        step_ids = np.asarray(token_ids, dtype=np.int64).reshape(-1, 1)
        past = {} if state.cache is not None else self._past(state.outputs)
        outputs, cache = self._run(step_ids, mask, position_ids(mask)[:, -1:], past, state.cache)
        return DecodeState(outputs, mask, cache)

    def _empty_past(self, batch: int) -> dict[str, np.ndarray]:
        """Zero-length past for the prefill step: ``[batch, kv_heads, 0, head_dim]``."""
        shape = self.manifest.decoder.past_shape(batch, 0)
        return {past: np.zeros(shape, dtype=self.dtype) for past, _ in self.cache}

    def _past(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {past: outputs[present] for past, present in self.cache}

    def _run(self, input_ids, attention_mask, positions, past, cache):
        """The outputs of one forward and the session's cache handle (None: the presents
        are in the outputs)."""
        feeds = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "position_ids": positions,
            **past,
        }
        if self.keeps_cache:
            return self.session.run_keeping_cache(feeds, cache, self.cache)
        return self.session.run(feeds), None

    def _record(self, rows, next_ids, config: GenerationConfig, on_text) -> bool:
        """Append each unfinished row's token, stream its text; True once all rows are done."""
        for index, (row, token) in enumerate(zip(rows, next_ids.tolist(), strict=True)):
            if row.finish_reason is not None:
                continue
            _emit(on_text, index, row.decoder.push(token))
            if config.stop_at_eos and token in self.eos_ids:
                row.finish_reason = "eos"
            elif len(row.ids) >= config.max_new_tokens:
                row.finish_reason = "length"
            if row.finish_reason is not None:
                _emit(on_text, index, row.decoder.flush())
        return all(row.finish_reason is not None for row in rows)

    def _result(self, prompts, prompt_ids, rows, prefill_seconds, decode_start) -> GenerationResult:
        decode_seconds = time.perf_counter() - decode_start
        new_tokens = sum(len(row.ids) for row in rows)
        decoded = new_tokens - len(rows)  # the first token of each row came from the prefill
        return GenerationResult(
            prompts=prompts,
            prompt_token_ids=prompt_ids,
            token_ids=[list(row.ids) for row in rows],
            texts=[row.decoder.text() for row in rows],
            finish_reasons=[row.finish_reason for row in rows],
            new_tokens=new_tokens,
            prefill_seconds=prefill_seconds,
            decode_seconds=decode_seconds,
            decode_tokens_per_second=decoded / decode_seconds if decoded else 0.0,
        )


def _finite_logits(state: DecodeState, where: str) -> np.ndarray:
    """The logits tokens are picked from, after checking they hold no NaN/Inf (a damaged
    export would otherwise print blank or arbitrary text and exit 0)."""
    logits = state.next_logits
    check_finite(logits, "logits", where)
    return logits


def _emit(on_text: TextCallback | None, index: int, text: str) -> None:
    if on_text is not None and text:
        on_text(index, text)


def generate(
    folder: str | Path,
    prompts: str | Sequence[str],
    config: GenerationConfig | None = None,
    on_text: TextCallback | None = None,
    backend: str = "onnxruntime",
) -> GenerationResult:
    """Load the export in ``folder`` and continue ``prompts`` (see ``Generator``)."""
    return Generator(folder, backend).generate(prompts, config, on_text)
