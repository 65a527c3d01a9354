#!/usr/bin/env python
"""Scale benchmark: the full ARMOR prune with 1 and 2 torch.distributed ranks (torchrun).

Each rank count runs from a fresh folder with the quality benchmark's settings; the script
records wall time, per-rank peak RSS and jobs (``work/ranks/rank<r>.json``), the speed-up
over 1 rank, and whether the results are identical (same ``model.safetensors`` bytes;
otherwise how many masks agree). Writes docs/benchmarks/scale.md and scale.json.

    python tools/bench_scale.py      # SmolLM2-135M: 1 rank, 2 ranks, 1 rank on 1 thread
    python tools/bench_scale.py --model DIR --iterations 5 --calib-samples 8   # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchlib import (
    NO_GPU,
    config_toml,
    machine,
    meta_lines,
    os_name,
    rank_records,
    run_meta,
    write_report,
)

SPEEDUP_TARGET = 1.7  # the target for 2 ranks over 1 on a 2-core machine


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument(
        "--ranks",
        default="1,2,1t1",
        help="comma list of runs: N = N ranks (cores shared), NtK = N ranks of K threads each",
    )
    p.add_argument(
        "--in-memory", action="store_true", help="load the whole model (default: --low-memory)"
    )
    p.add_argument("--block-size", type=int, default=64)
    p.add_argument("--iterations", type=int, default=100)
    p.add_argument("--calib-samples", type=int, default=128)
    p.add_argument("--calib-seqlen", type=int, default=512)
    p.add_argument("--work", default="runs/bench_scale")
    p.add_argument("--out", default="docs/benchmarks")
    p.add_argument(
        "--render", action="store_true", help="rewrite scale.md from scale.json (no runs)"
    )
    return p.parse_args(argv)


def run(args, spec: str, work: Path) -> dict:
    ranks, _, threads = spec.partition("t")
    out = work / f"ranks{spec}"
    shutil.rmtree(out, ignore_errors=True)
    config = work / f"ranks{spec}.toml"
    config.write_text(config_toml(args, out))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           "--nproc-per-node", ranks, "-m", "armor_export", "prune", "-q",
           "--config", str(config)]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if threads:
        env["OMP_NUM_THREADS"] = threads
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=env)
    seconds = time.perf_counter() - start
    per_rank = rank_records(out)
    return {"run": spec, "ranks": int(ranks), "threads_per_rank": int(threads) if threads else None,
            "wall_seconds": round(seconds, 1), "per_rank": per_rank,
            "output": str(out)}  # fmt: skip


def compare(a: Path, b: Path) -> dict:
    import torch

    from armor_export.io import sha256_file
    from armor_export.prune.checkpoint import load_checkpoint

    same_bytes = sha256_file(a / "model.safetensors") == sha256_file(b / "model.safetensors")
    model_a, manifest = load_checkpoint(a)
    model_b, _ = load_checkpoint(b)
    names = list(manifest["matrices"])
    equal_masks = sum(
        torch.equal(model_a.get_submodule(n).mask, model_b.get_submodule(n).mask) for n in names
    )
    return {"identical_files": same_bytes, "equal_masks": equal_masks, "matrices": len(names)}


def memory_target(model: str) -> dict:
    """The issue's per-rank bound: one decoder layer (fp32) + statistics + 1 GiB, in MiB,
    with the layer and statistics as ``armor-export plan`` counts them."""
    from armor_export.config import PruneConfig
    from armor_export.data.models import load_lazy_model_and_tokenizer
    from armor_export.models.registry import adapter_for
    from armor_export.prune.api import select_linears
    from armor_export.prune.plan import MIB, layer_bytes, statistics_bytes

    cfg = PruneConfig(model=model)
    lazy, _ = load_lazy_model_and_tokenizer(model)
    adapter = adapter_for(lazy.model)
    targets, _ = select_linears(lazy.model, adapter, cfg)
    layer = layer_bytes(lazy.model, adapter) / MIB
    stats = statistics_bytes(targets, cfg.method) / MIB
    return {
        "one_decoder_layer_mib": round(layer, 1),
        "statistics_mib": round(stats, 1),
        "bound_mib": round(layer + stats + 1024, 1),
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.render:
        data = json.loads((Path(args.out) / "scale.json").read_text())
        if "memory_target" not in data["meta"]:
            data["meta"]["memory_target"] = memory_target(data["meta"]["settings"]["model"])
        write(Path(args.out), data["meta"], data["runs"], data["identical"])
        return 0
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    runs = [run(args, spec.strip(), work) for spec in args.ranks.split(",")]
    base = runs[0]
    for r in runs:
        r["speedup_vs_first"] = round(base["wall_seconds"] / r["wall_seconds"], 3)
        r["speedup_vs"] = {o["run"]: round(o["wall_seconds"] / r["wall_seconds"], 3) for o in runs}
    identical = [compare(Path(base["output"]), Path(r["output"])) for r in runs[1:]]
    meta = {
        **run_meta("bench_scale.py", argv, machine(os_name(), NO_GPU)),
        "settings": {k: getattr(args, k) for k in ("model", "block_size", "iterations",
                                                     "calib_samples", "calib_seqlen",
                                                     "in_memory")},
        "memory_target": memory_target(args.model),
    }  # fmt: skip
    write(Path(args.out), meta, runs, identical)
    return 0


def write(out: Path, meta: dict, runs: list[dict], identical: list[dict]) -> None:
    lines = [
        "# Scale: ARMOR prune over torch.distributed ranks (CPU, gloo)",
        "",
        *meta_lines(meta),
        f"- machine: {meta['machine']}",
        f"- settings: {meta['settings']}",
        "",
        "Threads per rank: `default` is what armor-export picks: one rank uses every core"
        " (torch's default), N ranks on a machine get cores / N threads each; `NtK` pins"
        " each rank to K threads (OMP_NUM_THREADS=K).",
        "",
        "| run | ranks | threads per rank | wall time (s) | calibration (s) | speed-up vs "
        + " / ".join(f"`{o['run']}`" for o in runs)
        + " | peak RSS per rank (MiB) | within memory target | jobs per rank |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    target = meta["memory_target"]  # --render adds it to runs recorded before it existed
    for r in runs:
        rss = ", ".join(str(p["peak_rss_mib"]) for p in r["per_rank"])
        calib = ", ".join(str(p.get("calibration_seconds", "?")) for p in r["per_rank"])
        jobs = ", ".join(str(p["jobs"]) for p in r["per_rank"])
        speedups = " / ".join(f"{v:.2f}" for v in r["speedup_vs"].values())
        threads = r["threads_per_rank"] or "default"
        within = all(p["peak_rss_mib"] <= target["bound_mib"] for p in r["per_rank"])
        lines.append(
            f"| `{r['run']}` | {r['ranks']} | {threads} | {r['wall_seconds']:.0f} | {calib} | "
            f"{speedups} | {rss} | {'yes' if within else 'NO'} | {jobs} |"
        )
    for r, same in zip(runs[1:], identical, strict=True):
        lines.append("")
        lines.append(
            f"`{r['run']}` vs `{runs[0]['run']}`: checkpoint bytes identical: "
            f"{'yes' if same['identical_files'] else 'no'}; equal masks "
            f"{same['equal_masks']}/{same['matrices']}."
        )
    ones = [r for r in runs if r["ranks"] == 1]
    for r in (r for r in runs if r["ranks"] == 2):
        for one in ones:
            ratio = one["wall_seconds"] / r["wall_seconds"]
            threads = one["threads_per_rank"] or "default"
            lines.append("")
            lines.append(
                f"Speed-up target (2 ranks >= {SPEEDUP_TARGET}x 1 rank): `{r['run']}` vs "
                f"`{one['run']}` (1 rank, threads: {threads}): {ratio:.2f}x, "
                f"{'met' if ratio >= SPEEDUP_TARGET else 'not met'}."
            )
    single = [r for r in ones if r["threads_per_rank"] == 1]
    for one in (r for r in ones if r["threads_per_rank"] is None and single):
        ceiling = 2 * one["wall_seconds"] / single[0]["wall_seconds"]
        lines.append("")
        lines.append(
            f"Two one-thread ranks can at best halve the one-thread time (`{single[0]['run']}`),"
            f" so against `{one['run']}`, which already runs on every core, 2 ranks can reach"
            f" about 2 x {one['wall_seconds']:.0f} / {single[0]['wall_seconds']:.0f} ="
            f" {ceiling:.2f}x on this machine."
        )
    lines += [
        "",
        f"Memory target per rank: one decoder layer ({target['one_decoder_layer_mib']} MiB"
        f" fp32) + statistics ({target['statistics_mib']} MiB) + 1 GiB ="
        f" {target['bound_mib']} MiB.",
    ]
    lines.append("")
    # keep the sections that tools/bench_solver.py and tools/bench_gpu_prune.py maintain
    previous = (out / "scale.md").read_text() if (out / "scale.md").exists() else ""
    for part in ("solver", "gpu-prune"):
        begin, end = f"<!-- {part}:begin -->", f"<!-- {part}:end -->"
        if begin in previous and end in previous:
            kept = previous[previous.index(begin) : previous.index(end) + len(end)]
            lines += [kept, ""]
    data = {"meta": meta, "runs": runs, "identical": identical}
    write_report(out, "scale", data, "\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
