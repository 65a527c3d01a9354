#!/usr/bin/env python
"""2:4 + 8-bit benchmark: quality, bytes and ONNX Runtime CPU speed of INT8/FP8 cores.

On SmolLM2-135M, in one run:

- **Quality**: Wikipedia perplexity of dense, dense INT8/FP8 (the same W8A8 schemes on every
  decoder linear, PyTorch only: our export takes 2:4 cores), SparseGPT 2:4 (+ INT8/FP8),
  ARMOR b=64 (+ INT8/FP8, post-hoc and with the re-fit, and INT8 with smoothing), each in
  PyTorch (fake-quant reference) and, for the exported ones, through ONNX Runtime on the
  export (``armor-export eval <export>``).
- **Bytes**: checkpoint, ONNX + data, and the TensorRT-RTX engine (built on this CPU).
- **Speed**: prefill and decode tokens/s on ONNX Runtime CPU of the exports, in interleaved
  rounds, through our runtime and ONNX Runtime GenAI.

Every step's result is kept in ``<work>/state.json``: a rerun does only what is missing.
Writes docs/benchmarks/quant.md and quant.json.

    python tools/bench_quant.py   # runs/bench_quant/{armor-b64,sparsegpt}: see --help
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchlib import (
    ExportRunner,
    GenaiRunner,
    interleaved_rounds,
    meta_lines,
    ort_run_meta,
    prompt_ids,
    write_report,
)

log = logging.getLogger("bench_quant")
CLI = [sys.executable, "-m", "armor_export"]
SCHEMES = ("int8", "fp8")
# the fp32 exports timed, and the fp16 exports whose engines are built (label -> variant)
SPEED = ("dense", "armor", "armor-int8-refit-wodown", "armor-fp8-refit")
ENGINES = {
    "dense": "dense",
    "ARMOR": "armor",
    "ARMOR INT8 (down_proj weight-only)": "armor-int8-refit-wodown",
    "ARMOR INT8 (all W8A8)": "armor-int8-refit",
    "ARMOR FP8": "armor-fp8-refit",
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dense", default="smollm2-135m")
    p.add_argument("--armor", default="runs/bench_quant/armor-b64", help="ARMOR b=64 checkpoint")
    p.add_argument("--sparsegpt", default="runs/bench_quant/sparsegpt", help="SparseGPT 2:4")
    p.add_argument("--work", default="runs/bench_quant")
    p.add_argument("--out", default="docs/benchmarks")
    p.add_argument("--windows", type=int, default=32, help="Wikipedia windows")
    p.add_argument("--seqlen", type=int, default=1024)
    p.add_argument("--smoothing", type=float, default=0.5, help="α of the smoothed variant")
    p.add_argument("--skip", action="append", default=[], help="quality|ort|engine|speed")
    p.add_argument(
        "--ort",
        nargs="+",
        default=["dense", "armor", "armor-int8-refit-wodown", "armor-fp8-refit"],
        help="variants whose export's perplexity is measured through ONNX Runtime too",
    )
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--prefill", type=int, default=512)
    p.add_argument("--decode-prompt", type=int, default=128)
    p.add_argument("--decode-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--note", action="append", default=[])
    p.add_argument(
        "--report-only",
        action="store_true",
        help="write the report from what state.json holds, running nothing",
    )
    return p.parse_args(argv)


class Missing(Exception):
    """A step --report-only cannot report: it has not run."""


class State:
    """``state.json``: each step's result, written after each step (a rerun resumes)."""

    def __init__(self, path: Path):
        self.path = path
        self.data = json.loads(path.read_text()) if path.is_file() else {}

    only = False  # --report-only: a missing step is left out, not run

    def step(self, key: str, fn):
        if key not in self.data and self.only:
            raise Missing(key)
        if key not in self.data:
            start = time.perf_counter()
            result = fn()
            if isinstance(result, dict):
                result.setdefault("seconds", round(time.perf_counter() - start, 1))
            self.data[key] = result
            self.path.write_text(json.dumps(self.data, indent=2))
        return self.data[key]


def run(args: list[str], what: str) -> None:
    log.info("%s: %s", what, " ".join(args))
    proc = subprocess.run(CLI + args, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{what} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and "work" not in p.parts)


