"""ARMOR (Liu et al., arXiv 2510.05528): ``W ≈ A·(W'⊙M)·B`` with block-diagonal A and B,
found by block coordinate descent from NoWag-P's mask (``prune/armor.py``)."""

from __future__ import annotations

from armor_export.prune.methods.base import INPUT_NORMS, PruneMethod, register


def solver_settings(cfg):
    """The optimiser's settings from ``cfg.armor``."""
    from armor_export.prune import armor

    a = cfg.armor
    return armor.SolverSettings(
        block_size=a.block_size,
        iterations=a.iterations,
        continuous_step=a.continuous_step,
        lr=a.lr,
        cg_steps=a.cg_steps,
        groups_per_tile=a.groups_per_tile,
        patience=a.patience,
        tolerance=a.tolerance,
        compile=a.compile,
        weighting=a.weighting,
    )


def _result(name: str, factors, cfg):
    from armor_export.prune.jobs import MatrixResult

    result = MatrixResult(
        name, "armor", factors.core, factors.mask, factors.a_blocks, factors.b_blocks
    )
    result.metrics.update(
        nowag_loss=factors.nowag_loss,
        proxy_loss=factors.final_loss,
        iterations=factors.iterations,
        history=factors.history,
        block_size=cfg.armor.block_size,
    )
    return result


def _solve(job, cfg, progress=None):
    from armor_export.prune import armor

    factors = armor.solve(job.weight, job.hdiag, solver_settings(cfg), progress)
    return _result(job.name, factors, cfg)


def _solve_batch(jobs, cfg):
    """Same-shape jobs as one batched solve; each result is the one ``_solve`` gives."""
    from armor_export.prune import armor

    weights = [job.weight for job in jobs]
    hdiags = [job.hdiag for job in jobs]
    factors = armor.solve_batch(weights, hdiags, solver_settings(cfg))
    return [_result(job.name, fac, cfg) for job, fac in zip(jobs, factors, strict=True)]


def valid_block_sizes(d_out: int, d_in: int) -> list[int]:
    """Block sizes b with 4 | b, b | d_out and b | d_in."""
    return [b for b in range(4, min(d_out, d_in) + 1, 4) if d_out % b == 0 and d_in % b == 0]


def _shape_problem(name: str, d_out: int, d_in: int, cfg) -> str | None:
    b = cfg.armor.block_size
    if d_out % b or d_in % b:
        sizes = ", ".join(map(str, valid_block_sizes(d_out, d_in))) or "none"
        return (
            f"{name}: shape {d_out}x{d_in} is not divisible by block size {b}; "
            f"valid block sizes for this layer: {sizes}"
        )
    return None


def _iterations(cfg) -> int:
    return cfg.armor.iterations


def _probe_config(cfg, iterations: int):
    from armor_export.config import PruneConfig

    probe = PruneConfig.from_dict(cfg.to_dict())
    probe.armor.iterations = iterations
    probe.armor.patience = iterations + 1  # never stop early in the probe
    return probe


def _report_rows(prune_config: dict, matrices: list) -> list[tuple[str, str]]:
    armor = prune_config.get("armor", {})
    done = sorted(m.iterations for m in matrices if m.iterations is not None)
    ran = "?" if not done else f"{done[0]}–{done[-1]}" if done[0] != done[-1] else done[0]
    step, weighting = armor.get("continuous_step", "?"), armor.get("weighting", "?")
    return [
        ("block size b", str(armor.get("block_size", "?"))),
        (
            "iterations",
            f"{armor.get('iterations', '?')} at most, {ran} run "
            f"(patience {armor.get('patience', '?')})",
        ),
        ("continuous step / weighting", f"{step} / {weighting}"),
    ]


METHOD = register(
    PruneMethod(
        "armor",
        "ARMOR",
        "2:4 core between block-diagonal A and B (block coordinate descent)",
        _solve,
        statistics=INPUT_NORMS,
        settings="armor",
        wrappers=True,
        bounded_by_nowag=True,
        solve_batch=_solve_batch,
        shape_problem=_shape_problem,
        iterations=_iterations,
        probe_config=_probe_config,
        report_rows=_report_rows,
    )
)
