"""Prove a refactor left pruning and export unchanged: the same runs, two trees, bit for bit.

``run TREE OUT`` prunes layers of the real SmolLM2 with every registered method. Each run
uses the package in ``TREE`` (a checkout or ``git worktree`` of another commit) and a
small calibration. It then exports the ARMOR checkpoint to fp16 ONNX. ``compare BEFORE
AFTER`` checks three things between two such folders:
- every checkpoint tensor, calibration statistic and per-matrix loss is identical;
- the ONNX files are identical, leaving out the tracer's per-node stack traces, which name
  source files by absolute path and line number;
- every initializer is among what is compared, because the weights are not dropped.
It writes ``docs/benchmarks/refactor_identity.{md,json}``.

ARMOR's jobs are deterministic functions of (weight, statistics, config), one matrix at a
time. Identical results on a subset of layers, with the full 100-iteration solve, therefore
show that the solver and the job driver are unchanged. A full quality run repeats the same
computation on 210 matrices and takes about an hour on 2 cores.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path

from benchlib import NO_GPU, machine, os_name, run_meta, torch_version, write_report

LAYERS = ("model.layers.0.*", "model.layers.17.*")
CALIB_SAMPLES = 16
BLOCK_SIZE = 64


def prune_commands(out: Path) -> list[list[str]]:
    """The armor-export commands of one run, each a list of arguments."""
    from armor_export.prune import methods

    commands = []
    for method in methods.names():
        include = [arg for layer in LAYERS for arg in ("--include", layer)]
        commands.append(
            ["prune", "--method", method, "--block-size", str(BLOCK_SIZE), *include,
             "--calib-samples", str(CALIB_SAMPLES), "--workers", "1", "-o", str(out / method),
             "-q"]
        )  # fmt: skip
    commands.append(
        ["export", str(out / "armor"), "-o", str(out / "onnx-armor"), "--dtype", "float16", "-q"]
    )
    return commands


def run(tree: Path, out: Path) -> None:
    for args in prune_commands(out.resolve()):
        print("+ armor-export", " ".join(args), flush=True)
        subprocess.run([sys.executable, "-m", "armor_export", *args], cwd=tree, check=True)


def _tensors_equal(first: Path, second: Path) -> tuple[int, bool]:
    import torch
    from safetensors.torch import load_file

    a, b = load_file(first), load_file(second)
    return len(a), a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _losses(checkpoint: Path) -> dict:
    manifest = json.loads((checkpoint / "armor_manifest.json").read_text())
    return {
        name: (info.get("proxy_loss"), info.get("nowag_loss"))
        for name, info in manifest["matrices"].items()
    }


def graph_digest(onnx_path: Path) -> str:
    """sha256 of the ONNX model, weights included, without per-node debug metadata."""
    import onnx

    model = onnx.load(str(onnx_path))
    for node in model.graph.node:
        node.ClearField("metadata_props")
        node.ClearField("doc_string")
    return hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()


def _checkpoint_row(folder: Path, other: Path) -> dict:
    n_tensors, tensors = _tensors_equal(folder / "model.safetensors", other / "model.safetensors")
    stats = Path("work") / "stats.safetensors"
    n_stats, stats_equal = 0, True
    if (folder / stats).is_file():
        n_stats, stats_equal = _tensors_equal(folder / stats, other / stats)
    losses = _losses(folder)
    return {
        "run": folder.name,
        "matrices": len(losses),
        "tensors": n_tensors,
        "tensors_identical": tensors,
        "statistics": n_stats,
        "statistics_identical": stats_equal,
        "losses_identical": losses == _losses(other),
    }


def _export_row(folder: Path, other: Path) -> dict:
    first, second = folder / "model.onnx", other / "model.onnx"
    return {
        "run": folder.name,
        "onnx_bytes_identical": first.read_bytes() == second.read_bytes(),
        "onnx_identical_without_debug_metadata": graph_digest(first) == graph_digest(second),
    }


def compare(before: Path, after: Path) -> dict:
    from armor_export.export_manifest import MANIFEST

    folders = sorted(p for p in before.iterdir() if p.is_dir())
    rows = [
        _checkpoint_row(p, after / p.name) for p in folders if (p / "armor_manifest.json").is_file()
    ] + [_export_row(p, after / p.name) for p in folders if (p / MANIFEST).is_file()]
    # the bytes of an ONNX file hold source paths: they are reported, not required
    checks = [
        value
        for row in rows
        for key, value in row.items()
        if key.endswith("identical") and key != "onnx_bytes_identical"
    ]
    return {"rows": rows, "identical": bool(checks) and all(checks)}


def markdown(data: dict) -> str:
    lines = [
        "# Refactor identity: the same prune and export runs on two trees",
        "",
        f"- command: `{data['command']}`",
        f"- date: {data['date']}",
        f"- machine: {data['machine']}",
        f"- before: {data['before']}; after: {data['after']}",
        f"- runs: SmolLM2-135M, layers {', '.join(LAYERS)} (14 matrices), {CALIB_SAMPLES} "
        f"calibration samples, ARMOR b={BLOCK_SIZE} with its default 100 iterations; every "
        "registered method; the ARMOR checkpoint exported to fp16 ONNX",
        "",
        "| run | matrices | tensors identical | statistics identical | losses identical |",
        "|---|---|---|---|---|",
    ]
    for row in data["rows"]:
        if "matrices" in row:
            lines.append(
                f"| {row['run']} | {row['matrices']} | {row['tensors_identical']} "
                f"({row['tensors']}) | {row['statistics_identical']} ({row['statistics']}) | "
                f"{row['losses_identical']} |"
            )
    lines += ["", "| export | bytes identical | identical without per-node stack traces |",
              "|---|---|---|"]  # fmt: skip
    for row in data["rows"]:
        if "onnx_bytes_identical" in row:
            lines.append(
                f"| {row['run']} | {row['onnx_bytes_identical']} | "
                f"{row['onnx_identical_without_debug_metadata']} |"
            )
    lines += [
        "",
        f"**{'IDENTICAL' if data['identical'] else 'DIFFERENT'}.** The ONNX files differ "
        "byte for byte only where the tracer's per-node stack traces name source files by "
        "absolute path and line number. The weights and the graph are compared in full.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="verb", required=True)
    p_run = sub.add_parser("run", help="prune and export with the package in TREE")
    p_run.add_argument("tree", type=Path)
    p_run.add_argument("out", type=Path)
    p_cmp = sub.add_parser("compare", help="compare two run folders bit for bit")
    p_cmp.add_argument("before", type=Path)
    p_cmp.add_argument("after", type=Path)
    p_cmp.add_argument("--before-label", default="before")
    p_cmp.add_argument("--after-label", default="after")
    p_cmp.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    args = parser.parse_args(argv)
    if args.verb == "run":
        run(args.tree, args.out)
        return 0
    result = compare(args.before, args.after)
    host = machine(os_name(release=True), NO_GPU, torch_version())
    data = {
        **run_meta("compare_runs.py", argv, host),
        "before": args.before_label,
        "after": args.after_label,
        **result,
    }
    write_report(args.out, "refactor_identity", data, markdown(data))
    print(markdown(data))
    return 0 if result["identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