def checkpoints(args, work: Path, state: State) -> dict[str, dict]:
    """name -> {"path", "method", "scheme", "refit", "smoothing"}: the pruned and quantized
    checkpoints (quantized here with ``armor-export quantize``)."""
    out = {
        "sparsegpt": {"path": args.sparsegpt, "method": "SparseGPT"},
        "armor": {"path": args.armor, "method": "ARMOR b=64"},
    }
    # (base, scheme, refit, smoothing, float-input globs): W8A8 on every core first, then
    # with the MLP down projections weight-only (int8's default, docs/quant.md)
    everywhere: list[str] = []
    down = ["*.down_proj"]
    plans = [("armor", s, r, None, everywhere) for s in SCHEMES for r in (True, False)]
    plans.append(("armor", "int8", True, args.smoothing, everywhere))
    plans += [("sparsegpt", s, True, None, everywhere) for s in SCHEMES]
    plans += [("armor", s, True, None, down) for s in SCHEMES]
    plans.append(("armor", "int8", True, args.smoothing, down))
    plans += [("sparsegpt", s, True, None, down) for s in SCHEMES]
    for base, scheme, refit, smoothing, float_inputs in plans:
        name = f"{base}-{scheme}" + ("" if base != "armor" else "-refit" if refit else "-posthoc")
        if smoothing is not None:
            name += f"-smooth{smoothing:g}"
        if float_inputs:
            name += "-wodown"  # weight-only down projections
        path = work / name
        flags = ["--scheme", scheme] + ([] if refit else ["--no-refit"])
        flags += [] if smoothing is None else ["--smoothing", str(smoothing)]
        for glob in float_inputs or ["none"]:
            flags += ["--float-activations", glob]

        def quantize(path=path, base=base, flags=flags, name=name):
            start = time.perf_counter()
            run(["quantize", out[base]["path"], "-o", str(path), *flags], f"quantize {name}")
            return {"seconds": round(time.perf_counter() - start, 1)}

        try:
            timing = state.step(f"quantize:{name}", quantize)
        except Missing:
            continue
        out[name] = {
            "path": str(path),
            "method": out[base]["method"],
            "scheme": scheme,
            "refit": refit if base == "armor" else None,
            "smoothing": smoothing,
            "float_inputs": float_inputs,
            "quantize_seconds": timing["seconds"],
        }
    return out


def proxy_losses(path: str) -> dict | None:
    manifest = json.loads((Path(path) / "armor_manifest.json").read_text())
    quant = [m["quant"] for m in manifest["matrices"].values() if "quant" in m]
    if not quant:
        return None
    mean = {
        k: statistics.mean(q.get(k, q["loss_quantized"]) for q in quant)
        for k in ("loss_pruned", "loss_quantized", "loss_refit")
    }
    raised = sum(q.get("loss_refit", q["loss_quantized"]) > q["loss_quantized"] for q in quant)
    return {**mean, "matrices": len(quant), "refit_raised": raised}


def eval_cli(target: str, args, json_path: Path) -> dict:
    run(["eval", target, "--windows", str(args.windows), "--seqlen",
         str(args.seqlen), "--json", str(json_path)], f"eval {target}")  # fmt: skip
    return json.loads(json_path.read_text())


def dense_quant_ppl(args, scheme: str) -> dict:
    """Dense SmolLM2 with every decoder linear in the scheme (per-channel weights, per-tensor
    activations from the same calibration as the prunes), in PyTorch."""
    import torch

    from armor_export.config import EvalConfig, PruneConfig
    from armor_export.data.models import load_model_and_tokenizer
    from armor_export.eval.api import evaluate
    from armor_export.models.registry import adapter_for
    from armor_export.prune.api import calibration_batches, select_linears
    from armor_export.prune.linear import QuantLinear, set_submodule
    from armor_export.quant import schemes
    from armor_export.quant.api import core_input_amax
    from armor_export.quant.core import QuantCore, activation_scale

    torch.manual_seed(0)
    model, tokenizer = load_model_and_tokenizer(args.dense)
    model.eval()
    cfg = PruneConfig(model=args.dense)
    names = list(select_linears(model, adapter_for(model), cfg)[0])
    batches = calibration_batches(tokenizer, cfg, model.config)
    with torch.no_grad():
        amax = core_input_amax(model, names, batches)
        spec = schemes.get(scheme)
        for name in names:
            lin = model.get_submodule(name)
            qc = QuantCore.from_float(
                lin.weight.detach(), activation_scale(float(amax[name].max()), spec), scheme, name
            )
            bias = None if lin.bias is None else lin.bias.detach()
            mask = torch.ones_like(lin.weight, dtype=torch.bool)
            set_submodule(model, name, QuantLinear(qc, mask, bias))
    result = evaluate(args.dense, EvalConfig("wikipedia", args.windows, args.seqlen), model=model,
                      tokenizer=tokenizer)  # fmt: skip
    return {"perplexity": result.perplexity, "tokens": result.tokens}


