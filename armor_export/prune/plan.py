"""``armor-export plan``: what a prune run will do, how much memory and how long, up front.

Nothing is pruned and the model is never loaded whole: the plan opens it lazily
(``prune/lazy.py``), lists the jobs, and measures a short probe: a few solver iterations on
one real weight of every distinct shape, and one calibration batch through one decoder
layer. Estimates are extrapolated from those measurements and labelled as such.
"""

from __future__ import annotations

import logging
import os
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field

import torch

from armor_export.config import PruneConfig
from armor_export.memory import MIB
from armor_export.prune import methods

log = logging.getLogger(__name__)


@dataclass
class ShapePlan:
    """The jobs of one weight shape and the probe measured on one of them."""

    shape: tuple[int, int]
    names: list[str]
    probe_matrix: str
    probe_iterations: int  # solver iterations measured (0: a whole baseline job was timed)
    setup_seconds: float  # measured: the job's fixed cost (NoWag-P start, normalisation)
    seconds_per_iteration: float  # measured
    est_seconds_per_job: float  # setup + iterations × per-iteration (ARMOR may stop sooner)
    batch: int = 1  # matrices per batched solve (--batch-same-shape); the estimate is 1 by 1
    key_seconds: float = 0.0  # measured: keying one job's inputs (reading its weight first)
    packed_bytes: int = 0  # measured: what one finished job stores

    @property
    def pattern(self) -> str:
        parts = {n.split(".", 3)[-1] if n.count(".") >= 3 else n for n in self.names}
        return ", ".join(sorted(parts))


@dataclass
class Plan:
    model: str
    method: str
    low_memory: bool
    ranks: int
    layers: int
    jobs: int
    skipped: list[str]
    shapes: list[ShapePlan]
    calibration: dict  # measured per-layer-batch time and the extrapolated total
    memory_mib: dict  # per worker, by component
    per_rank: list[dict]  # jobs and estimated seconds per rank
    est_total_seconds: float
    job_ranks: dict[str, int]  # the rank each job goes to (the same LPT rule as prune)
    notes: list[str] = field(default_factory=list)
    # measured or extrapolated seconds of what runs around the solves: loading the model,
    # keying every job, a worker's start (spawn, imports, its first solve's compilation),
    # writing the checkpoint
    fixed_seconds: dict = field(default_factory=dict)
    probe: dict = field(default_factory=dict)  # how the solves were probed

    def to_dict(self) -> dict:
        data = asdict(self)
        for s, sp in zip(data["shapes"], self.shapes, strict=True):
            s["pattern"] = sp.pattern
        return data


def _probe_calibration(cfg: PruneConfig, lazy, adapter, tokenizer) -> dict:
    """Time reading one decoder layer and running one calibration batch through it."""
    from armor_export.prune.api import calibration_batches
    from armor_export.prune.calibrate import _layer_forward, capture_layer_inputs

    batches = calibration_batches(tokenizer, cfg, lazy.model.config)
    first = batches[:1]
    captured = capture_layer_inputs(lazy.model, adapter, first)
    start = time.perf_counter()
    layer = lazy.load_layer(0)
    read = time.perf_counter() - start
    with torch.no_grad():
        start = time.perf_counter()
        _layer_forward(layer, captured.hidden[0], captured.kwargs[0][0])
        forward = time.perf_counter() - start
    lazy.release_layer(0)
    n_layers = len(adapter.layers(lazy.model))
    total = n_layers * (read + forward * len(batches))
    return {
        "batches": len(batches),
        "batch_shape": list(first[0].shape),
        "layer_read_seconds": round(read, 4),
        "layer_batch_forward_seconds": round(forward, 4),
        "est_seconds": round(total, 3),
    }


def layer_bytes(model, adapter) -> int:
    """Bytes of the largest decoder layer in fp32: what a low-memory run holds of the model."""
    return max(sum(p.numel() for p in layer.parameters()) for layer in adapter.layers(model)) * 4


