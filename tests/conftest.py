"""Shared fixtures: tiny models of every registered family, a tiny tokenizer, text files.

Nothing here touches the network (HF_HUB_OFFLINE is set so a stray hub call fails fast).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

TEXT = " ".join(
    [
        "The quick brown fox jumps over the lazy dog while the calibration text flows.",
        "A journey of a thousand miles begins with a single step on a sparse road.",
        "Perplexity is measured on consecutive windows of tokens from plain text.",
        "Every group of four weights keeps exactly two entries in a semi structured mask.",
    ]
    * 40
)

# hidden 64, intermediate 128, head_dim 16: every dimension divisible by 16 and 32
TINY_DIMS = dict(
    vocab_size=300,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
)


def tiny_config(family: str):
    """A tiny random-weight config of a registered family."""
    import transformers

    cls = {
        "llama": transformers.LlamaConfig,
        "mistral": transformers.MistralConfig,
        "qwen2": transformers.Qwen2Config,
        "qwen3": transformers.Qwen3Config,
        "gemma": transformers.GemmaConfig,
    }[family]
    extra = {"head_dim": 16} if family in ("qwen3", "gemma") else {}
    return cls(**TINY_DIMS, **extra, tie_word_embeddings=True)


# tiny configs carrying what sets each registered model type apart (tests/test_families_e2e.py):
# case -> (model type, config overrides). Windows of 8 tokens are shorter than the tests'
# prompts, so sliding-window attention differs from full attention in prefill and decode.
WINDOW = 8
FAMILY_CASES = {
    # llama3 rope scaling: original 64 positions, so head_dim 16's wavelengths fall on both
    # sides of the low/high-frequency bounds (64, 16) and in the smoothed band between them
    "llama-rope-llama3-untied": (
        "llama",
        dict(
            rope_parameters={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
                "rope_theta": 10000.0,
            },
            tie_word_embeddings=False,
        ),
    ),
    "mistral-sliding-window": ("mistral", dict(sliding_window=WINDOW)),
    # Qwen2's q/k/v projections always carry biases; layer 1 slides over a window
    "qwen2-biases-sliding": (
        "qwen2",
        dict(
            use_sliding_window=True,
            sliding_window=WINDOW,
            max_window_layers=1,
            layer_types=["full_attention", "sliding_attention"],
        ),
    ),
    # Qwen3 normalises q and k per head (q_norm, k_norm) before rotary embeddings
    "qwen3-qk-norm-untied": ("qwen3", dict(tie_word_embeddings=False)),
    # Gemma: (1 + w) RMSNorm, embeddings scaled by sqrt(hidden), GeLU-tanh gated MLP
    "gemma": ("gemma", {}),
    # Gemma2: soft-capped attention scores and logits, a query scale that is not head_dim,
    # sliding window on alternate layers, pre- and post-norms around attention and MLP
    "gemma2-softcap-sliding": (
        "gemma2",
        dict(
            final_logit_softcapping=5.0,
            attn_logit_softcapping=2.0,
            query_pre_attn_scalar=24,
            sliding_window=WINDOW,
            layer_types=["sliding_attention", "full_attention"],
        ),
    ),
}


def family_config(case: str):
    """The tiny config of one ``FAMILY_CASES`` case."""
    import transformers

    model_type, overrides = FAMILY_CASES[case]
    head_dim = {} if model_type == "llama" else {"head_dim": 16}
    # weights 5x HF's default scale: sharper attention, so windows and caps change the logits
    # well beyond the tests' tolerances
    overrides = {"tie_word_embeddings": True, "initializer_range": 0.1, **head_dim, **overrides}
    return transformers.AutoConfig.for_model(model_type, **TINY_DIMS, **overrides)


def tiny_model(family: str = "llama", seed: int = 0, config=None):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config or tiny_config(family)).eval()


def train_tokenizer(texts: list[str], **kwargs):
    """A byte-level BPE tokenizer (vocab <= 300) trained offline on ``texts``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<eos>"],
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", **kwargs)


