"""What the benchmark scripts share: run metadata, report writing, timing statistics, the
ONNX Runtime benchmarks' prefill/decode timing (on the runtime), prompt and FLOP model, and
the scale benchmarks' prune config.

The scripts import it as a sibling module (run them as ``python tools/<script>.py``); it
imports only the standard library and the ``armor_export`` package (lazily, where needed),
and no script imports another script.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import random
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

NO_GPU = "no GPU"
MINUTE_UTC = "%Y-%m-%d %H:%M UTC"  # the date format of the reports


# --- machine and run metadata -----------------------------------------------------------


def cpu_description() -> str:
    """CPU model and core count, e.g. 'Intel(R) Xeon(R) Processor, 2 cores'."""
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores"


def os_name(release: bool = False) -> str:
    """'Linux', or with ``release`` 'Linux 6.8.0-1-generic'."""
    return f"{platform.system()} {platform.release()}" if release else platform.system()


def torch_version() -> str:
    import torch

    return f"torch {torch.__version__}"


def machine(*details: str) -> str:
    """The CPU, then ``details`` (OS, GPUs, versions, ...) in the order given."""
    return ", ".join([cpu_description(), *details])


def command(script: str, argv: Sequence[str] | None = None) -> str:
    """How ``tools/<script>`` was run, shell-quoted (``argv``: its arguments, default
    ``sys.argv[1:]``), so the line can be pasted back into a shell."""
    args = list(argv) if argv is not None else sys.argv[1:]
    return shlex.join(["python", f"tools/{script}", *args])


def utc_now(fmt: str = MINUTE_UTC) -> str:
    return dt.datetime.now(dt.timezone.utc).strftime(fmt)


def run_meta(script: str, argv: Sequence[str] | None, host: str, **versions: str) -> dict:
    """What a report records first: its command, date (UTC), machine (``host``, see
    ``machine``), then ``versions``."""
    return {"command": command(script, argv), "date": utc_now(), "machine": host, **versions}


def ort_run_meta(script: str, argv: Sequence[str] | None) -> dict:
    """``run_meta`` of the ONNX Runtime (CPU) benchmarks, with onnxruntime's version."""
    import onnxruntime

    return run_meta(
        script, argv, machine(os_name(release=True), NO_GPU), onnxruntime=onnxruntime.__version__
    )


# --- reports ----------------------------------------------------------------------------


def meta_lines(meta: dict) -> list[str]:
    """The command and date lines that open a report's Markdown."""
    return [f"- command: `{meta['command']}`", f"- date: {meta['date']}"]


def write_report(out: Path, name: str, data: dict, markdown: str) -> None:
    """``out/<name>.json`` (every figure) and ``out/<name>.md`` (the tables)."""
    from armor_export.io import write_json, write_text

    write_json(out / f"{name}.json", data)
    write_text(out / f"{name}.md", markdown)


def write_section(path: Path, section: str) -> None:
    """Put ``section`` (its first and last lines are its begin/end markers) into the file at
    ``path`` in place of the previous one, or at the end; the rest of the file is kept."""
    from armor_export.io import write_text

    lines = section.splitlines()
    begin, end = lines[0], lines[-1]
    text = path.read_text() if path.exists() else ""
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + section + "\n"
    write_text(path, text)


# --- timing statistics ------------------------------------------------------------------


def best_of_shuffled(
    timers: dict[str, Callable[[], float]], repeats: int, order: list[str], rng: random.Random
) -> dict[str, float]:
    """Each timer's best seconds of ``repeats`` passes. The timers alternate (a fresh shuffle
    of ``order`` each pass), so a slow phase of the machine falls on all alike."""
    best = dict.fromkeys(timers, float("inf"))
    for _ in range(repeats):
        rng.shuffle(order)
        for name in order:
            best[name] = min(best[name], timers[name]())
    return best


def bootstrap_median_ci(values: list[float], resamples: int = 2000) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the median of ``values`` (seeded: reproducible)."""
    rng = random.Random(0)
    medians = sorted(
        statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples)
    )
    return medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1]


# --- ONNX exports on the runtime --------------------------------------------------------


class ExportRunner:
    """One export on the runtime (``armor_export.runtime.Generator``): timed prefills and
    greedy KV-cache decode steps, the runtime's own forwards with no sampling overhead."""

    def __init__(self, folder: Path, threads: int = 0, session=None):
        """``session``: one already open on the export (e.g. with profiling on)."""
        from armor_export.runtime import Generator

        self.generator = Generator(folder, threads=threads, session=session)
        self.manifest = self.generator.manifest

    def prefill(self, ids: list[int]) -> float:
        """Seconds of one prefill of ``ids`` (batch 1) on an empty cache."""
        start = time.perf_counter()
        self.generator.prefill([ids])
        return time.perf_counter() - start

    def decode(self, ids: list[int], steps: int) -> float:
        """Tokens/s of ``steps`` greedy single-token steps after a prefill of ``ids``."""
        from armor_export.runtime.sampling import greedy

        state = self.generator.prefill([ids])
        start = time.perf_counter()
        for _ in range(steps):
            state = self.generator.step(state, greedy(state.next_logits))
        return steps / (time.perf_counter() - start)


