"""One writer per output folder: an advisory lock that a crashed holder does not leave stuck.

``hold(folder, verb)`` takes an exclusive ``flock`` on ``<folder>/.armor-export.lock`` and
writes who holds it (pid, host, verb, command, since). The kernel drops the lock when its
holder exits, however it exits (kill -9 included), so there is nothing stale to clean up.
A second writer gets a one-line ``OutputInUseError`` that names the holder. The lock file
itself stays: deleting it while another process waits on it would let two writers in.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from armor_export.errors import OutputInUseError

LOCK_FILE = ".armor-export.lock"


def _holder(verb: str) -> dict:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "verb": verb,
        "command": " ".join(sys.argv),
        "since": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
    }


def _describe(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        info = json.loads(os.read(fd, 1 << 16).decode() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "another process"
    return (
        f"{info.get('verb', 'a run')} (pid {info.get('pid')} on {info.get('host')}, "
        f"since {info.get('since')}: {info.get('command')})"
    )


@contextmanager
def hold(folder: str | Path, verb: str) -> Iterator[None]:
    """Hold ``folder`` (created if missing) for this process while the block runs."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputInUseError(
                f"{folder} is being written by {_describe(fd)}; wait for it to finish or "
                "use another output folder"
            ) from None
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(_holder(verb)).encode())
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
