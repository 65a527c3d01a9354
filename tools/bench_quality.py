#!/usr/bin/env python
"""Quality benchmark: perplexity and wall time of every method on SmolLM2-135M at 2:4.

Writes docs/benchmarks/quality.md, quality.json and armor_proxy_loss.png. Each finished
method is recorded in <work>/bench_state.json, so a killed run resumes where it stopped.

Every method is one ``armor_export.prune.api.prune`` run into its own folder, calibration
included, so each reported time is what a user running that method alone waits
(calibration + solve).

    python tools/bench_quality.py                  # the full benchmark (about an hour)
    python tools/bench_quality.py --calib-samples 8 --eval-windows 4 --iterations 5  # smoke
"""

from __future__ import annotations

import argparse
import logging
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch
from benchlib import NO_GPU, command, machine, torch_version, utc_now

from armor_export.config import CalibrationConfig, EvalConfig, PruneConfig
from armor_export.eval.api import eval_windows_for
from armor_export.eval.perplexity import perplexity
from armor_export.io import read_json, write_json, write_text
from armor_export.progress import RichReporter
from armor_export.prune import methods
from armor_export.prune.api import prune
from armor_export.prune.checkpoint import load_checkpoint, versions
from armor_export.report import collect

log = logging.getLogger("bench_quality")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--methods", default=",".join(methods.names()), help="registered methods")
    p.add_argument("--block-sizes", default="32,64", help="ARMOR block sizes")
    p.add_argument(
        "--weightings",
        default="normalized",
        help="ARMOR proxy-loss weightings to run (normalized,output)",
    )
    p.add_argument("--iterations", type=int, default=None, help="ARMOR iterations (config default)")
    p.add_argument("--calib-samples", type=int, default=128)
    p.add_argument("--calib-seqlen", type=int, default=512)
    p.add_argument("--eval-windows", type=int, default=64)
    p.add_argument("--eval-seqlen", type=int, default=1024)
    p.add_argument("--work", default="runs/bench_quality")
    p.add_argument("--out", default="docs/benchmarks")
    p.add_argument("--fresh", action="store_true", help="ignore a previous bench_state.json")
    return p.parse_args(argv)


