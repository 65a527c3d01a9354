"""``armor-export verify``: PyTorch vs ONNX Runtime and the built engine, report + exit code."""

from __future__ import annotations


def add_parser(sub):
    from armor_export.config import VERIFY_BACKENDS, VerifyConfig

    defaults = VerifyConfig()
    p = sub.add_parser("verify", help="check an export against its PyTorch source")
    p.add_argument("export_dir", nargs="?", default=defaults.export_dir, help="export folder")
    p.add_argument(
        "--model",
        default=defaults.model,
        help="PyTorch source (default: the one exported, found relative to the export folder)",
    )
    p.add_argument(
        "--backend",
        action="append",
        choices=VERIFY_BACKENDS,
        help=f"runner(s) to compare with PyTorch (repeat; default {','.join(defaults.backends)})",
    )
    p.add_argument("--prompt", action="append", help="prompt text (repeat for a padded batch)")
    p.add_argument(
        "--decode-steps",
        type=int,
        default=defaults.decode_steps,
        help="decode steps after the prefill",
    )
    p.add_argument(
        "--atol", type=float, default=defaults.atol, help="absolute tolerance (0: by dtype)"
    )
    p.add_argument(
        "--rtol", type=float, default=defaults.rtol, help="relative tolerance (0: by dtype)"
    )
    p.add_argument(
        "--engine",
        dest="engine_dir",
        default=defaults.engine_dir,
        help="engine folder to load and compare (default the export's engine when it exists: "
        "EXPORT_DIR/engine, or BUILD/engine for a build's BUILD/onnx)",
    )
    p.add_argument(
        "--plugin-library",
        default=defaults.plugin_library,
        help="libarmor_blockdiag_plugin.so (default: the copy in the engine folder)",
    )
    p.add_argument(
        "--report-dir",
        default=defaults.report_dir,
        help="report folder (default EXPORT_DIR/verify)",
    )
    return p


def run(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from armor_export.config import VerifyConfig
    from armor_export.progress import RichReporter
    from armor_export.verify import verify

    defaults = VerifyConfig()
    cfg = VerifyConfig(
        export_dir=args.export_dir,
        model=args.model,
        backends=args.backend or defaults.backends,
        prompts=args.prompt or defaults.prompts,
        decode_steps=args.decode_steps,
        atol=args.atol,
        rtol=args.rtol,
        report_dir=args.report_dir,
        engine_dir=args.engine_dir,
        plugin_library=args.plugin_library,
    )
    result = verify(cfg, RichReporter())
    report = result.report
    console = Console(soft_wrap=True)
    table = Table(title=f"parity vs PyTorch ({report.dtype}, {report.lowering})")
    for col in ("step", "runner", "output", "max abs", "max rel", "atol", "rtol", "verdict"):
        table.add_column(col)
    for row in report.summary_rows():
        verdict = "[green]✓[/]" if row["passed"] else f"[red]✗[/] {row['worst']}"
        table.add_row(
            row["step"],
            row["runner"],
            row["output"],
            f"{row['max_abs']:.3g}",
            f"{row['max_rel']:.3g}",
            f"{row['atol']:g}",
            f"{row['rtol']:g}",
            verdict,
        )
    console.print(table)
    for backend, reason in report.skipped.items():
        console.print(f"skipped {backend}: {reason}")
    if report.error:
        console.print(f"[red]error:[/] {report.error}")
    console.print(f"report: {result.report_path}")
    console.print(
        report.verdict(), style="bold green" if result.passed else "bold red", markup=False
    )
    return 0 if result.passed else 1
