"""What a pruning method is to the rest of the tool: one :class:`PruneMethod` per method.

A method is a small descriptor that names what the job driver, the planner, the batching,
the CLI and the report need to know about it; its maths lives in pure functions elsewhere
(``prune/baselines.py``, ``prune/armor.py``). This module imports neither torch nor the
maths, so ``config.py`` and ``--help`` can list the methods cheaply: the callables below
import what they need when they run.

Adding a method: see ``docs/extending.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from armor_export.config import PruneConfig
    from armor_export.prune.jobs import MatrixJob, MatrixResult

# the calibration statistics a method needs (prune/statistics.py)
NO_STATISTICS = "none"
INPUT_NORMS = "input-norms"  # diag(XXᵀ)/N per linear ("hdiag")
GRAM = "gram"  # input norms plus the full XXᵀ/N per linear (SparseGPT)

Progress = Callable[[int, float], None]


def _no_shape_rule(name: str, d_out: int, d_in: int, cfg: PruneConfig) -> str | None:
    return None


def _never(cfg: PruneConfig) -> bool:
    return False


def _no_rows(prune_config: dict, matrices: list[Any]) -> list[tuple[str, str]]:
    return []


@dataclass(frozen=True)
class PruneMethod:
    """One pruning method, as the job driver, planner, CLI and report see it."""

    name: str  # the config / CLI spelling, e.g. "nowag-p"
    title: str  # as papers spell it, e.g. "NoWag-P"
    summary: str  # one line for help texts and docs
    # solve(job, cfg, progress) -> MatrixResult: one matrix, on the job's device, in fp32;
    # the job's hdiag/gram are set as ``statistics`` asks
    solve: Callable[[MatrixJob, PruneConfig, Progress | None], MatrixResult]
    statistics: str = NO_STATISTICS  # NO_STATISTICS | INPUT_NORMS | GRAM
    settings: str | None = None  # the PruneConfig field holding this method's own settings
    wrappers: bool = False  # results carry block-diagonal A and B (ArmorLinear)
    # every matrix ends at or below its NoWag-P proxy loss (a failure otherwise)
    bounded_by_nowag: bool = False
    # same-shape jobs as one batched solve (prune/batching.py); None: one by one
    solve_batch: Callable[[list[MatrixJob], PruneConfig], list[MatrixResult]] | None = None
    # each layer calibrated on the outputs of the layers pruned before it
    sequential: Callable[[PruneConfig], bool] = _never
    # why a (d_out, d_in) linear cannot be pruned with these settings, or None
    shape_problem: Callable[[str, int, int, PruneConfig], str | None] = _no_shape_rule
    # solver iterations per job (plan's time estimate); None: a one-shot method
    iterations: Callable[[PruneConfig], int] | None = None
    # the config a short timing probe of ``n`` iterations runs with (iterative methods)
    probe_config: Callable[[PruneConfig, int], PruneConfig] | None = None
    # extra rows of the report's "Run" table: (prune_config dict, report matrix rows)
    report_rows: Callable[[dict, list[Any]], list[tuple[str, str]]] = _no_rows
    # the module whose import registers this method (worker processes import it); "" = the
    # module of ``solve``
    module: str = ""

    @property
    def defining_module(self) -> str:
        return self.module or self.solve.__module__

    @property
    def needs_statistics(self) -> bool:
        return self.statistics != NO_STATISTICS

    @property
    def needs_gram(self) -> bool:
        return self.statistics == GRAM


_REGISTRY: dict[str, PruneMethod] = {}


def register(method: PruneMethod) -> PruneMethod:
    """Make ``method`` available to configs, the CLI, the planner and the report."""
    if method.statistics not in (NO_STATISTICS, INPUT_NORMS, GRAM):
        raise ValueError(f"{method.name}: unknown statistics kind {method.statistics!r}")
    if method.bounded_by_nowag and not method.needs_statistics:
        raise ValueError(f"{method.name}: a NoWag-P bound needs calibration statistics")
    _REGISTRY[method.name] = method
    return method


def unregister(name: str) -> None:
    """Remove a method (tests that register a temporary one)."""
    _REGISTRY.pop(name, None)


def names() -> tuple[str, ...]:
    """Every registered method's name, in registration order."""
    return tuple(_REGISTRY)


def registered() -> dict[str, PruneMethod]:
    return dict(_REGISTRY)


def get(name: str) -> PruneMethod:
    """The registered method ``name``; a KeyError naming the registered ones otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(names())
        raise KeyError(f"unknown pruning method {name!r}; registered: {known}") from None


def find(name: str) -> PruneMethod | None:
    """The registered method ``name``, or None (a report of a method this build lacks)."""
    return _REGISTRY.get(name)


def masking_method(
    name: str,
    title: str,
    summary: str,
    prune_weight: Callable[[MatrixJob, PruneConfig], tuple[Any, Any]],
    **fields: Any,
) -> PruneMethod:
    """A method whose result is the weight under a 2:4 mask: ``prune_weight(job, cfg)``
    returns ``(pruned_weight, mask)``; the job driver adds its proxy losses."""

    def solve(job: MatrixJob, cfg: PruneConfig, progress: Progress | None = None):
        from armor_export.prune.jobs import MatrixResult

        core, mask = prune_weight(job, cfg)
        return MatrixResult(job.name, name, core, mask)

    fields.setdefault("module", prune_weight.__module__)
    return PruneMethod(name, title, summary, solve, **fields)
