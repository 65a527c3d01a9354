"""Run an export folder with ONNX Runtime GenAI's decode loop instead of ours.

``export`` writes ``genai_config.json`` (``armor_export.genai_config``), so the folder loads
unchanged with ``onnxruntime_genai.Model``. This module is the small Python driver the tests
and ``tools/bench_runtime.py`` use to check and time that path against our own runtime
(``runtime/generate.py``); applications may equally use ORT GenAI's C, C++, C# or Java API.

Execution providers: none means CPU; ``providers=("cuda",)`` or ``("NvTensorRtRtx",)`` asks
ORT GenAI for them (``og.Config.append_provider``), where its package was built with them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from armor_export.config import GenerationConfig
from armor_export.errors import BackendUnavailableError, ConfigError
from armor_export.export_manifest import ExportManifest
from armor_export.runtime.compat import check_ort_compatible
from armor_export.runtime.finite import check_finite
from armor_export.runtime.generate import GenerationResult

GENAI_INSTALL_HINT = "pip install armor-export[genai]"
GENAI_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def import_genai():
    """onnxruntime_genai, or a one-line error with the install hint."""
    try:
        import onnxruntime_genai
    except ImportError:
        raise BackendUnavailableError(
            f"onnxruntime-genai is not installed: {GENAI_INSTALL_HINT}"
        ) from None
    return onnxruntime_genai


class GenaiGenerator:
    """An export folder loaded in ONNX Runtime GenAI (model, tokenizer, special ids)."""

    def __init__(self, folder: str | Path, providers: Sequence[str] = ()) -> None:
        self.folder = Path(folder)
        self.manifest = ExportManifest.read(self.folder)
        ort_names = [GENAI_PROVIDERS.get(p.lower(), p) for p in providers]
        check_ort_compatible(self.manifest, ort_names)
        if self.manifest.genai_config is None:
            raise BackendUnavailableError(
                f"{self.folder}: no genai_config.json (an export older than ORT GenAI support): "
                "export again"
            )
        og = import_genai()
        config = og.Config(str(self.folder))
        if providers:
            config.clear_providers()
            for provider in providers:
                config.append_provider(provider)
        self.model = og.Model(config)
        self.tokenizer = og.Tokenizer(self.model)
        self.eos_ids = {int(i) for i in self.manifest.tokens.eos_token_ids}
        self._og = og

    def generate(
        self, prompts: str | Sequence[str], config: GenerationConfig | None = None
    ) -> GenerationResult:
        """Continue each prompt alone (greedy, or sampled as ``config.sampling`` says).

        ORT GenAI always stops at the end-of-sequence ids of ``genai_config.json``; asking
        it not to (``stop_at_eos=False``) is refused rather than emulated with
        ``min_length``, which would change the tokens. The eos that stopped a prompt ends its
        ``token_ids`` and makes its finish reason ``eos``, as in our runtime.
        """
        config = config or GenerationConfig()
        config.validate()
        if not config.stop_at_eos:
            raise ConfigError("ONNX Runtime GenAI always stops at eos: use stop_at_eos=True")
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        rows = [self._one(prompt, config) for prompt in prompts]
        prompt_ids = [row[0] for row in rows]
        token_ids = [row[1] for row in rows]
        prefill = sum(row[2] for row in rows)
        decode = sum(row[3] for row in rows)
        decoded = sum(len(ids) - 1 for ids in token_ids)
        return GenerationResult(
            prompts=prompts,
            prompt_token_ids=prompt_ids,
            token_ids=token_ids,
            texts=[self.tokenizer.decode(ids) for ids in token_ids],
            finish_reasons=[
                "eos" if ids and ids[-1] in self.eos_ids else "length" for ids in token_ids
            ],
            new_tokens=sum(len(ids) for ids in token_ids),
            prefill_seconds=prefill,
            decode_seconds=decode,
            decode_tokens_per_second=decoded / decode if decoded and decode else 0.0,
        )

    def _one(self, prompt: str, config: GenerationConfig):
        """(prompt ids, new ids, prefill seconds, decode seconds) of one prompt."""
        og, sampling = self._og, config.sampling
        prompt_ids = [int(i) for i in self.tokenizer.encode(prompt)]
        params = og.GeneratorParams(self.model)
        options = {"max_length": len(prompt_ids) + config.max_new_tokens}
        if sampling.temperature > 0:
            options.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p)
            if sampling.top_k:  # ours: 0 = off; ORT GenAI's top_k must be a count
                options["top_k"] = sampling.top_k
            if sampling.seed is not None:
                options["random_seed"] = sampling.seed
        else:
            options.update(do_sample=False)
        params.set_search_options(**options)
        generator = og.Generator(self.model, params)
        start = time.perf_counter()
        generator.append_tokens([prompt_ids])  # the prefill: logits of the first new token
        # get_logits runs the step that computes them where it has not run yet, and
        # generate_next_token then picks from those same logits
        check_finite(generator.get_logits(), "logits", "prefill")
        generator.generate_next_token()
        prefill = time.perf_counter() - start
        start = time.perf_counter()
        step = 0
        while not generator.is_done():
            step += 1
            check_finite(generator.get_logits(), "logits", f"decode step {step}")
            generator.generate_next_token()
        decode = time.perf_counter() - start
        new_ids = [int(i) for i in generator.get_sequence(0)][len(prompt_ids) :]
        if len(new_ids) < config.max_new_tokens:
            # stopped before max_length, i.e. at an eos: ORT GenAI's search ends the row
            # without appending that token to the sequence (GreedySearch_Cpu::SelectTop,
            # 0.18), but keeps it as the next token; ours keeps it in token_ids
            last = int(generator.get_next_tokens()[0])
            if last in self.eos_ids:
                new_ids.append(last)
        return prompt_ids, new_ids, prefill, decode
