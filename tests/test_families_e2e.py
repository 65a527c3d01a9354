"""Every registered model type end to end: prune → export → verify → generate.

Each case of ``tests/conftest.FAMILY_CASES`` is a tiny config with what sets its family apart
(llama3 rope scaling and an untied head, Mistral's sliding window, Qwen2's q/k/v biases with
a sliding layer, Qwen3's q/k norms, Gemma's conventions, Gemma2's soft-capping, query scale
and alternating sliding windows). Each is pruned with ARMOR (3 iterations, 4 calibration
samples), exported (fp32, plain lowering), verified against ONNX Runtime, and generated from
with the torch-free runtime on ONNX Runtime (a left-padded batch, KV-cache steps), whose
greedy tokens and every step's logits must be the pruned PyTorch model's recomputed over the
whole sequence without a cache. Random tiny models soon repeat one token greedily, so the
logits are what makes the comparison sharp. Prompts and generations run past the 8-token
window, so sliding-window attention is exercised in prefill and in decode steps.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import FAMILY_CASES, WINDOW, export_tiny, family_config, prune_tiny

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("polygraphy")

from armor_export.config import VerifyConfig  # noqa: E402
from armor_export.models.registry import registered_model_types  # noqa: E402
from armor_export.runtime import GenerationConfig, Generator  # noqa: E402
from armor_export.verify import verify  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# one prompt shorter than the window (the window is crossed while decoding) and one longer
PROMPTS = ["A journey", "The capital of France is"]
NEW_TOKENS = 12
N_LINEARS = 14  # 2 layers x 7


@pytest.fixture(scope="module", params=sorted(FAMILY_CASES))
def pipeline(request, tmp_path_factory):
    """(case, pruned checkpoint, export result) of one case."""
    case = request.param
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp(case)
    checkpoint = prune_tiny(root, family=case, config=family_config(case))
    return case, checkpoint, export_tiny(checkpoint, root / "onnx")


def pytorch_greedy(model, prompt_ids: list[int], n: int) -> tuple[list[int], np.ndarray]:
    """Greedy tokens and each step's last-position logits, recomputing the whole sequence
    every step (no KV cache)."""
    ids, tokens, logits = torch.tensor([prompt_ids]), [], []
    with torch.no_grad():
        for _ in range(n):
            last = model(input_ids=ids, use_cache=False).logits[0, -1]
            tokens.append(int(last.argmax()))
            logits.append(last.numpy())
            ids = torch.cat([ids, torch.tensor([[tokens[-1]]])], dim=1)
    return tokens, np.stack(logits)


class LogitsRecorder:
    """Wraps the generator's session: keeps every step's last-position logits."""

    def __init__(self, session):
        self.session, self.logits = session, []
        self.input_names, self.output_names = session.input_names, session.output_names

    def run(self, feeds):
        outputs = self.session.run(feeds)
        self.logits.append(outputs["logits"][:, -1].astype(np.float32))
        return outputs


def test_every_registered_model_type_has_an_end_to_end_case():
    assert {model_type for model_type, _ in FAMILY_CASES.values()} == set(registered_model_types())


def test_prune_export_verify_generate(pipeline, tmp_path, tokenizer):
    from armor_export.eval.api import load_any_model

    case, checkpoint, export = pipeline
    model_type = FAMILY_CASES[case][0]
    manifest = export.manifest
    assert manifest["family"] == registered_model_types()[model_type]
    assert manifest["counts"]["armor"] == manifest["counts"]["cores"] == N_LINEARS
    # padded positions still look their id up in the embedding (Qwen2's tokenizer adds a pad
    # token beyond the tiny vocabulary)
    assert 0 <= manifest["tokens"]["pad_token_id"] < manifest["decoder"]["vocab_size"]

    # parity: PyTorch vs ONNX Runtime on a prefill and decode steps past the window
    result = verify(
        VerifyConfig(
            export_dir=str(export.output_dir),
            prompts=PROMPTS,
            decode_steps=WINDOW + 2,
            report_dir=str(tmp_path),
        )
    )
    assert result.passed, result.report.markdown()
    assert result.report.runners == ["onnxruntime"]
    assert result.report.verdict().startswith("PASSED")

    # greedy generation: our runtime on ORT (left-padded batch, KV cache) = PyTorch
    model, _, _ = load_any_model(str(checkpoint))
    assert type(model).__name__.lower().startswith(model_type)
    prompt_ids = [tokenizer(p).input_ids for p in PROMPTS]
    assert len(prompt_ids[0]) < WINDOW < len(prompt_ids[1])
    generator = Generator(export.output_dir, threads=1)
    generator.session = recorder = LogitsRecorder(generator.session)
    generated = generator.generate(
        PROMPTS, GenerationConfig(max_new_tokens=NEW_TOKENS, stop_at_eos=False)
    )
    assert generated.prompt_token_ids == prompt_ids
    assert len(recorder.logits) == NEW_TOKENS  # one prefill, then one KV-cache step a token
    got = np.stack(recorder.logits, axis=1)  # [row, step, vocab]
    for row, ids in enumerate(prompt_ids):
        want_tokens, want_logits = pytorch_greedy(model, ids, NEW_TOKENS)
        assert generated.token_ids[row] == want_tokens, (case, row)
        np.testing.assert_allclose(got[row], want_logits, atol=1e-4, err_msg=f"{case} {row}")


@pytest.mark.parametrize("case", [c for c, (_, o) in FAMILY_CASES.items() if "sliding_window" in o])
def test_the_sliding_window_changes_the_outputs(case):
    """The cases' windows really cut attention at the test's lengths (else the end-to-end
    test would pass with the window ignored)."""
    from transformers import AutoModelForCausalLM

    models = []
    for window in (WINDOW, 4 * WINDOW):  # the case's window, and one longer than the input
        config = family_config(case)
        config.sliding_window = window
        torch.manual_seed(0)
        models.append(AutoModelForCausalLM.from_config(config).eval())
    ids = torch.randint(0, config.vocab_size, (1, 2 * WINDOW))
    with torch.no_grad():
        windowed, full = (m(input_ids=ids, use_cache=False).logits for m in models)
    torch.testing.assert_close(windowed[:, :WINDOW], full[:, :WINDOW])
    assert not torch.allclose(windowed[:, WINDOW:], full[:, WINDOW:], atol=1e-4)
