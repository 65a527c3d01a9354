"""Spreading the per-matrix jobs over torch.distributed ranks (``torchrun``).

The ranks compute the calibration statistics together, each on its share of the batches
(sums are all-reduced after every layer), and rank 0 writes them to the shared output
folder; every rank then solves its share of the jobs (balanced by matrix size, the same
assignment on every rank) into the shared job store, and rank 0 assembles the
checkpoint. A relaunch after any rank died reuses the statistics and every finished job,
exactly like a single-process resume.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ranks:
    rank: int
    world: int
    local_world: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = Ranks(0, 1, 1)  # a plain single-process run


def launched_distributed() -> bool:
    """True under ``torchrun`` (or any launcher setting WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: str) -> Ranks:
    """Join the process group (gloo on CPU, nccl on CUDA); long timeout for calibration."""
    import torch.distributed as dist

    _die_with_launcher()
    if not dist.is_initialized():
        # calibration statistics stay on the CPU: gloo carries them even next to nccl
        backend = "cpu:gloo,cuda:nccl" if device.startswith("cuda") else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(hours=6))
    ranks = Ranks(
        dist.get_rank(),
        dist.get_world_size(),
        int(os.environ.get("LOCAL_WORLD_SIZE", dist.get_world_size())),
    )
    # share this machine's cores between its ranks (torch would give each rank all of them)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // ranks.local_world))
    return ranks


def _die_with_launcher() -> None:
    """Under torchrun, a rank gets SIGTERM (handled as Ctrl-C: finished jobs are kept) when
    the launcher dies, ``kill -9`` included; torchrun starts each rank in a session of its own,
    so nothing else would stop it. The launcher's agent starts the ranks from its main thread,
    which lives as long as torchrun does (the kernel's "parent" for PR_SET_PDEATHSIG). A
    launcher that died before this call left the rank to init (pid 1)."""
    import signal

    from armor_export import lifetime

    if "TORCHELASTIC_RUN_ID" not in os.environ:  # another launcher: its own rules
        return
    parent = os.getppid()
    if parent == 1:
        os.kill(os.getpid(), signal.SIGTERM)
    lifetime.die_with_parent(parent, signal.SIGTERM)


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()


def all_reduce_stats(stats: dict) -> None:
    """Sum every rank's calibration sums (each rank ran its share of the batches)."""
    import torch.distributed as dist

    for name in sorted(stats):
        st = stats[name]
        dist.all_reduce(st.sq_sum)
        if st.gram_sum is not None:
            dist.all_reduce(st.gram_sum)
        count = torch.tensor([st.n_tokens], dtype=torch.int64)
        dist.all_reduce(count)
        st.n_tokens = int(count.item())


def peak_rss_mib() -> float:
    """This process's peak resident memory so far (MiB, rounded for the rank record)."""
    from armor_export.memory import peak_rss_mib as peak

    return round(peak(), 1)


def record_rank(folder, ranks: Ranks, jobs: int, seconds: float, **extra) -> None:
    """``work/ranks/rank<r>.json``: this rank's share, wall time and peak memory."""
    from armor_export.io import write_json

    write_json(
        folder / f"rank{ranks.rank}.json",
        {"rank": ranks.rank, "world": ranks.world, "jobs": jobs, "seconds": round(seconds, 2),
         "peak_rss_mib": peak_rss_mib(), **extra},
    )  # fmt: skip


def finish() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def assign(sizes: dict[str, int], world: int) -> list[list[str]]:
    """Longest-processing-time-first: each job to the least loaded rank (deterministic)."""
    loads = [0] * world
    shares: list[list[str]] = [[] for _ in range(world)]
    for name in sorted(sizes, key=lambda n: (-sizes[n], n)):
        rank = min(range(world), key=lambda r: (loads[r], r))
        shares[rank].append(name)
        loads[rank] += sizes[name]
    return shares
