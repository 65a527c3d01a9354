"""The ``prune`` verb and the in-place ``armorize_`` API.

Layout of an output directory::

    <out>/run_config.json      the PruneConfig of the run (a resume must match it)
    <out>/work/stats.safetensors   dense calibration statistics (diag XXᵀ / N per linear)
    <out>/work/jobs/<name>.safetensors   one finished job each (compact 2:4 + factors)
    <out>/model.safetensors, armor_manifest.json, config.json, tokenizer files

A killed run started again with the same config reuses the statistics and every finished
job; only unfinished matrices are solved.
"""

from __future__ import annotations

import fnmatch
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from armor_export.config import PruneConfig
from armor_export.errors import ShapeError, UserError
from armor_export.io import read_json, read_metadata, read_tensors, write_json, write_tensors
from armor_export.models.registry import Adapter, adapter_for
from armor_export.paths import check_apart
from armor_export.progress import NullReporter, Reporter
from armor_export.prune import methods, provenance
from armor_export.prune.calibrate import calibrate_layerwise
from armor_export.prune.checkpoint import apply_result, save_checkpoint, save_checkpoint_streaming
from armor_export.prune.jobs import JobStore, MatrixJob, MatrixResult, run_job
from armor_export.prune.schedule import run_jobs

log = logging.getLogger(__name__)


@dataclass
class PruneResult:
    output_dir: Path
    results: dict[str, MatrixResult]  # empty in low-memory runs (the results stay on disk)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, dict] = field(default_factory=dict)  # per matrix, every run

    @property
    def armor_summary(self) -> dict:
        armor = [m for m in self.metrics.values() if m.get("block_size")]
        return {
            "matrices_total": len(armor),
            "matrices_at_or_below_nowag": sum(m["proxy_loss"] <= m["nowag_loss"] for m in armor),
        }


def select_linears(
    model: nn.Module,
    adapter: Adapter,
    cfg: PruneConfig,
    filter_fn: Callable[[str, nn.Module], bool] | None = None,
) -> tuple[dict[str, nn.Linear], list[str]]:
    """The decoder linears to prune (glob rules, then shape checks); returns (chosen, skipped)."""
    chosen, skipped, problems = {}, [], []
    for name, mod in adapter.linears(model).items():
        if not any(fnmatch.fnmatch(name, pat) for pat in cfg.include):
            continue
        if any(fnmatch.fnmatch(name, pat) for pat in cfg.exclude):
            continue
        if filter_fn is not None and not filter_fn(name, mod):
            continue
        problem = _shape_problem(name, mod, cfg)
        if problem:
            if not cfg.skip_incompatible:
                raise ShapeError(
                    problem + " (or pass --skip-incompatible to leave such layers dense)"
                )
            log.warning("%s; left dense", problem)
            skipped.append(name)
            problems.append(problem)
            continue
        chosen[name] = mod
    if not chosen and skipped:
        raise ShapeError(
            f"--skip-incompatible left every selected layer dense ({len(skipped)} of them): "
            f"none fits these settings; for example {problems[0]}"
        )
    if not chosen:
        raise UserError("no linear layer selected for pruning (check --include/--exclude)")
    return chosen, skipped


def _shape_problem(name: str, mod: nn.Module, cfg: PruneConfig) -> str | None:
    d_out, d_in = mod.out_features, mod.in_features
    if d_in % 8:
        return f"{name}: input dimension {d_in} is not divisible by 8 (2:4 groups, packed storage)"
    return methods.get(cfg.method).shape_problem(name, d_out, d_in, cfg)


def calibration_batches(tokenizer, cfg: PruneConfig, model_config) -> list[torch.Tensor]:
    """The calibration windows, in batches; windows beyond the model's positions (in
    ``model_config``) are refused."""
    from armor_export.data.models import check_positions
    from armor_export.data.text import calibration_samples, load_text

    c = cfg.calibration
    check_positions(model_config, c.seqlen, "calibration.seqlen", "--calib-seqlen")
    samples = calibration_samples(tokenizer, load_text(c.text), c.n_samples, c.seqlen, c.seed)
    return list(samples.split(c.batch_size))


def _defining_config(cfg: PruneConfig) -> dict:
    """The config fields that decide the results (not how the work is scheduled, nor the
    output folder: the record lies in it, whatever its spelling, wherever it was moved)."""
    data = cfg.to_dict()
    data.pop("workers")
    data.pop("low_memory")
    data.pop("batch_same_shape")
    data.pop("output_dir")
    data["armor"].pop("compile")
    return data


def _run_record(cfg: PruneConfig, sources: dict) -> dict:
    """``run_config.json``: the defining config with the model and the calibration text as
    the sources they name (resolved path and content, ``provenance.model_source``)."""
    data = _defining_config(cfg)
    data["model"] = sources["model"]
    data["calibration"]["text"] = sources["calibration"]
    return data


