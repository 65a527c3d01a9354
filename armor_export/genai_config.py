"""``genai_config.json``: what ONNX Runtime GenAI needs to load an export folder unchanged.

With this file (and the tokenizer files) beside the graph, ``onnxruntime_genai.Model(folder)``
runs the export with its own decode loop, from Python, C, C++, C# or Java. Everything in it
follows from the export manifest, so this module imports neither torch nor onnx.

The schema is ONNX Runtime GenAI's own (``src/config.h`` and ``src/config.cpp`` of
microsoft/onnxruntime-genai; unknown keys are errors there). Its default tensor names are
the ones our graph uses (``past_key_values.%d.key``, ``present.%d.key``, …); they are written
out anyway so the file states the contract. Execution providers are not chosen here: the
file lists none, which means CPU, and a caller adds one at load time with
``og.Config(folder)``, ``config.clear_providers()``, ``config.append_provider("cuda")``.
"""

from __future__ import annotations

from typing import Any

from armor_export.export_manifest import KV, LOGITS, ExportManifest, past_name, present_name

# ORT GenAI's model type for a plain decoder-only graph: our graph computes rotary
# embeddings, masks and the cache concatenation itself, so no family-specific handling
# (sliding windows, shared buffers) of the runtime must apply
MODEL_TYPE = "decoder"


def _per_layer(name: str) -> str:
    """``past_key_values.0.key`` → ``past_key_values.%d.key``: ORT GenAI's name pattern."""
    pattern = name.replace(".0.", ".%d.", 1)
    if pattern == name:
        raise ValueError(f"{name!r} has no layer index 0 to turn into a pattern")
    return pattern


def genai_config(manifest: ExportManifest) -> dict[str, Any]:
    """The ``genai_config.json`` contents for the export described by ``manifest``.

    Greedy search up to the export's ``max_context`` is the default; callers change the
    search per run (``GeneratorParams.set_search_options``). The cache is concatenated by
    the graph (present = past + new positions), so ORT GenAI must not share one
    max-length buffer between past and present (``past_present_share_buffer``).
    """
    decoder, tokens, limits = manifest.decoder, manifest.tokens, manifest.limits
    key, value = KV
    model: dict[str, Any] = {
        "type": MODEL_TYPE,
        "context_length": limits.max_context,
        "vocab_size": decoder.vocab_size,
        "eos_token_id": list(tokens.eos_token_ids),
    }
    if tokens.bos_token_id is not None:
        model["bos_token_id"] = tokens.bos_token_id
    if tokens.pad_token_id is not None:
        model["pad_token_id"] = tokens.pad_token_id
    heads = {"num_attention_heads": decoder.num_attention_heads}
    model["decoder"] = {
        "filename": manifest.onnx,
        "head_size": decoder.head_dim,
        "hidden_size": decoder.hidden_size,
        **({} if decoder.num_attention_heads is None else heads),
        "num_key_value_heads": decoder.num_kv_heads,
        "num_hidden_layers": decoder.num_layers,
        "session_options": _session_options(manifest),
        "inputs": {
            **{name: name for name in manifest.token_inputs},
            "past_key_names": _per_layer(past_name(0, key)),
            "past_value_names": _per_layer(past_name(0, value)),
        },
        "outputs": {
            "logits": LOGITS,
            "present_key_names": _per_layer(present_name(0, key)),
            "present_value_names": _per_layer(present_name(0, value)),
        },
    }
    search = {
        "max_length": limits.max_context,
        "min_length": 0,
        "do_sample": False,
        "num_beams": 1,
        "num_return_sequences": 1,
        "past_present_share_buffer": False,
        "top_k": 1,
        "top_p": 1.0,
        "temperature": 1.0,
        "repetition_penalty": 1.0,
    }
    return {"model": model, "search": search}


def _session_options(manifest: ExportManifest) -> dict[str, Any]:
    """ORT GenAI's session options. An int8 export runs at ORT's basic optimisation level:
    above it ORT fuses the int8 Q/DQ MatMuls into MatMulIntegerToFloat, whose kernel on x86
    CPUs without VNNI saturates int16 sums (``runtime/compat.py``). ORT GenAI offers no
    session config entry to turn off only that fusion, and this file is written once for
    any machine, so the level is set whatever the CPU."""
    options: dict[str, Any] = {"log_id": "armor-export", "provider_options": []}
    if (manifest.quant or {}).get("scheme") == "int8":
        options["graph_optimization_level"] = "ORT_ENABLE_BASIC"
    return options
