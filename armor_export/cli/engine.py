"""``armor-export engine``: an export folder to a TensorRT-RTX / TensorRT engine."""

from __future__ import annotations


def add_parser(sub):
    p = sub.add_parser("engine", help="build a TensorRT-RTX / TensorRT engine from an export")
    p.add_argument("export_dir", nargs="?", default="runs/onnx", help="export folder")
    p.add_argument("-o", "--output-dir", default="", help="engine folder (default EXPORT/engine)")
    p.add_argument(
        "--backend",
        choices=["rtx", "trt"],
        default="rtx",
        help="rtx: TensorRT-RTX (AOT on CPU); trt: datacenter TensorRT (needs a GPU)",
    )
    p.add_argument(
        "--compute-capability",
        default="sm80",
        choices=["sm75", "sm80", "sm86", "sm89", "sm120", "sm121", "current"],
        help="TensorRT-RTX target GPU architecture",
    )
    p.add_argument("--no-sparse", action="store_true", help="do not set SPARSE_WEIGHTS")
    p.add_argument("--max-batch", type=int, default=0, help="profile max batch (0: export's)")
    p.add_argument("--max-prompt", type=int, default=0, help="profile max prompt (0: export's)")
    p.add_argument("--max-context", type=int, default=0, help="profile max context (0: export's)")
    p.add_argument("--optimization-level", type=int, default=3, help="builder level 0..5")
    p.add_argument("--timing-cache", default="", help="timing cache file (default in -o)")
    p.add_argument("--plugin-library", default="", help="libarmor_blockdiag_plugin.so")
    return p


def config_from_args(args):
    from armor_export.config import EngineConfig

    cfg = EngineConfig(
        export_dir=args.export_dir,
        output_dir=args.output_dir,
        backend=args.backend,
        compute_capability=args.compute_capability,
        sparse_weights=not args.no_sparse,
        max_batch=args.max_batch,
        max_prompt=args.max_prompt,
        max_context=args.max_context,
        optimization_level=args.optimization_level,
        timing_cache=args.timing_cache,
        plugin_library=args.plugin_library,
    )
    cfg.validate()
    return cfg


def run(args) -> int:
    from rich.console import Console

    from armor_export.engine import build_engine
    from armor_export.engine.api import report_markdown
    from armor_export.progress import RichReporter

    result = build_engine(config_from_args(args), RichReporter())
    console = Console(soft_wrap=True)
    console.print(report_markdown(result.report))
    console.print(f"engine: {result.engine_path}\nreport: {result.report_path}")
    return 0