def ensure_export(path: str, out: Path, dtype: str, report_only: bool = False) -> Path | None:
    if not (out / "export_manifest.json").is_file():
        if report_only:
            return None
        run(["export", path, "-o", str(out), "--dtype", dtype], f"export {out.name}")
    return out


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    state = State(work / "state.json")
    meta = ort_run_meta("bench_quant.py", argv)
    meta["eval"] = {"text": "wikipedia", "windows": args.windows, "seqlen": args.seqlen}
    state.only = args.report_only
    variants = checkpoints(args, work, state)
    quality: dict[str, dict] = {}
    evals = work / "evals"
    evals.mkdir(exist_ok=True)

    def got(key: str, fn):
        """The step's result; None when --report-only finds it not run."""
        try:
            return state.step(key, fn)
        except Missing:
            return None

    # --- quality in PyTorch
    if "quality" not in args.skip:
        dense = got("ppl:dense", lambda: eval_cli(args.dense, args, evals / "dense.json"))
        if dense:
            quality["dense"] = {"method": "dense", "scheme": None, **dense}
        for scheme in SCHEMES:
            res = got(f"ppl:dense-{scheme}", lambda s=scheme: dense_quant_ppl(args, s))
            if res:
                quality[f"dense-{scheme}"] = {"method": "dense", "scheme": scheme, **res}
        for name, v in variants.items():

            def ppl(v=v, n=name):
                return eval_cli(v["path"], args, evals / f"{n}.json")

            res = got(f"ppl:{name}", ppl)
            if res:
                quality[name] = {**v, **res, "proxy": proxy_losses(v["path"])}

    # --- exports: float32 for ONNX Runtime (quality and speed), float16 for the engines
    exports: dict[str, Path] = {}
    sources = {"dense": args.dense, **{n: v["path"] for n, v in variants.items()}}
    for name, src in sources.items():
        if name not in args.ort and name not in SPEED:
            continue
        folder = ensure_export(src, work / "onnx" / f"{name}-fp32", "float32", args.report_only)
        if folder:
            exports[name] = folder
    if "ort" not in args.skip:
        for name, folder in exports.items():
            if name not in args.ort:
                continue
            res = got(f"ort-ppl:{name}", lambda f=folder, n=name: eval_cli(
                str(f), args, evals / f"{n}-ort.json"))  # fmt: skip
            if res and name in quality:
                quality[name]["ort_perplexity"] = res["perplexity"]

    # --- bytes: checkpoint, export, engine
    sizes: dict[str, dict] = {}
    for label, name in ENGINES.items():
        src = sources.get(name)
        fp16 = src and ensure_export(src, work / "onnx" / f"{name}-fp16", "float16",
                                     args.report_only)  # fmt: skip
        if not fp16:
            continue
        entry = {"export_fp16_bytes": folder_bytes(fp16)}
        if name in exports:
            entry["export_fp32_bytes"] = folder_bytes(exports[name])
        if Path(src).is_dir():
            entry["checkpoint_bytes"] = (Path(src) / "model.safetensors").stat().st_size
        if "engine" not in args.skip:
            engine = work / "engine" / name

            def build(fp16=fp16, engine=engine):
                run(["engine", str(fp16), "-o", str(engine)], f"engine {engine.name}")
                report = json.loads((engine / "build_report.json").read_text())
                return {"bytes": (engine / "model.engine").stat().st_size,
                        "targets": report.get("compute_capability")}  # fmt: skip

            entry["engine"] = got(f"engine:{name}", build)
        sizes[label] = entry

    # --- speed on ONNX Runtime CPU
    speed = None
    if "speed" not in args.skip and all(n in exports for n in SPEED):
        speed = got("speed", lambda: measure_speed(args, work, exports, sources))
    data = {"meta": meta, "quality": quality, "sizes": sizes, "speed": speed, "notes": args.note}
    write_outputs(Path(args.out), data)
    return 0


