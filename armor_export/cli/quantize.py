"""``armor-export quantize``: a pruned checkpoint's 2:4 cores to 8 bits (INT8, FP8)."""

from __future__ import annotations


def add_quant_arguments(p, scheme_default: str | None) -> None:
    """The quantization flags ``quantize`` and ``build`` share."""
    from armor_export.config import QUANT_NONE, quant_schemes

    choices = (QUANT_NONE, *quant_schemes()) if scheme_default is None else quant_schemes()
    p.add_argument(
        "--quant" if scheme_default is None else "--scheme",
        dest="quant",
        choices=choices,
        default=scheme_default,
        help="8-bit format of the 2:4 cores (W8A8: per-channel weights, per-tensor "
        "activations); docs/quant.md",
    )
    p.add_argument(
        "--no-refit",
        dest="refit",
        action="store_false",
        default=None,
        help="skip the ARMOR re-fit of A and B around the quantized core",
    )
    p.add_argument(
        "--float-activations",
        action="append",
        metavar="GLOB",
        help="cores whose input stays in float, weight-only (repeat; 'none' for none; "
        "default: the scheme's, int8: *.down_proj)",
    )
    p.add_argument(
        "--smoothing",
        type=smoothing_value,
        metavar="ALPHA",
        help="SmoothQuant alpha in [0, 1] folded into ARMOR's B, 'none' or 'auto' "
        "(default: the scheme's, int8: 0.5, fp8: none)",
    )


def smoothing_value(text: str) -> float | str:
    """``--smoothing``: an α, or 'none' / 'auto'."""
    import argparse

    if text.lower() in ("none", "auto"):
        return text.lower()
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an α, 'none' or 'auto': {text!r}") from None


def float_activation_globs(given: list[str] | None) -> list[str] | None:
    """``--float-activations``: None (the scheme's default) when not given, [] for 'none'."""
    if given is None:
        return None
    return [g for g in given if g.lower() != "none"]


def add_parser(sub):
    p = sub.add_parser("quantize", help="a pruned checkpoint's 2:4 cores to INT8 or FP8")
    p.add_argument("model", help="pruned checkpoint folder (from prune or build)")
    p.add_argument("-o", "--output-dir", required=True, help="where the 8-bit checkpoint goes")
    add_quant_arguments(p, "int8")
    p.add_argument(
        "--dense-model",
        help="the dense model the checkpoint was pruned from (default: as its manifest says)",
    )
    return p


def run(args) -> int:
    from armor_export.config import QuantizeConfig, validate_section
    from armor_export.paths import check_apart
    from armor_export.progress import RichReporter
    from armor_export.quant.api import quantize_checkpoint, summary_line

    cfg = QuantizeConfig(scheme=args.quant, model=args.model, output_dir=args.output_dir)
    if args.refit is not None:
        cfg.refit = args.refit
    if args.smoothing is not None:
        cfg.smoothing = args.smoothing
    cfg.float_activations = float_activation_globs(args.float_activations)
    cfg.dense_model = args.dense_model
    validate_section("quantize", cfg)
    check_apart(cfg.output_dir, {"checkpoint": cfg.model}, "quantize")
    out = quantize_checkpoint(
        cfg.model, cfg.output_dir, cfg.settings(), RichReporter(), dense_model=cfg.dense_model
    )
    print(f"{out}: {summary_line(out)}")
    return 0
