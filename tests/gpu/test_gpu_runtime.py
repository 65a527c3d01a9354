"""GPU checks: ``generate --backend tensorrt`` runs the export's TensorRT-RTX engine (built for
this GPU) through ``TensorRTSession``, and gives ONNX Runtime's greedy tokens on the same
export, with prefill and decode logits and the KV cache within verify's tolerances; the KV
cache kept on the GPU between steps gives the tokens of the old host round trip; TensorRT-RTX's
runtime cache is written to its file and loaded by the next session. Skipped
without a CUDA GPU, TensorRT-RTX, cuda-python or ONNX Runtime, naming which."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from armor_export.runtime.trt_session import cuda_gpus

GPUS, NO_GPU = cuda_gpus()
pytestmark = pytest.mark.skipif(not GPUS, reason=f"needs a CUDA GPU to run an engine: {NO_GPU}")
pytest.importorskip("onnxruntime")
trt = pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX missing: pip install '.[rtx]'")
pytest.importorskip("cuda.bindings", reason="cuda-python missing: pip install '.[rtx]'")

PROMPTS = ["The quick brown fox", "A", "Perplexity is measured on consecutive windows of"]


def with_engine(export, tmp_path, **limits):
    """A copy of ``export`` with a TensorRT-RTX engine for this GPU in <copy>/engine."""
    from armor_export.config import EngineConfig
    from armor_export.engine import build_engine

    folder = tmp_path / "onnx"
    shutil.copytree(export.output_dir, folder)
    build_engine(EngineConfig(export_dir=str(folder), compute_capability="current", **limits))
    return folder


def assert_close(got, want, dtype: str, name: str, mask=None) -> None:
    """Within verify's tolerance for this dtype and output, over real (unpadded) positions."""
    from armor_export.verify.tolerances import tolerances

    atol, rtol = tolerances(dtype, name)
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    assert got.shape == want.shape, (name, got.shape, want.shape)
    if mask is not None:
        got, want = got[mask], want[mask]
    err = np.abs(got - want)
    worst = float(err.max()) if err.size else 0.0
    assert np.all(err <= atol + rtol * np.abs(want)), f"{name}: max abs err {worst}"


@pytest.mark.parametrize("fixture", ["tiny_export", "tiny_fp16_export"])
def test_tensorrt_session_matches_onnxruntime(fixture, request, tmp_path):
    from armor_export.runtime import GenerationConfig, Generator
    from armor_export.runtime.inputs import encode_prompts
    from armor_export.runtime.trt_session import TensorRTSession

    export = with_engine(request.getfixturevalue(fixture), tmp_path)
    ort = Generator(export, "onnxruntime", threads=1)
    engine = Generator(export, "tensorrt")
    assert isinstance(engine.session, TensorRTSession)
    dtype = engine.manifest.dtype

    prompt_ids = encode_prompts(engine.tokenizer, PROMPTS)  # one left-padded batch
    want, got = ort.prefill(prompt_ids), engine.prefill(prompt_ids)
    real = want.attention_mask.astype(bool)
    assert_close(got.outputs["logits"], want.outputs["logits"], dtype, "logits", real)
    for _, present in engine.cache:
        cache_mask = np.broadcast_to(real[:, None, :, None], want.present(present).shape)
        assert_close(got.present(present), want.present(present), dtype, present, cache_mask)
    # one decode step on each one's KV cache, fed the same token
    token = want.next_logits.astype(np.float32).argmax(-1)
    want, got = ort.step(want, token), engine.step(got, token)
    assert_close(got.next_logits, want.next_logits, dtype, "logits")

    if dtype == "float32":  # fp16 rounding may flip near-tied tokens of the random model
        config = GenerationConfig(max_new_tokens=16, stop_at_eos=False)
        tokens = engine.generate(PROMPTS, config).token_ids
        assert tokens == ort.generate(PROMPTS, config).token_ids


