#!/usr/bin/env python
"""Model-size benchmark: 1-8 B checkpoints, as users download them, through prune -> export
-> verify -> engine on this machine, with wall time, peak memory and artefact bytes per stage.

The checkpoints are generated locally with seeded random weights from the published configs
(``tools/make_checkpoint.py``); nothing is downloaded. Each step runs the real CLI
(``python -m armor_export ...``) in a child process whose whole process tree is sampled for
resident memory (``VmHWM`` of every process, main and pool workers apart), and records its
result in ``<work>/results/<step>.json``, so steps can run in separate sessions and the
report is written from every result on disk. A step whose result is recorded is not run
again unless named in ``--redo``.

Steps (default: all, in this order):

- ``generate``: the Qwen2.5-1.5B checkpoint (bf16 shards + index + tokenizer);
- ``plan``: ``armor-export plan`` of the prune below (predicted time and memory);
- ``prune``: ARMOR ``--low-memory`` on it (few iterations, 8 x 512 calibration tokens:
  mechanics, not quality), once uninterrupted (what ``plan`` is compared with, and what the
  later steps use), then again in another folder killed with SIGKILL once a third of its
  jobs are done and resumed: no finished job solved again (counted from the job files), and
  its checkpoint byte-identical to the uninterrupted run's;
- ``export``: fp16 ONNX (> 2 GiB, external data) of the pruned checkpoint;
- ``verify``: PyTorch against ONNX Runtime on that export;
- ``engine``: a TensorRT-RTX engine built on CPU from it;
- ``layer8b``: one real decoder layer of Llama-3.1-8B pruned (measured seconds per matrix
  shape beside ``plan``'s estimate for the same run);
- ``plan-large``: ``plan`` of Llama-3.1-8B and Llama-3.1-70B (plan-only checkpoints), on this
  CPU, and scaled to a GPU with the solver rates measured in docs/benchmarks/solver.json.

    python tools/bench_model_sizes.py                       # everything (about 2 hours)
    python tools/bench_model_sizes.py --steps generate,plan,prune
    python tools/bench_model_sizes.py --report-only         # rewrite the report from disk

Writes docs/benchmarks/model_sizes.md and model_sizes.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from benchlib import NO_GPU, machine, meta_lines, os_name, run_meta, torch_version, write_report

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "docs" / "benchmarks"
STEPS = ("generate", "plan", "prune", "export", "verify", "engine", "layer8b", "plan-large")
MODEL = "qwen2.5-1.5b"
MIB = 1024 * 1024
GIB = 1024 * MIB
PLAN_TOLERANCE = 0.30  # the target: plan within +-30 % of the measured time / memory
EXPORT_RSS_FACTOR = 2.5  # the target: export peak RSS <= 2.5 x the fp16 model bytes


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=REPO / "runs" / "model_sizes")
    p.add_argument("--steps", default=",".join(STEPS), help="comma list of " + ", ".join(STEPS))
    p.add_argument("--redo", default="", help="comma list of steps to run again")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--block-size", type=int, default=64)
    p.add_argument("--iterations", type=int, default=2, help="ARMOR iterations per matrix")
    p.add_argument("--calib-samples", type=int, default=8)
    p.add_argument("--calib-seqlen", type=int, default=512)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--kill-fraction", type=float, default=1 / 3,
                   help="SIGKILL the prune once this fraction of its jobs is done")  # fmt: skip
    p.add_argument("--keep", action="store_true", help="keep the large artefacts at the end")
    return p.parse_args(argv)


# --- running a child and sampling its process tree --------------------------------------


def _children(pid: int) -> list[int]:
    found = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            text = Path(f"/proc/{pid}/task/{task}/children").read_text()
            found += [int(c) for c in text.split()]
    except OSError:
        pass
    return found


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += _children(p)
    return out


def _status_kib(pid: int, key: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def _role(pid: int) -> str:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return "gone"
    if "resource_tracker" in cmd:
        return "helper"
    if "multiprocessing" in cmd or "spawn_main" in cmd:
        return "worker"
    return "child"


class Monitor:
    """Peak resident memory (VmHWM) of every process in a tree, sampled every 0.2 s; the
    peak of the sum of current RSS over the tree."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peaks, self.roles, self.total_peak_kib = pid, {}, {}, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            total = 0
            for p in _tree(self.pid):
                hwm, rss = _status_kib(p, "VmHWM"), _status_kib(p, "VmRSS")
                if hwm is None:
                    continue
                if p not in self.roles:
                    self.roles[p] = "main" if p == self.pid else _role(p)
                self.peaks[p] = max(self.peaks.get(p, 0), hwm)
                total += rss or 0
            self.total_peak_kib = max(self.total_peak_kib, total)
            self._stop.wait(0.2)

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        workers = sorted(
            (round(kib / 1024) for p, kib in self.peaks.items() if self.roles[p] == "worker"),
            reverse=True,
        )
        return {
            "peak_rss_main_mib": round(self.peaks.get(self.pid, 0) / 1024),
            "peak_rss_workers_mib": workers,
            "peak_rss_tree_sum_mib": round(self.total_peak_kib / 1024),
            "peak_rss_largest_mib": round(max(self.peaks.values(), default=0) / 1024),
        }