def _check_run_dir(out: Path, current: dict) -> None:
    """A resume must use the same config: finished jobs of another config would be mixed in.

    The model and the calibration text are the same when their resolved paths or their
    contents are (another spelling, a moved or copied folder); the output folder is the
    one the record lies in."""
    path = out / "run_config.json"
    if not path.exists():
        return
    previous = read_json(path)
    previous = dict(previous) if isinstance(previous, dict) else {}
    previous.pop("output_dir", None)  # recorded by runs before #24: any spelling is this one
    changed = sorted(k for k in current if not _same_setting(k, previous.get(k), current[k]))
    if changed:
        raise UserError(
            f"{out} holds a run with a different config (differs in: {', '.join(changed)}); "
            "use another --output-dir or delete it"
        )


def _same_setting(key: str, previous, current) -> bool:
    if key == "model":
        return provenance.same_source(previous, current)
    if key == "calibration" and isinstance(previous, dict):
        rest = {k: v for k, v in previous.items() if k != "text"}
        return provenance.same_source(previous.get("text"), current["text"]) and rest == {
            k: v for k, v in current.items() if k != "text"
        }
    return previous == current


def _check_finite_weights(targets: dict[str, nn.Linear]) -> None:
    for name, mod in targets.items():
        if not bool(torch.isfinite(mod.weight).all()):
            raise UserError(f"{name}: the model's weight contains NaN/Inf; refusing to prune it")


def prune(cfg: PruneConfig, reporter: Reporter | None = None) -> PruneResult:
    """Prune ``cfg.model`` with ``cfg.method``; write a checkpoint into ``cfg.output_dir``.

    Under ``torchrun`` (WORLD_SIZE > 1) the jobs are spread over the ranks
    (``prune/distributed.py``); rank 0 writes the checkpoint, other ranks return only the
    results they computed. With ``cfg.low_memory`` the decoder layers are read from disk
    one at a time (``prune/lazy.py``) and the results stay in the job store until the
    checkpoint is streamed out.
    """
    from armor_export.prune import distributed

    cfg.validate()
    method = methods.get(cfg.method)
    sequential = method.sequential(cfg)
    if sequential and cfg.low_memory:
        raise UserError(
            f"sequential {method.title} keeps the pruned layers in memory: drop --low-memory"
        )
    ranks = distributed.init(cfg.device) if distributed.launched_distributed() else None
    if ranks and sequential:
        raise UserError(f"sequential {method.title} cannot be spread over ranks: run it on one")
    main = ranks is None or ranks.is_main
    reporter = (reporter or NullReporter()) if main else NullReporter()
    start = time.perf_counter()
    out = Path(cfg.output_dir)
    inputs = {"model folder": cfg.model, "calibration text": cfg.calibration.text}
    check_apart(out, inputs, "prune")
    sources = {
        "model": provenance.model_source(cfg.model),  # the model's files, hashed once here
        "calibration": provenance.text_source(cfg.calibration.text),
    }
    record = _run_record(cfg, sources)
    _check_run_dir(out, record)
    lazy = None
    if cfg.low_memory:
        from armor_export.data.models import load_lazy_model_and_tokenizer
        from armor_export.memory import bound_heap

        bound_heap()  # calibration frees a layer's weights and activations after each layer
        lazy, tokenizer = load_lazy_model_and_tokenizer(cfg.model)
        model = lazy.model
    else:
        from armor_export.data.models import load_model_and_tokenizer

        model, tokenizer = load_model_and_tokenizer(cfg.model)
    model.eval()
    adapter = adapter_for(model)
    targets, skipped = select_linears(model, adapter, cfg)
    if lazy is None:
        _check_finite_weights(targets)
    else:  # what load_model_and_tokenizer's check_finite refuses, before anything is written
        lazy.check_finite()
    # the calibration text is an input too: a bad one fails here, before anything is written
    batches = calibration_batches(tokenizer, cfg, model.config) if method.needs_statistics else []
    # the run is valid: from here on, its directory belongs to this config and this process
    with _output_lock(out, main):
        if main:
            _check_run_dir(out, record)  # again: another run may have started meanwhile
            write_json(out / "run_config.json", record)
        store = JobStore(out / "work" / "jobs")
        timings: dict[str, float] = {"load": time.perf_counter() - start}
        peaks: dict[str, float] = {}  # peak RSS (MiB) so far, at the end of each phase
        loop = _JobLoop(cfg, store, reporter, len(targets), keep=lazy is None)
        with torch.no_grad(), loop as runner:
            share = len(targets)
            if sequential:
                _prune_sequential(model, adapter, batches, targets, cfg, runner, reporter)
            else:
                stats = _dense_statistics(
                    model, adapter, batches, targets, cfg, out, reporter, ranks, lazy,
                    model_key=sources["model"]["sha256"],
                )  # fmt: skip
                timings["calibration"] = time.perf_counter() - start - timings["load"]
                peaks["after_calibration"] = distributed.peak_rss_mib()
                if lazy is not None:
                    lazy.release_all()  # embeddings etc. are not needed by the jobs
                batch = [
                    MatrixJob(
                        name,
                        mod.weight,
                        stats.get(f"{name}.hdiag"),
                        stats.get(f"{name}.gram"),
                        None if lazy is None else _weight_reader(lazy, name),
                    )
                    for name, mod in targets.items()
                ]
                share = _run_share(batch, cfg, store, runner, model, ranks)
        timings["total_prune"] = time.perf_counter() - start
        peaks["after_jobs"] = distributed.peak_rss_mib()
        manifest = {
            "method": cfg.method,
            "base_model": cfg.model,
            "prune_config": cfg.to_dict(),
            "skipped": skipped,
        }
        if main and lazy is not None:
            save_checkpoint_streaming(out, lazy, tokenizer, store, list(targets), manifest)
        elif main:
            save_checkpoint(out, model, tokenizer, runner.results, manifest)
        seconds = time.perf_counter() - start
        calibration = round(timings.get("calibration", 0.0), 2)
        distributed.record_rank(out / "work" / "ranks", ranks or distributed.SINGLE, share, seconds,
                                calibration_seconds=calibration,
                                peak_rss_by_phase_mib=peaks)  # fmt: skip
        if ranks:
            distributed.finish()
        if main:
            _write_report(out)
        return PruneResult(
            out, runner.results, skipped, time.perf_counter() - start, timings, runner.metrics
        )


