"""ONNX Runtime GenAI loads an export folder unchanged and makes the same greedy tokens as
PyTorch and as our own runtime (``genai_config.json`` is written by ``export``)."""

from __future__ import annotations

import json

import pytest
import torch

from armor_export.errors import BackendUnavailableError, ConfigError, NonFiniteOutputError
from armor_export.export_manifest import ExportManifest
from armor_export.genai_config import MODEL_TYPE, genai_config
from armor_export.runtime import GenerationConfig, Generator
from tests.conftest import nan_norm_export, rope_overflow_export

PROMPTS = ["The quick brown fox", "Perplexity is measured on consecutive windows of"]


def genai_or_skip():
    try:
        import onnxruntime_genai
    except ImportError:
        pytest.skip("onnxruntime_genai is not installed (pip install armor-export[genai])")
    return onnxruntime_genai


def pytorch_greedy(checkpoint, prompt_ids: list[int], n: int, eos: set[int]) -> list[int]:
    """Greedy continuation by the PyTorch model, stopping after an eos like ORT GenAI."""
    from armor_export.eval.api import load_any_model

    model, _, _ = load_any_model(str(checkpoint))
    ids, tokens = torch.tensor([prompt_ids]), []
    with torch.no_grad():
        for _ in range(n):
            next_id = model(ids).logits[:, -1].argmax(-1)
            tokens.append(int(next_id))
            if tokens[-1] in eos:
                break
            ids = torch.cat([ids, next_id[:, None]], dim=1)
    return tokens


# ---------------------------------------------------------------- the config file


def test_export_writes_a_genai_config_from_its_manifest(tiny_export):
    folder = tiny_export.output_dir
    manifest = ExportManifest.read(folder)
    assert manifest.genai_config == "genai_config.json"
    assert {"genai_config.json", "tokenizer_config.json"} <= set(manifest.sha256)
    written = json.loads((folder / "genai_config.json").read_text())
    assert written == genai_config(manifest)
    model, decoder = written["model"], written["model"]["decoder"]
    assert model["type"] == MODEL_TYPE
    assert model["context_length"] == manifest.limits.max_context == 256
    assert model["eos_token_id"] == list(manifest.tokens.eos_token_ids)
    assert (decoder["num_hidden_layers"], decoder["num_key_value_heads"]) == (2, 2)
    assert (decoder["num_attention_heads"], decoder["head_size"]) == (4, 16)
    assert decoder["inputs"]["past_key_names"] % 1 == manifest.cache[1].past_key
    assert decoder["outputs"]["present_value_names"] % 1 == manifest.cache[1].present_value
    assert written["search"]["past_present_share_buffer"] is False  # our graph concatenates


def test_plugin_export_has_no_genai_config(tiny_plugin_export):
    folder = tiny_plugin_export.output_dir
    assert ExportManifest.read(folder).genai_config is None
    assert not (folder / "genai_config.json").exists()


def test_plugin_reexport_removes_a_plain_exports_genai_config(
    tiny_export, tiny_checkpoint, tmp_path
):
    import shutil

    from tests.conftest import export_tiny

    folder = tmp_path / "re"
    shutil.copytree(tiny_export.output_dir, folder)
    export_tiny(tiny_checkpoint, folder, lowering="plugin")
    assert not (folder / "genai_config.json").exists()
    assert ExportManifest.read(folder).genai_config is None


def test_older_manifest_without_the_new_fields_reads_and_writes_back(tiny_export):
    data = tiny_export.manifest.copy()
    for key in ("tokenizer_config", "genai_config"):
        del data[key]
    data["decoder"] = {k: v for k, v in data["decoder"].items() if k != "num_attention_heads"}
    manifest = ExportManifest.from_dict(data)
    assert manifest.genai_config is None and manifest.decoder.num_attention_heads is None
    assert manifest.to_dict() == data
    assert "num_attention_heads" not in genai_config(manifest)["model"]["decoder"]


# ---------------------------------------------------------------- parity


def test_genai_greedy_tokens_match_pytorch_and_our_runtime(tiny_checkpoint, tiny_export):
    genai_or_skip()
    from armor_export.runtime.genai import GenaiGenerator

    folder = tiny_export.output_dir
    config = GenerationConfig(max_new_tokens=8)
    theirs = GenaiGenerator(folder).generate(PROMPTS, config)
    ours = Generator(folder, threads=1).generate(PROMPTS, config)
    assert theirs.prompt_token_ids == ours.prompt_token_ids
    assert theirs.token_ids == ours.token_ids
    assert theirs.texts == ours.texts
    eos = set(ExportManifest.read(folder).tokens.eos_token_ids)
    for prompt_ids, tokens in zip(theirs.prompt_token_ids, theirs.token_ids, strict=True):
        assert tokens == pytorch_greedy(tiny_checkpoint, prompt_ids, 8, eos)


def with_eos(export_dir, out, eos_id: int):
    """A copy of an export whose end-of-sequence id is ``eos_id``, in its manifest and in
    its ``genai_config.json`` alike, rehashed and sealed the way ``export`` writes them (a
    model whose config names that eos)."""
    import shutil

    from armor_export.export_manifest import MANIFEST, seal
    from armor_export.io import read_json, sha256_file, write_json

    shutil.copytree(export_dir, out)
    data = read_json(out / MANIFEST)
    data["tokens"]["eos_token_ids"] = [eos_id]
    manifest = ExportManifest.from_dict(data)
    write_json(out / manifest.genai_config, genai_config(manifest))
    data["sha256"][manifest.genai_config] = sha256_file(out / manifest.genai_config)
    write_json(out / MANIFEST, seal(data))
    return out


