"""Processes that do not outlive their command.

- ``die_with_parent``: a worker process (the prune pool's, the plan probe's) asks the kernel
  to kill it when its parent exits, however the parent exits (``kill -9`` included): Linux
  ``prctl(PR_SET_PDEATHSIG)``. A parent that died before the call is caught by comparing the
  parent pid with the one that started the worker. Elsewhere it does nothing, and says so.
- ``watch_parent``: a child that has something to clean up (the engine builder's folder)
  reads a pipe whose only write end its parent holds; the kernel closes it when the parent
  exits, and the child removes its folder and exits at once.
- ``sigterm_as_interrupt``: the CLI treats SIGTERM as Ctrl-C (``Terminated``, a
  KeyboardInterrupt): work in flight stops, finished work is kept, children are stopped.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PR_SET_PDEATHSIG = 1  # linux/prctl.h
EXIT_ORPHANED = 3  # a watched child whose parent died first


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C."""


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While the block runs, SIGTERM raises ``Terminated`` in the main thread, like Ctrl-C's
    KeyboardInterrupt; the previous handler is back afterwards. Only the main thread may
    install a handler: elsewhere the block runs unchanged."""

    def handler(signum, frame):
        raise Terminated("terminated by SIGTERM")

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def die_with_parent(parent: int | None, sig: int = signal.SIGKILL) -> bool:
    """Have ``sig`` sent to this process when its parent exits; True where the kernel took it.

    ``parent`` is the pid that started this process: if this process is already someone
    else's child (its parent died before the request), it sends itself ``sig`` now. The
    kernel's "parent" is the thread that started this process: start such children from a
    thread that lives as long as they are needed (the pool and the probe start them from the
    thread that waits for them).
    """
    armed = False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            armed = libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
        except (OSError, AttributeError):  # no libc symbol: as on other systems
            armed = False
    if parent is not None and os.getppid() != parent:
        os.kill(os.getpid(), sig)
    return armed


def multiprocessing_parent() -> int | None:
    """The pid of the process that spawned this multiprocessing child (None in a main
    process)."""
    import multiprocessing

    parent = multiprocessing.parent_process()
    return None if parent is None else parent.pid


def watch_parent(fd: int, *folders: str | Path) -> None:
    """In a child: when ``fd`` (the read end of a pipe only the parent writes to) reaches
    end of file, i.e. the parent has exited, remove ``folders`` and exit at once.

    A thread, not a signal handler: the main thread may be inside a long native call (a
    TensorRT build releases the GIL), where a Python signal handler would wait for it.
    """

    def watch() -> None:
        try:
            while os.read(fd, 1):
                pass
        except OSError:
            pass
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)
        os._exit(EXIT_ORPHANED)

    threading.Thread(target=watch, name="armor-export-parent-watch", daemon=True).start()
