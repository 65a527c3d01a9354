#!/usr/bin/env python
"""ARMOR solver speed: iterations per second for one matrix, on the CPU and (if present) a GPU.

Times the real solver (``armor_export.prune.armor.solve``) on random weights and
statistics of the given shapes: a few warm-up iterations, then ``--iterations`` timed
ones (patience disabled, so every iteration runs). Writes a section of
docs/benchmarks/scale.md (between markers, the rest of the file is kept) and
docs/benchmarks/solver.json.

It also times same-shape batches (``armor.solve_batch``, what ``--batch-same-shape``
uses) against the same matrices solved one by one, for SmolLM2's small shapes: the figure
that decides whether batching pays on a device.

    python tools/bench_solver.py                          # 4096x4096 and 11008x4096, b=128
    python tools/bench_solver.py --devices cpu,cuda --iterations 20
    python tools/bench_solver.py --devices cpu,cuda --merge   # on a GPU machine: keep the
                                                              # runs of other machines
    python tools/bench_solver.py --render                     # scale.md from solver.json

solver.json holds a list of runs, one per machine; each run's ratios (GPU vs that machine's
CPU) are paired, ratios between runs are not (different machines and times) and say so.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from benchlib import (
    cpu_description,
    machine,
    meta_lines,
    os_name,
    run_meta,
    torch_version,
    write_section,
)

BEGIN, END = "<!-- solver:begin -->", "<!-- solver:end -->"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="4096x4096,11008x4096", help="d_out x d_in, comma list")
    p.add_argument("--block-size", type=int, default=128)
    p.add_argument("--iterations", type=int, default=5, help="timed iterations per shape")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--devices", default="cpu,cuda", help="devices to try (absent ones skipped)")
    p.add_argument(
        "--batch-shapes", default="192x576,576x576,1536x576", help="shapes for the batch rows"
    )
    p.add_argument("--batch-count", type=int, default=8, help="matrices per batch")
    p.add_argument("--batch-block-size", type=int, default=64)
    p.add_argument("--out", default="docs/benchmarks")
    p.add_argument(
        "--merge",
        action="store_true",
        help="keep the runs of other machines already in OUT/solver.json (a run of this "
        "machine is replaced)",
    )
    p.add_argument(
        "--render", action="store_true", help="rewrite scale.md's section from solver.json only"
    )
    return p.parse_args(argv)


def time_solver(shape, block_size: int, iterations: int, warmup: int, device: str) -> dict:
    import torch

    from armor_export.prune import armor

    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(shape, generator=gen).to(device)
    hdiag = torch.rand(shape[1], generator=gen).add_(0.1).to(device)
    settings = armor.SolverSettings(
        block_size=block_size, iterations=warmup + iterations, patience=10**9
    )
    stamps: list[float] = []

    def tick(_it, _loss):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    start = time.perf_counter()
    armor.solve(weight, hdiag, settings, tick)
    total = time.perf_counter() - start
    # from the end of the last warm-up iteration (or the start) to the end of the last one
    timed = stamps[warmup - 1 :] if warmup > 0 else [start, *stamps]
    per_it = (timed[-1] - timed[0]) / (len(timed) - 1)
    return {
        "shape": list(shape),
        "block_size": block_size,
        "device": device,
        "threads": torch.get_num_threads() if device == "cpu" else None,
        "timed_iterations": len(timed) - 1,
        "seconds_per_iteration": round(per_it, 4),
        "iterations_per_s": round(1 / per_it, 3),
        "solve_seconds": round(total, 2),
    }


def time_batch(shape, count: int, block_size: int, iterations: int, device: str) -> dict:
    from armor_export.config import PruneConfig
    from armor_export.prune import batching

    cfg = PruneConfig.from_dict(
        {"device": device, "armor": {"block_size": block_size, "compile": False}}
    )
    batched, single = batching.probe_seconds(shape, count, cfg, iterations)
    return {
        "shape": list(shape),
        "block_size": block_size,
        "device": device,
        "count": count,
        "iterations": iterations,
        "batched_seconds": round(batched, 4),
        "one_by_one_seconds": round(single, 4),
        "speedup": round(single / batched, 3),
    }


def parse_shapes(text: str) -> list[tuple[int, int]]:
    return [tuple(int(d) for d in s.lower().split("x")) for s in text.split(",")]


def measure(devices: list[str], shapes, timer) -> list[dict]:
    """``timer(shape, device)`` for every device and shape, each row printed as it comes."""
    rows = []
    for dev in devices:
        for shape in shapes:
            row = timer(shape, dev)
            row["device_name"] = device_name(dev)
            print(row, file=sys.stderr)
            rows.append(row)
    return rows


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return cpu_description()


def main(argv=None) -> int:
    import torch

    args = parse_args(argv)
    out = Path(args.out)
    if args.render:
        write(out, load_runs(out / "solver.json"))
        return 0
    devices = []
    for dev in args.devices.split(","):
        if dev.startswith("cuda") and not torch.cuda.is_available():
            print(f"skipping {dev}: no CUDA device here", file=sys.stderr)
            continue
        devices.append(dev)
    rows = measure(
        devices,
        parse_shapes(args.shapes),
        lambda shape, dev: time_solver(shape, args.block_size, args.iterations, args.warmup, dev),
    )
    batch_rows = measure(
        devices,
        parse_shapes(args.batch_shapes),
        lambda shape, dev: time_batch(
            shape, args.batch_count, args.batch_block_size, args.iterations, dev
        ),
    )
    gpus = sorted({device_name(d) for d in devices if d.startswith("cuda")})
    meta = run_meta("bench_solver.py", argv, machine(*gpus, os_name(), torch_version()))
    run = {"meta": meta, "rows": rows, "batches": batch_rows}
    runs = [run]
    if args.merge and (out / "solver.json").exists():
        others = [r for r in load_runs(out / "solver.json") if not same_machine(r, run)]
        runs = others + [run]
    write(out, runs)
    return 0


def load_runs(path: Path) -> list[dict]:
    """The runs in solver.json (a file of the older one-run layout is one run)."""
    import json

    data = json.loads(path.read_text())
    return data["runs"] if "runs" in data else [data]


def same_machine(a: dict, b: dict) -> bool:
    """Same CPU and the same GPUs (torch version and OS aside)."""

    def key(run):
        names = {r["device_name"] for r in run["rows"] + run["batches"]}
        return run["meta"]["machine"].split(",")[0], tuple(sorted(names))

    return key(a) == key(b)


def write(out: Path, runs: list[dict]) -> None:
    from armor_export.io import write_json

    write_json(out / "solver.json", {"runs": runs})
    lines = [BEGIN, "## ARMOR solver: iterations per second, one matrix"]
    for run in runs:
        lines += run_lines(run)
    lines += comparison_lines(runs)
    if not any(r["device"].startswith("cuda") for run in runs for r in run["rows"]):
        lines += [
            "",
            "No GPU on this machine: the GPU rows are still to be measured "
            "(`python tools/bench_solver.py --devices cpu,cuda --merge` on a GPU machine).",
        ]
    lines.append(END)
    write_section(out / "scale.md", "\n".join(lines))


def run_lines(run: dict) -> list[str]:
    meta, rows, batch_rows = run["meta"], run["rows"], run["batches"]
    lines = [
        "",
        f"### {meta['machine']}",
        "",
        *meta_lines(meta),
        "- random weight and statistics, every iteration runs (patience off); fp32; "
        f"{rows[0]['timed_iterations'] if rows else 0} timed iterations after warm-up",
        "",
        "| device | shape | b | threads | s / iteration | iterations / s |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['device_name']} | {r['shape'][0]}x{r['shape'][1]} | {r['block_size']} | "
            f"{r['threads'] or '-'} | {r['seconds_per_iteration']:.3f} | "
            f"{r['iterations_per_s']:.2f} |"
        )
    lines += [
        "",
        "Same-shape matrices, one batched solve vs one by one:",
        "",
        "Random matrices, the same iterations timed both ways after a warm-up of each "
        "(one by one: one matrix's time x the count). `--batch-same-shape auto` runs a probe "
        "of this kind per shape (same device, same threads) before a run and batches only "
        "where the batch is at least 1.25x faster.",
        "",
        "| device | shape | b | matrices | iterations | batched s | one by one s | speed-up |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in batch_rows:
        lines.append(
            f"| {r['device_name']} | {r['shape'][0]}x{r['shape'][1]} | {r['block_size']} | "
            f"{r['count']} | {r['iterations']} | {r['batched_seconds']:.3f} | "
            f"{r['one_by_one_seconds']:.3f} | {r['speedup']:.2f}x |"
        )
    return lines


def comparison_lines(runs: list[dict]) -> list[str]:
    """GPU iterations/s over the CPU's, per shape: paired within a run, across runs not."""
    gpu_rows = [(run, r) for run in runs for r in run["rows"] if r["device"].startswith("cuda")]
    if not gpu_rows:
        return []
    lines = [
        "",
        "### GPU vs CPU",
        "",
        "Iterations/s of the GPU over a CPU's, same shape and block size. Against its own "
        "machine's CPU the ratio is paired (one run); against another machine's CPU it is not "
        "(different runs, times and machines).",
        "",
        "| shape | b | GPU | GPU it/s | CPU | CPU it/s | GPU / CPU | paired |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run, g in gpu_rows:
        for other in runs:
            for c in other["rows"]:
                if c["device"] != "cpu" or c["shape"] != g["shape"]:
                    continue
                if c["block_size"] != g["block_size"]:
                    continue
                ratio = g["iterations_per_s"] / c["iterations_per_s"]
                lines.append(
                    f"| {g['shape'][0]}x{g['shape'][1]} | {g['block_size']} | "
                    f"{g['device_name']} | {g['iterations_per_s']:.2f} | {c['device_name']} | "
                    f"{c['iterations_per_s']:.3f} | {ratio:.1f}x | "
                    f"{'yes' if other is run else 'no'} |"
                )
    return lines


if __name__ == "__main__":
    sys.exit(main())