def run(cmd: list[str], log: Path, kill_when=None) -> dict:
    """Run ``cmd`` (its output to ``log``), sampling memory; ``kill_when()`` true -> SIGKILL
    of the whole process group. Returns wall seconds, exit code, peaks, killed."""
    log.parent.mkdir(parents=True, exist_ok=True)
    print("$", " ".join(cmd), flush=True)
    start = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO,
                                start_new_session=True)  # fmt: skip
        monitor = Monitor(proc.pid)
        killed = False
        try:
            while proc.poll() is None:
                if kill_when is not None and not killed and kill_when():
                    os.killpg(proc.pid, signal.SIGKILL)
                    killed = True
                time.sleep(0.5)
        finally:  # the script itself stopped (Ctrl-C, timeout): take its child's group along
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    peaks = monitor.stop()
    if killed:  # pool workers of a killed group: gone with the group
        time.sleep(1)
    return {"seconds": round(time.perf_counter() - start, 1), "returncode": proc.returncode,
            "killed": killed, **peaks, "log": str(log)}  # fmt: skip


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "armor_export", *args]


def tool(script: str, *args: str) -> list[str]:
    return [sys.executable, str(REPO / "tools" / script), *args]


def checked(result: dict, what: str) -> dict:
    if result["returncode"] != 0 and not result["killed"]:
        tail = Path(result["log"]).read_text().splitlines()[-15:]
        raise SystemExit(f"{what} failed (exit {result['returncode']}):\n" + "\n".join(tail))
    return result


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# --- the steps --------------------------------------------------------------------------


