"""``armor-export generate``: continue prompts with an export, torch-free (ONNX Runtime on the
ONNX graph, or TensorRT / TensorRT-RTX on its built engine)."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from armor_export.config import GenerationConfig


def add_parser(sub) -> argparse.ArgumentParser:
    from armor_export.config import RUNTIME_BACKENDS, ExportConfig, GenerationConfig

    defaults, export_dir = GenerationConfig(), ExportConfig().output_dir
    p = sub.add_parser("generate", help="generate text with an export (no torch needed)")
    p.add_argument(
        "export_dir", nargs="?", default=export_dir, help=f"export folder (default {export_dir})"
    )
    p.add_argument(
        "--prompt", action="append", required=True, help="text to continue (repeat for a batch)"
    )
    sampling = defaults.sampling
    p.add_argument(
        "--max-new-tokens",
        type=int,
        default=defaults.max_new_tokens,
        help="tokens to generate at most (default %(default)s)",
    )
    p.add_argument(
        "--temperature", type=float, default=sampling.temperature, help="0 (default) = greedy"
    )
    p.add_argument(
        "--top-k", type=int, default=sampling.top_k, help="sample from the k best tokens (0 = off)"
    )
    p.add_argument(
        "--top-p", type=float, default=sampling.top_p, help="nucleus sampling mass (1 = off)"
    )
    p.add_argument("--seed", type=int, help="sampling seed (reproducible runs)")
    p.add_argument("--ignore-eos", action="store_true", help="always make --max-new-tokens")
    p.add_argument(
        "--backend",
        choices=RUNTIME_BACKENDS,
        default=RUNTIME_BACKENDS[0],
        help="onnxruntime (default): the export's ONNX graph, --lowering plain exports; "
        "tensorrt: the export's built engine (--engine, default EXPORT_DIR/engine, or "
        "BUILD/engine for a build's BUILD/onnx) with the TensorRT or TensorRT-RTX that built "
        "it, on a CUDA GPU of its target",
    )
    p.add_argument(
        "--engine",
        dest="engine_dir",
        help="engine folder for --backend tensorrt (default: the export's engine, as above)",
    )
    p.add_argument(
        "--plugin-library",
        default="",
        help="libarmor_blockdiag_plugin.so for a plugin engine (default: the copy in the "
        "engine folder)",
    )
    p.add_argument(
        "--threads", type=int, default=0, help="CPU threads (0: half the cores, as ORT GenAI)"
    )
    p.add_argument("--json", dest="json_out", help="also write the result to this JSON file")
    return p


def config_from_args(args: argparse.Namespace) -> GenerationConfig:
    from armor_export.config import (
        GenerationConfig,
        SamplingConfig,
        check_count,
        check_prompt_text,
        max_parallel,
    )

    check_count("threads", args.threads, 0, max_parallel, "--threads")
    for index, prompt in enumerate(args.prompt or ()):
        check_prompt_text(index, prompt)
    sampling = SamplingConfig(args.temperature, args.top_k, args.top_p, args.seed)
    return GenerationConfig(args.max_new_tokens, sampling, stop_at_eos=not args.ignore_eos)


def _stream(row: int, text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def run(args: argparse.Namespace) -> int:
    from armor_export.io import write_json
    from armor_export.runtime import Generator

    config = config_from_args(args)
    config.validate()  # bad flags fail before the model is loaded
    if args.backend != "tensorrt" and (args.engine_dir or args.plugin_library):
        from armor_export.errors import ConfigError

        raise ConfigError("--engine and --plugin-library are for --backend tensorrt")
    generator = Generator(
        args.export_dir, args.backend, threads=args.threads,
        engine_dir=args.engine_dir, plugin_library=args.plugin_library,
    )  # fmt: skip
    single = len(args.prompt) == 1
    result = generator.generate(args.prompt, config, on_text=_stream if single else None)
    if single:
        sys.stdout.write("\n")
    else:
        for index, text in enumerate(result.texts):
            sys.stdout.write(f"[{index}] {text}\n")
    sys.stdout.flush()
    if args.json_out:
        write_json(args.json_out, result.to_dict())
    print(
        f"generated {result.new_tokens} tokens for {len(result.prompts)} prompt(s): "
        f"prefill {result.prefill_seconds * 1e3:.1f} ms, "
        f"decode {result.decode_tokens_per_second:.1f} tok/s",
        file=sys.stderr,
    )
    return 0
