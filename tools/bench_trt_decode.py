#!/usr/bin/env python
"""TensorRT session benchmark: the KV cache kept on the GPU vs the host round trip, and
TensorRT-RTX's runtime cache.

On one engine (``--export``, else a float16 export of a seeded random checkpoint of
``--model``'s published shapes, ``--layers`` layers, made with tools/make_checkpoint.py; its
engine built for this GPU), it measures

(a) decode tokens/s after a ``--prompt``-token prefill, ``--steps`` greedy steps, batch
    ``--batch``: ``generate``'s path (``run_keeping_cache``: the cache stays on the device)
    against the old one (``HostCacheSession``: the whole cache host -> device -> host at
    every step), on the same session, rounds interleaved; both must pick the same tokens;
(b) on TensorRT-RTX, the seconds from opening the engine to the end of a short generation
    in a fresh process: with the runtime cache off, with an empty cache folder (the file is
    written at exit), and with that file there.

Writes docs/benchmarks/trt_decode.md and trt_decode.json. Without a CUDA GPU (or the backend,
or cuda-python) it writes the report saying "not run" and why, and exits 1.

    python tools/bench_trt_decode.py             # on a GPU machine; tools/gpu_check.sh runs it
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import command, utc_now, write_report

log = logging.getLogger("bench_trt_decode")
ROOT = Path(__file__).resolve().parents[1]
NAME = "trt_decode"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="docs/benchmarks", help="folder for trt_decode.md/.json")
    p.add_argument("--work", default="runs/bench_trt_decode", help="checkpoint/export/engine")
    p.add_argument("--export", default="", help="an export folder with its engine built")
    p.add_argument("--model", default="qwen2.5-1.5b", help="a tools/checkpoints config")
    p.add_argument("--layers", type=int, default=8, help="decoder layers of that checkpoint")
    p.add_argument("--backend", default="tensorrt-rtx", choices=("tensorrt-rtx", "tensorrt"))
    p.add_argument("--prompt", type=int, default=256, help="prefill tokens")
    p.add_argument("--steps", type=int, default=128, help="decode steps timed")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median kept)")
    p.add_argument("--open-timing", default="", help=argparse.SUPPRESS)  # the child's mode
    return p.parse_args(argv)


def problem(backend: str) -> str:
    """Why this machine cannot run the benchmark ("" when it can)."""
    import importlib

    from armor_export.runtime.trt_session import cuda_gpus

    gpus, why = cuda_gpus()
    if not gpus:
        return why
    for module in ("tensorrt_rtx" if backend == "tensorrt-rtx" else "tensorrt", "cuda.bindings"):
        try:
            importlib.import_module(module)
        except ImportError as exc:
            return f"{module} is not installed ({exc})"
    return ""


def prepare_export(args) -> Path:
    """``--export``, else a float16 export of a random checkpoint, with its engine."""
    from armor_export.config import EngineConfig, ExportConfig
    from armor_export.engine import build_engine
    from armor_export.engine.folder import DEFAULT_ENGINE_DIR, ENGINE_FILE
    from armor_export.export import export_onnx

    if args.export:
        return Path(args.export)
    work = Path(args.work)
    checkpoint, export = work / "checkpoint", work / "onnx"
    if not (checkpoint / "config.json").is_file():
        subprocess.run(
            [sys.executable, str(ROOT / "tools" / "make_checkpoint.py"), args.model,
             "-o", str(checkpoint), "--layers", str(args.layers)],
            check=True,
        )  # fmt: skip
    if not (export / "export_manifest.json").is_file():
        export_onnx(ExportConfig(model=str(checkpoint), output_dir=str(export), dtype="float16"))
    if not (export / DEFAULT_ENGINE_DIR / ENGINE_FILE).is_file():
        build_engine(
            EngineConfig(export_dir=str(export), backend=args.backend, compute_capability="current")
        )
    return export


def prompt(n: int, batch: int) -> list[list[int]]:
    ids = list(range(10, 10 + n))  # token ids of a random model: any will do
    return [ids] * batch


def decode_rate(generator, ids, steps: int) -> tuple[float, list]:
    """Tokens/s of ``steps`` greedy steps after a prefill of ``ids``, and the tokens."""
    from armor_export.runtime.sampling import greedy

    state = generator.prefill(ids)
    tokens = [greedy(state.next_logits)]
    start = time.perf_counter()
    for _ in range(steps):
        state = generator.step(state, tokens[-1])
        tokens.append(greedy(state.next_logits))
    seconds = time.perf_counter() - start
    return steps * len(ids) / seconds, [t.tolist() for t in tokens]


def measure_decode(export: Path, args) -> dict:
    from armor_export.runtime import Generator
    from armor_export.runtime.trt_session import HostCacheSession

    device = Generator(export, "tensorrt")
    host = Generator(export, session=HostCacheSession(device.session))
    ids = prompt(args.prompt, args.batch)
    decode_rate(device, ids, 4)  # warm-up: kernels for these shapes
    decode_rate(host, ids, 4)
    rates: dict[str, list[float]] = {"device": [], "host": []}
    same = True
    for _ in range(args.rounds):
        rate, want = decode_rate(device, ids, args.steps)
        rates["device"].append(rate)
        rate, got = decode_rate(host, ids, args.steps)
        rates["host"].append(rate)
        same = same and got == want
    import numpy as np

    shape = device.manifest.decoder.past_shape(args.batch, args.prompt + args.steps)
    cache_bytes = int(np.prod(shape)) * np.dtype(device.dtype).itemsize * len(device.cache)
    device.session.close()
    median = {k: statistics.median(v) for k, v in rates.items()}
    return {
        "tokens_per_second": median,
        "all_rounds": rates,
        "speedup": median["device"] / median["host"],
        "same_tokens": same,
        "cache_bytes_at_the_end": cache_bytes,
    }


def open_timing(export: Path, steps: int) -> float:
    """(the child) Seconds from opening the engine to the end of a short generation."""
    from armor_export.runtime import GenerationConfig, Generator

    start = time.perf_counter()
    generator = Generator(export, "tensorrt")
    generator.generate(["The quick brown fox"], GenerationConfig(steps, stop_at_eos=False))
    return time.perf_counter() - start


def measure_runtime_cache(export: Path, args) -> dict:
    from armor_export.runtime import runtime_cache as rc

    if args.backend != "tensorrt-rtx":
        return {"not_applicable": "datacenter TensorRT has no runtime cache"}
    results = {}
    with tempfile.TemporaryDirectory(prefix="rtcache-") as folder:
        for mode, value in (("off", rc.OFF), ("cold", folder), ("warm", folder)):
            env = {**os.environ, rc.ENV: value, "PYTHONPATH": str(ROOT)}
            argv = [sys.executable, __file__, "--export", str(export), "--open-timing", "16"]
            out = subprocess.run(argv, env=env, check=True, capture_output=True, text=True)
            results[mode] = json.loads(out.stdout.strip().splitlines()[-1])["seconds"]
        files = list(Path(folder).glob("*" + rc.SUFFIX))
        results["file_bytes"] = files[0].stat().st_size if files else 0
    return results


def markdown(data: dict) -> str:
    lines = ["# TensorRT session: KV cache on the GPU, TensorRT-RTX runtime cache", ""]
    lines += [f"- command: `{data['command']}`", f"- date: {data['date']}"]
    if data.get("not_run"):
        lines += ["", f"**Not run**: {data['not_run']}.", ""]
        lines += [
            "Run `tools/gpu_check.sh` (or this script) on a machine with a CUDA GPU, TensorRT-RTX "
            "(or TensorRT, `--backend tensorrt`) and cuda-python to fill this report: decode "
            "tokens/s with the KV cache kept on the device against the old host round trip, "
            "and the time to open an engine and generate with and without the runtime cache.",
        ]
        return "\n".join(lines) + "\n"
    lines += [
        f"- GPU: {data['gpu']}",
        f"- backend: {data['backend']}",
        f"- export: {data['shape']}",
    ]
    d = data["decode"]
    lines += ["", "## Decode tokens/s (median of interleaved rounds)", ""]
    lines += ["| KV cache | tokens/s |", "|---|---|"]
    lines += [f"| on the device (generate) | {d['tokens_per_second']['device']:.1f} |"]
    lines += [f"| host round trip (before) | {d['tokens_per_second']['host']:.1f} |"]
    lines += [
        "",
        f"Speed-up {d['speedup']:.2f}x; same tokens both ways: {d['same_tokens']}; "
        f"the KV cache is {d['cache_bytes_at_the_end'] / 2**20:.1f} MiB at the last step.",
    ]
    r = data["runtime_cache"]
    lines += ["", "## TensorRT-RTX runtime cache: open the engine and generate 16 tokens", ""]
    if "not_applicable" in r:
        lines += [r["not_applicable"] + "."]
    else:
        lines += ["| runtime cache | seconds |", "|---|---|"]
        lines += [
            f"| off | {r['off']:.2f} |",
            f"| empty (first run, file written) | {r['cold']:.2f} |",
        ]
        lines += [f"| file there (next run) | {r['warm']:.2f} |", ""]
        lines += [f"The cache file holds {r['file_bytes']} bytes."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    sys.path.insert(0, str(ROOT))
    if args.open_timing:
        print(json.dumps({"seconds": open_timing(Path(args.export), int(args.open_timing))}))
        return 0
    data = {"command": command("bench_trt_decode.py", argv), "date": utc_now()}
    why = problem(args.backend)
    if why:
        data["not_run"] = why
        write_report(Path(args.out), NAME, data, markdown(data))
        log.error("not run: %s", why)
        return 1
    from armor_export.runtime.trt_session import cuda_gpus

    export = prepare_export(args)
    data.update(gpu=", ".join(cuda_gpus()[0]), backend=args.backend, args=vars(args))
    data["shape"] = (
        f"{args.export or f'{args.model}, {args.layers} layers, float16'}; prompt "
        f"{args.prompt}, {args.steps} steps, batch {args.batch}"
    )
    data["decode"] = measure_decode(export, args)
    data["runtime_cache"] = measure_runtime_cache(export, args)
    write_report(Path(args.out), NAME, data, markdown(data))
    print(markdown(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
