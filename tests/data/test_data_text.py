"""Text sources and token windows (armor_export.data.text)."""

from __future__ import annotations

import logging

import pytest
import torch

from armor_export.data import text as text_mod
from armor_export.data.text import (
    DatasetSpec,
    calibration_samples,
    eval_windows,
    load_text,
    parse_datasets_spec,
    tokenize_text,
)
from armor_export.errors import CorruptFileError, UserError


def test_tokenize_text_has_no_special_tokens_and_no_length_warning(
    tiny_tokenizer, sample_text, caplog
):
    # model_max_length is 16: a long stream must not trigger the "too long" warning.
    with caplog.at_level(logging.WARNING):
        tokens = tokenize_text(tiny_tokenizer, sample_text)
    assert tokens.dtype == torch.long and tokens.dim() == 1
    assert tokens.numel() > 16
    assert tiny_tokenizer.decode(tokens.tolist()) == sample_text
    assert not [r for r in caplog.records if "sequence length" in r.getMessage()]


def test_calibration_samples_shape_and_reproducibility(tiny_tokenizer, sample_text):
    first = calibration_samples(tiny_tokenizer, sample_text, n_samples=5, seqlen=12, seed=0)
    again = calibration_samples(tiny_tokenizer, sample_text, n_samples=5, seqlen=12, seed=0)
    other = calibration_samples(tiny_tokenizer, sample_text, n_samples=5, seqlen=12, seed=1)
    assert first.shape == (5, 12) and first.dtype == torch.long
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_calibration_samples_are_windows_of_the_text(tiny_tokenizer, sample_text):
    tokens = tokenize_text(tiny_tokenizer, sample_text).tolist()
    samples = calibration_samples(tiny_tokenizer, sample_text, n_samples=8, seqlen=10, seed=3)
    for row in samples.tolist():
        starts = [i for i in range(len(tokens) - 9) if tokens[i : i + 10] == row]
        assert starts, "every sample must be a contiguous window of the token stream"


def test_calibration_samples_too_short_text_says_token_count(tiny_tokenizer):
    n_tokens = tokenize_text(tiny_tokenizer, "The quick brown fox.").numel()
    with pytest.raises(UserError, match=rf"has {n_tokens} tokens"):
        calibration_samples(tiny_tokenizer, "The quick brown fox.", 2, seqlen=64, seed=0)


def test_calibration_samples_exactly_seqlen_plus_one_tokens(tiny_tokenizer):
    text = "The quick brown fox jumps over the lazy dog."
    n_tokens = tokenize_text(tiny_tokenizer, text).numel()
    samples = calibration_samples(tiny_tokenizer, text, 3, seqlen=n_tokens - 1, seed=0)
    assert samples.shape == (3, n_tokens - 1)


@pytest.mark.parametrize("bad", [{"n_samples": 0}, {"seqlen": 0}])
def test_calibration_samples_rejects_non_positive_sizes(tiny_tokenizer, sample_text, bad):
    kwargs = {"n_samples": 2, "seqlen": 8, "seed": 0, **bad}
    with pytest.raises(UserError, match="must be at least 1"):
        calibration_samples(tiny_tokenizer, sample_text, **kwargs)


def test_eval_windows_are_consecutive(tiny_tokenizer, sample_text):
    tokens = tokenize_text(tiny_tokenizer, sample_text)
    windows = eval_windows(tiny_tokenizer, sample_text, seqlen=10, n_windows=4)
    assert windows.shape == (4, 10)
    assert torch.equal(windows.flatten(), tokens[:40])


def test_eval_windows_uses_what_fits_and_warns(tiny_tokenizer, sample_text, caplog):
    n_tokens = tokenize_text(tiny_tokenizer, sample_text).numel()
    with caplog.at_level(logging.WARNING, logger=text_mod.__name__):
        windows = eval_windows(tiny_tokenizer, sample_text, seqlen=10, n_windows=10_000)
    assert windows.shape == (n_tokens // 10, 10)
    assert "instead of 10000" in caplog.text


def test_eval_windows_none_means_all(tiny_tokenizer, sample_text):
    n_tokens = tokenize_text(tiny_tokenizer, sample_text).numel()
    assert eval_windows(tiny_tokenizer, sample_text, 7, None).shape == (n_tokens // 7, 7)


def test_eval_windows_none_fit(tiny_tokenizer):
    with pytest.raises(UserError, match="fewer than one window of 100"):
        eval_windows(tiny_tokenizer, "The lazy dog.", seqlen=100, n_windows=1)


def test_load_text_local_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("Héllo wörld\nsecond line\n", encoding="utf-8")
    assert load_text(str(path)) == "Héllo wörld\nsecond line\n"


def test_load_text_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(UserError, match="text file not found") as info:
        load_text(str(missing))
    assert str(missing) in str(info.value)
    assert "\n" not in str(info.value)


def test_load_text_rejects_non_utf8(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(CorruptFileError, match="not UTF-8"):
        load_text(str(path))


def test_load_text_empty_file(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_text("  \n", encoding="utf-8")
    with pytest.raises(UserError, match="empty"):
        load_text(str(path))


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("datasets:imdb:test", DatasetSpec("imdb", None, "test", "text")),
        (
            "datasets:wikitext:wikitext-2-raw-v1:test",
            DatasetSpec("wikitext", "wikitext-2-raw-v1", "test", "text"),
        ),
        ("datasets:imdb:train:review", DatasetSpec("imdb", None, "train", "review")),
        (
            "datasets:org/name:cfg:validation:body",
            DatasetSpec("org/name", "cfg", "validation", "body"),
        ),
        ("datasets:org/name::train:body", DatasetSpec("org/name", None, "train", "body")),
        (
            "datasets:wikitext:wikitext-2-raw-v1:test[:1000]",
            DatasetSpec("wikitext", "wikitext-2-raw-v1", "test[:1000]", "text"),
        ),
        ("datasets:c4:train[:10%]:text", DatasetSpec("c4", None, "train[:10%]", "text")),
    ],
)
def test_parse_datasets_spec(spec, expected):
    assert parse_datasets_spec(spec) == expected


@pytest.mark.parametrize(
    "spec", ["datasets:", "datasets:imdb", "datasets::test", "datasets:a:b:c:d:e", "datasets:x:"]
)
def test_parse_datasets_spec_errors(spec):
    with pytest.raises(UserError, match=r"expected datasets:NAME\[:CONFIG\]:SPLIT\[:COLUMN\]"):
        load_text(spec)


def test_datasets_source_without_package_says_which_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(UserError, match=r"install armor-export\[datasets\]"):
        load_text("datasets:imdb:test")
