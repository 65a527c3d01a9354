"""``armor-export export``: a pruned checkpoint (or dense model) to ONNX with KV cache."""

from __future__ import annotations


def add_parser(sub):
    from armor_export.config import EXPORT_DTYPES, EXTERNAL_DATA, LOWERINGS, ExportConfig

    defaults = ExportConfig()  # every default below is the config's
    p = sub.add_parser("export", help="export a pruned checkpoint to ONNX (KV cache, 2:4 cores)")
    p.add_argument(
        "model",
        nargs="?",
        default=defaults.model,
        help="pruned checkpoint dir (default %(default)s)",
    )
    p.add_argument("-o", "--output-dir", default=defaults.output_dir, help="export folder")
    p.add_argument(
        "--dtype",
        choices=EXPORT_DTYPES,
        default=defaults.dtype,
        help="graph precision (TensorRT 11 is strongly typed: this is the engine's)",
    )
    p.add_argument(
        "--lowering",
        choices=LOWERINGS,
        default=defaults.lowering,
        help="plain MatMuls (runs on ORT) or TensorRT plugin nodes for the A/B blocks",
    )
    p.add_argument("--opset", type=int, default=defaults.opset)
    p.add_argument(
        "--external-data",
        choices=EXTERNAL_DATA,
        default=defaults.external_data,
        help="weights in model.onnx.data (auto: only when over 2 GB)",
    )
    p.add_argument(
        "--max-batch", type=int, default=defaults.limits.max_batch, help="largest batch promised"
    )
    p.add_argument(
        "--max-prompt",
        type=int,
        default=defaults.limits.max_prompt,
        help="longest single forward in tokens (0: min(1024, max context))",
    )
    p.add_argument(
        "--max-context",
        type=int,
        default=defaults.limits.max_context,
        help="longest past + new tokens (0: the model's max_position_embeddings)",
    )
    return p


def config_from_args(args):
    from armor_export.config import ExportConfig, ExportLimits

    cfg = ExportConfig(
        model=args.model,
        output_dir=args.output_dir,
        dtype=args.dtype,
        lowering=args.lowering,
        opset=args.opset,
        external_data=args.external_data,
        limits=ExportLimits(args.max_batch, args.max_prompt, args.max_context),
    )
    cfg.validate()
    return cfg


def run(args) -> int:
    from rich.console import Console

    from armor_export.export import export_onnx
    from armor_export.io import writing
    from armor_export.progress import RichReporter

    cfg = config_from_args(args)
    with writing(cfg.output_dir, folder=True):  # the ONNX writer's errors name no file
        result = export_onnx(cfg, RichReporter())
    counts, limits = result.manifest["counts"], result.manifest["limits"]
    Console(soft_wrap=True).print(
        f"exported {result.onnx_path} ({cfg.dtype}, {cfg.lowering}) in {result.seconds:.0f} s: "
        f"{counts['armor']} ArmorLinear + {counts['sparse']} 2:4 linear lowered, "
        f"{counts['cores']} 2:4 cores checked along K; limits batch {limits['max_batch']}, "
        f"prompt {limits['max_prompt']}, context {limits['max_context']}"
    )
    return 0
