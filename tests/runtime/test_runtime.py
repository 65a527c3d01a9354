"""The torch-free runtime on a tiny pruned export: parity with PyTorch, padding, sampling,
streaming, errors and the ``generate`` CLI verb.

The tiny checkpoint and its float32 export are the suite's session fixtures (the export's
torch.export trace is most of the time, shared with the export and verify tests).
"""

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from armor_export.errors import (
    BackendUnavailableError,
    ConfigError,
    CorruptFileError,
    NonFiniteOutputError,
    ShapeError,
)
from armor_export.export_manifest import seal
from armor_export.io import sha256_file
from armor_export.runtime import GenerationConfig, Generator, Sampler, SamplingConfig
from armor_export.runtime import session as session_module
from armor_export.runtime.inputs import left_pad
from armor_export.runtime.sampling import greedy, softmax, top_k_filter, top_p_filter
from armor_export.runtime.streaming import REPLACEMENT, IncrementalDecoder
from tests.conftest import TEXT, nan_norm_export, rope_overflow_export
from tests.runtime.torch_free import assert_runs_without_torch

pytest.importorskip("onnxruntime")

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[2]
PROMPTS = ["The quick brown fox", "A", "Perplexity is measured on consecutive windows of"]


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint):
    """The suite's tiny ARMOR-pruned Llama checkpoint (tests/conftest.py)."""
    return tiny_checkpoint


@pytest.fixture(scope="module")
def export_dir(tiny_export):
    """The suite's float32, plain-lowered export of it (limits 8 / 256 / 256)."""
    return tiny_export.output_dir


@pytest.fixture(scope="module")
def generator(export_dir):
    return Generator(export_dir, threads=1)


@pytest.fixture
def edited_export(export_dir, tmp_path):
    """A copy of the export whose manifest the test edits: ``edit(**fields) -> folder``."""

    def edit(**fields):
        folder = tmp_path / "edited"
        shutil.copytree(export_dir, folder)
        path = folder / "export_manifest.json"
        manifest = json.loads(path.read_text())
        manifest.update(fields)
        path.write_text(json.dumps(seal(manifest)))  # edited on purpose: resealed
        return folder

    return edit


class Recorder:
    """A Session wrapper that keeps every step's feeds and last-position logits."""

    def __init__(self, session):
        self.session = session
        self.input_names = session.input_names
        self.output_names = session.output_names
        self.feeds, self.logits = [], []

    def run(self, feeds):
        outputs = self.session.run(feeds)
        self.feeds.append(feeds)
        self.logits.append(outputs["logits"][:, -1].astype(np.float32))
        return outputs


def recorded(generator, monkeypatch) -> Recorder:
    recorder = Recorder(generator.session)
    monkeypatch.setattr(generator, "session", recorder)
    return recorder


def greedy_config(n: int = 8) -> GenerationConfig:
    # eos off: the random model may pick it at any step, on either side
    return GenerationConfig(max_new_tokens=n, stop_at_eos=False)


# ---------------------------------------------------------------- torch-free


def test_generation_imports_neither_torch_nor_transformers_nor_the_exporter(export_dir):
    assert_runs_without_torch(
        f"""
        import argparse
        from armor_export.runtime import GenerationConfig, Generator
        from armor_export.cli import generate

        result = Generator({str(export_dir)!r}, threads=1).generate(
            ["The quick"], GenerationConfig(4, stop_at_eos=False)
        )
        assert len(result.token_ids[0]) == 4, result
        parser = argparse.ArgumentParser()
        generate.add_parser(parser.add_subparsers())
        args = parser.parse_args(
            ["generate", {str(export_dir)!r}, "--prompt", "A", "--max-new-tokens", "2"]
        )
        assert generate.run(args) == 0
        # the TensorRT session too: its module, and opening it as far as this machine allows
        # (no engine in this export: refused before TensorRT or CUDA is touched)
        from armor_export.errors import BackendUnavailableError
        from armor_export.runtime import trt_session  # noqa: F401
        try:
            Generator({str(export_dir)!r}, backend="tensorrt")
        except BackendUnavailableError:
            pass
        """
    )