class GenaiRunner:
    """One export on ONNX Runtime GenAI (its ``genai_config.json``), timed like
    ``ExportRunner``: its own decode loop and sampler, greedy."""

    def __init__(self, folder: Path, threads: int = 0):
        import json

        from armor_export.runtime.genai import import_genai

        og = import_genai()
        config = og.Config(str(folder))
        if threads:
            options = {"intra_op_num_threads": threads}
            config.overlay(json.dumps({"model": {"decoder": {"session_options": options}}}))
        self.model = og.Model(config)
        self._og = og

    def _generator(self, ids: list[int], new_tokens: int):
        params = self._og.GeneratorParams(self.model)
        length = len(ids) + new_tokens
        # min_length keeps an eos from ending the timed steps early
        params.set_search_options(max_length=length, min_length=length, do_sample=False)
        return self._og.Generator(self.model, params)

    def prefill(self, ids: list[int]) -> float:
        """Seconds of one prefill of ``ids`` (batch 1), its first token picked."""
        generator = self._generator(ids, 1)
        start = time.perf_counter()
        generator.append_tokens([ids])
        generator.generate_next_token()  # picks from the prefill's logits: no forward
        return time.perf_counter() - start

    def decode(self, ids: list[int], steps: int) -> float:
        """Tokens/s of ``steps`` single-token forwards (each with its greedy pick)."""
        generator = self._generator(ids, steps + 1)
        generator.append_tokens([ids])
        generator.generate_next_token()
        start = time.perf_counter()
        for _ in range(steps):
            generator.generate_next_token()  # one forward on the last token, then a pick
        return steps / (time.perf_counter() - start)


def ensure_export(name: str, source: str, work: Path, reexport: bool) -> Path:
    """The fp32 export of ``source`` in ``work/name``: reused when it is of the current
    graph form and has a genai_config.json, exported (again) otherwise."""
    import logging

    from armor_export.config import ExportConfig
    from armor_export.export import export_onnx
    from armor_export.export.api import GRAPH_REVISION
    from armor_export.export_manifest import MANIFEST, ExportManifest
    from armor_export.progress import RichReporter

    log = logging.getLogger("benchlib")
    folder = work / name
    if (folder / MANIFEST).is_file() and not reexport:
        manifest = ExportManifest.read(folder)
        same_graph = manifest.graph_revision == GRAPH_REVISION
        current = same_graph and manifest.genai_config is not None
        if manifest.source.model == source and manifest.dtype == "float32" and current:
            log.info("%s: reusing the export in %s", name, folder)
            return folder
    result = export_onnx(ExportConfig(model=source, output_dir=str(folder)), RichReporter())
    log.info("%s: exported in %.0f s", name, result.seconds)
    return folder


def prompt_ids(tokenizer, n: int) -> list[int]:
    """The first ``n`` tokens of the bundled Wikipedia sample (the benchmarks' prompt)."""
    from armor_export.data.text import load_text

    ids = tokenizer.encode(load_text("wikipedia")[:200_000]).ids
    if len(ids) < n:
        sys.exit(f"the benchmark text has only {len(ids)} tokens, {n} asked")
    return list(ids[:n])


def dense_shapes(source: str) -> dict:
    """FLOP-relevant sizes of the dense model (decoder linears, attention, lm_head)."""
    from armor_export.eval.api import load_any_model

    model, _, _ = load_any_model(source)
    cfg = model.config
    linears = sum(
        2 * m.in_features * m.out_features
        for n, m in model.named_modules()
        if type(m).__name__ == "Linear" and "lm_head" not in n
    )
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return {
        "linear_flops_per_token": linears,
        "attention_width": cfg.num_attention_heads * head_dim,
        "layers": cfg.num_hidden_layers,
        "lm_head_flops_per_token": 2 * cfg.hidden_size * cfg.vocab_size,
    }


def dense_flops(shapes: dict, tokens: int, context: int) -> float:
    """MatMul FLOPs of ``tokens`` new tokens attending to ``context`` (the graph runs full
    QKᵀ and AV products under the mask, so every token pays for the whole context)."""
    attention = shapes["layers"] * 4 * context * shapes["attention_width"]
    per_token = shapes["linear_flops_per_token"] + shapes["lm_head_flops_per_token"] + attention
    return tokens * per_token


