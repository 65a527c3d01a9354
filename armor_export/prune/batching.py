"""Which same-shape ARMOR jobs run as one batched solve (``armor.solve_batch``).

A model has many matrices of each shape (7 per layer, a handful of shapes). A small
matrix's solve is a few hundred small kernels per iteration, so solving same-shape
matrices together can be faster: a GPU launches fewer kernels, and a CPU runs fewer,
larger operations over its threads. Whether it is depends on the device, the threads and
the shape. Measured on this 2-core CPU with 2 threads (b64, batches of 8-16):
192x576 1.3-1.5x faster batched, 576x576 about even, 1536x576 0.55-0.9x (slower); with
one thread the time per iteration just grows with the size, and nothing is gained.

``batch_same_shape``:

- ``off``: one solve per job;
- ``on``: batches of up to :data:`MAX_BATCH` matrices, holding at most
  :data:`BATCH_ELEMENTS` weight elements and, on the CPU, no more than the run's largest
  matrix (so batching never raises peak memory: a batch's solver tensors are the size of
  that matrix's). On a GPU the solver tensors live in device memory, so there the cap is
  what the device has free instead (SmolLM2's 1536x576 matrices then batch by 16, not 1);
- ``auto`` (default): for each shape with several jobs, a short probe on random data
  times one batch against the same matrices one by one, on this device with this process's
  threads, and batches only when the batch is at least 1/:data:`PROBE_MARGIN` faster.

A batch gives every matrix the result its own solve would give (``solve_batch``), and every
result is still saved on its own as soon as the batch ends, so resuming works as before.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace

import torch

from armor_export.config import PruneConfig
from armor_export.prune import armor, methods
from armor_export.prune.jobs import MatrixJob
from armor_export.prune.methods.armor import solver_settings

log = logging.getLogger(__name__)

# weight elements per batch, at most: a batch's solver tensors are this big (a 16 M-element
# batch peaked at ~1.3 GB over the model on the CPU); the run's largest matrix caps it too
BATCH_ELEMENTS = 1 << 24
MAX_BATCH = 16  # larger CPU batches ran slower (cache); the probe measures this size
PROBE_ITERATIONS = 3
PROBE_MARGIN = 0.8  # batch only when it takes at most this share of the one-by-one time
# device bytes per weight element of a batched solve: fp32 weight, normalised copy, core,
# error, best iterate, mask and temporaries (~10 tensors), with a margin
SOLVER_BYTES_PER_ELEMENT = 4 * 16

Probe = Callable[[tuple[int, int], int, PruneConfig], tuple[float, float]]
_DECISIONS: dict[tuple, int] = {}


def group_jobs(
    jobs: list[MatrixJob], cfg: PruneConfig, probe: Probe | None = None
) -> list[list[MatrixJob]]:
    """``jobs`` in their order, same-shape jobs of a method with a batched solve (ARMOR)
    gathered into batches where chosen."""
    if methods.get(cfg.method).solve_batch is None or cfg.batch_same_shape == "off":
        return [[job] for job in jobs]
    by_shape: dict[tuple[int, int], list[MatrixJob]] = {}
    for job in jobs:
        by_shape.setdefault(tuple(job.weight.shape), []).append(job)
    size = batch_sizes({s: len(group) for s, group in by_shape.items()}, cfg, probe)
    groups: list[list[MatrixJob]] = []
    open_batch: dict[tuple[int, int], list[MatrixJob]] = {}
    for job in jobs:  # keep the callers' order (largest first, layer order, ...)
        shape = tuple(job.weight.shape)
        current = open_batch.get(shape)
        if current is None or len(current) >= size[shape]:
            current = open_batch[shape] = []
            groups.append(current)
        current.append(job)
    return groups


def batch_sizes(
    counts: dict[tuple[int, int], int], cfg: PruneConfig, probe: Probe | None = None
) -> dict[tuple[int, int], int]:
    """``batch_size`` for each shape of a run with ``counts[shape]`` jobs of it, within
    :func:`element_budget`."""
    budget = element_budget(counts, cfg)
    return {s: batch_size(s, n, cfg, probe, budget) for s, n in counts.items()}


def element_budget(counts: dict[tuple[int, int], int], cfg: PruneConfig) -> int:
    """Weight elements a batch may hold: the run's largest matrix on the CPU (batches never
    raise peak RAM); on a GPU, half of its free memory's worth (at least that matrix)."""
    largest = max(m * n for m, n in counts)
    device = torch.device(cfg.device)
    if device.type != "cuda":
        return largest
    free, _ = torch.cuda.mem_get_info(device if device.index is not None else None)
    return max(largest, free // (2 * SOLVER_BYTES_PER_ELEMENT))


def batch_size(
    shape: tuple[int, int],
    n_jobs: int,
    cfg: PruneConfig,
    probe: Probe | None = None,
    budget: int = BATCH_ELEMENTS,
) -> int:
    """How many ``shape`` jobs to solve together (1: one by one); a batch holds at most
    ``budget`` (and :data:`BATCH_ELEMENTS`) weight elements."""
    elements = min(budget, BATCH_ELEMENTS)
    cap = min(n_jobs, MAX_BATCH, max(1, elements // (shape[0] * shape[1])))
    if cfg.batch_same_shape == "off" or cap < 2:
        return 1
    if cfg.batch_same_shape == "on":
        return cap
    return measured_batch_size(shape, cap, cfg, probe or probe_seconds)


def measured_batch_size(shape: tuple[int, int], cap: int, cfg: PruneConfig, probe: Probe) -> int:
    """``cap`` if a probe shows a batch of ``cap`` clearly faster than one by one, else 1."""
    key = (
        shape,
        cap,
        cfg.device,
        torch.get_num_threads(),
        cfg.armor.block_size,
        cfg.armor.continuous_step,
    )
    if key not in _DECISIONS:
        batched, single = probe(shape, cap, cfg)
        _DECISIONS[key] = cap if batched <= PROBE_MARGIN * single else 1
        log.info(
            "%dx%d on %s: %d matrices batched %.3f s vs one by one %.3f s per %d iterations "
            "-> %s",
            *shape, cfg.device, cap, batched, single, PROBE_ITERATIONS,
            f"batches of {cap}" if _DECISIONS[key] > 1 else "one by one",
        )  # fmt: skip
    return _DECISIONS[key]


def probe_seconds(
    shape: tuple[int, int], count: int, cfg: PruneConfig, iterations: int = PROBE_ITERATIONS
) -> tuple[float, float]:
    """(seconds for ``count`` random ``shape`` matrices batched, seconds one by one) over
    ``iterations`` solver iterations, after a warm-up of each; one by one is timed on one
    matrix and multiplied by ``count``."""
    device = torch.device(cfg.device)
    gen = torch.Generator().manual_seed(0)
    weights = [torch.randn(shape, generator=gen).to(device) for _ in range(count)]
    hdiags = [(torch.rand(shape[1], generator=gen) + 0.1).to(device) for _ in range(count)]
    settings = replace(solver_settings(cfg), iterations=iterations, patience=iterations + 1)
    warm = replace(settings, iterations=1)

    def timed(fn) -> float:
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        return time.perf_counter() - start

    armor.solve(weights[0], hdiags[0], warm)
    armor.solve_batch(weights, hdiags, warm)
    single = timed(lambda: armor.solve(weights[0], hdiags[0], settings)) * count
    batched = timed(lambda: armor.solve_batch(weights, hdiags, settings))
    return batched, single


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