@pytest.fixture(scope="session")
def tokenizer():
    return train_tokenizer([TEXT])


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread: tiny matrices gain nothing from more, and when another process
    holds a core, OpenMP's waits make the ARMOR solver ~20-40x slower with two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text(TEXT)
    return path


@pytest.fixture
def tiny_model_dir(tmp_path, tokenizer):
    """A saved tiny Llama (safetensors) with its tokenizer."""
    model = tiny_model("llama")
    path = tmp_path / "tiny-llama"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def calib_batches():
    gen = torch.Generator().manual_seed(0)
    return [torch.randint(0, 300, (4, 32), generator=gen) for _ in range(2)]


# --- tiny pruned checkpoints and their ONNX exports (export/verify/runtime tests) ---


def tiny_prune_config(model_dir, text_file, out, method="armor", armor=None, **top):
    """The tests' prune recipe on a tiny model: block size 16, no compile, one worker, no
    batched solves (``auto`` would decide by a timing probe), 4 calibration samples of 32
    tokens; ``armor`` and ``top`` override fields."""
    from armor_export.config import PruneConfig

    return PruneConfig.from_dict(
        {
            "model": str(model_dir),
            "method": method,
            "output_dir": str(out),
            "workers": 1,
            "batch_same_shape": "off",
            "armor": {"block_size": 16, "iterations": 8, "compile": False, **(armor or {})},
            "calibration": {"text": str(text_file), "n_samples": 4, "seqlen": 32, "batch_size": 2},
            **top,
        }
    )


def prune_tiny(root, method: str = "armor", family: str = "llama", config=None):
    """A tiny pruned checkpoint (block size 16, a few ARMOR iterations) in ``root``; a
    ``config`` (e.g. ``family_config(case)``) replaces the family's plain tiny config, and
    ``family`` then only names the folders."""
    from armor_export.prune import api

    model_dir = root / f"tiny-{family}"
    if not model_dir.exists():
        tiny_model(family, config=config).save_pretrained(model_dir)
        train_tokenizer([TEXT]).save_pretrained(model_dir)
    text = root / "text.txt"
    text.write_text(TEXT)
    out = root / f"ckpt-{family}-{method}"
    cfg = tiny_prune_config(model_dir, text, out, method, armor={"iterations": 3})
    return api.prune(cfg).output_dir


def rehash_checkpoint(checkpoint) -> None:
    """Record the sha256 of a pruned checkpoint's ``model.safetensors`` edited by a test,
    the way prune records it: the hash check passes and the edit is seen by the checks
    after it (a file written wrongly, not damaged after writing)."""
    from armor_export.io import read_json, sha256_file, write_json
    from armor_export.prune.checkpoint import MANIFEST, WEIGHTS

    manifest = read_json(checkpoint / MANIFEST)
    manifest["sha256"] = {WEIGHTS: sha256_file(checkpoint / WEIGHTS)}
    write_json(checkpoint / MANIFEST, manifest)


def export_tiny(checkpoint, out, **kwargs):
    from armor_export.config import ExportConfig, ExportLimits

    limits = kwargs.pop("limits", ExportLimits())
    cfg = ExportConfig(model=str(checkpoint), output_dir=str(out), limits=limits, **kwargs)
    from armor_export.export import export_onnx

    return export_onnx(cfg)


def damaged_export(export_dir, out, initializer: str, edit):
    """A copy of an export whose ``model.onnx`` initializer ending in ``initializer`` is
    ``edit(array)``, with the manifest's sha256 rewritten the way the export records it: the
    hash check passes and the damage is only seen when the graph runs (what a bad weight
    would do). ``out`` is returned."""
    import shutil

    import numpy as np
    from onnx import load, numpy_helper, save

    from armor_export.export_manifest import MANIFEST, seal
    from armor_export.io import read_json, sha256_file, write_json

    shutil.copytree(export_dir, out)
    model = load(str(out / "model.onnx"))
    init = next(i for i in model.graph.initializer if i.name.endswith(initializer))
    weight = np.array(numpy_helper.to_array(init))
    init.CopyFrom(numpy_helper.from_array(edit(weight).astype(weight.dtype), init.name))
    save(model, str(out / "model.onnx"))
    manifest = read_json(out / MANIFEST)
    manifest["sha256"]["model.onnx"] = sha256_file(out / "model.onnx")
    write_json(out / MANIFEST, seal(manifest))
    return out