def _output_lock(out: Path, main: bool):
    """This process holds ``out`` (rank 0 holds it for a torchrun run)."""
    from contextlib import nullcontext

    from armor_export.locks import hold

    return hold(out, "prune") if main else nullcontext()


def _write_report(out: Path) -> None:
    """The pruning report (``<out>/report/``); a failure here never loses the checkpoint."""
    from armor_export.report import write_report

    try:
        path = write_report(out)
    except Exception as exc:  # the checkpoint is complete; the report can be redone
        log.warning("could not write the pruning report (%s); run `armor-export report %s`",
                    exc, out)  # fmt: skip
    else:
        log.info("pruning report: %s", path)


def _weight_reader(lazy, name: str) -> Callable[[], torch.Tensor]:
    def read() -> torch.Tensor:
        weight = lazy.weight(name)
        if not bool(torch.isfinite(weight).all()):
            raise UserError(f"{name}: the model's weight contains NaN/Inf; refusing to prune it")
        return weight

    return read


def _run_share(batch, cfg, store, runner, model, ranks) -> int:
    """All jobs here, or (distributed) this rank's share, then rank 0 collects everything.

    Returns the number of jobs this process was responsible for.
    """
    if ranks is None:
        run_jobs(batch, cfg, store, lambda r: runner.record(model, r), cfg.workers)
        return len(batch)
    from armor_export.prune import distributed

    shares = distributed.assign({job.name: job.weight.numel() for job in batch}, ranks.world)
    mine = set(shares[ranks.rank])
    workers = cfg.workers or 1  # the ranks already share the cores
    on_result = runner.record if ranks.is_main else (lambda _m, _r: None)
    run_jobs([j for j in batch if j.name in mine], cfg, store, lambda r: on_result(model, r),
             workers)  # fmt: skip
    distributed.barrier()  # every share is in the store
    if ranks.is_main:
        others = [j for j in batch if j.name not in mine]
        run_jobs(others, cfg, store, lambda r: runner.record(model, r), workers)
    return len(mine)


class _JobLoop:
    """Runs (or reloads) jobs one after another and applies each result to the model."""

    def __init__(
        self, cfg: PruneConfig, store: JobStore, reporter: Reporter, total: int, keep: bool = True
    ):
        self.cfg, self.store, self.keep = cfg, store, keep
        self.results: dict[str, MatrixResult] = {}
        self.metrics: dict[str, dict] = {}
        self._task_cm = reporter.task(f"prune ({cfg.method})", total)

    def __enter__(self) -> _JobLoop:
        self._task = self._task_cm.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._task_cm.__exit__(*exc)

    def run(self, model: nn.Module, job: MatrixJob) -> MatrixResult:
        """Run one job in this process (or reload it) and record it."""
        run_jobs([job], self.cfg, self.store, lambda r: self.record(model, r), workers=1)
        return self.results[job.name]

    def record(self, model: nn.Module, result: MatrixResult) -> None:
        """Apply a finished result to the model (unless low-memory) and report progress."""
        if self.keep:
            apply_result(model, result)
            self.results[result.name] = result
        self.metrics[result.name] = result.metrics
        info = {}
        if "proxy_loss" in result.metrics:
            info["loss"] = f"{result.metrics['proxy_loss']:.4f}"
        self._task.advance(1, **info)