# ---------------------------------------------------------------- parity


def test_greedy_tokens_and_logits_match_pytorch(checkpoint, generator, tokenizer, monkeypatch):
    from armor_export.eval.api import load_any_model

    recorder = recorded(generator, monkeypatch)
    result = generator.generate(["The quick brown fox"], greedy_config(8))
    prompt = result.prompt_token_ids[0]
    assert prompt == tokenizer("The quick brown fox").input_ids

    model, _, _ = load_any_model(str(checkpoint))
    ids, want_tokens, want_logits = torch.tensor([prompt]), [], []
    with torch.no_grad():
        for _ in range(8):
            logits = model(ids).logits[:, -1]
            next_id = logits.argmax(-1)
            want_tokens.append(int(next_id))
            want_logits.append(logits.numpy())
            ids = torch.cat([ids, next_id[:, None]], dim=1)

    assert result.token_ids[0] == want_tokens
    assert len(recorder.logits) == 8  # one prefill, then one KV-cache step per token
    for step, (got, want) in enumerate(zip(recorder.logits, want_logits, strict=True)):
        assert np.allclose(got, want, atol=1e-4), f"step {step}"


def test_left_padded_batch_matches_each_prompt_alone(generator, monkeypatch):
    recorder = recorded(generator, monkeypatch)
    batch = generator.generate(PROMPTS, greedy_config(6))
    batch_logits = np.stack(recorder.logits, axis=1)  # [batch, steps, vocab]
    mask = recorder.feeds[0]["attention_mask"]
    assert mask[1, 0] == 0 and mask[1, -1] == 1  # the short prompt is padded on the left

    for row, prompt in enumerate(PROMPTS):
        recorder.logits.clear()
        alone = generator.generate([prompt], greedy_config(6))
        assert batch.token_ids[row] == alone.token_ids[0], prompt
        assert batch.texts[row] == alone.texts[0]
        alone_logits = np.concatenate(recorder.logits)
        assert np.allclose(batch_logits[row], alone_logits, atol=1e-4), prompt


def test_left_pad_counts_positions_over_real_tokens():
    batch = left_pad([[5, 6, 7], [9]], pad_id=0)
    assert batch.input_ids.tolist() == [[5, 6, 7], [0, 0, 9]]
    assert batch.attention_mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert batch.position_ids.tolist() == [[0, 1, 2], [0, 0, 0]]


def test_eos_stops_one_row_while_the_other_goes_on(generator, monkeypatch):
    prompts = PROMPTS[::2]
    free = generator.generate(prompts, greedy_config(3)).token_ids
    eos = free[0][0]
    assert eos not in free[1]  # precondition for this model and these prompts
    monkeypatch.setattr(generator, "eos_ids", {eos})
    recorder = recorded(generator, monkeypatch)
    result = generator.generate(prompts, GenerationConfig(max_new_tokens=3))
    assert result.token_ids == [[eos], free[1]]
    assert result.finish_reasons == ["eos", "length"]
    assert result.new_tokens == 4
    n_prompt = max(len(ids) for ids in result.prompt_token_ids)
    for step, feeds in enumerate(recorder.feeds[1:], start=1):
        assert feeds["input_ids"].shape == (2, 1)
        assert feeds["input_ids"][0, 0] == generator.pad_id  # the finished row idles
        assert feeds["attention_mask"].shape == (2, n_prompt + step)
        assert feeds["past_key_values.0.key"].shape[2] == n_prompt + step - 1
        assert feeds["position_ids"][1, 0] == len(result.prompt_token_ids[1]) + step - 1