def measure_speed(args, work: Path, exports: dict[str, Path], sources: dict) -> dict:
    folders = {
        "dense fp32": exports["dense"],
        "dense fp16": ensure_export(sources["dense"], work / "onnx" / "dense-fp16", "float16"),
        "ARMOR fp32": exports["armor"],
        "ARMOR INT8": exports["armor-int8-refit-wodown"],
        "ARMOR FP8": exports["armor-fp8-refit"],
    }
    runners = {}
    for name, folder in folders.items():
        runners[("ours", name)] = ExportRunner(folder, args.threads)
        if "fp16" not in name:  # GenAI's CPU provider runs float32 graphs
            runners[("genai", name)] = GenaiRunner(folder, args.threads)
    tok = runners[("ours", "dense fp32")].generator.tokenizer  # the export's own tokenizer
    prefill_ids = prompt_ids(tok, args.prefill)
    decode_ids = prompt_ids(tok, args.decode_prompt)
    prefill, decode = interleaved_rounds(runners, args, prefill_ids, decode_ids)
    out: dict = {}
    for (runtime, name), times in prefill.items():
        tps = decode[(runtime, name)]
        base = decode[(runtime, "dense fp32")]
        ratios = [a / b for a, b in zip(tps, base, strict=True)]
        out.setdefault(runtime, {})[name] = {
            "prefill_tokens_per_s": args.prefill / min(times),
            "decode_tokens_per_s": statistics.median(tps),
            "decode_vs_dense_fp32": statistics.median(ratios),
        }
    return out


def write_outputs(out: Path, data: dict) -> None:
    q = data["quality"]
    lines = ["# 2:4 + 8-bit: quality, bytes and ONNX Runtime CPU speed (SmolLM2-135M)", ""]
    lines += meta_lines(data["meta"])
    ev = data["meta"]["eval"]
    lines += ["", f"Wikipedia perplexity, {ev['windows']} windows of {ev['seqlen']} tokens.", ""]
    lines += ["| model | scheme | re-fit | PyTorch ppl | ONNX Runtime ppl | ORT/PyTorch | "
              "mean proxy loss pruned → 8-bit → re-fit |",
              "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in q.values():
        ort = r.get("ort_perplexity")
        ratio = f"{ort / r['perplexity']:.4f}" if ort else "not run"
        proxy = r.get("proxy")
        loss = (f"{proxy['loss_pruned']:.5f} → {proxy['loss_quantized']:.5f} → "
                f"{proxy['loss_refit']:.5f}" if proxy else "")  # fmt: skip
        refit = {True: "yes", False: "no (post-hoc)", None: ""}[r.get("refit")]
        if r.get("smoothing") is not None:
            refit += f", smoothing α={r['smoothing']:g}"
        if r.get("float_inputs"):
            refit += (", " if refit else "") + "down_proj weight-only"
        lines.append(f"| {r['method']} | {r.get('scheme') or 'float'} | {refit} | "
                     f"{r['perplexity']:.2f} | {f'{ort:.2f}' if ort else 'not run'} | {ratio} | "
                     f"{loss} |")  # fmt: skip
    lines += ["", "## Bytes", "", "| model | checkpoint | ONNX fp32 | ONNX fp16 | TensorRT-RTX "
              "engine (fp16 wrappers) | engine targets |", "|---|---|---|---|---|---|"]  # fmt: skip
    for name, s in data["sizes"].items():
        eng = s.get("engine") or {}
        lines.append(f"| {name} | {_mib(s.get('checkpoint_bytes'))} | "
                     f"{_mib(s.get('export_fp32_bytes'))} | {_mib(s.get('export_fp16_bytes'))} | "
                     f"{_mib(eng.get('bytes'))} | {eng.get('targets', '')} |")  # fmt: skip
    if data["speed"]:
        lines += ["", "## ONNX Runtime CPU speed (interleaved rounds, one run)", "",
                  "| runtime | export | prefill tok/s | decode tok/s | decode vs dense fp32 |",
                  "|---|---|---|---|---|"]  # fmt: skip
        for runtime, rows in data["speed"].items():
            if not isinstance(rows, dict):  # the step's "seconds"
                continue
            for name, r in rows.items():
                lines.append(
                    f"| {runtime} | {name} | {r['prefill_tokens_per_s']:.0f} | "
                    f"{r['decode_tokens_per_s']:.1f} | {r['decode_vs_dense_fp32']:.2f}× |"
                )
    lines += [
        "",
        "TensorRT-RTX engines (where listed) were built on this CPU, ahead of time, and not run: "
        "no GPU.",
    ]
    lines += [f"- {n}" for n in data["notes"]]
    write_report(out, "quant", data, "\n".join(lines) + "\n")


def _mib(n) -> str:
    return "" if n is None else f"{n / 2**20:.1f} MiB"


if __name__ == "__main__":
    sys.exit(main())