def test_cli_generate_on_the_engine_prints_onnxruntimes_text(tiny_export, tmp_path, capsys):
    from armor_export.cli.main import main

    export = with_engine(tiny_export, tmp_path)
    argv = ["generate", str(export), "--prompt", "The quick", "--max-new-tokens", "8"]
    argv += ["--ignore-eos"]
    assert main(argv) == 0
    want = capsys.readouterr().out
    assert main([*argv, "--backend", "tensorrt"]) == 0
    assert capsys.readouterr().out == want


def test_an_engine_built_for_smaller_limits_refuses_beyond_them(tiny_export, tmp_path):
    """The profile's own limits apply (the engine verb may lower the export's)."""
    from armor_export.errors import ShapeError
    from armor_export.runtime import GenerationConfig, Generator

    export = with_engine(tiny_export, tmp_path, max_batch=2, max_prompt=8, max_context=16)
    engine = Generator(export, "tensorrt")
    assert (engine.limits.max_batch, engine.limits.max_prompt) == (2, 8)
    config = GenerationConfig(max_new_tokens=4, stop_at_eos=False)
    assert len(engine.generate(["The quick"], config).token_ids[0]) == 4
    with pytest.raises(ShapeError, match="this engine's limits.max_batch 2: .*rebuild the engine"):
        engine.generate(["a", "b", "c"], config)


def test_the_cache_on_the_device_gives_the_host_round_trips_tokens(tiny_export, tmp_path):
    """generate keeps the KV cache on the GPU (run_keeping_cache); the old path copied it
    host -> device -> host at every step (HostCacheSession runs it): same greedy tokens, and
    both ONNX Runtime's."""
    from armor_export.runtime import GenerationConfig, Generator
    from armor_export.runtime.trt_session import DeviceCache, HostCacheSession

    export = with_engine(tiny_export, tmp_path)
    device = Generator(export, "tensorrt")
    assert device.keeps_cache
    host = Generator(export, session=HostCacheSession(device.session))
    assert not host.keeps_cache
    config = GenerationConfig(max_new_tokens=24, stop_at_eos=False)
    tokens = device.generate(PROMPTS, config).token_ids
    assert tokens == host.generate(PROMPTS, config).token_ids
    assert tokens == Generator(export, "onnxruntime", threads=1).generate(PROMPTS, config).token_ids

    state = device.prefill([[5, 6, 7]])
    assert isinstance(state.cache, DeviceCache) and not set(state.outputs) - {"logits"}
    state = device.step(state, np.array([8]))
    present = device.cache[0][1]
    assert state.present(present).shape[2] == 4  # read back where it is needed
    stale = device.prefill([[5, 6]])
    device.step(stale, np.array([7]))  # the device cache moves on from ``stale``
    with pytest.raises(ValueError, match="stepped from only once"):
        device.step(stale, np.array([9]))


def test_the_runtime_cache_is_written_and_reused(tiny_export, tmp_path, monkeypatch):
    from armor_export.runtime import GenerationConfig, Generator
    from armor_export.runtime import runtime_cache as rc

    monkeypatch.setenv(rc.ENV, str(tmp_path / "rtcache"))
    export = with_engine(tiny_export, tmp_path)
    config = GenerationConfig(max_new_tokens=8, stop_at_eos=False)

    first = Generator(export, "tensorrt")
    assert first.session.runtime_cache is not None and first.session.runtime_cache.loaded is None
    want = first.generate(PROMPTS, config).token_ids
    first.session.close()
    files = list((tmp_path / "rtcache").glob("*" + rc.SUFFIX))
    assert len(files) == 1 and files[0].stat().st_size > 0
    engine_bytes = (export / "engine" / "model.engine").read_bytes()
    assert files[0] == rc.cache_path(engine_bytes, trt.__version__, tmp_path / "rtcache")

    again = Generator(export, "tensorrt")
    assert again.session.runtime_cache.loaded == files[0].read_bytes()  # accepted by TRT-RTX
    assert again.generate(PROMPTS, config).token_ids == want
