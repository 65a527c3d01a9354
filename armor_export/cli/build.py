"""``armor-export build``: the registered stages (prune → export → engine → verify) in one
resumable command. Stage names, choices and defaults come from the stage registry and config.
"""

from __future__ import annotations


def add_parser(sub):
    from armor_export.cli.engine import add_target_arguments
    from armor_export.cli.prune import method_argument
    from armor_export.cli.quantize import add_quant_arguments
    from armor_export.config import EXPORT_DTYPES, LOWERINGS, BuildConfig
    from armor_export.stages import registered

    defaults = BuildConfig()
    stages = [stage.name for stage in registered()]
    tables = " ".join(f"[{stage.section}]" for stage in registered())
    p = sub.add_parser("build", help=f"{' → '.join(stages)}, resumable")
    p.add_argument("--config", help=f"TOML with model/output_dir/stages and {tables} tables; "
                   "flags override it")  # fmt: skip
    p.add_argument("--model", help="HF model to prune or an existing pruned checkpoint")
    p.add_argument("-o", "--output-dir", help=f"build folder (default {defaults.output_dir})")
    p.add_argument("--stages", help=f"comma list of {','.join(stages)} (default all)")
    p.add_argument("--force", default="", help="comma list of stages to redo even if done")
    p.add_argument("--method", **method_argument())
    p.add_argument("--block-size", type=int, help="ARMOR block size")
    p.add_argument("--iterations", type=int, help="ARMOR iterations per matrix")
    p.add_argument("--calib-samples", type=int, help="calibration sequences")
    add_quant_arguments(p, None)
    p.add_argument(
        "--dtype", choices=EXPORT_DTYPES, help=f"ONNX/engine type (default {defaults.export.dtype})"
    )
    p.add_argument("--lowering", choices=LOWERINGS)
    add_target_arguments(p, defaults.engine, unset_is_none=True)
    p.add_argument("--plugin-library", help="libarmor_blockdiag_plugin.so (plugin lowering): "
                   "the engine is built and verified with it")  # fmt: skip
    p.add_argument("--max-batch", type=int)
    p.add_argument("--max-prompt", type=int)
    p.add_argument("--max-context", type=int)
    return p


def config_from_args(args):
    from armor_export.config import BuildConfig, validate_section
    from armor_export.stages import check_names

    cfg = BuildConfig.from_toml(args.config) if args.config else BuildConfig()
    if args.model:
        cfg.model = args.model
    if args.output_dir:
        cfg.output_dir = args.output_dir
    if args.stages:
        cfg.stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    sets = {
        "method": (cfg.prune, "method"),
        "block_size": (cfg.prune.armor, "block_size"),
        "iterations": (cfg.prune.armor, "iterations"),
        "calib_samples": (cfg.prune.calibration, "n_samples"),
        "quant": (cfg.quantize, "scheme"),
        "refit": (cfg.quantize, "refit"),
        "smoothing": (cfg.quantize, "smoothing"),
        "dtype": (cfg.export, "dtype"),
        "lowering": (cfg.export, "lowering"),
        "backend": (cfg.engine, "backend"),
        "compute_capability": (cfg.engine, "compute_capability"),
        "plugin_library": (cfg.engine, "plugin_library"),
        "max_batch": (cfg.export.limits, "max_batch"),
        "max_prompt": (cfg.export.limits, "max_prompt"),
        "max_context": (cfg.export.limits, "max_context"),
    }
    for attr, (obj, key) in sets.items():
        if getattr(args, attr) is not None:
            setattr(obj, key, getattr(args, attr))
    if args.float_activations is not None:
        from armor_export.cli.quantize import float_activation_globs

        cfg.quantize.float_activations = float_activation_globs(args.float_activations)
    force = tuple(s.strip() for s in args.force.split(",") if s.strip())
    check_names(force, "--force")
    validate_section("prune", cfg.prune)
    cfg.validate()
    return cfg, force


def run(args) -> int:
    from rich.console import Console

    from armor_export.errors import UserError
    from armor_export.pipeline import build
    from armor_export.progress import RichReporter

    cfg, force = config_from_args(args)
    console = Console(soft_wrap=True)
    try:
        result = build(cfg, RichReporter(), force)
    except (UserError, KeyboardInterrupt) as exc:
        # the stages so far and the report's path, then main's one error line
        partial = getattr(exc, "build_result", None)
        if partial is not None:
            _print_summary(console, partial)
        raise
    _print_summary(console, result)
    console.print(
        result.verdict(), style="bold green" if result.passed else "bold red", markup=False
    )
    return 0 if result.passed else 1


def _print_summary(console, result) -> None:
    """The stage table and where the report is (or why there is none)."""
    from rich.table import Table

    table = Table(title=f"armor-export build: {result.output_dir}")
    for col in ("stage", "status", "seconds", "detail"):
        table.add_column(col)
    for stage in result.stages:
        color = {"done": "green", "failed": "red"}.get(stage.status, "dim")
        table.add_row(stage.name, f"[{color}]{stage.status}[/]",
                      f"{stage.seconds:.0f}" if stage.seconds else "", stage.detail)  # fmt: skip
    console.print(table)
    if result.report is not None:
        console.print(f"report: {result.report}", markup=False, highlight=False)
    else:
        console.print(f"no report: {result.report_error}", style="yellow", markup=False)
