"""``armor-export eval``: perplexity of a dense model or a pruned checkpoint (PyTorch), or of
an export folder (ONNX Runtime, torch-free)."""

from __future__ import annotations

import json
import sys


def add_parser(sub):
    from armor_export.config import EvalConfig

    defaults = EvalConfig()
    p = sub.add_parser("eval", help="perplexity of a model, pruned checkpoint or export folder")
    p.add_argument(
        "model",
        nargs="?",
        default="smollm2-135m",
        help="pruned checkpoint dir, export folder (measured through ONNX Runtime, no torch), "
        "model dir, hub id or 'smollm2-135m'",
    )
    p.add_argument(
        "--text", default=defaults.text, help="wikipedia | botchan | FILE | datasets:..."
    )
    p.add_argument("--windows", type=int, default=defaults.n_windows, help="number of windows")
    p.add_argument("--seqlen", type=int, default=defaults.seqlen, help="tokens per window")
    p.add_argument(
        "--batch-size",
        type=int,
        default=defaults.batch_size,
        help="windows per forward (an export's: at most its limits.max_batch)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="ONNX Runtime threads for an export folder (0: every core)",
    )
    p.add_argument("--json", dest="json_out", help="also write the result to this JSON file")
    return p


def run(args) -> int:
    import dataclasses

    from armor_export.config import EvalConfig, check_count, max_parallel
    from armor_export.eval.api import evaluate
    from armor_export.io import write_json
    from armor_export.progress import RichReporter

    check_count("threads", args.threads, 0, max_parallel, "--threads")
    cfg = EvalConfig(args.text, args.windows, args.seqlen, args.batch_size)
    result = evaluate(args.model, cfg, RichReporter(), threads=args.threads)
    data = dataclasses.asdict(result)
    if args.json_out:
        write_json(args.json_out, data)
    print(json.dumps(data, indent=2))
    print(result.summary(), file=sys.stderr)  # stdout holds the result (JSON) only
    return 0