def _dense_statistics(
    model, adapter, batches, targets, cfg, out: Path, reporter, ranks=None, lazy=None,
    model_key: str | None = None,
):  # fmt: skip
    """diag(XXᵀ)/N per target from the dense model, cached in ``work/stats.safetensors``.

    The file is reused only when it was computed from the same model content and
    calibration token ids (its ``key``, ``prune/provenance.statistics_key``). Under
    torch.distributed every rank runs its share of the batches and the sums are
    all-reduced layer by layer; rank 0 writes the file.
    """
    from armor_export.data.models import resolve_model_path
    from armor_export.prune import distributed

    method = methods.get(cfg.method)
    if not method.needs_statistics:
        return {}
    gram = method.needs_gram
    if model_key is None:
        model_key = provenance.model_digest(resolve_model_path(cfg.model))
    key = provenance.statistics_key(model_key, batches, gram)
    path = out / "work" / "stats.safetensors"
    if path.exists():
        stats, stored = read_tensors(path), read_metadata(path).get("key")
        complete = all(f"{n}.hdiag" in stats for n in targets) and (
            not gram or all(f"{n}.gram" in stats for n in targets)
        )
        if complete and stored == key:
            log.info("reusing calibration statistics from %s", path)
            return stats
        if complete:
            log.warning(
                "%s was computed from another model content or calibration text; calibrating again",
                path,
            )
    if ranks is not None:
        batches = batches[ranks.rank :: ranks.world]
    collected: dict[str, torch.Tensor] = {}

    def on_layer(_i, layer_stats):
        if ranks is not None:
            distributed.all_reduce_stats(layer_stats)
        for name, st in layer_stats.items():
            collected[f"{name}.hdiag"] = st.hdiag(name)
            if gram:
                collected[f"{name}.gram"] = st.gram(name)

    _calibrate_with_progress(
        reporter, "calibration", model, adapter, batches, targets, on_layer, gram=gram, lazy=lazy
    )
    if ranks is None or ranks.is_main:
        write_tensors(path, collected, {"key": key})
    return collected


def _calibrate_with_progress(
    reporter: Reporter, description: str, model, adapter, *args, **kwargs
) -> None:
    """``calibrate_layerwise`` with one progress step per decoder layer."""
    with reporter.task(description, len(adapter.layers(model))) as task:
        calibrate_layerwise(model, adapter, *args, progress=lambda i, n: task.advance(1), **kwargs)


def _prune_sequential(model, adapter, batches, targets, cfg, runner: _JobLoop, reporter):
    """SparseGPT's mode: each layer is calibrated on the outputs of the pruned layers before."""

    def on_layer(_i, layer_stats):
        for name, st in layer_stats.items():
            mod = targets[name]
            runner.run(model, MatrixJob(name, mod.weight, st.hdiag(name), st.gram(name)))

    _calibrate_with_progress(
        reporter,
        "calibration (sequential)",
        model,
        adapter,
        batches,
        targets,
        on_layer,
        gram=True,
        sequential=True,
    )


@torch.no_grad()
def armorize_(
    model: nn.Module,
    cfg: PruneConfig,
    batches: list[torch.Tensor] | None = None,
    filter_fn: Callable[[str, nn.Module], bool] | None = None,
) -> dict[str, MatrixResult]:
    """In place: prune the selected decoder linears of ``model`` with ``cfg.method``.

    ``batches`` (token id tensors) are the calibration data; needed by every method but
    magnitude. ARMOR layers become :class:`ArmorLinear`; other methods mask the weight.
    Nothing is written to disk (use :func:`prune` for resumable runs).
    """
    cfg.validate()
    adapter = adapter_for(model)
    targets, _ = select_linears(model, adapter, cfg, filter_fn)
    method = methods.get(cfg.method)
    sequential = method.sequential(cfg)
    if method.needs_statistics and not batches:
        raise UserError(f"method {cfg.method!r} needs calibration batches")
    results: dict[str, MatrixResult] = {}

    def solve_layer(_i, layer_stats):
        for name, st in layer_stats.items():
            gram = st.gram(name) if method.needs_gram else None
            job = MatrixJob(name, targets[name].weight, st.hdiag(name), gram)
            results[name] = run_job(job, cfg)
            if sequential:
                apply_result(model, results[name])

    if not method.needs_statistics:
        for name, mod in targets.items():
            results[name] = run_job(MatrixJob(name, mod.weight), cfg)
    else:
        calibrate_layerwise(
            model,
            adapter,
            batches,
            targets,
            solve_layer,
            gram=method.needs_gram,
            sequential=sequential,
        )
    if not sequential:
        for res in results.values():
            apply_result(model, res)
    return results
