"""The child side of ``engine.runtime.run_in_child``: run one call, write its result.

``python -m armor_export.engine.child REQUEST REPLY [FD FOLDER...]``: REQUEST holds the
pickled ``(stage, module, function, args)``; REPLY gets ``("ok", result)``,
``("user-error", exc)`` or ``("error", type name, message)``. A native crash leaves no REPLY:
the parent reports the signal. FD is a pipe only the parent writes to: when it closes (the
parent has exited) the child removes each FOLDER and exits (``lifetime.watch_parent``). Ctrl-C is
the parent's to handle: it kills the child.
"""

from __future__ import annotations

import importlib
import pickle
import signal
import sys
from pathlib import Path


def main(request: str, reply: str, watched: str | None = None, *folders: str) -> int:
    from armor_export import lifetime
    from armor_export.engine.runtime import crash_hook
    from armor_export.errors import UserError

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
