"""tools/make_checkpoint.py: random-weight checkpoints of real published configs, laid out as
Hugging Face serves them, that transformers and armor-export's loaders read as they are.

Every checkpoint here keeps the published shapes with one decoder layer (the embedding of a
128k-256k vocabulary is the bulk); the smallest (Qwen2.5-1.5B, 0.56 GB) runs in the fast
suite, the others are marked slow.
"""

from __future__ import annotations

import importlib
import json
import struct
from pathlib import Path

import pytest
import torch

from armor_export.errors import CorruptFileError

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ROOT / "tools"
NAMES = sorted(p.stem for p in (TOOLS / "checkpoints").glob("*.json"))

# Parameter counts the model cards publish (tied embeddings counted once): an independent
# check of the config values, since the count follows from every shape in them.
PUBLISHED_PARAMS = {
    "llama-3.2-1b": 1.24e9,
    "qwen2.5-1.5b": 1.54e9,
    "qwen3-1.7b": 1.72e9,  # "1.7B, 1.4B non-embedding"
    "mistral-7b-v0.1": 7.24e9,
    "llama-3.1-8b": 8.03e9,
    "gemma-2-2b": 2.61e9,
    "llama-3.1-70b": 70.55e9,
}


@pytest.fixture(scope="module")
def mc():
    import sys

    sys.path.insert(0, str(TOOLS))
    try:
        yield importlib.import_module("make_checkpoint")
    finally:
        sys.path.remove(str(TOOLS))


def header(path: Path) -> dict:
    with open(path, "rb") as fh:
        n = struct.unpack("<Q", fh.read(8))[0]
        return json.loads(fh.read(n))


def make(mc, name, out, **kw):
    kw.setdefault("tokenizer", "trained")  # offline, no asset cache needed
    return mc.make_checkpoint(name, out, log=lambda *_: None, **kw)


def check_layout(out: Path, expect_shards: bool = True) -> dict:
    """Index and shard headers agree: every tensor once, bf16, sizes add up."""
    files = sorted(out.glob("*.safetensors"))
    index_path = out / "model.safetensors.index.json"
    if expect_shards:
        assert len(files) > 1 and index_path.is_file()
        index = json.loads(index_path.read_text())
        assert set(index["weight_map"].values()) == {f.name for f in files}
        n = len(files)
        assert [f.name for f in files] == [
            f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)
        ]
    seen: dict[str, str] = {}
    total = 0
    for f in files:
        head = header(f)
        assert head.pop("__metadata__") == {"format": "pt"}
        for key, info in head.items():
            assert key not in seen, f"{key} in {seen.get(key)} and {f.name}"
            seen[key] = f.name
            assert info["dtype"] == "BF16", key
            total += info["data_offsets"][1] - info["data_offsets"][0]
    if expect_shards:
        assert seen == index["weight_map"]
        assert index["metadata"]["total_size"] == total
    return seen


def load_hf(out: Path):
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(
        out, dtype=torch.bfloat16, output_loading_info=True
    )
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        assert not info.get(kind), (kind, info[kind])
    return model


# --- the configs ---


def test_every_config_names_its_source_and_builds(mc):
    from armor_export.models.registry import registered_model_types

    assert set(PUBLISHED_PARAMS) == set(NAMES)
    for name in NAMES:
        published = mc.published_config(name)
        assert published["_source"].startswith("https://huggingface.co/")
        assert published["_source"].endswith("/blob/main/config.json")
        assert published["model_type"] in registered_model_types()
        model = mc.build_meta_model(mc.output_config(published, None, "bfloat16"))
        count = sum(p.numel() for p in model.parameters())  # shared ones once
        assert count == pytest.approx(PUBLISHED_PARAMS[name], rel=0.005), name


# --- the fast one: Qwen2.5-1.5B with one layer ---


