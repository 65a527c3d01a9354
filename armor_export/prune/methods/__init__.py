"""Pruning methods: one module per method, each registering one :class:`PruneMethod`.

Everything that depends on the method (config validation, CLI choices, the job driver,
statistics, the planner, batching, the report, the benchmarks) asks this registry rather
than comparing method names. See ``docs/extending.md`` for adding one.
"""

import importlib

from armor_export.prune.methods.base import (
    GRAM,
    INPUT_NORMS,
    NO_STATISTICS,
    PruneMethod,
    find,
    get,
    masking_method,
    names,
    register,
    registered,
    unregister,
)

# the built-in methods register themselves on import, in this order (CLI choices, docs)
BUILT_IN = ("magnitude", "wanda", "sparsegpt", "nowag_p", "armor")
for _module in BUILT_IN:
    importlib.import_module(f"{__name__}.{_module}")

__all__ = [
    "GRAM",
    "INPUT_NORMS",
    "NO_STATISTICS",
    "PruneMethod",
    "find",
    "get",
    "masking_method",
    "names",
    "register",
    "registered",
    "unregister",
]
