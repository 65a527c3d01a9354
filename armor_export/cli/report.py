"""``armor-export report``: HTML + Markdown report of a pruned checkpoint (of a build's
checkpoint: also its stages, export, engine and parity)."""

from __future__ import annotations


def add_parser(sub):
    p = sub.add_parser(
        "report", help="loss curves, heat maps, perplexity, overhead; a build's stages and parity"
    )
    p.add_argument(
        "checkpoint",
        nargs="?",
        default="runs/armor",
        help="pruned checkpoint dir (of a build, e.g. runs/build/checkpoint: its stages too)",
    )
    p.add_argument("-o", "--output", help="report folder (default CHECKPOINT/report)")
    p.add_argument(
        "--verify-report",
        help="verify_report.json to include (default: the build's, or CHECKPOINT/../verify/ "
        "when present)",
    )
    p.add_argument(
        "--eval",
        action="append",
        default=[],
        metavar="FILE",
        help="perplexity result written by `armor-export eval --json` (repeat), e.g. dense",
    )
    return p


def run(args) -> int:
    from armor_export.report import write_report

    path = write_report(args.checkpoint, args.output, args.verify_report, args.eval)
    print(path)
    print(path.with_suffix(".md"))
    return 0
