"""The child side of ``engine.runtime.run_in_child``: run one call, write its result.

``python -m armor_export.engine.child REQUEST REPLY``: REQUEST holds the pickled
``(stage, module, function, args)``; REPLY gets ``("ok", result)``, ``("user-error", exc)``
or ``("error", type name, message)``. A native crash leaves no REPLY: the parent reports
the signal.
"""

from __future__ import annotations

import importlib
import pickle
import sys
from pathlib import Path


def main(request: str, reply: str) -> int:
    from armor_export.engine.runtime import crash_hook
    from armor_export.errors import UserError

    stage, module, name, args = pickle.loads(Path(request).read_bytes())
    crash_hook(stage)
    try:
        result = ("ok", getattr(importlib.import_module(module), name)(*args))
    except UserError as exc:  # bad input: the same error, re-raised in the parent
        result = ("user-error", exc)
    except Exception as exc:  # a bug in the child: the parent re-raises it with its name
        result = ("error", type(exc).__name__, str(exc))
    Path(reply).write_bytes(pickle.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
