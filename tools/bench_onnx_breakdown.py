#!/usr/bin/env python
"""Where the ARMOR wrappers' prefill time goes on ONNX Runtime (CPU, fp32).

Runs on the exports that tools/bench_onnx.py made (runs/bench_onnx/{dense,armor-b32,...}):

1. Paired prefill rounds of dense, each ARMOR export, and a timing-only copy of each ARMOR
   graph whose wrapper Transposes (the rank-3 copies of a block MatMul's ``[n_blocks, T, b]``
   result back to token layout, each feeding only a Reshape) are Identity. That copy computes
   wrong numbers on purpose: it measures what the copies cost, nothing else, and lives only
   in the work folder.
2. ORT's profiler on each export: kernel time and FLOP rate of the block MatMuls (constant
   ``[n_blocks, b, b]`` weight) against the 2-D MatMuls (cores, dense linears, lm_head), and
   the rank-3 Transposes' time (the wrappers', plus at b = head_dim the merged head
   transposes, which dense runs as rank-4 ones).

Writes docs/benchmarks/onnx_breakdown.md and onnx_breakdown.json.

    python tools/bench_onnx.py && python tools/bench_onnx_breakdown.py
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import shutil
import statistics
import sys
from collections import defaultdict
from functools import partial
from pathlib import Path

import numpy as np
from benchlib import (
    ExportRunner,
    best_of_shuffled,
    bootstrap_median_ci,
    dense_flops,
    dense_shapes,
    meta_lines,
    ort_run_meta,
    prompt_ids,
    wrapper_flops_per_token,
    write_report,
)

log = logging.getLogger("bench_onnx_breakdown")
NO_COPIES = "-no-wrapper-transposes"
CLASSES = ("2-D MatMul", "block MatMul", "attention MatMul", "rank-3 Transpose", "other")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="runs/bench_onnx", help="bench_onnx.py's export folders")
    p.add_argument("--armor", default="armor-b32,armor-b64", help="ARMOR variants to break down")
    p.add_argument("--out", default="docs/benchmarks")
    p.add_argument("--prefill", type=int, default=512, help="prefill tokens")
    p.add_argument("--rounds", type=int, default=15, help="interleaved rounds (median)")
    p.add_argument("--repeats", type=int, default=3, help="prefills per variant and round")
    p.add_argument("--profile-runs", type=int, default=5, help="profiled prefills per export")
    return p.parse_args(argv)


def is_wrapper_transpose(node, producers: dict, consumers: dict) -> bool:
    """A rank-3 ``perm=[1, 0, 2]`` Transpose of a MatMul's result whose output only feeds
    Reshapes: a block MatMul's result on its way back to token layout. (The inputs'
    transposes feed MatMuls; at b = head_dim the merged head transposes are rank-3 too, but
    they read a Reshape, and dense has their like.)"""
    perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
    readers = consumers.get(node.output[0], [])
    return (
        node.op_type == "Transpose"
        and perm == [1, 0, 2]
        and producers.get(node.input[0]) == "MatMul"
        and bool(readers)
        and all(r == "Reshape" for r in readers)
    )


def without_wrapper_transposes(folder: Path, dest: Path) -> int:
    """Write the timing-only copy of the export in ``folder`` to ``dest``; returns how many
    Transposes became Identity."""
    import onnx

    model = onnx.load(str(folder / "model.onnx"))
    consumers, producers = defaultdict(list), {}
    for node in model.graph.node:
        for name in node.input:
            consumers[name].append(node.op_type)
        for name in node.output:
            producers[name] = node.op_type
    changed = 0
    for node in model.graph.node:
        if is_wrapper_transpose(node, producers, consumers):
            node.op_type = "Identity"
            del node.attribute[:]
            changed += 1
    dest.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(dest / "model.onnx"))
    from armor_export.export_manifest import MANIFEST, ExportManifest, seal
    from armor_export.io import sha256_file

    manifest = ExportManifest.read(folder)
    graph = {manifest.onnx, manifest.external_data}
    for name in [MANIFEST] + [f for f in manifest.files if f not in graph]:  # tokenizer files …
        shutil.copyfile(folder / name, dest / name)
    # the copy's manifest describes the copy: its graph is this edited one
    data = json.loads((dest / MANIFEST).read_text())
    data["sha256"]["model.onnx"] = sha256_file(dest / "model.onnx")
    (dest / MANIFEST).write_text(json.dumps(seal(data), indent=2))
    return changed


def classify(op: str, inputs: list[list[int]], output: list[int]) -> tuple[str, float]:
    """(class, FLOPs) of one profiled kernel. ORT lists a prepacked constant weight (the 2-D
    ones) under neither input, so a MatMul with one listed input has a 2-D weight."""
    if op in ("MatMul", "FusedMatMul") and inputs:
        flops = 2.0 * float(np.prod(output)) * inputs[0][-1]  # no transA in these graphs
        if len(inputs) == 1:
            return "2-D MatMul", flops
        weight = inputs[1]
        if len(weight) == 3 and weight[1] == weight[2] and len(inputs[0]) == 3:
            return "block MatMul", flops
        return "attention MatMul", flops
    if op == "Transpose" and inputs and len(inputs[0]) == 3:
        return "rank-3 Transpose", 0.0
    return "other", 0.0


def profile(folder: Path, ids: np.ndarray, runs: int) -> dict:
    """Per-class kernel ms and FLOPs of one prefill (each node's median over ``runs``)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(folder / "profile")
    options.log_severity_level = 3
    session = ort.InferenceSession(str(folder / "model.onnx"), options)
    runner = ExportRunner(folder, session=ProfiledSession(session))  # the runtime's feeds
    for _ in range(runs):
        runner.prefill(ids)
    trace = Path(session.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink()
    per_node = defaultdict(list)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            args = e["args"]
            inputs = [next(iter(s.values())) for s in args.get("input_type_shape", [])]
            output = next(iter(args["output_type_shape"][0].values()))
            key = (e["name"], args["op_name"], json.dumps([inputs, output]))
            per_node[key].append(e["dur"])
    ms, flops = defaultdict(float), defaultdict(float)
    for (_, op, shapes), durations in per_node.items():
        cls, f = classify(op, *json.loads(shapes))
        ms[cls] += statistics.median(durations) / 1000
        flops[cls] += f
    return {
        "ms": {c: round(ms[c], 3) for c in CLASSES},
        "gflop": {c: round(flops[c] / 1e9, 4) for c in CLASSES},
    }


class ProfiledSession:
    """An ORT session opened with profiling on, behind the runtime's ``Session`` interface."""

    def __init__(self, session):
        self.session = session
        self.input_names = [i.name for i in session.get_inputs()]
        self.output_names = [o.name for o in session.get_outputs()]

    def run(self, feeds):
        return dict(zip(self.output_names, self.session.run(None, feeds), strict=True))


def main(argv=None) -> int:
    from armor_export.export.api import GRAPH_REVISION
    from armor_export.export_manifest import ExportManifest
    from armor_export.progress import RichReporter

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    work = Path(args.work)
    armor = [a for a in args.armor.split(",") if a]
    folders = {"dense": work / "dense"} | {a: work / a for a in armor}
    for folder in folders.values():
        manifest = ExportManifest.read(folder) if folder.is_dir() else None
        if manifest is None or manifest.graph_revision != GRAPH_REVISION:
            sys.exit(f"{folder}: no current export (run tools/bench_onnx.py first)")
    changed = {}
    for name in armor:
        changed[name] = without_wrapper_transposes(folders[name], work / (name + NO_COPIES))
        folders[name + NO_COPIES] = work / (name + NO_COPIES)
        log.info("%s: %d wrapper Transposes made Identity (timing only)", name, changed[name])
    runners = {name: ExportRunner(folder) for name, folder in folders.items()}
    ids = prompt_ids(runners["dense"].generator.tokenizer, args.prefill)
    prefills = {name: partial(runner.prefill, ids) for name, runner in runners.items()}
    for prefill in prefills.values():
        prefill()
    times = {name: [] for name in runners}
    order, rng = list(runners), random.Random(0)
    with RichReporter().task("rounds", total=args.rounds) as task:
        for _ in range(args.rounds):
            best = best_of_shuffled(prefills, args.repeats, order, rng)
            for name in runners:
                times[name].append(best[name])
            task.advance(1)
    del runners, prefills
    source = ExportManifest.read(folders["dense"]).source.model
    all_flops = dense_flops(dense_shapes(source), args.prefill, args.prefill)
    results = {}
    for name in folders:
        paired = [t / d for t, d in zip(times[name], times["dense"], strict=True)]
        entry = {
            "prefill_ms": round(1000 * statistics.median(times[name]), 2),
            "prefill_ratio": round(statistics.median(paired), 4),
            "prefill_ratio_ci95": [round(x, 4) for x in bootstrap_median_ci(paired)],
        }
        if name in armor:
            ckpt = ExportManifest.read(folders[name]).source.model
            overhead = args.prefill * wrapper_flops_per_token(ckpt) / all_flops
            entry["flop_overhead"] = round(overhead, 4)
            entry["prefill_target_ratio"] = round(1 + overhead + 0.05, 4)
            entry["wrapper_transposes"] = changed[name]
        if not name.endswith(NO_COPIES):
            entry["profile"] = profile(folders[name], ids, args.profile_runs)
        results[name] = entry
    meta = {
        **ort_run_meta("bench_onnx_breakdown.py", argv),
        "prefill_tokens": args.prefill,
        "rounds": args.rounds,
        "repeats": args.repeats,
        "profile_runs": args.profile_runs,
    }
    data = {"meta": meta, "variants": results}
    write_report(Path(args.out), "onnx_breakdown", data, render(meta, results, armor))
    return 0


def render(meta: dict, results: dict, armor: list[str]) -> str:
    lines = [
        "# Where the ARMOR wrappers' prefill time goes (ONNX Runtime, CPU, fp32)",
        "",
        *meta_lines(meta),
        f"- machine: {meta['machine']}; onnxruntime {meta['onnxruntime']}, ORT default threads",
        f"- prefill of {meta['prefill_tokens']} tokens, batch 1; {meta['rounds']} paired "
        f"rounds (best of {meta['repeats']} per variant and round, shuffled), ratios are the "
        "median of each round's ratio to dense, with a bootstrap 95% interval",
        f"- `{NO_COPIES[1:]}`: the same ARMOR graph with every wrapper Transpose (a block "
        "MatMul's result copied back to token layout) made Identity. Its numbers are wrong "
        "on purpose; it only measures what those copies cost.",
        "",
        "| variant | prefill ms | prefill / dense | 95% CI | FLOP overhead | target |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        ci = "{:.3f}–{:.3f}".format(*r["prefill_ratio_ci95"])
        ovh = f"{r['flop_overhead']:.3f}" if "flop_overhead" in r else "-"
        target = f"{r['prefill_target_ratio']:.3f}" if "prefill_target_ratio" in r else "-"
        lines.append(
            f"| {name} | {r['prefill_ms']:.1f} | {r['prefill_ratio']:.3f} | {ci} | {ovh} | "
            f"{target} |"
        )
    lines += [
        "",
        f"ORT profile, kernel ms of one prefill (median per node over {meta['profile_runs']} "
        "profiled runs; profiling adds a little per node) and FLOP rates. Rank-3 Transposes "
        "are the wrappers' and, at b = head_dim, the merged head transposes, which dense "
        "runs as rank-4 ones (in other):",
        "",
        "| variant | total | 2-D MatMul (GFLOP/s) | block MatMul (GFLOP/s) | attention MatMul "
        "| rank-3 Transpose | other |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        if "profile" not in r:
            continue
        ms, gf = r["profile"]["ms"], r["profile"]["gflop"]

        def rate(cls, ms=ms, gf=gf):
            return f"{ms[cls]:.1f} ({gf[cls] / ms[cls] * 1000:.0f})" if ms[cls] else "-"

        lines.append(
            f"| {name} | {sum(ms.values()):.1f} | {rate('2-D MatMul')} | {rate('block MatMul')} "
            f"| {ms['attention MatMul']:.1f} | {ms['rank-3 Transpose']:.1f} | {ms['other']:.1f} |"
        )
    lines += ["", "Reading it:"]
    for name in armor:
        r, dense = results[name], results["dense"]
        copies = results[name + NO_COPIES]
        ms, gf = r["profile"]["ms"], r["profile"]["gflop"]
        core_rate = gf["2-D MatMul"] / ms["2-D MatMul"]
        at_core_rate = gf["block MatMul"] / core_rate
        lines.append(
            f"- {name}: {r['prefill_ratio']:.3f}× dense against a target of "
            f"{r['prefill_target_ratio']:.3f}. Without its {r['wrapper_transposes']} wrapper "
            f"Transposes the graph takes {copies['prefill_ratio']:.3f}×, so the copies cost "
            f"{r['prefill_ratio'] - copies['prefill_ratio']:.3f} of dense. Its block MatMuls "
            f"({gf['block MatMul']:.1f} GFLOP) take {ms['block MatMul']:.1f} ms; at the 2-D "
            f"MatMuls' rate they would take {at_core_rate:.1f} ms "
            f"({(ms['block MatMul'] - at_core_rate) / sum(dense['profile']['ms'].values()):.3f}"
            " of dense's profiled time less)."
        )
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
