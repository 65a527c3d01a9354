"""Fixtures for armor_export.data tests: a tiny tokenizer built offline, no hub."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A journey of a thousand miles begins with a single step.",
    "Calibration text feeds the pruning statistics of every layer.",
    "Perplexity is measured on consecutive windows of tokens.",
]


@pytest.fixture(scope="session")
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on four sentences: encodes any text, loads no files."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<eos>"],
        show_progress=False,
    )
    tokenizer.train_from_iterator(SENTENCES, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token="<eos>", model_max_length=16
    )


@pytest.fixture
def sample_text() -> str:
    """A few hundred tokens of ordinary text."""
    return "\n\n".join(SENTENCES * 10)


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    """Point the asset cache at an empty temporary folder."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("ARMOR_EXPORT_CACHE", str(cache))
    return cache