def test_prefill_and_steps_are_what_generate_runs(generator, export_dir):
    """The public prefill/step hook, driven by hand, gives generate's tokens and feeds."""
    from armor_export.runtime.sampling import greedy

    want = generator.generate(PROMPTS[:2], greedy_config(5))
    state = generator.prefill(want.prompt_token_ids)
    tokens = [greedy(state.next_logits)]
    for _ in range(4):
        state = generator.step(state, tokens[-1])
        tokens.append(greedy(state.next_logits))
    assert np.stack(tokens, axis=1).tolist() == want.token_ids
    assert state.attention_mask.shape[1] == max(map(len, want.prompt_token_ids)) + 4

    # an already-open session is run as it is, and checked against the manifest first
    recorder = Recorder(generator.session)
    again = Generator(export_dir, session=recorder)
    assert again.session is recorder
    again.step(again.prefill([[5, 6, 7]]), np.array([8]))
    assert [f["input_ids"].tolist() for f in recorder.feeds] == [[[5, 6, 7]], [[8]]]


def test_step_refuses_to_run_past_the_context(generator):
    state = generator.prefill([[5] * 255])
    state = generator.step(state, np.array([6]))  # the 256th position: the last one
    with pytest.raises(ShapeError, match="limits.max_context 256"):
        generator.step(state, np.array([7]))


def test_float16_export_feeds_float16_past(export_dir, tmp_path, monkeypatch):
    """An fp16 graph (converted from the fp32 export) gets fp16 past arrays at every step."""
    onnx = pytest.importorskip("onnx")
    float16 = pytest.importorskip("onnxruntime.transformers.float16")
    folder = tmp_path / "fp16"
    shutil.copytree(export_dir, folder)
    model = float16.convert_float_to_float16(onnx.load(folder / "model.onnx"), keep_io_types=False)
    onnx.save(model, folder / "model.onnx")
    manifest = json.loads((folder / "export_manifest.json").read_text())
    manifest["sha256"]["model.onnx"] = sha256_file(folder / "model.onnx")  # converted on purpose
    (folder / "export_manifest.json").write_text(json.dumps(seal({**manifest, "dtype": "float16"})))

    generator = Generator(folder, threads=1)
    recorder = recorded(generator, monkeypatch)
    result = generator.generate(["The quick brown fox"], greedy_config(4))
    assert len(result.token_ids[0]) == 4
    for feeds in recorder.feeds:
        assert feeds["past_key_values.1.value"].dtype == np.float16


def test_streamed_text_adds_up_to_the_result(generator):
    pieces: dict[int, list[str]] = {0: [], 1: []}
    result = generator.generate(
        PROMPTS[:2], greedy_config(5), on_text=lambda row, text: pieces[row].append(text)
    )
    assert ["".join(pieces[row]) for row in (0, 1)] == result.texts
    assert result.new_tokens == 10
    assert result.prefill_seconds > 0 and result.decode_tokens_per_second > 0


def test_incremental_decoding_never_splits_a_character(tokenizer):
    backend = tokenizer.backend_tokenizer
    text = "héllo wörld ✓ 日本語 done"
    ids = backend.encode(text, add_special_tokens=False).ids
    assert len(ids) > len(text.split())  # multi-byte characters span several tokens
    decoder, pieces = IncrementalDecoder(backend), []
    for token in ids:
        pieces.append(decoder.push(token))
    pieces.append(decoder.flush())
    assert "".join(pieces) == text
    assert not any(REPLACEMENT in piece for piece in pieces)


def test_incomplete_character_is_flushed_at_the_end(tokenizer):
    backend = tokenizer.backend_tokenizer
    ids = backend.encode("日", add_special_tokens=False).ids
    decoder = IncrementalDecoder(backend)
    assert [decoder.push(t) for t in ids[:-1]] == [""] * (len(ids) - 1)
    assert decoder.flush() == REPLACEMENT


# ---------------------------------------------------------------- sampling


def test_greedy_and_top_k_one_pick_the_argmax():
    logits = np.random.default_rng(0).normal(size=(4, 50))
    want = logits.argmax(-1)
    assert greedy(logits).tolist() == want.tolist()
    sampler = Sampler(SamplingConfig(temperature=1.5, top_k=1, seed=0))
    assert sampler(logits).tolist() == want.tolist()