def statistics_bytes(targets: dict, method: str) -> int:
    """Bytes of the calibration statistics a prune keeps: fp64 input norms of every target
    (and the Gram matrices of a method that needs them, SparseGPT)."""
    norms = sum(m.in_features for m in targets.values()) * 8
    gram = methods.get(method).needs_gram
    grams = sum(m.in_features**2 for m in targets.values()) * 8 if gram else 0
    return norms + grams


# Measured on one 8960x1536 fp32 ARMOR solve (block 64, #19, torch 2.13 CPU, glibc with
# ``memory.bound_heap``): the process peaks 772 MiB (eager) / 748 MiB (compiled) above its
# runtime, the weight included: about 15 fp32 copies of the weight. The peak is in the
# group step (eager) or the conjugate-gradient values step (compiled).
JOB_WEIGHT_COPIES = 15
# Resident size torch.compile adds to a worker once the group maths are compiled (inductor,
# sympy, the compiled kernel): 234 MiB after the imports, 388 MiB after the first compiled
# job with its temporaries freed (#19).
COMPILE_RUNTIME_MIB = 155.0
# What the in-memory load adds beyond the model and its converted file (transformers' model
# modules, the tokenizer, allocator slack): 104-113 MiB measured on bf16 and fp32 Llama,
# Qwen2 and Gemma2 checkpoints from 21 MiB to 1.7 GiB (fp32), transformers 5.25 (#24).
LOAD_EXTRA_MIB = 150.0
# What a fresh process imports, by role: a pool worker runs jobs; the main process also
# loads the model and tokenizer (transformers).
_WORKER_IMPORTS = "import torch, armor_export.prune.jobs, armor_export.prune.schedule"
_MAIN_IMPORTS = "import transformers, armor_export.prune.api, armor_export.data.models"


def fresh_runtime_mib() -> tuple[float, float]:
    """(worker, main) resident size of a fresh process after its imports, measured in a
    child (this process's own size is inflated by the probe). Falls back to the sizes
    measured for #19 (235 and 250 MiB) where no child can be run."""
    import subprocess
    import sys

    code = (
        "def rss():\n"
        "    return open('/proc/self/statm').read().split()[1]\n"
        f"{_WORKER_IMPORTS}\nprint(rss())\n{_MAIN_IMPORTS}\nprint(rss())\n"
    )
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=300, check=True).stdout.split()  # fmt: skip
        page = os.sysconf("SC_PAGE_SIZE")
        return int(out[0]) * page / MIB, int(out[1]) * page / MIB
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return 235.0, 250.0


def _resident_outside_layers(model, adapter) -> int:
    """Bytes a low-memory run keeps outside the decoder layers while calibrating: what
    ``lazy.load_lazy_model`` materialised (the embedding in its stored dtype where it is
    kept so), not the ``meta`` stand-ins (``lm_head`` stays on disk)."""
    parent_path = adapter.layers_path.rpartition(".")[0]
    base = model.get_submodule(parent_path) if parent_path else model
    layers = adapter.layers(model)
    in_layers = {id(t) for t in (*layers.parameters(), *layers.buffers())}
    tensors = {id(t): t for t in (*base.parameters(), *base.buffers()) if id(t) not in in_layers}
    return sum(t.numel() * t.element_size() for t in tensors.values() if not t.is_meta)


def load_bytes(lazy, state: dict) -> int:
    """Peak bytes of loading the whole model in memory (``data.models.load_model_and_tokenizer``)
    beyond the runtime: the fp32 model, plus the stored bytes of every tensor stored in
    another dtype (transformers maps the file and converts tensor by tensor: the mapped pages
    are resident beside the converted copies until the load ends; fp32 tensors use the mapped
    pages themselves), plus ``LOAD_EXTRA_MIB``. Measured: a bf16 checkpoint peaks at the fp32
    model + half of it, not the model alone (#24)."""
    whole = sum(t.numel() for t in state.values()) * 4
    source = lazy.source
    converted = sum(
        source.nbytes(key)
        for key in state
        if key in source
        and source.stored_dtype(key).is_floating_point
        and source.stored_dtype(key) != torch.float32
    )
    return whole + converted + int(LOAD_EXTRA_MIB * MIB)


