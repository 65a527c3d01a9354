#!/usr/bin/env python
"""Which 8-bit core inputs cost perplexity: an ablation on one quantized checkpoint.

Loads an 8-bit checkpoint and measures Wikipedia perplexity in PyTorch with the inputs of
some cores left in float (their weights stay 8-bit, the core runs weight-only): all of them,
the MLP down projections only, and the down projections of the layers named by --layers.
Writes docs/benchmarks/quant_inputs.md and .json.

    python tools/ablate_quant_inputs.py runs/bench_quant/armor-int8-refit-smooth0.5
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchlib import machine, meta_lines, os_name, run_meta, torch_version, write_report


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="an 8-bit checkpoint (armor-export quantize)")
    p.add_argument("--windows", type=int, default=8)
    p.add_argument("--seqlen", type=int, default=1024)
    p.add_argument("--layers", default="11,28", help="layers whose down_proj input stays float")
    p.add_argument("--out", default="docs/benchmarks")
    return p.parse_args(argv)


def main(argv=None) -> int:
    from transformers import AutoTokenizer

    from armor_export.config import EvalConfig
    from armor_export.eval.api import evaluate
    from armor_export.prune.checkpoint import load_checkpoint

    args = parse_args(argv)
    path = args.checkpoint
    tok = AutoTokenizer.from_pretrained(path)
    cfg = EvalConfig("wikipedia", args.windows, args.seqlen, 4)
    layers = {f"model.layers.{i}.mlp.down_proj" for i in args.layers.split(",") if i}
    cases = {
        "as quantized": lambda n: False,
        "every input float (weight-only)": lambda n: True,
        "down_proj inputs float": lambda n: n.endswith("down_proj"),
        f"down_proj inputs of layers {args.layers} float": lambda n: n in layers,
    }
    rows = {}
    for label, float_input in cases.items():
        model, manifest = load_checkpoint(path)
        for name, mod in model.named_modules():
            quant = getattr(mod, "quant", None)
            if quant is not None and float_input(name):
                quant.act_scale = None  # weight-only: the 8-bit weight, a float input
        rows[label] = evaluate(path, cfg, model=model, tokenizer=tok).perplexity
        print(f"{label}: {rows[label]:.2f}", flush=True)
    meta = run_meta("ablate_quant_inputs.py", argv, machine(os_name()), torch=torch_version())
    scheme = manifest["quant"]["scheme"]
    lines = [f"# Which 8-bit core inputs cost perplexity ({scheme}, {path})", ""]
    lines += meta_lines(meta)
    lines += ["", f"Wikipedia, {args.windows} windows of {args.seqlen} tokens, PyTorch.", ""]
    lines += ["| inputs left in float | perplexity |", "|---|---|"]
    lines += [f"| {label} | {ppl:.2f} |" for label, ppl in rows.items()]
    write_report(Path(args.out), "quant_inputs", {"meta": meta, "checkpoint": path,
                 "scheme": scheme, "perplexity": rows}, "\n".join(lines) + "\n")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