class Bench:
    def __init__(self, args) -> None:
        self.args, self.work = args, args.work.resolve()
        self.results = self.work / "results"
        self.ckpt = self.work / "ckpt" / MODEL
        self.pruned = self.work / "pruned"
        self.resumed = self.work / "pruned-resume"  # the killed and resumed run
        self.onnx = self.work / "onnx"

    def prune_args(self, model: Path, out: Path) -> list[str]:
        a = self.args
        return ["--model", str(model), "-o", str(out), "--method", "armor", "--low-memory",
                "--block-size", str(a.block_size), "--iterations", str(a.iterations),
                "--calib-text", "botchan", "--calib-samples", str(a.calib_samples),
                "--calib-seqlen", str(a.calib_seqlen), "--workers", str(a.workers)]  # fmt: skip

    def record(self, step: str, data: dict) -> None:
        from armor_export.io import write_json

        write_json(self.results / f"{step}.json", {"step": step, **data})

    def recorded(self, step: str) -> dict | None:
        path = self.results / f"{step}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    # generate ---------------------------------------------------------------------------
    def generate(self) -> dict:
        if self.ckpt.exists():
            shutil.rmtree(self.ckpt)
        r = checked(run(tool("make_checkpoint.py", MODEL, "-o", str(self.ckpt)),
                        self.work / "logs" / "generate.log"), "generate")  # fmt: skip
        config = json.loads((self.ckpt / "config.json").read_text())
        index = json.loads((self.ckpt / "model.safetensors.index.json").read_text())
        shards = sorted(set(index["weight_map"].values()))
        return {**r, "model": MODEL, "bytes": folder_bytes(self.ckpt), "shards": len(shards),
                "parameters": _parameters(self.ckpt), "dtype": config.get("torch_dtype"),
                "layers": config["num_hidden_layers"]}  # fmt: skip

    # plan -------------------------------------------------------------------------------
    def plan(self) -> dict:
        out = self.work / "plan.json"
        argv = ["plan", *self.prune_args(self.ckpt, self.pruned), "--ranks",
                str(self.args.workers), "--json", str(out)]  # fmt: skip
        r = checked(run(cli(*argv), self.work / "logs" / "plan.log"), "plan")
        return {**r, "plan": json.loads(out.read_text())}

    # prune (uninterrupted; then killed and resumed) -------------------------------------
    def prune(self) -> dict:
        for folder in (self.pruned, self.resumed):
            if folder.exists():
                shutil.rmtree(folder)
        clean = checked(run(cli("prune", *self.prune_args(self.ckpt, self.pruned)),
                            self.work / "logs" / "prune.log"), "prune")  # fmt: skip
        jobs_dir = self.resumed / "work" / "jobs"
        total_jobs = len(json.loads((self.pruned / "armor_manifest.json").read_text())["matrices"])
        kill_at = max(1, int(total_jobs * self.args.kill_fraction))

        def done() -> int:
            return len(list(jobs_dir.glob("*.safetensors"))) if jobs_dir.is_dir() else 0

        argv = cli("prune", *self.prune_args(self.ckpt, self.resumed))
        first = run(argv, self.work / "logs" / "prune-1.log", kill_when=lambda: done() >= kill_at)
        if not first["killed"]:
            raise SystemExit(f"the prune ended before {kill_at} jobs were done: {first}")
        before = {p.name: p.stat().st_mtime_ns for p in jobs_dir.glob("*.safetensors")}
        second = checked(run(argv, self.work / "logs" / "prune-2.log"), "resumed prune")
        after = {p.name: p.stat().st_mtime_ns for p in jobs_dir.glob("*.safetensors")}
        rewritten = sorted(n for n, t in before.items() if after.get(n) != t)
        ranks = sorted((self.pruned / "work" / "ranks").glob("rank*.json"))
        from armor_export.io import sha256_file
        from armor_export.prune.checkpoint import WEIGHTS

        same = sha256_file(self.pruned / WEIGHTS) == sha256_file(self.resumed / WEIGHTS)
        if not self.args.keep:
            shutil.rmtree(self.resumed)
        return {
            "clean": clean, "first": first, "second": second, "jobs": len(after),
            "kill_after_jobs": len(before), "jobs_redone_after_kill": rewritten,
            "resumed_checkpoint_identical": same,
            "rank_records": [json.loads(p.read_text()) for p in ranks],
            "job_seconds": _job_seconds(self.pruned),
            "statistics_bytes": _file_size(self.pruned / "work" / "stats.safetensors"),
            "checkpoint_bytes": folder_bytes(self.pruned) - folder_bytes(self.pruned / "work"),
            "report_summary": _nowag_summary(self.pruned),
        }  # fmt: skip

    # export / verify / engine -----------------------------------------------------------
    def export(self) -> dict:
        if self.onnx.exists():
            shutil.rmtree(self.onnx)
        r = checked(run(cli("export", str(self.pruned), "-o", str(self.onnx), "--dtype",
                            "float16"), self.work / "logs" / "export.log"), "export")  # fmt: skip
        manifest = json.loads((self.onnx / "export_manifest.json").read_text())
        files = {f.name: f.stat().st_size for f in self.onnx.iterdir() if f.is_file()}
        return {**r, "files": files, "onnx_bytes": sum(files.values()),
                "external_data": manifest.get("external_data"),
                "counts": manifest.get("counts")}  # fmt: skip

    def verify(self) -> dict:
        report = self.work / "verify"
        r = run(cli("verify", str(self.onnx), "--report-dir", str(report)),
                self.work / "logs" / "verify.log")  # fmt: skip
        data = json.loads((report / "verify_report.json").read_text())
        return {**r, "passed": data.get("passed"), "verdict": data.get("verdict")}

    def engine(self) -> dict:
        r = run(cli("engine", str(self.onnx)), self.work / "logs" / "engine.log")
        engine_dir = self.onnx / "engine"
        report = engine_dir / "build_report.json"
        data = json.loads(report.read_text()) if report.is_file() else {}
        size = _file_size(engine_dir / "model.engine")
        return {**r, "engine_bytes": size, "build_report": data}

    # one decoder layer of an 8B model ---------------------------------------------------
    def layer8b(self) -> dict:
        model = self.work / "ckpt" / "llama-3.1-8b-1layer"
        if not model.exists():
            checked(
                run(
                    tool("make_checkpoint.py", "llama-3.1-8b", "-o", str(model), "--layers", "1"),
                    self.work / "logs" / "generate-8b.log",
                ),
                "generate 8B layer",
            )
        out, plan_json = self.work / "pruned-8b-1layer", self.work / "plan-8b-1layer.json"
        if out.exists():
            shutil.rmtree(out)
        argv = self.prune_args(model, out)
        plan = checked(
            run(
                cli("plan", *argv, "--ranks", str(self.args.workers), "--json", str(plan_json)),
                self.work / "logs" / "plan-8b.log",
            ),
            "plan 8B",
        )
        pruned = checked(run(cli("prune", *argv), self.work / "logs" / "prune-8b.log"), "prune")
        return {"plan_run": plan, "plan": json.loads(plan_json.read_text()), "prune": pruned,
                "job_seconds": _job_seconds(out)}  # fmt: skip

    # plans of 8B and 70B ----------------------------------------------------------------
    def plan_large(self) -> dict:
        out = {}
        for name in ("llama-3.1-8b", "llama-3.1-70b"):
            model = self.work / "ckpt" / f"{name}-plan-only"
            if not model.exists():
                checked(
                    run(
                        tool("make_checkpoint.py", name, "-o", str(model), "--plan-only"),
                        self.work / "logs" / f"generate-{name}.log",
                    ),
                    f"generate {name}",
                )
            plan_json = self.work / f"plan-{name}.json"
            argv = self.prune_args(model, self.work / f"unused-{name}")
            r = checked(
                run(
                    cli("plan", *argv, "--ranks", str(self.args.workers), "--json", str(plan_json)),
                    self.work / "logs" / f"plan-{name}.log",
                ),
                name,
            )
            out[name] = {"run": r, "plan": json.loads(plan_json.read_text())}
            if not self.args.keep:
                shutil.rmtree(model)
        return out