@pytest.fixture(scope="module")
def qwen(mc, tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt") / "qwen2.5-1.5b-1l"
    return make(mc, "qwen2.5-1.5b", out, layers=1, max_shard=200 * 10**6)


def test_layout_config_and_values(mc, qwen):
    weights = check_layout(qwen)
    assert "lm_head.weight" not in weights  # tied, saved once as the embedding
    for proj in "qkv":
        assert f"model.layers.0.self_attn.{proj}_proj.bias" in weights
    assert not any(k.startswith("model.layers.1.") for k in weights)

    config = json.loads((qwen / "config.json").read_text())
    want = {k: v for k, v in mc.published_config("qwen2.5-1.5b").items() if k != "_source"}
    want["num_hidden_layers"] = 1
    assert config == want  # the published file, one layer kept
    gen = json.loads((qwen / "generation_config.json").read_text())
    assert gen["eos_token_id"] == config["eos_token_id"]
    readme = (qwen / "README.md").read_text()
    assert "https://huggingface.co/Qwen/Qwen2.5-1.5B" in readme and "byte-level BPE" in readme

    from armor_export.prune.lazy import SafetensorsSource

    src = SafetensorsSource(qwen)
    emb = src.get("model.embed_tokens.weight")
    assert emb.shape == (151936, 1536)
    assert emb.std().item() == pytest.approx(config["initializer_range"], rel=0.01)
    assert torch.equal(src.get("model.norm.weight"), torch.ones(1536))


def test_transformers_and_armor_export_load_it(qwen):
    from transformers import AutoConfig, AutoTokenizer

    from armor_export.data.models import load_lazy_model_and_tokenizer, load_model_and_tokenizer

    cfg = AutoConfig.from_pretrained(qwen)
    assert (cfg.hidden_size, cfg.num_key_value_heads, cfg.vocab_size) == (1536, 2, 151936)
    model = load_hf(qwen)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert len(AutoTokenizer.from_pretrained(qwen)) <= cfg.vocab_size

    model, tokenizer = load_model_and_tokenizer(str(qwen))
    ids = tokenizer("The quick brown fox", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], 151936) and torch.isfinite(logits).all()

    lazy, _ = load_lazy_model_and_tokenizer(str(qwen))
    name = "model.layers.0.mlp.down_proj"
    assert torch.equal(lazy.weight(name), model.get_submodule(name).weight)
    layer = lazy.load_layer(0)
    assert torch.equal(layer.self_attn.q_proj.bias, model.model.layers[0].self_attn.q_proj.bias)


def test_same_name_and_seed_give_the_same_bytes(mc, qwen, tmp_path):
    again = make(mc, "qwen2.5-1.5b", tmp_path / "again", layers=1, max_shard=200 * 10**6)
    files = sorted(p.name for p in qwen.iterdir())
    assert files == sorted(p.name for p in again.iterdir())
    for name in files:
        assert (qwen / name).read_bytes() == (again / name).read_bytes(), name

    a = mc.make_tensor(None, "model.layers.0.mlp.up_proj.weight", (4, 4), 0.02, 0, torch.bfloat16)
    b = mc.make_tensor(None, "model.layers.0.mlp.up_proj.weight", (4, 4), 0.02, 1, torch.bfloat16)
    c = mc.make_tensor(None, "model.layers.0.mlp.gate_proj.weight", (4, 4), 0.02, 0, torch.bfloat16)
    assert not torch.equal(a, b) and not torch.equal(a, c)  # the seed and the name matter


def test_auto_tokenizer_fits_the_vocabulary(mc, tmp_path):
    from transformers import AutoTokenizer

    from armor_export.data import assets

    desc = mc.write_tokenizer("auto", 32000, tmp_path / "mistral")  # Mistral-7B's vocab
    assert "trained" in desc and len(AutoTokenizer.from_pretrained(tmp_path / "mistral")) <= 32000
    if not (assets.cache_dir() / "models" / assets.MODEL_NAME / "tokenizer.json").is_file():
        pytest.skip("the SmolLM2 asset is not in the cache (armor-export prepares it once)")
    desc = mc.write_tokenizer("auto", 151936, tmp_path / "qwen")
    tok = AutoTokenizer.from_pretrained(tmp_path / "qwen")
    assert "SmolLM2" in desc and len(tok) == mc.SMOLLM2_VOCAB