def runs(args) -> list[tuple[str, str, int | None, str | None]]:
    """(key, method, block size, weighting) in the order they run."""
    out = []
    for method in args.methods.split(","):
        if method == "armor":
            for weighting in args.weightings.split(","):
                suffix = "" if weighting == "normalized" else f"-{weighting}"
                out += [
                    (f"armor-b{b}{suffix}", "armor", int(b), weighting)
                    for b in args.block_sizes.split(",")
                ]
        else:
            out.append((method, method, None, None))
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    state_path = work / "bench_state.json"
    # settings every measurement depends on; which methods run may change between resumes
    shared = (
        "model",
        "iterations",
        "calib_samples",
        "calib_seqlen",
        "eval_windows",
        "eval_seqlen",
        "work",
    )
    settings = {k: getattr(args, k) for k in shared}
    state = read_json(state_path) if state_path.exists() and not args.fresh else {}
    if {k: state.get("settings", {}).get(k) for k in shared} != settings:
        state = {"settings": settings, "results": {}}
    this_command = command("bench_quality.py", argv)
    if this_command not in state.setdefault("commands", []):
        state["commands"].append(this_command)
    reporter = RichReporter()
    eval_cfg = EvalConfig("wikipedia", args.eval_windows, args.eval_seqlen)
    calib = CalibrationConfig(n_samples=args.calib_samples, seqlen=args.calib_seqlen)

    from armor_export.data.models import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(args.model)
    windows = eval_windows_for(tokenizer, eval_cfg)
    if "dense" not in state["results"]:
        start = time.perf_counter()
        ppl = perplexity(model, windows, eval_cfg.batch_size, reporter, "dense perplexity")
        state["results"]["dense"] = {"ppl": ppl, "eval_seconds": time.perf_counter() - start}
        write_json(state_path, state)
    del model

    for key, method, block, weighting in runs(args):
        out_dir = work / key
        if key in state["results"]:
            log.info("%s: already measured", key)
            continue
        if out_dir.exists():
            shutil.rmtree(out_dir)  # a half-finished run would mix in unmeasured time
        cfg = PruneConfig(
            model=args.model, method=method, output_dir=str(out_dir), calibration=calib
        )
        if block is not None:
            cfg.armor.block_size = block
            cfg.armor.weighting = weighting
        if args.iterations is not None:
            cfg.armor.iterations = args.iterations
        log.info("%s: pruning", key)
        result = prune(cfg, reporter)
        # sequential methods (SparseGPT) interleave calibration and solving: no split
        calibration = result.timings.get("calibration")
        pruned, _ = load_checkpoint(out_dir)
        start = time.perf_counter()
        ppl = perplexity(pruned, windows, eval_cfg.batch_size, reporter, f"{key} perplexity")
        entry = {
            "method": method,
            "ppl": ppl,
            "seconds": result.seconds,
            **({} if calibration is None else {"calibration_seconds": calibration}),
            "eval_seconds": time.perf_counter() - start,
        }
        if block is not None:
            entry["block_size"] = block
            entry["weighting"] = weighting
            entry.update(result.armor_summary)
            losses = [(m["proxy_loss"], m["nowag_loss"]) for m in result.metrics.values()]
            entry["mean_loss_ratio_vs_nowag"] = sum(a / b for a, b in losses) / len(losses)
            entry["iterations"] = cfg.armor.iterations
        state["results"][key] = entry
        write_json(state_path, state)
        del pruned

    report(args, state, work)
    return 0


def report(args, state, work: Path) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res = state["results"]
    dense = res["dense"]["ppl"]
    # the methods held to NoWag-P's loss (ARMOR) against the baselines
    ours = {k for k, v in res.items() if k != "dense" and methods.get(v["method"]).bounded_by_nowag}
    baselines = {k: v for k, v in res.items() if k != "dense" and k not in ours}
    armor = {k: res[k] for k in ours}
    best_key = min(baselines, key=lambda k: baselines[k]["ppl"]) if baselines else None
    best_gap = baselines[best_key]["ppl"] - dense if best_key else None
    data = {
        "command": " && ".join(state.get("commands", [])),
        "machine": machine(NO_GPU, torch_version()),
        "date": utc_now("%Y-%m-%d"),
        "versions": versions(),
        "model": args.model,
        "calibration": f"{args.calib_samples} x {args.calib_seqlen} tokens of Botchan",
        "evaluation": f"{args.eval_windows} x {args.eval_seqlen} tokens of the Wikipedia sample",
        "dense_ppl": dense,
        "methods": {k: v for k, v in res.items() if k != "dense"},
    }
    for entry in armor.values():
        if best_gap:
            entry["gap_ratio_vs_best_baseline"] = (entry["ppl"] - dense) / best_gap
    write_json(out / "quality.json", data)
    plot_histories(work, armor, out / "armor_proxy_loss.png")

    lines = [
        "# Quality: SmolLM2-135M at 2:4",
        "",
        *[f"- Command: `{c}`" for c in state.get("commands", [])],
        f"- Machine: {data['machine']}",
        f"- Date: {data['date']}",
        f"- Calibration: {data['calibration']}; evaluation: {data['evaluation']}",
        "- Time: wall time of `prune` (calibration + solve), on this machine, in one run.",
        "",
        "| method | block | perplexity | gap to dense | seconds | matrices <= NoWag-P |",
        "|---|---|---|---|---|---|",
        f"| dense | | {dense:.2f} | | | |",
    ]
    for e in data["methods"].values():
        below = (
            f"{e['matrices_at_or_below_nowag']}/{e['matrices_total']}"
            if "matrices_total" in e
            else ""
        )
        name = e["method"] + (
            f" ({e['weighting']} loss)" if e.get("weighting", "normalized") != "normalized" else ""
        )
        lines.append(
            f"| {name} | {e.get('block_size', '')} | {e['ppl']:.2f} | "
            f"{e['ppl'] - dense:+.2f} | {e['seconds']:.0f} | {below} |"
        )
    lines.append("")
    if best_key:
        lines.append(f"Best baseline: {best_key} (gap {best_gap:.2f}).")
        for key, e in armor.items():
            ok = "meets" if e["gap_ratio_vs_best_baseline"] <= 0.40 else "misses"
            t_ok = "meets" if e["seconds"] <= 1800 else "misses"
            lines.append(
                f"- {key}: gap ratio {e['gap_ratio_vs_best_baseline']:.3f} ({ok} the 0.40 "
                f"target); {e['seconds'] / 60:.1f} min ({t_ok} the 30-minute target); mean "
                f"proxy loss {e['mean_loss_ratio_vs_nowag']:.3f} x NoWag-P."
            )
    lines += [
        "",
        "ARMOR per matrix shape (one worker process, one thread each):",
        "",
        "| run | shape | matrices | median seconds | median loss / NoWag-P |",
        "|---|---|---|---|---|",
    ]
    for key in armor:
        for shape, (n, secs, ratio) in per_shape(work / key).items():
            lines.append(f"| {key} | {shape} | {n} | {secs:.1f} | {ratio:.3f} |")
    lines += ["", "![ARMOR proxy loss vs iteration](armor_proxy_loss.png)", ""]
    write_text(out / "quality.md", "\n".join(lines))
    print("\n".join(lines))


