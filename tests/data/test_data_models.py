"""Resolving and loading models (armor_export.data.models)."""

from __future__ import annotations

import pytest
import torch

from armor_export.data import assets, models
from armor_export.data.models import load_model_and_tokenizer, resolve_model_path
from armor_export.errors import CorruptFileError, UserError


@pytest.mark.parametrize("alias", ["smollm2-135m", "SmolLM2-135M", "SmolLM2-135M-Instruct"])
def test_default_alias_resolves_to_cached_folder(monkeypatch, tmp_path, alias):
    monkeypatch.setattr(assets, "default_model_dir", lambda: tmp_path / "smol")
    assert resolve_model_path(alias) == str(tmp_path / "smol")


def test_local_folder_needs_config(tmp_path):
    with pytest.raises(CorruptFileError, match="config.json"):
        resolve_model_path(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    assert resolve_model_path(str(tmp_path)) == str(tmp_path)


def test_hub_id_passes_through_and_bad_paths_do_not():
    assert resolve_model_path("HuggingFaceTB/SmolLM2-360M") == "HuggingFaceTB/SmolLM2-360M"
    assert resolve_model_path("gpt2") == "gpt2"
    with pytest.raises(UserError, match="model folder not found"):
        resolve_model_path("./no/such/model")


def test_file_is_not_a_model_folder(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"")
    with pytest.raises(UserError, match="is a file"):
        resolve_model_path(str(path))


@pytest.mark.fault(
    "load",
    "a model folder with pickle weights only",
    "one line: safetensors only, nothing unpickled",
)
def test_pickle_only_folder_is_refused(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(UserError, match="only pickle weights"):
        load_model_and_tokenizer(str(tmp_path))


@pytest.mark.fault(
    "load",
    "a model folder without weights",
    "one line",
)
def test_folder_without_weights(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(CorruptFileError, match="no model weights"):
        load_model_and_tokenizer(str(tmp_path))


def test_unreachable_hub_id_is_a_user_error(monkeypatch):
    from transformers import AutoModelForCausalLM

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'.\nmore detail")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", offline)
    with pytest.raises(UserError, match=r"could not load model 'gpt2'.*no network") as info:
        load_model_and_tokenizer("gpt2")
    assert "\n" not in str(info.value)


def test_loads_tiny_local_safetensors_model(tmp_path, tiny_tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tiny_tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    model, tokenizer = load_model_and_tokenizer(str(tmp_path), dtype=torch.bfloat16)
    assert not model.training
    assert next(model.parameters()).dtype == torch.bfloat16
    assert tokenizer("fox")["input_ids"] == tiny_tokenizer("fox")["input_ids"]


@pytest.mark.slow
def test_default_model_prepares_and_runs():
    """Uses the real cache: converts the GGUF once (about a minute), then reuses the folder."""
    from transformers import LlamaForCausalLM

    folder = assets.default_model_dir()
    assert (folder / "CREDITS.md").read_text().count("Apache-2.0") == 1
    model, tokenizer = load_model_and_tokenizer(models.DEFAULT_MODEL)
    assert isinstance(model, LlamaForCausalLM)
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    ids = tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], 49152)
    assert torch.isfinite(logits).all()
    assert tokenizer.decode(logits[0, -1].argmax()).strip() == "Paris"


@pytest.mark.fault(
    "load",
    "a truncated model.safetensors, for prune, eval and export",
    "one error line, no traceback, nothing written",
)
@pytest.mark.parametrize("verb", ["eval", "prune", "export"])
def test_a_truncated_weights_file_is_one_line_for_every_verb(verb, tiny_model_dir, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    weights = tiny_model_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    args = {
        "eval": ["eval", str(tiny_model_dir), "--windows", "1"],
        "prune": ["prune", "--model", str(tiny_model_dir), "--method", "magnitude",
                  "-o", str(tmp_path / "out")],
        "export": ["export", str(tiny_model_dir), "-o", str(tmp_path / "onnx")],
    }[verb]  # fmt: skip
    run = subprocess.run(
        [sys.executable, "-m", "armor_export", *args, "-q"],
        cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 1
    assert "Traceback" not in run.stderr
    assert f"armor-export {verb}: error: " in run.stderr
    assert "corrupt or truncated" in run.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "onnx").exists()


@pytest.mark.fault(
    "load",
    "a missing local path shaped like a hub id (models/nope, where ./models is a folder)",
    "one line: model folder not found, read as a path because models/ is a folder here, and "
    "what to do for the hub id; nope/nope (no such folder here) is still tried as a hub id",
)
def test_a_missing_path_whose_first_folder_exists_is_not_a_hub_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    with pytest.raises(UserError) as info:
        resolve_model_path("models/nope")
    message = str(info.value)
    assert message.startswith("model folder not found: models/nope (models/ is a folder here")
    assert "for the hub id models/nope" in message and "\n" not in message
    assert resolve_model_path("nope/nope") == "nope/nope"  # org/name: the hub's shape


@pytest.mark.fault(
    "load",
    "a pruned checkpoint copied without armor_manifest.json, loaded by a real `eval` process",
    "our one error line; none of transformers' ~40-line load report (LOAD REPORT, UNEXPECTED, "
    "MISSING) on stderr",
)
def test_the_loaders_print_no_load_report_before_the_error(tiny_checkpoint, tmp_path):
    import shutil
    import subprocess
    import sys

    copy = tmp_path / "copy"
    shutil.copytree(tiny_checkpoint, copy, ignore=shutil.ignore_patterns("armor_manifest.json"))
    (tmp_path / "text.txt").write_text("some text to evaluate on, " * 50)
    run = subprocess.run(
        [sys.executable, "-m", "armor_export", "eval", str(copy), "--text",
         str(tmp_path / "text.txt"), "--windows", "1", "--seqlen", "16"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert run.returncode == 1, run.stderr
    for noise in ("LOAD REPORT", "UNEXPECTED", "MISSING", "Traceback"):
        assert noise not in run.stderr, run.stderr
    errors = [line for line in run.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "no armor_manifest.json" in errors[0], run.stderr
