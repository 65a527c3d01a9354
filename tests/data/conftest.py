"""Fixtures for armor_export.data tests: a tiny tokenizer built offline, no hub."""

from __future__ import annotations

import pytest
from transformers import PreTrainedTokenizerFast

from tests.conftest import train_tokenizer

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A journey of a thousand miles begins with a single step.",
    "Calibration text feeds the pruning statistics of every layer.",
    "Perplexity is measured on consecutive windows of tokens.",
]


@pytest.fixture(scope="session")
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on four sentences: encodes any text, loads no files."""
    return train_tokenizer(SENTENCES, model_max_length=16)


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