def _file_size(path: Path) -> int | None:
    return path.stat().st_size if path.is_file() else None


def _parameters(folder: Path) -> int:
    from safetensors import safe_open

    total = 0
    for shard in sorted(folder.glob("*.safetensors")):
        with safe_open(str(shard), "pt") as f:
            for key in f.keys():
                n = 1
                for d in f.get_slice(key).get_shape():
                    n *= d
                total += n
    return total


def _job_seconds(checkpoint: Path) -> dict:
    """Measured solve seconds per matrix shape (``armor_manifest.json``'s per-matrix record)."""
    manifest = json.loads((checkpoint / "armor_manifest.json").read_text())
    by_shape: dict[str, list[float]] = {}
    for row in manifest.get("matrices", {}).values():
        if isinstance(row, dict) and row.get("seconds") is not None:
            key = "x".join(str(d) for d in row["shape"])
            by_shape.setdefault(key, []).append(float(row["seconds"]))
    return {k: {"jobs": len(v), "mean_seconds": round(sum(v) / len(v), 2),
                "total_seconds": round(sum(v), 1)} for k, v in by_shape.items()}  # fmt: skip


def _nowag_summary(checkpoint: Path) -> dict:
    manifest = json.loads((checkpoint / "armor_manifest.json").read_text())
    rows = [m for m in manifest.get("matrices", {}).values() if isinstance(m, dict)]
    pairs = [(m.get("proxy_loss"), m.get("nowag_loss")) for m in rows]
    pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
    return {"matrices": len(pairs), "at_or_below_nowag": sum(a <= b for a, b in pairs)}


