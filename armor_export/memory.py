"""This process's resident memory, for logging where a verb's peak comes from (torch-free)."""

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