def _memory(cfg: PruneConfig, lazy, adapter, targets, calib: dict, ranks: int,
            runtimes: tuple[float, float]) -> dict:  # fmt: skip
    """Peak memory of each process of the run (MiB): sizes from the model's shapes, the
    runtimes measured in a fresh process, the job from the solver's measured temporaries.

    The main process calibrates (runtime, the model it holds, activations, statistics);
    each pool worker runs one job at a time (runtime, the largest job). With one worker the
    jobs run in the main process after calibration. ``total_per_worker`` is the largest
    process's peak (``peak_process``).
    """
    from armor_export.prune.schedule import resolve_workers

    model, config = lazy.model, lazy.model.config
    layer = layer_bytes(model, adapter)
    state = model.state_dict()
    if getattr(config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    whole = sum(t.numel() for t in state.values()) * 4
    hidden = config.hidden_size
    inter = getattr(config, "intermediate_size", 4 * hidden)
    rows, seqlen = calib["batch_shape"]
    tokens = -(-calib["batches"] // ranks) * rows * seqlen  # each rank runs its share
    # layer inputs and outputs of every calibration batch, plus one batch's intermediates
    activations = 2 * tokens * hidden * 4 + rows * seqlen * (inter * 3 + 4 * hidden) * 4
    heads = getattr(config, "num_attention_heads", 1)
    activations += rows * heads * seqlen * seqlen * 4  # attention scores of one batch
    stats = statistics_bytes(targets, cfg.method)
    largest = max(m.in_features * m.out_features for m in targets.values())
    job = largest * 4 * JOB_WEIGHT_COPIES
    worker_runtime, main_runtime = runtimes  # measured in fresh processes (fresh_runtime_mib)
    if cfg.method == "armor" and cfg.armor.compile:
        worker_runtime += COMPILE_RUNTIME_MIB
    outside = _resident_outside_layers(model, adapter)
    resident = outside + layer if cfg.low_memory else whole
    pool = resolve_workers(cfg.workers, len(targets), cfg.device) > 1
    if cfg.low_memory:
        # two phases: the embeddings run once to capture layer 0's inputs (activations of
        # one layer's width), then are released; each layer then runs with its activations.
        # Measured on Qwen2.5-1.5B (#19): main peak 1115 MiB, this model 1096 MiB.
        capture = 2 * tokens * hidden * 4  # layer 0's inputs, and the embeddings' output
        calibrating = max(outside + capture, layer + activations)
    else:
        capture, calibrating = 0, whole + activations
    # jobs in the main process: it still holds the model unless it is low-memory
    in_process = (0 if cfg.low_memory else whole) + job
    # a low-memory checkpoint is streamed: one stored tensor and its upcast slice at a time
    largest_stored = lazy.source.largest_nbytes()
    write = largest_stored + min(2 * largest_stored, 16 * MIB) if cfg.low_memory else 0
    main = stats + max(calibrating if pool else max(calibrating, in_process), write)
    # in memory, loading the model comes first (no statistics yet) and may be the peak
    loading = 0 if cfg.low_memory else load_bytes(lazy, state)
    main = max(main, loading)
    memory = {
        "runtime_measured": main_runtime,
        "runtime_worker": worker_runtime if pool else 0.0,
        "model_resident": resident / MIB,
        "model_load": loading / MIB,
        "outside_layers": (outside if cfg.low_memory else whole) / MIB,
        "calibration_activations": activations / MIB,
        "calibration_capture": capture / MIB,
        "checkpoint_write": write / MIB,
        "statistics": stats / MIB,
        "largest_job": job / MIB,
        "main_process": main_runtime + main / MIB,
        "worker_process": worker_runtime + job / MIB if pool else 0.0,
    }
    memory["peak_process"] = max(memory["main_process"], memory["worker_process"])
    memory["total_per_worker"] = memory["peak_process"]
    memory["one_decoder_layer"] = layer / MIB
    memory["whole_model_fp32"] = whole / MIB
    return {k: round(v, 1) for k, v in memory.items()}


def _probe(cfg, lazy, by_shape, iterations, ranks, job_bytes, progress):
    from armor_export.prune import probe

    method = methods.get(cfg.method)
    order = sorted(by_shape.items(), key=lambda kv: -kv[0][0] * kv[0][1])
    tasks = [(shape, names[0]) for shape, names in order]
    solves = probe.probe_solves(cfg, lazy.source, tasks, iterations, ranks, job_bytes)
    keys, read_spb = probe.time_job_keys(cfg, lazy, dict(order))
    total_iterations = method.iterations(cfg) if method.iterations else 0
    shapes = []
    for shape, names in order:
        t = solves.shapes[shape]
        shapes.append(
            ShapePlan(shape, names, names[0], t.iterations, round(t.setup_seconds, 4),
                      round(t.seconds_per_iteration, 4),
                      round(t.setup_seconds + t.seconds_per_iteration * total_iterations, 3),
                      key_seconds=round(keys[shape], 4), packed_bytes=t.packed_bytes)
        )  # fmt: skip
        if progress is not None:
            progress(shape)
    return shapes, solves, read_spb


def make_plan(cfg: PruneConfig, ranks: int = 1, probe_iterations: int = 3, progress=None) -> Plan:
    """Plan ``cfg`` over ``ranks`` workers (torchrun ranks or local worker processes)."""
    from armor_export.data.models import load_lazy_model_and_tokenizer
    from armor_export.memory import meminfo_bytes
    from armor_export.models.registry import adapter_for
    from armor_export.prune import distributed
    from armor_export.prune.api import select_linears

    cfg.validate()
    if ranks < 1:
        from armor_export.errors import UserError

        raise UserError("--ranks must be at least 1")
    started = time.perf_counter()
    lazy, tokenizer = load_lazy_model_and_tokenizer(cfg.model)
    lazy_load = time.perf_counter() - started
    adapter = adapter_for(lazy.model)
    targets, skipped = select_linears(lazy.model, adapter, cfg)
    by_shape: dict[tuple[int, int], list[str]] = defaultdict(list)
    for name, mod in targets.items():
        by_shape[(mod.out_features, mod.in_features)].append(name)
    largest = max(m.in_features * m.out_features for m in targets.values())
    runtimes = fresh_runtime_mib()
    # what one probe process holds: a worker's runtime and the largest job
    worker_bytes = runtimes[0] * MIB + largest * 4 * JOB_WEIGHT_COPIES
    shapes, solves, read_spb = _probe(cfg, lazy, by_shape, probe_iterations, ranks, worker_bytes,
                                      progress)  # fmt: skip
    if methods.get(cfg.method).solve_batch is not None:
        from armor_export.prune import batching

        # with "auto", the probe prune itself runs, with one worker's threads
        threads = torch.get_num_threads()
        torch.set_num_threads(solves.threads)
        try:
            sizes = batching.batch_sizes({sp.shape: len(sp.names) for sp in shapes}, cfg)
        finally:
            torch.set_num_threads(threads)
        for sp in shapes:
            sp.batch = sizes[sp.shape]
    if methods.get(cfg.method).needs_statistics:  # the main process calibrates, all threads
        calib = _probe_calibration(cfg, lazy, adapter, tokenizer)
    else:
        calib = {"batches": 0, "batch_shape": [0, 0], "est_seconds": 0.0}
    memory = _memory(cfg, lazy, adapter, targets, calib, ranks, runtimes)

    est = {n: sp.est_seconds_per_job for sp in shapes for n in sp.names}
    shares = distributed.assign({n: max(1, round(s * 1000)) for n, s in est.items()}, ranks)
    per_rank = [
        {"rank": r, "jobs": len(share), "est_seconds": round(sum(est[n] for n in share), 1)}
        for r, share in enumerate(shares)
    ]
    fixed = _fixed_seconds(cfg, lazy, targets, shapes, solves, lazy_load, read_spb)
    total = (fixed["load"] + calib["est_seconds"] + fixed["job_keys"] + fixed["worker_start"]
             + max(r["est_seconds"] for r in per_rank) + fixed["checkpoint_write"])  # fmt: skip
    probe_threads = solves.threads
    notes = [
        f"solves probed in {solves.processes} process(es) at once, {probe_threads} torch "
        "thread(s) each, set up as the prune's workers",
        "times are extrapolated from the probe on this machine; ARMOR stops early when the "
        f"loss stalls for {cfg.armor.patience} iterations, so solve times are upper bounds",
        "the probe solves with unit statistics: solver time does not depend on their values",
    ]
    if solves.processes < ranks and torch.device(cfg.device).type == "cpu":
        notes.append(
            f"only {solves.processes} probe process(es) fit in the memory available now, "
            f"not {ranks}: with {ranks} workers sharing the cores, solves may take longer"
        )
    total_mib = (meminfo_bytes("MemTotal") or 0) / MIB
    workers = ranks if memory["worker_process"] else 0
    needed = memory["main_process"] + workers * memory["worker_process"]
    if total_mib and needed > total_mib and torch.device(cfg.device).type == "cpu":
        fit = max(1, int((total_mib - memory["main_process"]) // max(1, memory["worker_process"])))
        notes.append(
            f"{ranks} worker(s) on this machine need about {needed:,.0f} MiB together, more "
            f"than its {total_mib:,.0f} MiB: run at most {fit} here, or spread the ranks "
            "over machines"
        )
    if ranks > 1 and not cfg.low_memory:
        notes.append("every rank holds the whole model: add --low-memory to hold one layer")
    batched = [f"{sp.shape[0]}x{sp.shape[1]} by {sp.batch}" for sp in shapes if sp.batch > 1]
    if batched:
        notes.append(
            f"same-shape batched solves on {cfg.device}: {', '.join(batched)}; the times "
            "above are for one by one, so batched shapes should finish sooner"
        )
    return Plan(
        cfg.model, cfg.method, cfg.low_memory, ranks, len(adapter.layers(lazy.model)),
        len(targets), skipped, shapes, calib, memory, per_rank, round(total, 1),
        {n: r for r, share in enumerate(shares) for n in share}, notes,
        {k: round(v, 3) for k, v in fixed.items()},
        {"processes": solves.processes, "threads": probe_threads,
         "worker_start_seconds": round(solves.start_seconds, 2),
         "first_job_extra_seconds": round(solves.first_job_extra_seconds, 2)},
    )  # fmt: skip


def _fixed_seconds(cfg, lazy, targets, shapes, solves, lazy_load, read_spb) -> dict:
    """What runs around the solves, from the probe's measured rates: loading the model (all
    of it unless low-memory), keying every job, a worker's start, writing the checkpoint."""
    from armor_export.prune import probe

    source = lazy.source
    stored = sum(source.nbytes(k) for k in source.keys())
    load = lazy_load + (0.0 if cfg.low_memory else stored * read_spb)
    state = lazy.model.state_dict()  # meta tensors: the dtypes the checkpoint is written in
    if getattr(lazy.model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    others = {k: t for k, t in state.items()
              if not (k.rpartition(".")[0] in targets and k.endswith(".weight"))}  # fmt: skip
    written = sum(t.numel() * t.element_size() for t in others.values())
    written += sum(sp.packed_bytes * len(sp.names) for sp in shapes)
    read_back = sum(source.nbytes(k) for k in others if k in source) if cfg.low_memory else 0
    write = written * probe.write_seconds_per_byte(cfg.output_dir) + read_back * read_spb
    return {
        "load": load,
        "job_keys": sum(sp.key_seconds * len(sp.names) for sp in shapes),
        "worker_start": solves.start_seconds + solves.first_job_extra_seconds,
        "checkpoint_write": write,
    }
