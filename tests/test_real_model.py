"""Smoke test on the real SmolLM2-135M and real text: a few layers, end to end."""

import math

import pytest
import torch

from armor_export.config import EvalConfig, PruneConfig
from armor_export.eval.api import evaluate
from armor_export.prune.api import prune
from armor_export.prune.checkpoint import load_checkpoint
from armor_export.prune.linear import ArmorLinear
from armor_export.prune.masks import is_two_four

pytestmark = pytest.mark.slow


def test_armor_on_two_smollm2_layers(tmp_path):
    cfg = PruneConfig.from_dict(
        {
            "method": "armor",
            "output_dir": str(tmp_path / "out"),
            "include": ["model.layers.0.*", "model.layers.1.*"],
            "workers": 1,
            "armor": {"block_size": 64, "iterations": 5, "compile": False},
            "calibration": {"text": "botchan", "n_samples": 8, "seqlen": 128, "batch_size": 4},
        }
    )
    result = prune(cfg)
    assert len(result.results) == 14
    for res in result.results.values():
        assert is_two_four(res.mask)
        assert res.metrics["proxy_loss"] <= res.metrics["nowag_loss"]
        assert res.metrics["proxy_loss"] < 0.9 * res.metrics["nowag_loss"]
    model, manifest = load_checkpoint(tmp_path / "out")
    assert isinstance(model.model.layers[1].mlp.down_proj, ArmorLinear)
    assert not isinstance(model.model.layers[2].mlp.down_proj, ArmorLinear)
    assert manifest["base_model"] == "smollm2-135m"

    eval_cfg = EvalConfig("wikipedia", n_windows=4, seqlen=256)
    dense = evaluate("smollm2-135m", eval_cfg).perplexity
    pruned = evaluate(str(tmp_path / "out"), eval_cfg)
    assert pruned.pruned
    assert math.isfinite(pruned.perplexity)
    # two of thirty layers at 2:4 with ARMOR cost little
    assert dense < pruned.perplexity < 1.5 * dense
    with torch.no_grad():
        ids = torch.tensor([[1, 504, 3458, 282, 4649, 314]])
        assert torch.isfinite(model(ids).logits).all()


@pytest.fixture(scope="module")
def real_armor_export(tmp_path_factory):
    """All 210 SmolLM2 linears as ArmorLinear (a short solve), exported to fp32 ONNX:
    ``(checkpoint folder, export folder)``."""
    pytest.importorskip("onnxruntime")
    from armor_export.config import ExportConfig
    from armor_export.export import export_onnx

    root = tmp_path_factory.mktemp("real")
    cfg = PruneConfig.from_dict(
        {
            "method": "armor",
            "output_dir": str(root / "ckpt"),
            "armor": {"block_size": 64, "iterations": 2, "compile": False},
            "calibration": {"text": "botchan", "n_samples": 8, "seqlen": 128, "batch_size": 4},
        }
    )
    prune(cfg)
    export = export_onnx(ExportConfig(model=str(root / "ckpt"), output_dir=str(root / "onnx")))
    assert export.counts["armor"] == 210 and export.manifest["counts"]["cores"] == 210
    return root / "ckpt", root / "onnx"


PROMPT = "The capital of France is"


def test_real_armor_model_exports_verifies_and_generates_like_pytorch(real_armor_export):
    """All 210 SmolLM2 linears as ArmorLinear (a short solve) → ONNX → parity → runtime."""
    from armor_export.config import VerifyConfig
    from armor_export.eval.api import load_any_model
    from armor_export.runtime.generate import GenerationConfig, Generator
    from armor_export.verify import verify

    checkpoint, onnx_dir = real_armor_export
    result = verify(VerifyConfig(export_dir=str(onnx_dir)))
    assert result.passed, result.report.markdown()

    generated = Generator(onnx_dir).generate([PROMPT], GenerationConfig(max_new_tokens=12))
    model, tokenizer, _ = load_any_model(str(checkpoint))
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    assert ids[0].tolist() == generated.prompt_token_ids[0]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=12, do_sample=False)
    assert out[0, ids.shape[1] :].tolist() == generated.token_ids[0]


def test_real_armor_export_runs_in_onnxruntime_genai_like_our_runtime(real_armor_export):
    """The export folder, unchanged, in ONNX Runtime GenAI: the same greedy tokens as our
    runtime (which the test above ties to PyTorch's)."""
    try:
        import onnxruntime_genai  # noqa: F401
    except ImportError:
        pytest.skip("onnxruntime_genai is not installed (pip install armor-export[genai])")
    from armor_export.runtime.genai import GenaiGenerator
    from armor_export.runtime.generate import GenerationConfig, Generator

    _, onnx_dir = real_armor_export
    config = GenerationConfig(max_new_tokens=12)
    theirs = GenaiGenerator(onnx_dir).generate([PROMPT], config)
    ours = Generator(onnx_dir).generate([PROMPT], config)
    assert theirs.prompt_token_ids == ours.prompt_token_ids
    assert theirs.token_ids == ours.token_ids
    assert theirs.texts == ours.texts
