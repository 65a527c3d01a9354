"""``armor-export engine``: an export folder to a TensorRT-RTX / TensorRT engine.

Choices and defaults come from ``config`` (``ENGINE_BACKENDS``, ``COMPUTE_CAPABILITIES``,
``EngineConfig``), so a new backend or target is added there only.
"""

from __future__ import annotations


def add_target_arguments(p, defaults, unset_is_none: bool = False) -> None:
    """``--backend`` and ``--compute-capability`` (shared with ``build``).

    Their defaults are ``defaults``' (an ``EngineConfig``); with ``unset_is_none`` an unset
    flag is None instead, so ``build`` keeps its config file's value (help still shows
    ``defaults``').
    """
    from armor_export.config import (
        COMPUTE_CAPABILITIES,
        COMPUTE_CAPABILITY_SETS,
        ENGINE_BACKEND_ALIASES,
        ENGINE_BACKENDS,
        TENSORRT,
        TENSORRT_RTX,
    )

    p.add_argument(
        "--backend",
        choices=ENGINE_BACKENDS + tuple(ENGINE_BACKEND_ALIASES),  # old names still accepted
        metavar="{" + ",".join(ENGINE_BACKENDS) + "}",
        default=None if unset_is_none else defaults.backend,
        help=f"{TENSORRT_RTX}: TensorRT-RTX (AOT, builds on a CPU too); {TENSORRT}: "
        f"datacenter TensorRT (needs a GPU); default {defaults.backend}",
    )
    singles = [n for n in COMPUTE_CAPABILITIES if n not in COMPUTE_CAPABILITY_SETS]
    p.add_argument(
        "--compute-capability",
        metavar="TARGETS",
        default=None if unset_is_none else defaults.compute_capability,
        help="TensorRT-RTX target GPUs: default (TensorRT-RTX's portable set: sm80, sm86, "
        "sm89, sm120 and newer), current (the GPU here), or a comma-separated list of "
        f"{', '.join(singles)} (default {defaults.compute_capability}; an 8-bit export's "
        "default is its scheme's: int8 sm80,sm86, fp8 sm89,sm120; README: GPUs and "
        "engine targets)",
    )


def add_parser(sub):
    from armor_export.config import EngineConfig

    defaults = EngineConfig()
    p = sub.add_parser("engine", help="build a TensorRT-RTX / TensorRT engine from an export")
    p.add_argument("export_dir", nargs="?", default=defaults.export_dir, help="export folder")
    p.add_argument(
        "-o",
        "--output-dir",
        default=defaults.output_dir,
        help="engine folder (default EXPORT/engine, or BUILD/engine for a build's BUILD/onnx)",
    )
    add_target_arguments(p, defaults)
    p.add_argument(
        "--no-sparse",
        dest="sparse_weights",
        action="store_false",
        default=defaults.sparse_weights,
        help="do not set SPARSE_WEIGHTS",
    )
    p.add_argument(
        "--max-batch", type=int, default=defaults.max_batch, help="profile max batch (0: export's)"
    )
    p.add_argument(
        "--max-prompt",
        type=int,
        default=defaults.max_prompt,
        help="profile max prompt (0: export's)",
    )
    p.add_argument(
        "--max-context",
        type=int,
        default=defaults.max_context,
        help="profile max context (0: export's)",
    )
    p.add_argument(
        "--optimization-level",
        type=int,
        default=defaults.optimization_level,
        help="builder level 0..5 (default %(default)s)",
    )
    p.add_argument(
        "--timing-cache", default=defaults.timing_cache, help="timing cache file (default in -o)"
    )
    p.add_argument(
        "--plugin-library", default=defaults.plugin_library, help="libarmor_blockdiag_plugin.so"
    )
    return p


def config_from_args(args):
    from armor_export.config import EngineConfig

    cfg = EngineConfig(
        export_dir=args.export_dir,
        output_dir=args.output_dir,
        backend=args.backend,
        compute_capability=args.compute_capability,
        sparse_weights=args.sparse_weights,
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
    console.print(
        f"engine: {result.engine_path}\nreport: {result.report_path}\n"
        f"builder log: {result.engine_path.parent / result.report['builder_log']}",
        markup=False,
    )
    return 0
