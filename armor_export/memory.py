"""This process's memory (torch-free): its resident size, for logging where a verb's peak comes
from, and glibc's heap kept small (`trim_heap`, `bound_heap`) by prune, export and verify."""

from __future__ import annotations

import logging
import os
import resource

MIB = 1024 * 1024


def rss_mib() -> float:
    """Resident memory now (MiB); the peak so far where /proc is missing (not Linux)."""
    try:
        with open("/proc/self/statm") as fh:
            pages = int(fh.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / MIB
    except (OSError, ValueError):
        return peak_rss_mib()


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (MiB; ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def meminfo_bytes(key: str = "MemAvailable") -> int | None:
    """``/proc/meminfo``'s ``key`` (``MemAvailable``, ``MemTotal``) in bytes; None off Linux."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def log_memory(logger: logging.Logger, stage: str) -> None:
    """A debug line (``-vv``) with the memory after ``stage``: a peak that grew during a
    stage was set by it."""
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug("memory after %s: %.0f MiB resident, peak %.0f MiB", stage, rss_mib(),
                     peak_rss_mib())  # fmt: skip


def trim_heap() -> None:
    """Give freed heap memory back to the OS (glibc keeps it otherwise, and RSS only grows).

    Calibration frees a layer's activations and weights after each layer; without this the
    process's resident size creeps up by the allocator's leftovers. A no-op off glibc.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


# glibc's mallopt parameter number for the mmap threshold (malloc.h)
_M_MMAP_THRESHOLD = -3
# Blocks from this size on get their own mapping, returned to the OS when freed. Measured on
# one 8960x1536 ARMOR solve (#19): glibc's default (a threshold that grows to 32 MiB) let
# the heap fragment, peak 1538 MiB; 4 MiB: 1195 MiB (64 KiB: the same peak, slower); the
# solve took ~15 % longer (fresh pages are faulted in), so only low-memory runs use it.
MMAP_THRESHOLD_BYTES = 4 * 1024 * 1024


def bound_heap() -> None:
    """Make freed large blocks go back to the OS at once (a no-op off glibc).

    A process that allocates and frees many matrix-sized temporaries (calibration, ARMOR
    solves) otherwise keeps the holes of a fragmented heap resident, and its peak RSS is
    hundreds of MiB above what it ever holds at once.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    except (OSError, AttributeError):
        pass
