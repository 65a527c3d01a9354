"""``armor-export prune``: prune a model; optionally report dense vs pruned perplexity."""

from __future__ import annotations

import json
import os


def add_parser(sub):
    p = sub.add_parser("prune", help="prune a causal LM to 2:4 (ARMOR or a baseline)")
    add_prune_arguments(p)
    p.add_argument("--eval", action="store_true", help="print dense and pruned perplexity")
    p.add_argument("--eval-text", default="wikipedia", help="evaluation text (default wikipedia)")
    p.add_argument("--eval-windows", type=int, default=64, help="evaluation windows")
    p.add_argument("--eval-seqlen", type=int, default=1024, help="tokens per evaluation window")
    return p


def method_argument() -> dict:
    """``--method``'s choices and help, from the method registry (shared by every verb)."""
    from armor_export.prune import methods

    listed = "; ".join(f"{m.name}: {m.summary}" for m in methods.registered().values())
    return {"choices": list(methods.names()), "help": f"pruning method ({listed})"}


def add_prune_arguments(p) -> None:
    """The flags that make a PruneConfig (shared by ``prune`` and ``plan``)."""
    p.add_argument("--config", help="TOML recipe (see prune/*.toml); flags override it")
    p.add_argument("--model", help="model dir, hub id or 'smollm2-135m' (default)")
    p.add_argument("--method", **method_argument())
    p.add_argument("-o", "--output-dir", help="where the checkpoint and job results go")
    p.add_argument("--block-size", type=int, help="ARMOR block size b (4 | b, b | dims)")
    p.add_argument("--iterations", type=int, help="ARMOR iterations per matrix")
    p.add_argument("--continuous-step", choices=["exact", "adam"], help="ARMOR continuous step")
    p.add_argument(
        "--weighting",
        choices=["normalized", "output"],
        help="ARMOR proxy loss: NoWag-normalised (authors) or layer-output error",
    )
    p.add_argument("--calib-text", help="botchan | wikipedia | FILE | datasets:NAME[:CFG]:SPLIT")
    p.add_argument("--calib-samples", type=int, help="number of calibration sequences")
    p.add_argument("--calib-seqlen", type=int, help="tokens per calibration sequence")
    p.add_argument("--seed", type=int, help="calibration sampling seed")
    p.add_argument("--include", action="append", help="glob of linear names to prune (repeat)")
    p.add_argument("--exclude", action="append", help="glob of linear names to keep dense")
    p.add_argument(
        "--skip-incompatible",
        action="store_true",
        default=None,
        help="leave layers whose shape does not fit the block size dense",
    )
    p.add_argument("--device", help="where the per-matrix solves run: cpu (default), cuda[:i]")
    p.add_argument("--workers", type=int, help="worker processes for the jobs (0 = one per core)")
    p.add_argument(
        "--batch-same-shape",
        choices=["auto", "on", "off"],
        help="solve same-shape ARMOR matrices as one batched problem (auto: on a GPU, when a "
        "short probe shows it faster)",
    )
    p.add_argument(
        "--low-memory",
        action="store_true",
        default=None,
        help="read decoder layers and weights from disk one at a time (models larger than RAM)",
    )


def config_from_args(args):
    from armor_export.config import PruneConfig

    cfg = PruneConfig.from_toml(args.config) if args.config else PruneConfig()
    simple = {
        "model": "model",
        "method": "method",
        "output_dir": "output_dir",
        "skip_incompatible": "skip_incompatible",
        "device": "device",
        "workers": "workers",
        "low_memory": "low_memory",
        "batch_same_shape": "batch_same_shape",
    }
    for attr, key in simple.items():
        if getattr(args, attr) is not None:
            setattr(cfg, key, getattr(args, attr))
    if args.output_dir is None and not args.config:
        cfg.output_dir = f"runs/{cfg.method}"
    nested = {
        "block_size": (cfg.armor, "block_size"),
        "iterations": (cfg.armor, "iterations"),
        "continuous_step": (cfg.armor, "continuous_step"),
        "weighting": (cfg.armor, "weighting"),
        "calib_text": (cfg.calibration, "text"),
        "calib_samples": (cfg.calibration, "n_samples"),
        "calib_seqlen": (cfg.calibration, "seqlen"),
        "seed": (cfg.calibration, "seed"),
    }
    for attr, (obj, key) in nested.items():
        if getattr(args, attr) is not None:
            setattr(obj, key, getattr(args, attr))
    if args.include:
        cfg.include = args.include
    if args.exclude:
        cfg.exclude = args.exclude
    cfg.validate()
    return cfg


def run(args) -> int:
    from rich.console import Console

    from armor_export.config import EvalConfig
    from armor_export.progress import RichReporter
    from armor_export.prune import methods
    from armor_export.prune.api import prune

    cfg = config_from_args(args)
    if os.environ.get("RANK", "0") != "0":  # torchrun: rank 0 reports, evaluates and prints
        prune(cfg)
        return 0
    console = Console(stderr=True)
    reporter = RichReporter(console)
    dense_ppl = None
    eval_cfg = EvalConfig(args.eval_text, args.eval_windows, args.eval_seqlen)
    if args.eval:
        eval_cfg.validate()
        from armor_export.eval.api import evaluate

        dense_ppl = evaluate(cfg.model, eval_cfg, reporter).perplexity
    result = prune(cfg, reporter)
    summary = {
        "output_dir": str(result.output_dir),
        "method": cfg.method,
        "matrices": len(result.metrics),
        "skipped": len(result.skipped),
        "seconds": round(result.seconds, 1),
    }
    if methods.get(cfg.method).bounded_by_nowag:
        summary.update(result.armor_summary)
    if args.eval:
        from armor_export.eval.api import evaluate

        pruned_ppl = evaluate(str(result.output_dir), eval_cfg, reporter).perplexity
        summary.update(dense_ppl=round(dense_ppl, 3), pruned_ppl=round(pruned_ppl, 3))
    print(json.dumps(summary, indent=2))
    if args.eval:
        print(
            f"perplexity on {eval_cfg.text}: dense {dense_ppl:.2f} -> "
            f"{cfg.method} 2:4 {summary['pruned_ppl']:.2f}"
        )
    return 0