def test_plan_runs_on_it(qwen, tmp_path):
    from armor_export.prune.plan import make_plan
    from tests.conftest import tiny_prune_config

    text = tmp_path / "t.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 200)
    cfg = tiny_prune_config(qwen, text, tmp_path / "never", "wanda", low_memory=True)
    plan = make_plan(cfg)
    assert plan.layers == 1 and plan.jobs == 7
    shapes = {sp.shape for sp in plan.shapes}
    assert shapes == {(1536, 1536), (256, 1536), (8960, 1536), (1536, 8960)}


# --- the others (slow: 0.65-1 GB each) ---


@pytest.mark.slow
@pytest.mark.parametrize("name", ["llama-3.2-1b", "qwen3-1.7b", "mistral-7b-v0.1",
                                  "llama-3.1-8b", "gemma-2-2b"])  # fmt: skip
def test_one_layer_of_each_config_loads(mc, name, tmp_path):
    out = make(mc, name, tmp_path / name, layers=1, max_shard=500 * 10**6)
    weights = check_layout(out)
    published = mc.published_config(name)
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == 1 and config["torch_dtype"] == "bfloat16"
    assert {k: v for k, v in config.items() if k not in ("num_hidden_layers", "torch_dtype")} == {
        k: v
        for k, v in published.items()
        if k not in ("_source", "num_hidden_layers", "torch_dtype")
    }
    model = load_hf(out)
    tied = model.lm_head.weight is model.model.embed_tokens.weight
    assert tied == ("lm_head.weight" not in weights)
    assert tied == (name in ("llama-3.2-1b", "qwen3-1.7b", "gemma-2-2b"))
    from armor_export.prune.lazy import SafetensorsSource

    src = SafetensorsSource(out)
    if name == "qwen3-1.7b":
        assert src.get("model.layers.0.self_attn.q_norm.weight").shape == (128,)
    if name == "gemma-2-2b":  # Gemma norms store weight - 1: the model's init is 0
        assert not src.get("model.layers.0.pre_feedforward_layernorm.weight").any()
        assert (model.config.final_logit_softcapping, model.config.attn_logit_softcapping) == (
            30.0, 50.0,
        )  # fmt: skip
    if name.startswith("llama"):
        rope = model.config.rope_parameters
        assert (
            rope["rope_type"] == "llama3" and rope["factor"] == published["rope_scaling"]["factor"]
        )
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits.float()).all()


@pytest.mark.slow
@pytest.mark.fault(
    "load",
    "a sharded checkpoint whose files hold decoder layer 0 only (config: all 32 layers)",
    "`plan` works (it reads layer 0 only); the low-memory loader, at layer 1: "
    "CorruptFileError naming the missing tensor",
)
def test_plan_only_checkpoint_plans_the_full_model(mc, tmp_path):
    from armor_export.data.models import load_lazy_model_and_tokenizer
    from armor_export.prune.plan import make_plan
    from tests.conftest import tiny_prune_config

    out = make(mc, "mistral-7b-v0.1", tmp_path / "m7", plan_only=True, max_shard=500 * 10**6)
    weights = check_layout(out)
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 32
    assert {k.split(".")[2] for k in weights if k.startswith("model.layers.")} == {"0"}
    assert "PLAN ONLY" in (out / "README.md").read_text()
    # (not the in-memory loader: transformers would first build all 7B parameters in fp32)
    lazy, _ = load_lazy_model_and_tokenizer(str(out))
    lazy.load_layer(0)
    with pytest.raises(CorruptFileError, match="model.layers.1.* is missing"):
        lazy.load_layer(1)

    text = tmp_path / "t.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 200)
    cfg = tiny_prune_config(out, text, tmp_path / "never", "wanda", low_memory=True)
    plan = make_plan(cfg)
    assert plan.layers == 32 and plan.jobs == 32 * 7
    assert {sp.shape for sp in plan.shapes} == {(4096, 4096), (1024, 4096), (14336, 4096),
                                                (4096, 14336)}  # fmt: skip
