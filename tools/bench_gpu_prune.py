#!/usr/bin/env python
"""The full SmolLM2-135M ARMOR prune on a GPU, with the scale benchmark's settings.

Runs ``armor-export prune --device cuda`` (one process, low memory, batched same-shape
solves on ``auto``) with the settings of tools/bench_scale.py, then ``armor-export eval``
of the checkpoint, and compares every matrix's final proxy loss with a CPU run's manifest
(by default the 1-rank run of tools/bench_scale.py). Writes docs/benchmarks/gpu_prune.json
and the GPU section of docs/benchmarks/scale.md (between markers; the rest is kept).

    python tools/bench_gpu_prune.py        # exits 1 with a message where there is no GPU
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchlib import (
    config_toml,
    machine,
    meta_lines,
    os_name,
    rank_records,
    run_meta,
    torch_version,
    write_section,
)

BEGIN, END = "<!-- gpu-prune:begin -->", "<!-- gpu-prune:end -->"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--device", default="cuda")
    p.add_argument("--block-size", type=int, default=64)
    p.add_argument("--iterations", type=int, default=100)
    p.add_argument("--calib-samples", type=int, default=128)
    p.add_argument("--calib-seqlen", type=int, default=512)
    p.add_argument(
        "--cpu-manifest",
        default="runs/bench_scale/ranks1/armor_manifest.json",
        help="a CPU run's armor_manifest.json to compare proxy losses with (skipped if absent)",
    )
    p.add_argument("--eval-windows", type=int, default=64, help="0 skips the perplexity")
    p.add_argument("--eval-seqlen", type=int, default=1024)
    p.add_argument("--work", default="runs/bench_gpu_prune")
    p.add_argument("--out", default="docs/benchmarks")
    args = p.parse_args(argv)
    args.in_memory = False
    return args


def main(argv=None) -> int:
    import torch

    args = parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"no CUDA GPU here (torch {torch.__version__}): nothing to measure", file=sys.stderr)
        return 1
    work = Path(args.work)
    out_dir = work / "checkpoint"
    shutil.rmtree(out_dir, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    config = work / "prune.toml"
    config.write_text(config_toml(args, out_dir, device=args.device))
    cmd = [sys.executable, "-m", "armor_export", "prune", "--config", str(config)]
    prepare_model(args.model)  # a one-off GGUF conversion stays out of the timed run
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - start
    rank = rank_records(out_dir)[0]
    manifest = json.loads((out_dir / "armor_manifest.json").read_text())["matrices"]
    result = {
        "wall_seconds": round(wall, 1),
        "calibration_seconds": rank.get("calibration_seconds"),
        "peak_rss_mib": rank.get("peak_rss_mib"),
        "matrices": len(manifest),
        "at_or_below_nowag": sum(m["proxy_loss"] <= m["nowag_loss"] for m in manifest.values()),
        "batched_matrices": sum(1 for m in manifest.values() if m.get("batch")),
    }
    cpu_path = Path(args.cpu_manifest)
    if cpu_path.is_file():
        cpu = json.loads(cpu_path.read_text())["matrices"]
        ratios = sorted(manifest[n]["proxy_loss"] / cpu[n]["proxy_loss"] for n in cpu)
        result["proxy_loss_vs_cpu"] = {
            "cpu_manifest": str(cpu_path),
            "min": round(ratios[0], 4),
            "median": round(statistics.median(ratios), 4),
            "max": round(ratios[-1], 4),
        }
    if args.eval_windows:
        eval_json = work / "eval.json"
        subprocess.run(
            [sys.executable, "-m", "armor_export", "eval", str(out_dir), "-q",
             "--text", "wikipedia", "--windows", str(args.eval_windows),
             "--seqlen", str(args.eval_seqlen), "--json", str(eval_json)],
            check=True,
        )  # fmt: skip
        result["perplexity"] = round(json.loads(eval_json.read_text())["perplexity"], 2)
    gpu = torch.cuda.get_device_name() if args.device.startswith("cuda") else "none"
    meta = {
        **run_meta("bench_gpu_prune.py", argv, machine(gpu, os_name(), torch_version())),
        "device": args.device,
        "settings": {k: getattr(args, k) for k in ("model", "block_size", "iterations",
                                                     "calib_samples", "calib_seqlen")},
    }  # fmt: skip
    write(Path(args.out), meta, result)
    print(json.dumps(result, indent=2))
    return 0


def prepare_model(model: str) -> None:
    """Convert the default model into the cache now if it is not there yet."""
    from armor_export.data import assets, models

    if model.lower() == models.DEFAULT_MODEL:
        assets.default_model_dir()


def write(out: Path, meta: dict, result: dict) -> None:
    from armor_export.io import write_json

    write_json(out / "gpu_prune.json", {"meta": meta, "result": result})
    lines = [
        BEGIN,
        "## Full prune on a GPU",
        "",
        *meta_lines(meta),
        f"- machine: {meta['machine']}",
        f"- settings: {meta['settings']}, one process, low memory, `--device {meta['device']}`,"
        " batched same-shape solves on `auto`",
        "",
        "| wall time (s) | calibration (s) | peak RSS (MiB) | matrices <= NoWag-P "
        "| batched matrices | perplexity (Wikipedia) |",
        "|---|---|---|---|---|---|",
        f"| {result['wall_seconds']:.0f} | {result['calibration_seconds']} | "
        f"{result['peak_rss_mib']} | {result['at_or_below_nowag']}/{result['matrices']} | "
        f"{result['batched_matrices']} | {result.get('perplexity', '-')} |",
    ]
    vs = result.get("proxy_loss_vs_cpu")
    if vs:
        lines += [
            "",
            f"Final proxy loss per matrix over the CPU run's ({vs['cpu_manifest']}): "
            f"min {vs['min']:.3f}, median {vs['median']:.3f}, max {vs['max']:.3f}.",
        ]
    lines.append(END)
    write_section(out / "scale.md", "\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