def per_shape(run_dir: Path) -> dict[str, tuple[int, float, float]]:
    """shape -> (count, median job seconds, median proxy loss / NoWag-P loss) of the ARMOR
    matrices of a checkpoint (shapes in the order of the first matrix name of each)."""
    groups: dict[str, list[tuple[float, float]]] = {}
    for m in sorted(armor_matrices(run_dir), key=lambda m: m.name):
        groups.setdefault(f"{m.d_out}x{m.d_in}", []).append((m.seconds, m.ratio))
    return {  # the lower middle value of an even count, as the report has always shown
        shape: (
            len(rows),
            statistics.median_low(r[0] for r in rows),
            statistics.median_low(r[1] for r in rows),
        )
        for shape, rows in groups.items()
    }


def armor_matrices(run_dir: Path) -> list:
    """The checkpoint's ARMOR matrices as the pruning report reads them (shape, job seconds,
    losses, loss history per iteration)."""
    return [m for m in collect(run_dir).matrices if m.kind == "armor"]


def plot_histories(work: Path, armor: dict, path: Path) -> None:
    """Median (and 10-90 % band) of proxy loss / NoWag-P loss vs iteration, per block size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for key in armor:
        curves = [
            torch.tensor(m.history) / m.history[0] for m in armor_matrices(work / key) if m.history
        ]
        if not curves:
            continue
        length = max(len(c) for c in curves)
        # a matrix that stopped early keeps its final loss
        padded = torch.stack([torch.cat([c, c[-1].repeat(length - len(c))]) for c in curves])
        q = torch.quantile(padded, torch.tensor([0.1, 0.5, 0.9]), dim=0)
        x = range(length)
        ax.plot(x, q[1], label=f"{key} median ({len(curves)} matrices)")
        ax.fill_between(x, q[0], q[2], alpha=0.2)
    ax.axhline(1.0, color="grey", lw=0.8, ls="--", label="NoWag-P (start)")
    ax.set_xlabel("iteration")
    ax.set_ylabel("optimised proxy loss / its NoWag-P start")
    ax.set_title("ARMOR on SmolLM2-135M: proxy loss per matrix (10-90 % band)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
