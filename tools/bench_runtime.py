#!/usr/bin/env python
"""Runtime benchmark: our decode loop vs ONNX Runtime GenAI, dense vs ARMOR, fp32, ORT CPU.

For each export (dense SmolLM2-135M and ARMOR b=64 by default) and each runtime (ours,
``armor_export.runtime``; ONNX Runtime GenAI on the same folder through its
``genai_config.json``), measures the prefill latency at 512 tokens and the KV-cache decode
tokens/s in one run: rounds interleave every (export, runtime) pair so machine noise hits
them alike. Ratios are to the dense export on the same runtime, paired per round. Both
runtimes run the same graph on the same ONNX Runtime CPU provider; TensorRT engines are not
run (they need a GPU), and the report says so.

Writes docs/benchmarks/runtime.md and runtime.json.

    python tools/bench_runtime.py   # needs runs/bench_quality/armor-b64 (bench_quality.py)
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
from pathlib import Path

from benchlib import (
    ExportRunner,
    GenaiRunner,
    add_export_timing_arguments,
    bootstrap_median_ci,
    ensure_export,
    interleaved_rounds,
    meta_lines,
    ort_run_meta,
    prompt_ids,
    variants,
    write_report,
)

log = logging.getLogger("bench_runtime")

RUNTIMES = {"armor-export": ExportRunner, "onnxruntime-genai": GenaiRunner}
NOT_RUN = {
    "tensorrt": "TensorRT engine: not run, no GPU on this machine (needs the engine stage "
    "and a GPU; see docs/engines.md, 'GPU results and what still needs a GPU')",
    "tensorrt-rtx": "TensorRT-RTX engine: not run, no GPU on this machine",
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_export_timing_arguments(p, "runs/bench_runtime", ["armor-b64=runs/bench_quality/armor-b64"])
    p.add_argument("--note", action="append", default=[], help="a line for the report")
    return p.parse_args(argv)


def summarise(sources, prefill, decode) -> dict:
    """Figures per runtime and export; ratios to dense on the same runtime, paired per round."""
    results: dict = {}
    for runtime in RUNTIMES:
        dense = (runtime, "dense")
        for name in sources:
            key = (runtime, name)
            paired = [t / d for t, d in zip(prefill[key], prefill[dense], strict=True)]
            decode_paired = [t / d for t, d in zip(decode[key], decode[dense], strict=True)]
            low, high = bootstrap_median_ci(paired)
            results.setdefault(runtime, {})[name] = {
                "source": sources[name],
                "prefill_ms": round(1000 * statistics.median(prefill[key]), 2),
                "decode_tokens_per_s": round(statistics.median(decode[key]), 2),
                "prefill_ratio": round(statistics.median(paired), 4),
                "prefill_ratio_ci95": [round(low, 4), round(high, 4)],
                "decode_ratio": round(statistics.median(decode_paired), 4),
                "prefill_ms_rounds": [round(1000 * t, 2) for t in prefill[key]],
                "decode_tokens_per_s_rounds": [round(t, 2) for t in decode[key]],
            }
    # the two runtimes on the same export, paired per round (GenAI over ours)
    ours, theirs = RUNTIMES
    for name in sources:
        a, b = (ours, name), (theirs, name)
        results[theirs][name]["prefill_vs_ours"] = round(
            statistics.median([t / o for t, o in zip(prefill[b], prefill[a], strict=True)]), 4
        )
        results[theirs][name]["decode_vs_ours"] = round(
            statistics.median([t / o for t, o in zip(decode[b], decode[a], strict=True)]), 4
        )
    return results


def main(argv=None) -> int:
    import onnxruntime_genai

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    sources = variants(args)
    work = Path(args.work)
    folders = {name: ensure_export(name, src, work, args.reexport) for name, src in sources.items()}
    runners = {
        (runtime, name): cls(folder, args.threads)
        for runtime, cls in RUNTIMES.items()
        for name, folder in folders.items()
    }
    tokenizer = runners[("armor-export", "dense")].generator.tokenizer
    prefill_ids = prompt_ids(tokenizer, args.prefill)
    decode_ids = prefill_ids[: args.decode_prompt]
    prefill, decode = interleaved_rounds(runners, args, prefill_ids, decode_ids)
    meta = {
        **ort_run_meta("bench_runtime.py", argv),
        "onnxruntime_genai": onnxruntime_genai.__version__,
        "provider": "CPUExecutionProvider",
        "threads": args.threads
        or "each runtime's default (ours and ORT GenAI's: half the cores, at least one)",
        "prefill_tokens": args.prefill,
        "decode": f"{args.decode_tokens} greedy steps after a {args.decode_prompt}-token prompt",
        "rounds": args.rounds,
        "repeats": args.repeats,
        "dtype": "float32",
        "run": [f"{runtime} on {name}" for runtime, name in runners],
        "not_run": NOT_RUN,
        "notes": args.note,
    }
    write_outputs(Path(args.out), meta, summarise(sources, prefill, decode))
    return 0


def write_outputs(out: Path, meta: dict, results: dict) -> None:
    lines = [
        "# Runtimes: armor-export's decode loop vs ONNX Runtime GenAI (fp32, ORT CPU)",
        "",
        *meta_lines(meta),
        f"- machine: {meta['machine']}; onnxruntime {meta['onnxruntime']}, onnxruntime-genai "
        f"{meta['onnxruntime_genai']}, provider {meta['provider']}, threads: {meta['threads']}",
        f"- prefill: one forward of {meta['prefill_tokens']} tokens (batch 1), with the first "
        f"token's pick; decode: {meta['decode']}; {meta['rounds']} rounds in this one run, "
        f"each pair's prefill the best of {meta['repeats']} shuffled passes per round",
        "- ratios to dense: the median over rounds of each round's ratio to the dense export "
        "on the same runtime; GenAI / ours: the same pairing across runtimes on one export",
        "- executed: " + "; ".join(meta["run"]),
        *(f"- note: {note}" for note in meta.get("notes", [])),
        "",
        "| runtime | export | prefill ms | prefill / dense | 95% CI | decode tok/s "
        "| decode / dense | GenAI / ours (prefill ms, decode tok/s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for runtime, rows in results.items():
        for name, r in rows.items():
            vs = (
                f"{r['prefill_vs_ours']:.3f}, {r['decode_vs_ours']:.3f}"
                if "prefill_vs_ours" in r
                else "-"
            )
            ci = "{:.3f}–{:.3f}".format(*r["prefill_ratio_ci95"])
            lines.append(
                f"| {runtime} | {name} | {r['prefill_ms']:.1f} | {r['prefill_ratio']:.3f} | {ci} "
                f"| {r['decode_tokens_per_s']:.1f} | {r['decode_ratio']:.3f} | {vs} |"
            )
    for backend in meta["not_run"]:
        lines.append(f"| {backend} | all | not run | - | - | not run | - | - |")
    lines += [
        "",
        "Not executed: " + "; ".join(meta["not_run"].values()),
        "",
        "Both runtimes run the same model.onnx on ONNX Runtime's CPU provider. They differ "
        "in session options (ours: threads that do not spin between operators, "
        "`session.intra_op.allow_spinning` 0; ORT GenAI sets its own) and in how logits and "
        "the KV cache move between steps (ours copies them into numpy arrays and feeds them "
        "back; ORT GenAI keeps them as ORT values); this benchmark does not separate the two. "
        "Per-round figures are in runtime.json.",
        "",
    ]
    write_report(out, "runtime", {"meta": meta, "results": results}, "\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