@pytest.mark.fault(
    "runtime",
    "ORT GenAI's decode loop stops at end-of-sequence (GenAI leaves the eos out of its "
    "sequence), mid-way or as the very first new token",
    "the same token ids (eos included), finish reasons and token count as our runtime",
)
def test_genai_reports_a_stop_at_eos_like_our_runtime(tiny_export, tmp_path):
    genai_or_skip()
    from armor_export.runtime.genai import GenaiGenerator

    config = GenerationConfig(max_new_tokens=8)
    plain = Generator(tiny_export.output_dir, threads=1)
    # the tiny model mostly repeats one token: find a prompt (a vocabulary entry as text)
    # whose continuation changes token after a few decode steps; that token becomes eos
    for prompt in sorted(plain.tokenizer.get_vocab()):
        row = plain.generate(prompt, config).token_ids[0]
        mid = next((i for i in range(2, len(row)) if row[i] not in row[:i]), None)
        if mid is not None:
            break
    else:
        pytest.fail("no prompt of the tiny model changes token mid-way")
    prompts = [prompt, *PROMPTS]
    for eos_id, stops in ((row[mid], mid + 1), (row[0], 1)):  # mid-way; at the prefill
        folder = with_eos(tiny_export.output_dir, tmp_path / f"eos{eos_id}", eos_id)
        ours = Generator(folder, threads=1).generate(prompts, config)
        theirs = GenaiGenerator(folder).generate(prompts, config)
        assert ours.token_ids[0] == row[:stops] and ours.finish_reasons[0] == "eos"
        assert theirs.token_ids == ours.token_ids
        assert theirs.finish_reasons == ours.finish_reasons
        assert theirs.new_tokens == ours.new_tokens
        # (not the texts: this prompt's tokens are partial UTF-8 bytes, which ORT GenAI's
        # tokenizer and ``tokenizers`` render with different replacement characters)


@pytest.mark.fault(
    "runtime",
    "ORT GenAI on a plugin export, or asked not to stop at eos",
    "one line each: plugin nodes / it always stops at eos",
)
def test_genai_refuses_what_it_cannot_run(tiny_plugin_export, tiny_export):
    genai_or_skip()
    from armor_export.runtime.genai import GenaiGenerator

    with pytest.raises(BackendUnavailableError, match="plugin nodes"):
        GenaiGenerator(tiny_plugin_export.output_dir)
    with pytest.raises(ConfigError, match="always stops at eos"):
        GenaiGenerator(tiny_export.output_dir).generate("A", GenerationConfig(2, stop_at_eos=False))


@pytest.mark.fault(
    "runtime",
    "ONNX Runtime GenAI's decode loop on an export whose logits are NaN at the prefill, or "
    "only from a later decode step on",
    "one line naming the step, the same as our runtime's (not arbitrary tokens)",
)
def test_genai_stops_on_non_finite_logits_like_our_runtime(tiny_export, tmp_path):
    genai_or_skip()
    pytest.importorskip("onnx")
    from armor_export.runtime.genai import GenaiGenerator

    nan = nan_norm_export(tiny_export.output_dir, tmp_path / "nan")
    rope, first_bad = rope_overflow_export(tiny_export.output_dir, tmp_path / "rope")
    config = GenerationConfig(16, stop_at_eos=True)
    for folder, where in ((nan, "prefill"), (rope, None)):
        with pytest.raises(NonFiniteOutputError) as ours:
            Generator(folder, threads=1).generate("A", config)
        with pytest.raises(NonFiniteOutputError) as theirs:
            GenaiGenerator(folder).generate("A", config)
        assert str(theirs.value) == str(ours.value)
        if where is None:  # the prefill (positions before first_bad) was finite
            n_prompt = len(Generator(folder).tokenizer.encode("A").ids)
            where = f"decode step {first_bad - n_prompt + 1}"
        assert f"non-finite logits at {where} (NaN in 300 of 300 values)" in str(theirs.value)


@pytest.mark.parametrize("family", ["mistral", "qwen2", "qwen3", "gemma"])
def test_every_family_runs_in_genai_like_our_runtime(family, tokenizer, tmp_path):
    """ORT GenAI's generic decoder type fits every family's graph (Llama is tested above)."""
    genai_or_skip()
    from armor_export.config import ExportConfig
    from armor_export.export import export_onnx
    from armor_export.runtime.genai import GenaiGenerator
    from tests.conftest import random_armorize, tiny_model

    model = tiny_model(family)
    random_armorize(model)
    cfg = ExportConfig(model=family, output_dir=str(tmp_path))
    folder = export_onnx(cfg, model=model, tokenizer=tokenizer).output_dir
    config = GenerationConfig(max_new_tokens=6)
    theirs = GenaiGenerator(folder).generate(PROMPTS, config)
    ours = Generator(folder, threads=1).generate(PROMPTS, config)
    assert (theirs.prompt_token_ids, theirs.token_ids) == (ours.prompt_token_ids, ours.token_ids)


def test_genai_sampling_options_pass_through_and_a_seed_repeats(tiny_export):
    genai_or_skip()
    from armor_export.config import SamplingConfig
    from armor_export.runtime.genai import GenaiGenerator

    generator = GenaiGenerator(tiny_export.output_dir)
    config = GenerationConfig(6, SamplingConfig(temperature=0.8, top_k=5, top_p=0.9, seed=1))
    first, second = (generator.generate("The quick", config) for _ in range(2))
    assert first.token_ids == second.token_ids and len(first.token_ids[0]) <= 6