def wrapper_flops_per_token(checkpoint: str) -> int:
    """Extra MatMul FLOPs per token of a checkpoint's ARMOR wrappers, 2·b·(d_in + d_out) per
    matrix (``armor_export.report``'s count)."""
    from armor_export.report import collect
    from armor_export.report.overhead import WrapperOverhead, total

    matrices = collect(checkpoint).matrices
    return total(WrapperOverhead.of(m.d_out, m.d_in, m.block_size) for m in matrices).wrapper_flops


# --- prune runs -------------------------------------------------------------------------


def config_toml(args, out: Path, device: str | None = None) -> str:
    """The ``armor-export prune --config`` file of the scale benchmarks' ARMOR run: ``args``
    gives model, in_memory, block_size, iterations, calib_samples and calib_seqlen."""
    return (
        f'model = "{args.model}"\nmethod = "armor"\noutput_dir = "{out}"\nworkers = 1\n'
        f"low_memory = {'false' if args.in_memory else 'true'}\n"
        + (f'device = "{device}"\n' if device else "")
        + f"[armor]\nblock_size = {args.block_size}\niterations = {args.iterations}\n"
        f"[calibration]\nn_samples = {args.calib_samples}\nseqlen = {args.calib_seqlen}\n"
    )


def rank_records(checkpoint: Path) -> list[dict]:
    """What each process of a prune run recorded (``work/ranks/rank<r>.json``: jobs, wall
    time, calibration time, peak RSS), in rank order."""
    from armor_export.io import read_json

    paths = (Path(checkpoint) / "work" / "ranks").glob("rank*.json")
    return [read_json(p) for p in sorted(paths, key=lambda p: int(p.stem.removeprefix("rank")))]


# --- the ORT prefill/decode benchmarks' shared command line and rounds ---------------------


def add_export_timing_arguments(p, work: str, armor_default: list[str]) -> None:
    """The flags bench_onnx and bench_runtime share: the dense model, the ARMOR checkpoints
    (``NAME=CHECKPOINT``, default ``armor_default``), folders, lengths and rounds."""
    p.add_argument("--dense", default="smollm2-135m", help="dense model")
    p.add_argument(
        "--armor",
        action="append",
        default=None,
        help=f"NAME=CHECKPOINT (default {' '.join(armor_default)})",
    )
    p.set_defaults(armor_default=armor_default)
    p.add_argument("--work", default=work, help="export folders")
    p.add_argument("--out", default="docs/benchmarks")
    p.add_argument("--prefill", type=int, default=512, help="prefill tokens")
    p.add_argument("--decode-prompt", type=int, default=128, help="prompt tokens before decode")
    p.add_argument("--decode-tokens", type=int, default=64, help="decode steps timed")
    p.add_argument("--rounds", type=int, default=9, help="interleaved rounds (median)")
    p.add_argument("--repeats", type=int, default=3, help="prefills per runner and round (best)")
    p.add_argument(
        "--threads", type=int, default=0, help="ORT intra-op threads (0: each runtime's default)"
    )
    p.add_argument("--reexport", action="store_true", help="export again even if present")


def variants(args) -> dict[str, str]:
    """``{"dense": model, name: checkpoint, ...}`` from ``--dense`` and ``--armor``; exits
    naming a checkpoint that is not a finished prune."""
    from armor_export.prune.checkpoint import MANIFEST

    out = {"dense": args.dense}
    for pair in args.armor or args.armor_default:
        name, _, path = pair.partition("=")
        if not (Path(path) / MANIFEST).is_file():
            sys.exit(f"{path}: no ARMOR checkpoint (run tools/bench_quality.py or prune it)")
        out[name] = path
    return out


def interleaved_rounds(runners: dict, args, prefill_ids: list[int], decode_ids: list[int]):
    """Per runner, the best prefill seconds and the decode tokens/s of every round: after a
    warm-up (ORT allocates its arenas on the first runs), runners take turns in an order
    shuffled each round, so a slow phase of the machine hits all of them alike."""
    from functools import partial

    from armor_export.progress import RichReporter

    for runner in runners.values():
        runner.prefill(prefill_ids)
        runner.decode(decode_ids, 4)
    prefill: dict = {key: [] for key in runners}
    decode: dict = {key: [] for key in runners}
    order, rng = list(runners), random.Random(0)
    with RichReporter().task("rounds", total=args.rounds) as task:
        for _ in range(args.rounds):
            timers = {key: partial(r.prefill, prefill_ids) for key, r in runners.items()}
            best = best_of_shuffled(timers, args.repeats, order, rng)
            rng.shuffle(order)
            for key in order:
                prefill[key].append(best[key])
                decode[key].append(runners[key].decode(decode_ids, args.decode_tokens))
            task.advance(1)
    return prefill, decode
