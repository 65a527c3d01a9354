"""The measurements behind ``armor-export plan``: each taken the way the prune will run.

A solve is timed in processes set up like the prune's workers (the same torch threads, the
same heap settings under ``--low-memory``, ``torch.compile`` as configured) and, on CPU, as
many at once as the prune runs, so they share the cores and memory bandwidth as the
workers will. Each process first solves its smallest matrix once cold: what that costs
above a warm solve (compilation, first-touch) is paid once per worker. The fixed costs
around the solves are measured too: reading a layer, keying a job's inputs, writing.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import torch

from armor_export import memory
from armor_export.config import PruneConfig
from armor_export.prune import methods


@dataclass
class ShapeTiming:
    """One shape's probe, averaged over the probe processes."""

    setup_seconds: float  # the job's fixed cost (NoWag-P start, normalisation, losses)
    seconds_per_iteration: float
    iterations: int  # iterations measured (0: a whole one-shot job was timed)
    packed_bytes: int  # what a finished job of this shape stores (core, positions, A, B)


@dataclass
class SolveProbe:
    shapes: dict[tuple[int, int], ShapeTiming]
    processes: int  # probe processes run at once
    threads: int  # torch threads in each
    start_seconds: float  # a worker process's start: spawn and imports (0: in process)
    first_job_extra_seconds: float  # a process's first solve above a warm one (compile)


def time_job(cfg: PruneConfig, name: str, weight: torch.Tensor, iterations: int):
    """(setup seconds, seconds per iteration, iterations measured, result) for one matrix."""
    from armor_export.prune.jobs import MatrixJob, run_job

    method = methods.get(cfg.method)
    d_in = weight.shape[1]
    hdiag = torch.ones(d_in)  # timing does not depend on the statistics' values
    gram = torch.eye(d_in) if method.needs_gram else None
    if method.probe_config is None:  # a one-shot method: time one whole job
        start = time.perf_counter()
        result = run_job(MatrixJob(name, weight, hdiag, gram), cfg)
        return time.perf_counter() - start, 0.0, 0, result
    probe = method.probe_config(cfg, iterations)
    stamps: list[float] = []
    start = time.perf_counter()
    result = run_job(
        MatrixJob(name, weight, hdiag), probe, lambda _it, _loss: stamps.append(time.perf_counter())
    )
    end = time.perf_counter()
    if len(stamps) >= 2:
        per_it = (stamps[-1] - stamps[0]) / (len(stamps) - 1)
    else:
        per_it = (end - start) / max(1, len(stamps))
    setup = max(0.0, end - start - per_it * len(stamps))
    return setup, per_it, len(stamps), result


def packed_bytes(result) -> int:
    """Bytes of a finished job as the job store and the checkpoint keep it."""
    from armor_export.prune import masks

    tensors = list(masks.pack(result.core, result.mask))
    if result.is_armor:
        tensors += [result.a_blocks, result.b_blocks]
    return sum(t.numel() * t.element_size() for t in tensors)


def probe_shapes(cfg: PruneConfig, source, tasks: list, iterations: int) -> dict:
    """In this process: the smallest matrix cold, then every matrix warm.

    ``tasks``: (shape, module name), largest first, their weights read from ``source`` (a
    :class:`~armor_export.prune.lazy.SafetensorsSource`) one at a time. Returns the timings
    by shape and what the first (cold) solve cost above the same solve warm.
    """
    small_shape, small_name = tasks[-1]
    weight = source.get(f"{small_name}.weight")
    start = time.perf_counter()
    time_job(cfg, small_name, weight, iterations)
    cold = time.perf_counter() - start
    shapes, warm_small = {}, cold
    for shape, name in tasks:
        weight = source.get(f"{name}.weight")
        start = time.perf_counter()
        setup, per_it, n, result = time_job(cfg, name, weight, iterations)
        if shape == small_shape:
            warm_small = time.perf_counter() - start
        shapes[shape] = (setup, per_it, n, packed_bytes(result))
        del result, weight
    return {"shapes": shapes, "first_job_extra": max(0.0, cold - warm_small)}


