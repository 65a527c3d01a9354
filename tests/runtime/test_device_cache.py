"""The KV cache stays where the session computes it: ``Generator`` hands a session that can
keep it (``run_keeping_cache``: the TensorRT session, on the GPU) its cache handle instead of
the presents, and a decode step on the TensorRT session copies only the token ids, mask and
positions in and the logits out (``trt_session.plan_copies``, the plan ``_execute`` follows).
On a GPU, tests/gpu/test_gpu_runtime.py checks the real engine's tokens both ways."""

from __future__ import annotations

import numpy as np
import pytest

from armor_export.export_manifest import ExportManifest
from armor_export.runtime import GenerationConfig, Generator
from armor_export.runtime.session import OrtSession
from armor_export.runtime.trt_session import plan_copies

pytest.importorskip("onnxruntime")

PROMPTS = ["The quick brown fox", "A"]
TOKENS = {"input_ids", "attention_mask", "position_ids"}


@pytest.fixture(scope="module")
def manifest(tiny_export):
    return ExportManifest.read(tiny_export.output_dir)


def test_a_decode_step_on_the_device_cache_copies_no_cache(manifest):
    """Before: every step copied the whole cache in and out (the ``run`` plan below)."""
    names = (manifest.input_names, manifest.output_names, manifest.cache_feedback())
    pasts, presents = set(manifest.past_names), set(manifest.present_names)
    assert pasts and presents

    step = plan_copies(*names, cache_in=True, keep=True)
    assert set(step.to_device) == TOKENS and step.to_host == ("logits",)
    assert set(step.from_cache) == pasts and set(step.kept) == presents

    prefill = plan_copies(*names, cache_in=False, keep=True)  # empty pasts in, cache kept
    assert set(prefill.to_device) == TOKENS | pasts and prefill.to_host == ("logits",)
    assert not prefill.from_cache and set(prefill.kept) == presents

    round_trip = plan_copies(*names)  # run(): verify's path, and the old decode step
    assert set(round_trip.to_device) == set(manifest.input_names)
    assert set(round_trip.to_host) == set(manifest.output_names)
    assert not round_trip.from_cache and not round_trip.kept


class HostCache:
    """The presents of the last call, held by the session and replaced in place at each call
    (as DeviceCache holds them on a GPU), with the attention mask's length as ``positions``."""

    def __init__(self) -> None:
        self.presents, self.positions = {}, 0

    def read(self, name: str) -> np.ndarray:
        return self.presents[name]


class KeepingOrtSession:
    """ONNX Runtime (really computing) behind the cache-keeping interface: the pasts come
    from the handle, never from the generator's feeds, after the prefill."""

    def __init__(self, path) -> None:
        self.inner = OrtSession(path, threads=1)
        self.input_names, self.output_names = self.inner.input_names, self.inner.output_names
        self.fed: list[set[str]] = []

    def run(self, feeds):
        raise AssertionError("the generator must keep the cache in the session")

    def run_keeping_cache(self, feeds, cache, feedback):
        self.fed.append(set(feeds))
        feeds = dict(feeds)
        if cache is not None:
            assert cache.positions + feeds["input_ids"].shape[1] == feeds["attention_mask"].shape[1]
            feeds.update({past: cache.presents[present] for past, present in feedback})
        outputs = self.inner.run(feeds)
        cache = cache or HostCache()
        cache.presents = {present: outputs.pop(present) for _, present in feedback}
        cache.positions = feeds["attention_mask"].shape[1]
        return outputs, cache


def test_the_generator_leaves_the_cache_with_a_session_that_keeps_it(tiny_export, manifest):
    folder = tiny_export.output_dir
    config = GenerationConfig(max_new_tokens=6, stop_at_eos=False)
    want = Generator(folder, threads=1).generate(PROMPTS, config)

    session = KeepingOrtSession(folder / manifest.onnx)
    generator = Generator(folder, session=session)
    assert generator.generate(PROMPTS, config).token_ids == want.token_ids
    pasts = set(manifest.past_names)
    assert session.fed[0] == TOKENS | pasts  # the prefill's empty pasts
    assert all(fed == TOKENS for fed in session.fed[1:]) and len(session.fed) == 6

    # the cache can still be read where it is needed, and a stepped-from state is refused
    state = generator.prefill([[5, 6]])
    present = manifest.present_names[0]
    assert state.present(present).shape[2] == 2
    generator.step(state, np.array([7]))
    with pytest.raises(ValueError, match="stepped past already"):
        state.present(present)
