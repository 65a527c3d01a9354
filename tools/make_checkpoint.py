#!/usr/bin/env python
"""Write a seeded random-weight checkpoint of a real model's published shapes, as users get it.

The config is the model's published ``config.json`` (``tools/checkpoints/<name>.json``, its
source URL under ``_source``). The folder written is laid out like a Hugging Face download:
``config.json``, ``generation_config.json``, bf16 ``model-0000i-of-0000n.safetensors`` shards
with ``model.safetensors.index.json``, a tokenizer, and a README saying what it is. Tensor
names and shapes are the ones transformers gives the architecture (the model is built on the
``meta`` device, nothing allocated); each tensor is then generated alone from a seed derived
from ``--seed`` and its name and streamed to its shard, so memory holds one tensor at a time
and the same name, seed and layer count give the same bytes (a layer's values do not depend
on how many layers are kept).

    python tools/make_checkpoint.py qwen2.5-1.5b -o work/ckpt/qwen2.5-1.5b
    python tools/make_checkpoint.py llama-3.1-8b -o work/ckpt/llama8b-1l --layers 1
    python tools/make_checkpoint.py --list
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import re
import shutil
import sys
import time
from pathlib import Path

CONFIGS = Path(__file__).resolve().parent / "checkpoints"
# the tokenizer trained here when the SmolLM2 one does not fit (or is asked not to be used)
TRAINED_VOCAB = 512
SMOLLM2_VOCAB = 49152
_CHUNK = 1 << 24  # values drawn per randn call: bounds the fp32 scratch to 64 MiB


def available() -> list[str]:
    return sorted(p.stem for p in CONFIGS.glob("*.json"))


def published_config(name: str) -> dict:
    """The published config.json of ``name`` with its ``_source`` key (a URL)."""
    path = CONFIGS / f"{name}.json"
    if not path.is_file():
        raise SystemExit(f"unknown checkpoint {name!r}; known: {', '.join(available())}")
    data = json.loads(path.read_text())
    if not str(data.get("_source", "")).startswith("https://"):
        raise SystemExit(f"{path} names no _source URL")
    return data


def output_config(published: dict, layers: int | None, dtype: str) -> dict:
    """config.json as written: the published one, less ``_*`` keys, with the kept layer count
    and the dtype the shards hold."""
    config = {k: v for k, v in published.items() if not k.startswith("_")}
    if layers is not None:
        full = config["num_hidden_layers"]
        if not 1 <= layers <= full:
            raise SystemExit(f"--layers must be between 1 and {full}")
        config["num_hidden_layers"] = layers
    config["torch_dtype"] = dtype
    return config


def parse_size(text: str) -> int:
    """'2GB' -> 2e9, '500MiB' -> 500 * 2**20 (Hugging Face's max_shard_size units)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B)?\s*", text, re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 2GB, 500MiB)")
    unit = (m.group(2) or "B").upper()
    base = 1024 if "I" in unit else 1000
    power = "BKMGT".index(unit[0]) if unit != "B" else 0
    return int(float(m.group(1)) * base**power)


def build_meta_model(config: dict):
    """The architecture on ``meta`` (no memory) and its transformers config."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    fields = copy.deepcopy(config)  # transformers rewrites nested dicts (rope_scaling) in place
    cfg = AutoConfig.for_model(fields.pop("model_type"), **fields)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    return model


def saved_tensors(model, plan_only: bool = False) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every tensor ``save_pretrained`` writes, in state-dict order: tied
    weights once, under their first name (``model.embed_tokens.weight``), persistent buffers.

    ``plan_only``: only what ``armor-export plan`` reads (everything outside the decoder
    layers, and decoder layer 0).
    """
    from armor_export.models.registry import adapter_for

    params = dict(model.named_parameters())  # shared parameters appear once
    every = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    layers = adapter_for(model).layers_path + "."
    out = []
    for name, tensor in model.state_dict().items():
        if plan_only and name.startswith(layers) and not name.startswith(layers + "0."):
            continue
        if name in params or name not in every:
            out.append((name, tuple(tensor.shape)))
    return out


def tensor_seed(seed: int, name: str) -> int:
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def norm_fill(model, name: str) -> float | None:
    """The constant the model's own init gives a norm weight (1, or 0 for Gemma's stored
    ``weight - 1``); None for tensors that are not norm weights."""
    import torch

    module_name, _, attr = name.rpartition(".")
    module = model.get_submodule(module_name)
    if "norm" not in type(module).__name__.lower() or attr != "weight":
        return None
    probe = copy.deepcopy(module)  # a norm: a vector, cheap to materialise
    probe.to_empty(device="cpu")
    with torch.no_grad():
        probe.weight.fill_(float("nan"))
        model._init_weights(probe)
    values = probe.weight.detach()
    if not bool(torch.isfinite(values).all()) or not bool((values == values.flatten()[0]).all()):
        raise SystemExit(f"{name}: the model's init gives no constant norm weight")
    return float(values.flatten()[0])


def make_tensor(model, name: str, shape, std: float, seed: int, dtype):
    """One tensor's values: norms as the model initialises them, everything else
    normal(0, std) (biases std/10), drawn from a generator seeded by ``seed`` and ``name``."""
    import torch

    fill = norm_fill(model, name) if len(shape) == 1 else None
    if fill is not None:
        return torch.full(shape, fill, dtype=dtype)
    scale = std / 10 if name.endswith(".bias") else std
    gen = torch.Generator().manual_seed(tensor_seed(seed, name))
    out = torch.empty(shape, dtype=dtype)
    flat = out.view(-1)
    for start in range(0, flat.numel(), _CHUNK):
        n = min(_CHUNK, flat.numel() - start)
        flat[start : start + n] = torch.randn(n, generator=gen).mul_(scale)
    return out


def plan_shards(tensors, element_size: int, max_bytes: int) -> list[list[tuple[str, tuple]]]:
    """Split tensors into shards the way ``save_pretrained`` does: in order, a new shard when
    the next tensor would push the current one past ``max_bytes``."""
    shards: list[list] = [[]]
    size = 0
    for name, shape in tensors:
        nbytes = element_size
        for d in shape:
            nbytes *= d
        if shards[-1] and size + nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += nbytes
    return shards


def write_weights(
    model, out: Path, dtype, max_shard: int, seed: int, std: float, log, plan_only=False
) -> dict:
    """Stream the shards and the index; returns the index."""
    from functools import partial

    from armor_export.prune.lazy import TensorEntry, write_safetensors_streaming

    tensors = saved_tensors(model, plan_only)
    element = dtype.itemsize
    shards = plan_shards(tensors, element, max_shard)
    weight_map, total = {}, 0
    for i, shard in enumerate(shards, 1):
        fname = (
            f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            if len(shards) > 1
            else "model.safetensors"
        )
        entries = [
            TensorEntry(n, dtype, s, partial(make_tensor, model, n, s, std, seed, dtype))
            for n, s in shard
        ]
        start = time.perf_counter()
        write_safetensors_streaming(out / fname, entries, metadata={"format": "pt"})
        nbytes = sum(e.nbytes for e in entries)
        total += nbytes
        log(f"  {fname}: {len(entries)} tensors, {nbytes / 1e9:.2f} GB, "
            f"{time.perf_counter() - start:.1f} s")  # fmt: skip
        weight_map.update({n: fname for n, _ in shard})
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    if len(shards) > 1:
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return index


# ---------------------------------------------------------------------------------------------
# tokenizer

_TRAIN_TEXT = " ".join(
    [
        "The quick brown fox jumps over the lazy dog while the calibration text flows.",
        "A journey of a thousand miles begins with a single step on a sparse road.",
        "Perplexity is measured on consecutive windows of tokens from plain text.",
        "Every group of four weights keeps exactly two entries in a semi structured mask.",
        "Numbers such as 0, 1, 2, 3, 4, 5, 6, 7, 8 and 9 appear in tables and dates.",
        "She said: \"Where are the keys?\" He answered, 'In the drawer, next to the map.'",
    ]
    * 20
)


def trained_tokenizer():
    """A byte-level BPE (vocab 512) trained here on a fixed text: deterministic and offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TRAINED_VOCAB,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<eos>"],
        show_progress=False,
    )
    tok.train_from_iterator([_TRAIN_TEXT], trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")


def write_tokenizer(choice: str, vocab_size: int, out: Path) -> str:
    """Save the tokenizer into ``out``; returns a line saying which one it is."""
    if choice == "auto":
        choice = "smollm2" if vocab_size >= SMOLLM2_VOCAB else "trained"
    if choice == "trained":
        tok = trained_tokenizer()
        desc = (
            f"a byte-level BPE with {len(tok)} tokens trained by tools/make_checkpoint.py on "
            "a fixed English text (not the model's own tokenizer)"
        )
    else:
        from transformers import AutoTokenizer

        from armor_export.data import assets

        tok = AutoTokenizer.from_pretrained(assets.default_model_dir())
        desc = (
            f"the SmolLM2-135M-Instruct tokenizer ({len(tok)} tokens; "
            f"{assets.ASSET_CREDITS['smollm2'].split(';')[0]}), not the model's own tokenizer"
        )
    if len(tok) > vocab_size:
        raise SystemExit(
            f"the {choice} tokenizer has {len(tok)} tokens, more than the config's vocab_size "
            f"{vocab_size}: use --tokenizer trained"
        )
    tok.save_pretrained(out)
    return desc


# ---------------------------------------------------------------------------------------------


def generation_config(config: dict) -> dict:
    keys = ("bos_token_id", "eos_token_id", "pad_token_id")
    out = {"_from_model_config": True}
    out.update({k: config[k] for k in keys if config.get(k) is not None})
    out["transformers_version"] = config.get("transformers_version")
    return out


PLAN_ONLY_NOTE = (
    "PLAN ONLY: the config has every decoder layer but the weights hold only decoder layer 0 "
    "and the modules outside the layers, what `armor-export plan` reads. Loading the whole "
    "model or pruning it fails on the missing layers (and transformers' loader first "
    "allocates the whole model: use only `plan` or the low-memory path on it)."
)


def readme(name, source, config, full_layers, seed, dtype, std, tok_desc, index,
           plan_only=False) -> str:  # fmt: skip
    layers = config["num_hidden_layers"]
    kept = "all" if layers == full_layers else f"{layers} of the published {full_layers}"
    return "\n".join(
        [
            f"# {name}: random weights, published shapes",
            "",
            "Not a trained model. Written by `tools/make_checkpoint.py` in armor-export.",
            "",
            *([PLAN_ONLY_NOTE, ""] if plan_only else []),
            f"- config: {source} (decoder layers: {kept})",
            f"- weights: {dtype}, normal(0, {std}) per matrix and embedding (biases "
            f"{std / 10:g}), norm weights as the model's own init sets them; each tensor "
            f"drawn from seed {seed} and its name",
            f"- {len(index['weight_map'])} tensors, {index['metadata']['total_size']} bytes",
            f"- tokenizer: {tok_desc}",
            "",
        ]
    )


def make_checkpoint(
    name: str,
    out: Path,
    layers: int | None = None,
    seed: int = 0,
    max_shard: int = 2 * 10**9,
    dtype_name: str = "bfloat16",
    tokenizer: str = "auto",
    plan_only: bool = False,
    log=print,
) -> Path:
    import torch

    published = published_config(name)
    if plan_only and layers is not None:
        raise SystemExit("--plan-only keeps every layer in the config; drop --layers")
    config = output_config(published, layers, dtype_name)
    dtype = getattr(torch, dtype_name)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"{out} exists and is not empty")
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    model = build_meta_model(config)
    std = float(config.get("initializer_range", 0.02))
    log(f"{name}: {config['num_hidden_layers']} layers, {dtype_name}, seed {seed} -> {out}")
    try:
        index = write_weights(model, out, dtype, max_shard, seed, std, log, plan_only)
        (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        (out / "generation_config.json").write_text(
            json.dumps(generation_config(config), indent=2) + "\n"
        )
        tok_desc = write_tokenizer(tokenizer, config["vocab_size"], out)
        (out / "README.md").write_text(
            readme(
                name,
                published["_source"],
                config,
                published["num_hidden_layers"],
                seed,
                dtype_name,
                std,
                tok_desc,
                index,
                plan_only,
            )  # fmt: skip
        )
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    log(f"done in {time.perf_counter() - start:.1f} s")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("name", nargs="?", help="a config in tools/checkpoints/ (see --list)")
    p.add_argument("-o", "--output", type=Path, help="folder to write (new or empty)")
    p.add_argument("--layers", type=int, help="keep only this many decoder layers")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--shard-size",
        type=parse_size,
        default="2GB",
        help="largest shard, Hugging Face units (2GB = 2e9 bytes; default 2GB)",
    )
    p.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default="bfloat16")
    p.add_argument(
        "--tokenizer",
        choices=("auto", "smollm2", "trained"),
        default="auto",
        help="auto: SmolLM2's when it fits the vocab, else one trained here",
    )
    p.add_argument(
        "--plan-only",
        action="store_true",
        help="weights of decoder layer 0 and the rest outside the layers only: "
        "enough for `armor-export plan` on the full config, not for loading",
    )
    p.add_argument("--list", action="store_true", help="list the configs and exit")
    args = p.parse_args(argv)
    if args.list:
        for n in available():
            print(f"{n:18s} {published_config(n)['_source']}")
        return 0
    if not args.name or not args.output:
        p.error("NAME and -o/--output are required")
    make_checkpoint(args.name, args.output, args.layers, args.seed, args.shard_size,
                    args.dtype, args.tokenizer, args.plan_only)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