def _probe_process(conn, threads, modules, low_memory, cfg_dict, source, tasks, iterations):
    from armor_export.prune.schedule import _init_worker

    try:
        _init_worker(threads, modules, low_memory)  # exactly as a prune worker starts
        conn.send(("ready", time.time()))  # when this process was ready, by the wall clock
        cfg = PruneConfig.from_dict(cfg_dict)
        conn.send(("done", probe_shapes(cfg, source, tasks, iterations)))
    except BaseException as exc:  # reported to the plan, which raises it there
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def _in_processes(cfg: PruneConfig, source, tasks: list, iterations: int, processes: int,
                  threads: int):  # fmt: skip
    """Probe in ``processes`` fresh worker processes at once; returns (start seconds, runs)."""
    from armor_export.prune.schedule import _method_modules

    ctx = get_context("spawn")
    procs, pipes, starts, runs = [], [], [], []
    for _ in range(processes):
        ours, theirs = ctx.Pipe(duplex=False)
        args = (theirs, threads, _method_modules(), cfg.low_memory, cfg.to_dict(), source,
                tasks, iterations)  # fmt: skip
        proc = ctx.Process(target=_probe_process, args=args, daemon=True)
        started = time.time()  # compared with the child's own clock reading when it is ready
        proc.start()
        theirs.close()
        procs.append(proc)
        pipes.append((ours, started))
    try:
        for (pipe, started), proc in zip(pipes, procs, strict=True):
            for _ in range(2):
                try:
                    kind, value = pipe.recv()
                except EOFError:
                    proc.join()
                    raise RuntimeError(
                        f"a probe process ended without a result (exit code {proc.exitcode}"
                        f"{', killed: out of memory?' if proc.exitcode == -9 else ''})"
                    ) from None
                if kind == "error":
                    raise RuntimeError(f"the probe failed in its worker process: {value}")
                if kind == "ready":  # not when it is read here: after the process before's run
                    starts.append(value - started)
                else:
                    runs.append(value)
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
            proc.join()
    return sum(starts) / len(starts), runs


def probe_solves(cfg: PruneConfig, source, tasks: list, iterations: int, ranks: int,
                 job_bytes: int) -> SolveProbe:  # fmt: skip
    """Time every shape of ``tasks`` ((shape, module name), largest first; the weights read
    from ``source``) the way ``ranks`` prune workers will solve them.

    With one rank the prune solves in its main process (under the same heap settings), so
    does the probe. With more, on CPU, the probe runs in as many worker processes at once,
    unless fewer fit in the memory available now (``job_bytes``: one job's peak).
    """
    from armor_export.prune.schedule import resolve_workers

    workers = resolve_workers(ranks, ranks, cfg.device)
    if workers <= 1:
        threads = torch.get_num_threads()
        if cfg.low_memory:
            from armor_export.memory import bound_heap

            bound_heap()  # the prune's main process solves under it too
        run = probe_shapes(cfg, source, tasks, iterations)
        start, runs, processes = 0.0, [run], 1
    else:
        threads = max(1, (os.cpu_count() or 1) // workers)
        available = memory.meminfo_bytes("MemAvailable")
        fit = workers if available is None else max(1, int(available * 0.8 // max(1, job_bytes)))
        processes = min(workers, fit)
        start, runs = _in_processes(cfg, source, tasks, iterations, processes, threads)
    shapes = {}
    for shape, _name in tasks:
        rows = [r["shapes"][shape] for r in runs]
        shapes[shape] = ShapeTiming(
            sum(r[0] for r in rows) / len(rows), sum(r[1] for r in rows) / len(rows),
            rows[0][2], rows[0][3],
        )  # fmt: skip
    extra = sum(r["first_job_extra"] for r in runs) / len(runs)
    return SolveProbe(shapes, processes, threads, start, extra)


def time_job_keys(cfg: PruneConfig, lazy, names_by_shape: dict) -> tuple[dict, float]:
    """Seconds to key one job of each shape (``provenance.job_key``; under ``--low-memory``
    reading its weight from disk first), as the prune does for every job before it solves,
    to find the finished ones; and the seconds per stored byte those reads took."""
    from armor_export.prune import provenance

    out, read_total, read_bytes = {}, 0.0, 0
    for shape, names in names_by_shape.items():
        start = time.perf_counter()
        weight = lazy.weight(names[0])
        read = time.perf_counter() - start
        read_total += read
        read_bytes += lazy.source.nbytes(f"{names[0]}.weight")
        start = time.perf_counter()
        provenance.job_key(weight, torch.ones(shape[1], dtype=torch.float64), None, cfg)
        out[shape] = (read if cfg.low_memory else 0.0) + time.perf_counter() - start
    return out, read_total / max(1, read_bytes)


def write_seconds_per_byte(folder: str | Path | None, nbytes: int = 64 * memory.MIB) -> float:
    """Seconds per byte of an atomic, fsynced write near ``folder`` (as checkpoints are)."""
    from armor_export.io import write_bytes

    where = Path(folder) if folder else None
    while where is not None and not where.is_dir():
        where = where.parent if where != where.parent else None
    data = os.urandom(nbytes)
    with tempfile.TemporaryDirectory(dir=where, prefix=".armor-plan-") as tmp:
        start = time.perf_counter()
        write_bytes(Path(tmp) / "probe.bin", data)
        return (time.perf_counter() - start) / nbytes
