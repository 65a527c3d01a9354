"""TensorRT in a child process, both sides: ``run_in_child`` (the parent) and ``main`` (the
child). TensorRT aborts or segfaults on some bad inputs (a plugin library built for another
version, a corrupt engine); in-process that kills the CLI with no message, so engine builds
(``engine``) and engine runs (``verify``) happen in a fresh interpreter and the parent names
the stage and the signal.

``python -m armor_export.engine.child REQUEST REPLY [FD FOLDER...]``: REQUEST holds the
pickled ``(stage, module, function, args)``; REPLY gets ``("ok", result)``,
``("user-error", exc)`` or ``("error", type name, message)``. A native crash leaves no REPLY:
the parent reports the signal. FD is a pipe only the parent writes to: when it closes (the
parent has exited) the child removes each FOLDER and exits (``lifetime.watch_parent``). Ctrl-C is
the parent's to handle: it kills the child.
"""

from __future__ import annotations

import importlib
import os
import pickle
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from armor_export.errors import UserError

# test hook: a child whose stage name is in this variable aborts before its work (real SIGABRT)
CRASH_HOOK = "ARMOR_EXPORT_ABORT_IN_CHILD"
# set to 1 to start the engine child with the library path exactly as it is
NO_LIBRARY_LINKS = "ARMOR_EXPORT_NO_LIBRARY_LINKS"


class NativeCrashError(UserError):
    """A child running TensorRT died from a signal (abort, segfault)."""


def run_in_child(stage: str, target, args: tuple, log_path: Path | None = None,
                 scratch: Path | None = None):  # fmt: skip
    """``target(*args)`` in a child Python; its result, its error, or a NativeCrashError.

    A fresh interpreter (``python -m armor_export.engine.child``), not multiprocessing: a
    spawned child re-runs the caller's main script, which breaks scripts that call the verbs
    at top level. ``target`` must be a module-level function, its arguments and result
    picklable.

    The child does not outlive this process: it reads a pipe whose only write end is here,
    and when this process exits (``kill -9`` included) it removes ``scratch`` (a folder of the
    caller's that holds what the child writes) and the request's temporary folder, and
    exits. An interrupt here (Ctrl-C, SIGTERM) kills the child before the folder goes.
    """
    # the request and reply live in the system's temporary folder, not in ``scratch``: an
    # output folder on a full disk must not swallow the child's report of that very error
    with tempfile.TemporaryDirectory(prefix="armor-child-") as tmp:
        request, reply = Path(tmp) / "request.pkl", Path(tmp) / "reply.pkl"
        request.write_bytes(pickle.dumps((stage, target.__module__, target.__qualname__, args)))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        links = library_links(Path(tmp) / "libs")
        if links is not None:
            env["LD_LIBRARY_PATH"] = os.pathsep.join(
                p for p in (str(links), os.environ.get("LD_LIBRARY_PATH", "")) if p
            )
        watched, alive = os.pipe()  # neither is inherited but by pass_fds
        try:
            child = subprocess.run(  # kills the child on any exception here, then waits
                [sys.executable, "-m", "armor_export.engine.child", str(request), str(reply),
                 str(watched), str(scratch or tmp), tmp],
                env=env, pass_fds=(watched,), check=False,
            )  # fmt: skip
        finally:
            os.close(watched)
            os.close(alive)
        try:
            message = pickle.loads(reply.read_bytes())
        except (OSError, EOFError, pickle.UnpicklingError):  # none, or cut short: it died
            raise NativeCrashError(crash_message(stage, child.returncode, log_path)) from None
    if message[0] == "ok":
        return message[1]
    if message[0] == "user-error":
        raise message[1]
    _, name, text = message
    raise RuntimeError(f"{stage} failed in its child process: {name}: {text}")


def library_links(folder: Path) -> Path | None:
    """A folder holding the unversioned ``libtensorrt_rtx.so`` link that TensorRT-RTX's ONNX
    parser dlopen()s when it imports a plugin node, where the pip wheel ships only
    ``libtensorrt_rtx.so.1`` (without the link the parser aborts the process:
    plugins/armorBlockDiagPlugin/repro/README.md). The engine child starts with it on
    ``LD_LIBRARY_PATH``, read once at process start. None: not needed, or not wanted
    (``ARMOR_EXPORT_NO_LIBRARY_LINKS=1``)."""
    import importlib.util

    from armor_export.engine.backends import RTX_PARSER_DLOPENS

    if os.environ.get(NO_LIBRARY_LINKS) == "1" or not sys.platform.startswith("linux"):
        return None
    spec = importlib.util.find_spec("tensorrt_rtx_libs")
    if spec is None or not spec.submodule_search_locations:
        return None
    wheel = Path(next(iter(spec.submodule_search_locations)))
    versioned = wheel / (RTX_PARSER_DLOPENS + ".1")
    if (wheel / RTX_PARSER_DLOPENS).exists() or not versioned.is_file():
        return None
    folder.mkdir(parents=True, exist_ok=True)
    (folder / RTX_PARSER_DLOPENS).symlink_to(versioned)
    return folder


def crash_message(stage: str, exitcode: int | None, log_path: Path | None) -> str:
    how = signal_name(exitcode) if exitcode and exitcode < 0 else f"exit code {exitcode}"
    tail = f"; builder log: {log_path}" if log_path else ""
    return f"{stage} crashed ({how}){tail}"


def signal_name(exitcode: int) -> str:
    try:
        return f"signal {-exitcode}: {signal.Signals(-exitcode).name}"
    except ValueError:
        return f"signal {-exitcode}"


def crash_hook(stage: str) -> None:
    """Abort (a real SIGABRT) when the test hook names ``stage``."""
    if stage and os.environ.get(CRASH_HOOK) == stage:
        os.abort()


# the child's side


def main(request: str, reply: str, watched: str | None = None, *folders: str) -> int:
    from armor_export import lifetime

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if watched is not None:
        lifetime.watch_parent(int(watched), *folders)
    stage, module, name, args = pickle.loads(Path(request).read_bytes())
    crash_hook(stage)
    try:
        result = ("ok", getattr(importlib.import_module(module), name)(*args))
    except UserError as exc:  # bad input: the same error, re-raised in the parent
        result = ("user-error", exc)
    except Exception as exc:  # a bug in the child: the parent re-raises it with its name
        result = ("error", type(exc).__name__, str(exc))
    data = pickle.dumps(result)
    partial = Path(f"{reply}.partial")  # whole or absent: the parent reads a cut one as a crash
    partial.write_bytes(data)
    partial.replace(reply)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
