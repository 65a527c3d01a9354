"""Local scheduling of independent matrix jobs: in-process, or over a pool of processes.

Scheduling is kept apart from the job runner (:func:`jobs.run_job`) and the result store,
so other schedulers (torch.distributed, clusters) can reuse both.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from multiprocessing import get_context

import torch

from armor_export import lifetime
from armor_export.config import PruneConfig
from armor_export.prune import batching, methods, provenance
from armor_export.prune.jobs import JobStore, MatrixJob, MatrixResult, run_job, run_job_batch

log = logging.getLogger(__name__)


def resolve_workers(requested: int, pending: int, device: str = "cpu") -> int:
    """0 means one worker per CPU core (one process for a GPU, which batched solves fill);
    never more workers than pending jobs."""
    cores = (os.cpu_count() or 1) if torch.device(device).type == "cpu" else 1
    workers = requested if requested > 0 else cores
    return max(1, min(workers, pending))


def _init_worker(threads: int, method_modules: tuple[str, ...], low_memory: bool = False) -> None:
    # a worker dies with the process that started it (kill -9 included) instead of
    # finishing its job for nobody; Ctrl-C goes to that process, which stops the workers
    lifetime.die_with_parent(lifetime.multiprocessing_parent())
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads)
    if low_memory:
        from armor_export.memory import bound_heap

        bound_heap()
    # a method registered outside the built-ins (a user's module) registers in the worker too
    for module in method_modules:
        importlib.import_module(module)


def _method_modules() -> tuple[str, ...]:
    return tuple(sorted({m.defining_module for m in methods.registered().values()}))


def _work(job: MatrixJob, cfg: PruneConfig) -> MatrixResult:
    result = run_job(job, cfg)
    if cfg.low_memory:  # the job's freed temporaries go back to the OS before the next one
        from armor_export.memory import trim_heap

        trim_heap()
    return result


def run_jobs(
    jobs: list[MatrixJob],
    cfg: PruneConfig,
    store: JobStore,
    on_result: Callable[[MatrixResult], None],
    workers: int = 1,
) -> None:
    """Run every job not yet in ``store``; save each result as it completes, then report it.

    Finished jobs are loaded from the store instead of being run again, but only when they
    were computed from the same weight, statistics and solver settings (their content key,
    ``prune/provenance.py``). In one process, same-shape ARMOR jobs may run as one batched
    solve (``batching.group_jobs``).
    """
    keys: dict[str, str] = {}
    pending = []
    for job in jobs:
        ready = job.resolved()  # a low-memory job reads its weight once here to key it
        keys[job.name] = provenance.job_key(ready.weight, ready.hdiag, ready.gram, cfg)
        del ready
        if store.is_done(job.name, keys[job.name]):
            log.info("%s: reusing finished job", job.name)
            on_result(store.load(job.name))
        else:
            pending.append(job)
    if not pending:
        return
    solved_with = provenance.solver_config(cfg)

    def save(result: MatrixResult) -> None:
        store.save(result, keys[result.name], solved_with)

    workers = resolve_workers(workers, len(pending), cfg.device)
    if workers == 1:
        for group in batching.group_jobs(pending, cfg):
            ready = [job.resolved() for job in group]
            results = run_job_batch(ready, cfg) if len(ready) > 1 else [run_job(ready[0], cfg)]
            for result in results:
                save(result)
                on_result(result)
            del ready, results
            if cfg.low_memory:
                from armor_export.memory import trim_heap

                trim_heap()
        return
    # largest matrices first, so the pool drains evenly
    pending.sort(key=lambda j: j.weight.numel(), reverse=True)
    threads = max(1, (os.cpu_count() or 1) // workers)
    log.info("running %d jobs on %d worker processes", len(pending), workers)
    ctx = get_context("spawn")
    queue = iter(pending)
    init = (threads, _method_modules(), cfg.low_memory)
    with ProcessPoolExecutor(
        workers, mp_context=ctx, initializer=_init_worker, initargs=init
    ) as pool:
        in_flight: set = set()

        def submit_next() -> None:
            # a bounded queue: only a few jobs' weights are in memory at once
            job = next(queue, None)
            if job is not None:
                in_flight.add(pool.submit(_work, _portable(job.resolved()), cfg))

        try:
            for _ in range(2 * workers):
                submit_next()
            while in_flight:
                done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for fut in done:
                    in_flight.discard(fut)
                    result = fut.result()
                    save(result)
                    on_result(result)
                    submit_next()
        except BaseException:
            _stop_workers(pool)  # an interrupt or a failed job does not wait for the others
            raise


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """Kill the pool's workers now (Python 3.14's ``kill_workers``): the running jobs'
    results would be thrown away, and waiting for them can take as long as the jobs. The
    pool then fails its futures as broken; none is cancelled here, which on Python 3.11 makes
    the pool's own thread raise when it fails them."""
    for proc in list((pool._processes or {}).values()):
        try:
            proc.kill()
        except (ProcessLookupError, ValueError):  # gone already, or closed
            pass


def _portable(job: MatrixJob) -> MatrixJob:
    """A copy of the job's tensors detached from the model, cheap to send to a worker."""

    def own(t):
        return None if t is None else t.detach().float().clone()

    return MatrixJob(job.name, own(job.weight), own(job.hdiag), own(job.gram))