# --- the report -------------------------------------------------------------------------


def _mib(n) -> str:
    return "-" if n is None else f"{n / MIB:,.0f} MiB" if n < GIB else f"{n / GIB:.2f} GiB"


def _secs(s) -> str:
    if s is None:
        return "-"
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h"


def _within(predicted, measured) -> tuple[float | None, str]:
    if not predicted or not measured:
        return None, "-"
    ratio = predicted / measured
    return (
        ratio,
        f"{ratio:.2f} ({'within' if abs(ratio - 1) <= PLAN_TOLERANCE else 'OUTSIDE'} ±30 %)",
    )


def _probe_text(probe: dict) -> str:
    return (f"The solves were probed in {probe['processes']} process(es) at once, "
            f"{probe['threads']} torch thread(s) each; a worker's start measured "
            f"{probe['worker_start_seconds']} s (spawn, imports) and its first solve "
            f"{probe['first_job_extra_seconds']} s more than the same solve warm "
            "(compilation).")  # fmt: skip


def gpu_rates() -> list[dict]:
    """(elements, CPU 2-core s/iteration, H100 s/iteration) per shape measured in solver.json."""
    data = json.loads((OUT / "solver.json").read_text())
    cpu, gpu = {}, {}
    for run_ in data["runs"]:
        for row in run_["rows"]:
            shape = tuple(row["shape"])
            if row["device"] == "cuda":
                gpu[shape] = (row["seconds_per_iteration"], row["device_name"])
            elif row.get("threads") == 2:
                cpu[shape] = row["seconds_per_iteration"]
    return [{"shape": list(s), "elements": s[0] * s[1], "cpu_2core": cpu[s], "gpu": gpu[s][0],
             "gpu_name": gpu[s][1], "speedup": cpu[s] / gpu[s][0]}
            for s in sorted(set(cpu) & set(gpu))]  # fmt: skip


def gpu_prediction(plan: dict, rates: list[dict]) -> dict:
    """``plan``'s CPU solve estimate divided, shape by shape, by the GPU/CPU speed-up measured
    on the solver.json shape nearest in size (log of elements); calibration not included."""
    import math

    total, shapes = 0.0, []
    for sp in plan["shapes"]:
        elements = sp["shape"][0] * sp["shape"][1]
        near = min(rates, key=lambda r: abs(math.log(r["elements"] / elements)))
        seconds = sp["est_seconds_per_job"] / near["speedup"] * len(sp["names"])
        total += seconds
        shapes.append({"shape": sp["shape"], "jobs": len(sp["names"]),
                       "speedup_used": round(near["speedup"], 1),
                       "from_shape": near["shape"], "gpu_seconds": round(seconds, 1)})  # fmt: skip
    return {"solve_seconds_one_gpu": round(total, 1), "shapes": shapes,
            "gpu": rates[0]["gpu_name"] if rates else None}  # fmt: skip