def test_seeded_sampling_is_reproducible():
    logits = np.random.default_rng(1).normal(size=(3, 100))

    def draws(seed):
        sampler = Sampler(SamplingConfig(temperature=1.0, seed=seed))
        return [sampler(logits).tolist() for _ in range(20)]

    assert draws(7) == draws(7)
    assert draws(7) != draws(8)


def test_top_k_keeps_exactly_k_even_with_ties():
    scores = np.random.default_rng(2).integers(0, 4, size=(6, 40)).astype(np.float64)
    for k in (1, 3, 10, 39):
        kept = np.isfinite(top_k_filter(scores, k))
        assert (kept.sum(-1) == k).all()
        for row in range(scores.shape[0]):
            assert scores[row, kept[row]].min() >= scores[row, ~kept[row]].max()
    assert np.array_equal(top_k_filter(scores, 0), scores)
    assert np.array_equal(top_k_filter(scores, 40), scores)


@pytest.mark.parametrize(
    "p, kept", [(1e-9, {0}), (0.3, {0}), (0.75, {0, 1}), (0.85, {0, 1, 2}), (0.99, {0, 1, 2, 3})]
)
def test_top_p_keeps_the_smallest_set_reaching_p(p, kept):
    probs = np.array([[0.15, 0.5, 0.05, 0.3]])  # best first: 1, 3, 0, 2
    order = [1, 3, 0, 2]
    filtered = top_p_filter(np.log(probs), p)
    assert set(np.flatnonzero(np.isfinite(filtered[0]))) == {order[i] for i in kept}


def test_top_p_set_is_minimal_on_random_rows():
    scores = np.random.default_rng(3).normal(scale=3, size=(20, 64))
    probs = softmax(scores)
    for p in (0.1, 0.5, 0.9):
        kept = np.isfinite(top_p_filter(scores, p))
        for row in range(scores.shape[0]):
            mass = probs[row, kept[row]]
            assert mass.sum() >= p - 1e-12
            assert mass.sum() - mass.min() < p  # dropping its least likely token falls short


def test_samples_stay_inside_the_filtered_set_and_follow_the_distribution():
    logits = np.log(np.array([[0.6, 0.25, 0.1, 0.05]] * 4000))
    sampler = Sampler(SamplingConfig(temperature=1.0, top_k=3, top_p=0.8, seed=0))
    draws = sampler(logits)
    assert set(draws.tolist()) <= {0, 1}  # top-k 3 then top-p 0.8 leaves {0, 1}
    share = (draws == 0).mean()
    assert abs(share - 0.6 / 0.85) < 0.03


