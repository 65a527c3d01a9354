"""``armor-export plan``: the jobs, memory per worker and estimated time of a prune run."""

from __future__ import annotations

from armor_export.cli.prune import add_prune_arguments


def add_parser(sub):
    p = sub.add_parser(
        "plan",
        help="before a long prune: its jobs, memory per worker and time from a short probe",
    )
    add_prune_arguments(p)
    p.add_argument("--ranks", type=int, default=1, help="workers/ranks to plan for (default 1)")
    p.add_argument(
        "--probe-iterations", type=int, default=3, help="solver iterations timed per shape"
    )
    p.add_argument("--list-jobs", action="store_true", help="list every job with its rank")
    p.add_argument("--json", dest="json_out", help="also write the plan to this JSON file")
    return p


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def run(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from armor_export.cli.prune import config_from_args
    from armor_export.config import MAX_ITERATIONS, MAX_RANKS, check_count
    from armor_export.io import write_json
    from armor_export.prune.plan import make_plan

    # --ranks may be another machine's (torchrun): a fixed bound, not this machine's CPUs
    check_count("ranks", args.ranks, 1, MAX_RANKS, "--ranks")
    check_count("probe iterations", args.probe_iterations, 1, MAX_ITERATIONS,
                "--probe-iterations")  # fmt: skip
    cfg = config_from_args(args)
    err = Console(stderr=True)
    with err.status("probing the model (a few solver iterations per shape)..."):
        plan = make_plan(cfg, args.ranks, args.probe_iterations)
    out = Console()
    out.print(
        f"[bold]{plan.method}[/] on {plan.model}: {plan.jobs} jobs in {plan.layers} decoder "
        f"layers, {plan.ranks} worker(s), {'low-memory' if plan.low_memory else 'in-memory'}"
        + (f"; {len(plan.skipped)} layer(s) left dense" if plan.skipped else "")
    )
    jobs = Table(title="jobs by shape (probe measured on the first matrix of each)")
    for col in ("shape", "jobs", "linears", "setup s", "s / iteration", "est. s / job"):
        jobs.add_column(col, justify="left" if col in ("shape", "linears") else "right")
    for sp in plan.shapes:
        jobs.add_row(f"{sp.shape[0]}x{sp.shape[1]}", str(len(sp.names)), sp.pattern,
                     f"{sp.setup_seconds:.3f}", f"{sp.seconds_per_iteration:.4f}",
                     f"{sp.est_seconds_per_job:.2f}")  # fmt: skip
    out.print(jobs)
    calib = plan.calibration
    if calib.get("batches"):
        out.print(
            f"calibration: {calib['batches']} batches of {calib['batch_shape']} tokens through "
            f"{plan.layers} layers; measured {calib['layer_batch_forward_seconds']:.3f} s per "
            f"layer and batch, {calib['layer_read_seconds']:.3f} s to read a layer -> "
            f"~{_duration(calib['est_seconds'])} on one worker"
        )
    ranks = Table(title="estimated work per worker")
    for col in ("rank", "jobs", "est. solve time"):
        ranks.add_column(col, justify="right")
    for r in plan.per_rank:
        ranks.add_row(str(r["rank"]), str(r["jobs"]), _duration(r["est_seconds"]))
    out.print(ranks)
    fixed = plan.fixed_seconds
    out.print(
        "around the solves: "
        + ", ".join(f"{k.replace('_', ' ')} ~{_duration(v)}" for k, v in fixed.items())
        + f" (solves probed in {plan.probe['processes']} process(es) at once, as the workers)"
    )
    mem = Table(title="peak memory per process (MiB; runtimes measured, the rest from shapes)")
    mem.add_column("component")
    mem.add_column("MiB", justify="right")
    for key, value in plan.memory_mib.items():
        mem.add_row(key.replace("_", " "), f"{value:,.0f}")
    out.print(mem)
    if args.list_jobs:
        est = {n: sp.est_seconds_per_job for sp in plan.shapes for n in sp.names}
        for name, rank in sorted(plan.job_ranks.items(), key=lambda kv: (kv[1], kv[0])):
            out.print(f"  rank {rank}  {est[name]:8.2f} s  {name}")
    out.print(f"[bold]estimated wall time: ~{_duration(plan.est_total_seconds)}[/]")
    for note in plan.notes:
        out.print(f"[dim]note: {note}[/]")
    if args.json_out:
        write_json(args.json_out, plan.to_dict())
    return 0