def write(bench: Bench, args, argv) -> None:
    import torch

    r = {s: bench.recorded(s) for s in STEPS}
    meta = run_meta("bench_model_sizes.py", argv, machine(os_name(), NO_GPU, torch_version()))
    lines = ["# Model sizes: 1-8 B checkpoints through prune, export, verify and engine", "",
             *meta_lines(meta), f"- machine: {meta['machine']}",
             "- steps, each as recorded when it ran: "
             + ", ".join(f"{s} {r[s].get('date', '?')}" for s in STEPS if r[s]), "",
             "Checkpoints generated here with seeded random weights from the published configs "
             "(`tools/make_checkpoint.py`, sources in `tools/checkpoints/`): the weights are "
             "random, so the figures are about mechanics (time, memory, bytes), not quality. "
             "Every step ran the real CLI in a child process; peak RSS is each process's "
             "`VmHWM` (main process and each pool worker apart). No GPU: nothing here ran on "
             "one; GPU figures below are predictions, labelled as such.", ""]  # fmt: skip
    data: dict = {"meta": meta, "steps": r, "targets": {}}
    gen, plan_r, prune = r["generate"], r["plan"], r["prune"]
    params = gen["parameters"] if gen else None
    fp16_bytes = params * 2 if params else None

    lines += ["## Qwen2.5-1.5B, stage by stage", "",
              "| stage | wall | peak RSS main | peak RSS workers | artefact |",
              "|---|---:|---:|---:|---|"]  # fmt: skip
    if gen:
        lines.append(f"| generate checkpoint ({params:,} parameters, {gen['shards']} bf16 shards)"
                     f" | {_secs(gen['seconds'])} | {gen['peak_rss_main_mib']} MiB | - | "
                     f"{_mib(gen['bytes'])} |")  # fmt: skip
    if plan_r:
        lines.append(f"| plan | {_secs(plan_r['seconds'])} | {plan_r['peak_rss_main_mib']} MiB |"
                     " - | - |")  # fmt: skip
    if prune:
        for key, label in (("clean", "prune, uninterrupted"), ("first", "prune, killed (SIGKILL)"),
                           ("second", "prune, resumed")):  # fmt: skip
            run_ = prune[key]
            workers = ", ".join(str(w) for w in run_["peak_rss_workers_mib"]) or "-"
            same = "byte-identical to" if prune["resumed_checkpoint_identical"] else "DIFFERS from"
            art = {"clean": f"checkpoint {_mib(prune['checkpoint_bytes'])}",
                   "first": f"{prune['kill_after_jobs']} jobs on disk",
                   "second": f"checkpoint {same} the uninterrupted run's"}[key]  # fmt: skip
            lines.append(f"| {label} | {_secs(run_['seconds'])} | {run_['peak_rss_main_mib']} MiB"
                         f" | {workers} MiB | {art} |")  # fmt: skip
    for step, label in (("export", "export fp16"), ("verify", "verify (PyTorch vs ORT)"),
                        ("engine", "engine (TensorRT-RTX, CPU build)")):  # fmt: skip
        x = r[step]
        if not x:
            lines.append(f"| {label} | not run | | | |")
            continue
        if step == "export":
            art = f"ONNX + data {_mib(x['onnx_bytes'])}"
        elif step == "verify":
            art = (x.get("verdict") or "no verdict").replace("|", "/")
        else:
            art = f"engine {_mib(x['engine_bytes'])}"
        status = "" if x["returncode"] == 0 else f" (exit {x['returncode']})"
        # the engine verb builds in a child process: its peak is the one that counts
        largest = x.get("peak_rss_largest_mib") or max(
            x["peak_rss_main_mib"], x["peak_rss_tree_sum_mib"]
        )
        lines.append(f"| {label}{status} | {_secs(x['seconds'])} | {largest} MiB (largest "
                     "process) | - | " + art + " |")  # fmt: skip
    lines.append("")

    # targets
    lines += ["## Targets", ""]
    if prune and plan_r:
        mem = plan_r["plan"]["memory_mib"]
        bound = mem["one_decoder_layer"] + (prune["statistics_bytes"] or 0) / MIB + 1024
        runs = [prune[k] for k in ("clean", "first", "second")]
        peaks = [x["peak_rss_main_mib"] for x in runs]
        peaks += [w for x in runs for w in x["peak_rss_workers_mib"]]
        ok = max(peaks) <= bound
        data["targets"]["prune_rss_within_layer_stats_1gib"] = ok
        lines.append(
            f"- **Prune memory**: every process's peak ≤ one decoder layer "
            f"({mem['one_decoder_layer']:.0f} MiB fp32) + statistics "
            f"({(prune['statistics_bytes'] or 0) / MIB:.1f} MiB) + 1 GiB = {bound:.0f} "
            f"MiB: largest peak {max(peaks)} MiB, **{'met' if ok else 'NOT met'}**."
        )
        redone = prune["jobs_redone_after_kill"]
        lines.append(f"- **Kill -9 and resume**: SIGKILL after {prune['kill_after_jobs']} of "
                     f"{prune['jobs']} jobs were on disk; the resumed run rewrote "
                     f"{len(redone)} of them ({', '.join(redone) or 'none'}) and finished the "
                     f"rest"
                     + ("; its checkpoint is byte-identical to the uninterrupted run's"
                        if prune["resumed_checkpoint_identical"] else
                        "; its checkpoint DIFFERS from the uninterrupted run's")
                     + ". ARMOR at or below NoWag-P: "
                     f"{prune['report_summary']['at_or_below_nowag']} of "
                     f"{prune['report_summary']['matrices']} matrices.")  # fmt: skip
        data["targets"]["resume_redid_no_finished_job"] = not redone
        data["targets"]["resumed_checkpoint_identical"] = prune["resumed_checkpoint_identical"]
    if r["export"] and fp16_bytes:
        limit = EXPORT_RSS_FACTOR * fp16_bytes / MIB
        peak = r["export"].get("peak_rss_largest_mib") or r["export"]["peak_rss_main_mib"]
        ok = peak <= limit
        data["targets"]["export_rss_within_2_5x_fp16"] = ok
        lines.append(f"- **Export memory**: peak {peak:,} MiB against 2.5 × fp16 model bytes = "
                     f"{limit:,.0f} MiB: **{'met' if ok else 'NOT met'}**; external data: "
                     f"{r['export']['external_data']}.")  # fmt: skip
    done = {s: bool(r[s]) and (r[s].get("returncode", 0) == 0) for s in
            ("generate", "prune", "export", "verify", "engine")}  # fmt: skip
    if prune:
        done["prune"] = all(prune[k]["returncode"] == 0 for k in ("clean", "second"))
    data["targets"]["every_stage_completes"] = done
    lines.append("- **Every stage of the 1.5 B model completes here**: " + ", ".join(
        f"{s} {'yes' if ok else 'no'}" for s, ok in done.items()) + ".")  # fmt: skip
    lines.append("")

    # plan against the measured prune
    if prune and plan_r:
        plan = plan_r["plan"]
        clean = prune["clean"]  # the uninterrupted run: what plan predicts
        measured = clean["seconds"]
        worst = max([clean["peak_rss_main_mib"], *clean["peak_rss_workers_mib"]])
        ratio_t, text_t = _within(plan["est_total_seconds"], measured)
        ratio_m, text_m = _within(plan["memory_mib"]["total_per_worker"], worst)
        data["targets"]["plan_time_ratio"], data["targets"]["plan_memory_ratio"] = ratio_t, ratio_m
        lines += ["## `plan` against the measured prune (Qwen2.5-1.5B)", "",
                  "| | plan predicted | measured | predicted / measured |", "|---|---:|---:|---:|",
                  f"| wall time | {_secs(plan['est_total_seconds'])} | {_secs(measured)} "
                  f"(uninterrupted run) | {text_t} |",
                  f"| memory per process | {plan['memory_mib']['total_per_worker']:,.0f} MiB | "
                  f"{worst:,} MiB (largest process) | {text_m} |", "",
                  "| matrix shape | jobs | plan s/job | measured mean s/job |",
                  "|---|---:|---:|---:|"]  # fmt: skip
        measured_shapes = prune["job_seconds"]
        for sp in plan["shapes"]:
            key = "x".join(str(d) for d in sp["shape"])
            m = measured_shapes.get(key, {})
            lines.append(f"| {key} | {len(sp['names'])} | {sp['est_seconds_per_job']:.1f} | "
                         f"{m.get('mean_seconds', '-')} |")  # fmt: skip
        fixed = plan.get("fixed_seconds") or {}
        calib = plan.get("calibration", {}).get("est_seconds")
        lines += ["", "Plan's time, part by part: "
                  + ", ".join(f"{k.replace('_', ' ')} {_secs(v)}" for k, v in
                              [("load", fixed.get("load")), ("calibration", calib),
                               ("job keys", fixed.get("job_keys")),
                               ("worker start", fixed.get("worker_start")),
                               ("solves (busiest worker)",
                                max(x["est_seconds"] for x in plan["per_rank"])),
                               ("checkpoint write", fixed.get("checkpoint_write"))]
                              if v is not None)
                  + f". {_probe_text(plan['probe'])}", ""]  # fmt: skip

    if r["layer8b"]:
        x = r["layer8b"]
        lines += ["## One real decoder layer of Llama-3.1-8B", "",
                  f"Pruned with the same settings: {_secs(x['prune']['seconds'])} wall, peak "
                  f"{x['prune']['peak_rss_main_mib']} MiB main, workers "
                  f"{', '.join(map(str, x['prune']['peak_rss_workers_mib'])) or '-'} MiB. "
                  f"`plan` predicted {_secs(x['plan']['est_total_seconds'])}: "
                  f"{_within(x['plan']['est_total_seconds'], x['prune']['seconds'])[1]}; memory "
                  f"per process {x['plan']['memory_mib']['peak_process']:,.0f} MiB predicted.", "",
                  "| matrix shape | jobs | plan s/job | measured mean s/job | plan / measured |",
                  "|---|---:|---:|---:|---:|"]  # fmt: skip
        for sp in x["plan"]["shapes"]:
            key = "x".join(str(d) for d in sp["shape"])
            m = x["job_seconds"].get(key, {}).get("mean_seconds")
            lines.append(
                f"| {key} | {len(sp['names'])} | {sp['est_seconds_per_job']:.1f} | "
                f"{m if m is not None else '-'} | {_within(sp['est_seconds_per_job'], m)[1]} |"
            )
        lines.append("")

    if r["plan-large"]:
        rates = gpu_rates()
        lines += ["## Predictions for 8 B and 70 B (not run)", "",
                  "`plan` on plan-only checkpoints (full config; weights of layer 0 and outside "
                  "the layers only). CPU: this machine, the workers above. GPU: the plan's "
                  "per-shape CPU solve estimate divided by the GPU/CPU speed-up measured in "
                  "`docs/benchmarks/solver.json` on the nearest shape "
                  + ", ".join(f"{'x'.join(map(str, q['shape']))}: {q['speedup']:.0f}×"
                              for q in rates)
                  + f" ({rates[0]['gpu_name'] if rates else 'no GPU rows'}, block 128), "
                  "solves only (no calibration). These are predictions, not measurements.", "",
                  "| model | jobs | memory per worker (plan) | CPU total (plan) | "
                  "probe processes at once | 1 GPU solves (scaled) |",
                  "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
        for name, x in r["plan-large"].items():
            if not isinstance(x, dict):  # the record's "step" and "date"
                continue
            plan = x["plan"]
            gpu = gpu_prediction(plan, rates) if rates else None
            x["gpu_prediction"] = gpu
            lines.append(
                f"| {name} | {plan['jobs']} | {plan['memory_mib']['total_per_worker']:,.0f}"
                f" MiB | {_secs(plan['est_total_seconds'])} | "
                f"{(plan.get('probe') or {}).get('processes', '-')} | "
                f"{_secs(gpu['solve_seconds_one_gpu']) if gpu else '-'} |"
            )
        lines.append("")
    missing = [s for s in STEPS if not r[s]]
    if missing:
        lines += [f"Not run yet: {', '.join(missing)}.", ""]
    data["torch"] = torch.__version__
    write_report(OUT, "model_sizes", data, "\n".join(lines))


def main(argv=None) -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so `timeout` runs the finally
    args = parse_args(argv)
    bench = Bench(args)
    steps = [s for s in args.steps.split(",") if s]
    redo = {s for s in args.redo.split(",") if s}
    unknown = sorted((set(steps) | redo) - set(STEPS))
    if unknown:
        raise SystemExit(f"unknown steps {unknown}; steps: {', '.join(STEPS)}")
    if not args.report_only:
        for step in STEPS:
            if step not in steps or (bench.recorded(step) and step not in redo):
                continue
            print(f"== {step}", flush=True)
            data = getattr(bench, step.replace("-", "_"))()
            bench.record(step, {**data, "date": time.strftime("%Y-%m-%d %H:%M UTC",
                                                               time.gmtime())})  # fmt: skip
    write(bench, args, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