@pytest.mark.parametrize(
    "fields, words",
    [
        ({"temperature": -1.0}, "temperature"),
        ({"top_k": -2}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
    ],
)
@pytest.mark.fault(
    "runtime",
    "a sampling value out of range (temperature < 0, top_k < 0, top_p outside (0, 1])",
    "one config error line naming the field",
)
def test_bad_sampling_values_are_refused(fields, words):
    with pytest.raises(ConfigError, match=words):
        Sampler(SamplingConfig(**fields))


# ---------------------------------------------------------------- sessions


@pytest.mark.fault(
    "runtime",
    "the decode loop on a CPU whose cores other processes share (ONNX Runtime's intra-op "
    "threads spin between operators by default and take the cores the work needs)",
    "the ORT sessions it opens say session.intra_op.allow_spinning = 0 in their own options",
)
def test_ort_sessions_do_not_spin_their_threads(export_dir):
    key = "session.intra_op.allow_spinning"
    sessions = [
        Generator(export_dir).session._session,  # generate's, with its default threads
        session_module.inference_session(export_dir / "model.onnx", ["CPUExecutionProvider"]),
    ]
    for session in sessions:
        assert session.get_session_options().get_session_config_entry(key) == "0"


def test_generate_runs_half_the_cores_unless_told(export_dir):
    """The decode loop's default threads are ORT GenAI's (half the cores, at least one): read
    back from the session's own options; --threads still sets any count."""
    import os

    half = max(1, len(os.sched_getaffinity(0)) // 2)
    options = Generator(export_dir).session._session.get_session_options()
    assert options.intra_op_num_threads == half
    options = Generator(export_dir, threads=3).session._session.get_session_options()
    assert options.intra_op_num_threads == 3


# ---------------------------------------------------------------- errors


@pytest.mark.fault(
    "runtime",
    "more prompts than the export's max_batch",
    "one line: 9 prompts exceed max_batch 8, and --max-batch",
)
def test_too_many_prompts(generator):
    with pytest.raises(ShapeError, match=r"9 prompts exceed .*max_batch 8.*--max-batch"):
        generator.generate(["hello"] * 9, greedy_config(2))


@pytest.mark.fault(
    "runtime",
    "a prompt longer than the export's max_prompt",
    "one line naming limits.max_prompt and --max-prompt",
)
def test_too_long_prompt(generator):
    with pytest.raises(ShapeError, match=r"limits.max_prompt 256.*--max-prompt"):
        generator.generate([TEXT], greedy_config(2))


@pytest.mark.fault(
    "runtime",
    "prompt + --max-new-tokens beyond the export's context",
    "one line: the largest --max-new-tokens that fits, and --max-context only when the model "
    "allows more",
)
def test_prompt_plus_new_tokens_beyond_the_context(generator, edited_export):
    n_prompt = len(generator.tokenizer.encode("The quick brown fox").ids)
    with pytest.raises(ShapeError) as info:
        generator.generate(["The quick brown fox"], greedy_config(256))
    message = str(info.value)
    assert "limits.max_context 256" in message
    assert f"--max-new-tokens to at most {256 - n_prompt}" in message
    # the tiny export's context is the model's own 256: no re-export can widen it
    assert "--max-context" not in message
    assert "256 is the model's own max_position_embeddings" in message
    smaller = edited_export(
        config={**generator.manifest.config, "limits": {"max_context": 128}},
        limits={**generator.manifest.limits.to_dict(), "max_context": 128},
    )
    with pytest.raises(ShapeError, match=rf"--max-context {n_prompt + 200} \(at most"):
        Generator(smaller).generate(["The quick brown fox"], greedy_config(200))


@pytest.mark.fault(
    "runtime",
    "a prompt beyond a built engine's limits, smaller than its export's",
    "one line: the engine's limit, and to rebuild the engine with a larger flag (at most the "
    "export's)",
)
def test_an_engines_smaller_limits_say_to_rebuild_the_engine():
    """A TensorRT session carries its engine's limits (build_report.json); they apply."""
    from armor_export.export_manifest import Limits
    from armor_export.runtime.inputs import check_limits

    engine, export = Limits(2, 8, 16), Limits(8, 256, 256)
    check_limits([[1] * 8, [2]], 8, engine, export_limits=export)  # fits exactly
    cases = [
        ([[1]] * 3, 1, "3 prompts exceed this engine's limits.max_batch 2: give fewer prompts, "
         "or rebuild the engine with a larger --max-batch (armor-export engine; at most the "
         "export's 8)"),
        ([[1] * 9], 1, "a prompt of 9 tokens exceeds this engine's limits.max_prompt 8: "
         "shorten it, or rebuild the engine with a larger --max-prompt (armor-export engine; "
         "at most the export's 256)"),
        ([[1] * 8], 9, "8 prompt tokens + 9 new tokens exceed this engine's limits.max_context "
         "16: lower --max-new-tokens to at most 8, or rebuild the engine with --max-context 17 "
         "(armor-export engine; at most the export's 256)"),
    ]  # fmt: skip
    for prompts, new_tokens, message in cases:
        with pytest.raises(ShapeError) as info:
            check_limits(prompts, new_tokens, engine, model_context=True, export_limits=export)
        assert str(info.value) == message


@pytest.mark.fault(
    "runtime",
    "an empty or whitespace-only prompt, or no prompt",
    "one config error line",
)
@pytest.mark.parametrize("prompts", [[""], ["fine", ""], [], ["  \n\t "]])
def test_empty_prompts(generator, prompts):
    with pytest.raises(ConfigError, match="prompt"):
        generator.generate(prompts, greedy_config(2))


@pytest.mark.fault(
    "runtime",
    "--max-new-tokens 0",
    "one config error line naming max_new_tokens",
)
def test_zero_new_tokens(generator):
    with pytest.raises(ConfigError, match="max_new_tokens"):
        generator.generate(["hello"], GenerationConfig(max_new_tokens=0))


def _ort_must_not_load():
    raise AssertionError("onnxruntime was touched before the export was checked")


@pytest.mark.fault(
    "runtime",
    "a bfloat16 export on ONNX Runtime's CPU provider",
    "one line: no bfloat16 MatMul there, export float16 or float32 or use TensorRT; ONNX Runtime "
    "is not loaded",
)
def test_bfloat16_export_on_the_cpu_provider(edited_export, monkeypatch):
    folder = edited_export(dtype="bfloat16")
    monkeypatch.setattr(session_module, "_import_ort", _ort_must_not_load)
    with pytest.raises(BackendUnavailableError) as info:
        Generator(folder)
    message = str(info.value)
    assert "CPU provider has no bfloat16 MatMul" in message
    assert "--dtype float16" in message and "float32" in message and "TensorRT" in message


@pytest.mark.fault(
    "runtime",
    "a plugin-lowered export on ONNX Runtime",
    "one line asking for --lowering plain; ONNX Runtime is not loaded",
)
def test_plugin_export_on_onnxruntime(edited_export, monkeypatch):
    folder = edited_export(lowering="plugin")
    monkeypatch.setattr(session_module, "_import_ort", _ort_must_not_load)
    with pytest.raises(BackendUnavailableError, match="--lowering plain"):
        Generator(folder)


@pytest.mark.fault(
    "runtime",
    "onnxruntime not installed",
    "one line: pip install armor-export[onnx]",
)
def test_missing_onnxruntime_gives_the_install_hint(export_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(BackendUnavailableError, match=r"pip install armor-export\[onnx\]"):
        Generator(export_dir)


@pytest.mark.fault(
    "runtime",
    "an unknown --backend",
    "one config error line listing the backends",
)
def test_unknown_backend(export_dir):
    with pytest.raises(ConfigError, match="backend must be one of"):
        Generator(export_dir, backend="tvm")


@pytest.mark.fault(
    "runtime",
    "a folder that is not an export",
    "one error line",
)
def test_not_an_export_folder(tmp_path):
    with pytest.raises(CorruptFileError):
        Generator(tmp_path)


@pytest.mark.fault(
    "runtime",
    "a graph whose inputs differ from its manifest",
    "one line: export again",
)
def test_graph_that_differs_from_its_manifest(export_dir, edited_export):
    from armor_export.io import read_json

    manifest = read_json(export_dir / "export_manifest.json")
    names = manifest["input_names"][:-1] + ["past_key_values.9.value"]
    with pytest.raises(CorruptFileError, match="export again"):
        Generator(edited_export(input_names=names))


@pytest.fixture(scope="module")
def nan_export(export_dir, tmp_path_factory):
    """The export with a NaN norm weight (hashes rewritten): NaN logits from the prefill on."""
    pytest.importorskip("onnx")
    return nan_norm_export(export_dir, tmp_path_factory.mktemp("damaged") / "nan")


@pytest.mark.fault(
    "runtime",
    "an export whose weights give NaN logits (a norm weight set to NaN, hashes rewritten)",
    "one line naming the step: non-finite logits at prefill (NaN in 300 of 300 values), "
    "the export or its weights are damaged; exit 1 and no text",
)
def test_nan_logits_at_the_prefill_stop_generate_in_one_line(nan_export, capsys):
    from armor_export.cli.main import main

    with pytest.raises(NonFiniteOutputError) as info:
        Generator(nan_export, threads=1).generate(["The quick"], greedy_config(4))
    assert str(info.value) == (
        "the model produced non-finite logits at prefill (NaN in 300 of 300 values): "
        "the export or its weights are damaged"
    )
    code = main(["generate", str(nan_export), "--prompt", "The quick", "--threads", "1"])
    out, err = capsys.readouterr()
    assert code == 1 and out == ""
    assert err.strip().splitlines() == [f"armor-export generate: error: {info.value}"]


@pytest.mark.fault(
    "runtime",
    "an export whose logits turn non-finite at a later decode step only (a rotary frequency "
    "that overflows from position 4 on)",
    "one line naming that decode step; exit 1",
)
def test_non_finite_logits_at_a_decode_step_name_the_step(export_dir, tmp_path, monkeypatch):
    pytest.importorskip("onnx")
    folder, first_bad = rope_overflow_export(export_dir, tmp_path / "rope")
    generator = Generator(folder, threads=1)
    n_prompt = len(generator.tokenizer.encode("A").ids)
    step = first_bad - n_prompt + 1  # decode step n runs position n_prompt - 1 + n
    assert step >= 1  # the prefill itself is finite: only the decode step can be named
    recorder = recorded(generator, monkeypatch)
    with pytest.raises(NonFiniteOutputError) as info:
        generator.generate(["A"], greedy_config(16))
    assert str(info.value).startswith(
        f"the model produced non-finite logits at decode step {step} (NaN in 300 of 300 values)"
    )
    # the prefill and the steps before it were finite; generation stopped at the bad step
    assert len(recorder.logits) == 1 + step
    assert all(np.isfinite(logits).all() for logits in recorder.logits[:-1])
    assert np.isnan(recorder.logits[-1]).all()
    proc = subprocess.run(
        [sys.executable, "-m", "armor_export", "generate", str(folder), "--prompt", "A",
         "--ignore-eos", "--threads", "1"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"armor-export generate: error: {info.value}"]


# ---------------------------------------------------------------- CLI


def cli_args(*argv):
    from armor_export.cli import generate

    parser = argparse.ArgumentParser()
    generate.add_parser(parser.add_subparsers())
    return parser.parse_args(["generate", *map(str, argv)])


def test_cli_streams_one_prompt_and_writes_json(export_dir, tmp_path, capsys):
    from armor_export.cli import generate

    out = tmp_path / "result.json"
    args = cli_args(
        export_dir, "--prompt", "The quick", "--max-new-tokens", 5, "--ignore-eos",
        "--threads", 1, "--json", out,
    )  # fmt: skip
    assert generate.run(args) == 0
    stdout, stderr = capsys.readouterr()
    data = json.loads(out.read_text())
    assert stdout == data["texts"][0] + "\n"
    assert len(data["token_ids"][0]) == 5
    assert "generated 5 tokens" in stderr and "tok/s" in stderr and "prefill" in stderr


def test_cli_batch_with_sampling(export_dir, capsys):
    from armor_export.cli import generate

    argv = [export_dir, "--prompt", "The", "--prompt", "A journey", "--max-new-tokens", 3]
    argv += ["--temperature", 0.8, "--top-k", 20, "--top-p", 0.9, "--seed", 1, "--threads", 1]
    assert generate.run(cli_args(*argv)) == 0
    first = capsys.readouterr().out
    assert generate.run(cli_args(*argv)) == 0
    assert capsys.readouterr().out == first  # seeded
    lines = first.splitlines()
    assert lines[0].startswith("[0] ") and lines[1].startswith("[1] ")


@pytest.mark.fault(
    "runtime",
    "generate --top-p 0, or on a folder that is not an export",
    "one config error before the model loads / one error line",
)
def test_cli_defaults_and_bad_flags(tmp_path):
    from armor_export.cli import generate

    args = cli_args("--prompt", "x")
    assert args.export_dir == "runs/onnx" and args.backend == "onnxruntime"
    assert args.temperature == 0.0 and args.max_new_tokens == 64
    with pytest.raises(ConfigError, match="top_p"):
        generate.run(cli_args(tmp_path, "--prompt", "x", "--top-p", 0))
    with pytest.raises(CorruptFileError):
        generate.run(cli_args(tmp_path, "--prompt", "x"))