def nan_norm_export(export_dir, out):
    """``damaged_export`` with a norm weight all NaN (the tiny random model's norms are all
    ones, one shared initializer): every logit is NaN from the prefill on."""
    import numpy as np

    return damaged_export(export_dir, out, "norm.weight", lambda w: np.full_like(w, np.nan))


def rope_overflow_export(export_dir, out):
    """``damaged_export`` with one rotary frequency set to 1e38: ``position * 1e38`` is Inf in
    float32 from some position on, so the cos/sin and the logits of that position are NaN
    while the positions before it stay finite. Returns (folder, that first position)."""
    import numpy as np

    damage = np.float32(1e38)

    def edit(inv_freq):
        inv_freq[0] = damage
        return inv_freq

    with np.errstate(over="ignore"):
        first = next(p for p in range(1, 64) if np.isinf(damage * np.float32(p)))
    return damaged_export(export_dir, out, "rotary_emb.inv_freq", edit), first


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    torch.set_num_threads(1)
    return prune_tiny(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="session")
def tiny_export(tiny_checkpoint, tmp_path_factory):
    pytest.importorskip("onnxruntime")
    return export_tiny(tiny_checkpoint, tmp_path_factory.mktemp("onnx") / "plain")


@pytest.fixture(scope="session")
def tiny_plugin_export(tiny_checkpoint, tmp_path_factory):
    pytest.importorskip("onnx")
    return export_tiny(
        tiny_checkpoint, tmp_path_factory.mktemp("onnx") / "plugin", lowering="plugin"
    )


@pytest.fixture(scope="session")
def tiny_fp16_export(tiny_checkpoint, tmp_path_factory):
    pytest.importorskip("onnxruntime")
    return export_tiny(tiny_checkpoint, tmp_path_factory.mktemp("onnx") / "fp16", dtype="float16")


def random_armorize(model, block_size=16, seed=0):
    """Replace every decoder linear with an ArmorLinear of random factors (fast, no solve)."""
    from armor_export.prune.linear import ArmorLinear, set_submodule
    from armor_export.prune.masks import mask_from_scores

    gen = torch.Generator().manual_seed(seed)
    names = [
        n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "lm_head" not in n
    ]
    for name in names:
        lin = model.get_submodule(name)
        d_out, d_in = lin.weight.shape
        eye = torch.eye(block_size)
        a = eye + 0.1 * torch.randn(d_out // block_size, block_size, block_size, generator=gen)
        b = eye + 0.1 * torch.randn(d_in // block_size, block_size, block_size, generator=gen)
        core = lin.weight.detach()
        bias = lin.bias.detach() if lin.bias is not None else None
        set_submodule(
            model, name, ArmorLinear.from_factors(a, core, mask_from_scores(core.abs()), b, bias)
        )
    return len(names)


@pytest.fixture(scope="session")
def tiny_fp16_plugin_export(tiny_checkpoint, tmp_path_factory):
    """fp16 with ArmorBlockDiagMatMul nodes: what a TensorRT plugin engine is built from."""
    pytest.importorskip("onnx")
    return export_tiny(
        tiny_checkpoint,
        tmp_path_factory.mktemp("onnx") / "plugin-fp16",
        lowering="plugin",
        dtype="float16",
    )


@pytest.fixture(scope="session")
def plugin_build(tmp_path_factory):
    """libarmor_blockdiag_plugin.so (+ its contract check) built once per session with the
    plugin's CMake against TensorRT's headers; skips naming whatever tool is missing."""
    from tests.plugins.plugin_build import build_plugin, missing_tools

    missing = missing_tools()
    if missing:
        pytest.skip("cannot build the TensorRT plugin: missing " + ", ".join(missing))
    return build_plugin(tmp_path_factory.mktemp("armor_plugin_build"))
