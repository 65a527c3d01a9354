"""The ``verify`` verb: PyTorch vs ONNX Runtime / NumPy reference / TensorRT parity."""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from armor_export.config import VerifyConfig
from armor_export.errors import CorruptFileError, UserError
from armor_export.export_manifest import ExportManifest
from armor_export.memory import log_memory
from armor_export.progress import NullReporter, Reporter
from armor_export.runtime.finite import DAMAGED
from armor_export.verify.report import OutputParity, VerifyReport, display_name

log = logging.getLogger(__name__)


@dataclass
class VerifyResult:
    passed: bool
    report: VerifyReport
    report_path: Path


def verify(cfg: VerifyConfig, reporter: Reporter | None = None, model=None) -> VerifyResult:
    """Compare the export in ``cfg.export_dir`` with its PyTorch source; always writes a report.

    Bad input (no export, unusable backend) raises a UserError after the report is written;
    a mismatch or a runner that crashes gives ``passed=False``.
    """
    from armor_export.export.api import export_versions

    cfg.validate()
    reporter = reporter or NullReporter()
    export_dir = Path(cfg.export_dir)
    report_dir = Path(cfg.report_dir) if cfg.report_dir else export_dir / "verify"
    try:
        manifest = ExportManifest.read(export_dir)
    except CorruptFileError as exc:  # a damaged export is a failed verification: say so on disk
        if export_dir.is_dir():
            refused = VerifyReport(
                export_dir=str(export_dir), model=cfg.model, dtype="?", lowering="?",
                versions=export_versions(),
            )  # fmt: skip
            refused.error = str(exc)
            refused.write(report_dir)
        raise
    report = VerifyReport(
        export_dir=str(export_dir),
        model=cfg.model or manifest.source.model,
        dtype=manifest.dtype,
        lowering=manifest.lowering,
        versions=export_versions(),
    )
    if not cfg.model:  # the source found relative to the export folder (Source.locate)
        try:
            report.model = manifest.source.locate(export_dir)
        except UserError as exc:  # a moved export without its model: --model names it
            report.error = str(exc)
            report.write(report_dir)
            raise
    start = time.perf_counter()
    try:
        with reporter.task("verify", total=3) as task:
            _run(cfg, manifest, export_dir, report, model, task)
    except UserError as exc:
        report.error = str(exc)
        raise
    except Exception as exc:  # a runner crashed: that is a failed verification, not a bug here
        log.exception("verification run failed")
        report.error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:500]}"
    finally:
        report.seconds = time.perf_counter() - start
        path = report.write(report_dir)
    return VerifyResult(report.passed, report, path)


def _run(
    cfg, manifest: ExportManifest, export_dir: Path, report: VerifyReport, model, task
) -> None:
    from armor_export.verify import inputs
    from armor_export.verify.runners import EngineRunner, make_runners

    onnx_path = export_dir / manifest.onnx
    engine = engine_target(cfg, export_dir, manifest)
    if engine is not None:
        report.engine = {
            "dir": str(engine.engine_dir),
            "backend": engine.report.get("backend"),
            "compute_capability": engine.built_for,
            "engine_sha256": engine.report.get("engine_sha256"),
        }
    runners, skipped = make_runners(cfg.backends, onnx_path, manifest, engine)
    report.skipped = {s.backend: s.reason for s in skipped}
    report.runners = [r.name for r in runners]
    report.engine_executed = any(isinstance(r, EngineRunner) for r in runners)
    if not report.engine_executed:
        report.engine_not_run_reason = report.skipped.get("tensorrt", "not asked for")
    quant = (manifest.quant or {}).get("scheme")
    if quant is not None:
        from armor_export.verify.tolerances import QUANT_DERIVATION

        report.quant = {"scheme": quant, "tolerance": QUANT_DERIVATION}
        notes = {r.name: r.note for r in runners if getattr(r, "note", None)}
        if notes:
            report.quant["notes"] = notes
    prefill = inputs.prefill_feed(export_dir / manifest.tokenizer, cfg.prompts, manifest)
    feeds, reference = _pytorch_reference(
        report.model, manifest, prefill, cfg.decode_steps, model, report
    )
    report.inputs = {
        "prompts": len(cfg.prompts),
        "prefill_shape": list(feeds[0]["input_ids"].shape),
        "decode_steps": cfg.decode_steps,
    }
    task.advance(1, stage="inputs")
    results = _compare_runs(reference, runners, feeds)
    task.advance(1, stage="run")
    _mask_padding(results, feeds)
    broken = _non_finite(results, feeds)
    if broken:  # no parity to compute with NaN/Inf: a failed check that says where
        report.error = "; ".join(broken.values()) + f": {DAMAGED}"
    report.rows = _parity_rows(results, manifest.dtype, cfg, set(broken), quant)
    if quant is not None and report.rows:
        report.quant["top1"] = _top1_agreement(results, feeds, manifest.dtype, quant, set(broken))
    task.advance(1, stage="compared")


def _pytorch_reference(
    name: str, manifest: ExportManifest, prefill, decode_steps: int, model, report=None
):
    """The feeds (``prefill``, then ``decode_steps`` single-token steps fed with PyTorch's
    own outputs) and PyTorch's ``(name, [IterationResult])`` on every one of them.

    PyTorch runs to the end before any other backend opens the export, and a model loaded
    here (``model`` None) is released before this returns: the peak is the larger of the
    two, not their sum (#19). A ``model`` passed in stays the caller's, untouched.

    An 8-bit model's activation saturation on these inputs goes into ``report.quant``:
    values beyond the format's range are reported, not silently clipped.
    """
    from polygraphy.comparator import IterationResult

    from armor_export.verify import inputs
    from armor_export.verify.runners import TorchRunner, release_freed_memory

    loaded_here = model is None
    if loaded_here:
        model = load_reference(name, manifest.dtype)
    runner = TorchRunner(model, manifest)
    quant = report is not None and report.quant is not None
    if quant:
        from armor_export.quant.core import reset_saturation

        reset_saturation(model)
    feeds, iterations = [prefill], []
    with runner:
        for step in range(decode_steps + 1):
            if step:  # the next token and the cache from PyTorch's outputs of the step before
                feeds.append(inputs.decode_feed(feeds[-1], iterations[-1], manifest))
            outputs = runner.infer(feeds[-1], check_inputs=False)
            iterations.append(IterationResult(outputs, runner.last_inference_time(), runner.name))
    log_memory(log, "running PyTorch")
    if quant:
        report.quant["saturation"] = saturation_summary(model)
    reference = (runner.name, iterations)
    del runner, model
    if loaded_here:
        release_freed_memory()
        log_memory(log, "releasing the PyTorch model")
    return feeds, reference


def saturation_summary(model) -> dict:
    """PyTorch's activation saturation (``quant.core.saturation``): totals, the core with the
    largest share, and every core that saturated anything."""
    from armor_export.quant.core import saturation

    counts = saturation(model)
    saturated = sum(s for s, _ in counts.values())
    seen = sum(n for _, n in counts.values())
    over = {name: s for name, (s, _) in counts.items() if s}
    worst = max(over, key=lambda n: counts[n][0] / counts[n][1]) if over else None
    return {"saturated": saturated, "seen": seen, "worst": worst, "cores": over}


def _top1_agreement(results, feeds, dtype: str, scheme: str, broken: set[str]) -> dict:
    """Per runner: the fraction of real (not padded) positions, over every step, whose
    top-1 logit is PyTorch's, against what ``tolerances.top1_required`` asks."""
    from armor_export.export_manifest import LOGITS
    from armor_export.verify.inputs import valid_positions
    from armor_export.verify.tolerances import top1_required

    required = top1_required(dtype, scheme)
    (_, reference), *others = list(results)
    out = {}
    for runner, iterations in others:
        if runner in broken:
            continue
        same = total = 0
        for index, (ref, got) in enumerate(zip(reference, iterations, strict=False)):
            a, b = ref[LOGITS], got[LOGITS]
            valid = valid_positions(feeds[index], LOGITS, a.shape)[..., 0]
            agree = a.argmax(-1) == b.argmax(-1)
            same += int(agree[valid].sum())
            total += int(valid.sum())
        agreement = same / total if total else 0.0
        out[runner] = {
            "agreement": agreement,
            "positions": total,
            "required": required,
            "passed": bool(total) and agreement >= required,
        }
    return out


def load_reference(name: str, dtype: str):
    """The PyTorch model behind an export of ``name`` in ``dtype``, loaded the way export
    loads it: a pruned checkpoint straight into ``dtype`` (the numbers of a float32 load then
    ``.to(dtype)``, without the float32 copy, #19); ArmorLinear modules, not lowered."""
    from armor_export.export.api import load_for_export, torch_dtype

    model, _, _ = load_for_export(name, dtype)
    model = model.to(torch_dtype(dtype)).eval()
    log_memory(log, "loading the PyTorch model")
    return model


def engine_target(cfg: VerifyConfig, export_dir: Path, manifest: ExportManifest):
    """The engine to check (``cfg.engine_dir``, else the export's engine where every verb looks
    for it, ``engine.folder.engine_dir_of``, when it holds one), after checking it belongs to
    this export; None when there is none."""
    from armor_export.engine.folder import ENGINE_FILE, check_engine_belongs, engine_dir_of
    from armor_export.verify.runners import EngineTarget

    if cfg.engine_dir:
        engine_dir = Path(cfg.engine_dir)
    elif (engine_dir_of(export_dir) / ENGINE_FILE).is_file():
        engine_dir = engine_dir_of(export_dir)
    else:
        return None
    report = check_engine_belongs(engine_dir, export_dir, manifest)
    return EngineTarget(engine_dir, report, cfg.plugin_library)


@contextlib.contextmanager
def _quiet_polygraphy():
    from polygraphy.logger import G_LOGGER

    severity = G_LOGGER.module_severity
    G_LOGGER.module_severity = G_LOGGER.ERROR
    try:
        yield
    finally:
        G_LOGGER.module_severity = severity


def _compare_runs(reference, runners, feeds):
    """PyTorch's ``reference`` results, then each runner's on ``feeds``: Polygraphy runs them
    one after another, each opening the export when it activates and closing it after."""
    from polygraphy.comparator import Comparator, RunResults

    for runner in runners:  # the engine runs all feeds in one child: it needs them first
        getattr(runner, "take_feeds", lambda feeds: None)(feeds)
    with _quiet_polygraphy():
        ran = Comparator.run(runners, data_loader=feeds)
    results = RunResults()
    for name, iterations in [reference, *ran.items()]:
        results.append((name, iterations))
    return results


def _step_name(index: int) -> str:
    return "prefill" if index == 0 else f"decode-{index}"


def _mask_padding(results, feeds) -> None:
    """Zero every runner's outputs at padded positions (``where``: a NaN there stays out)."""
    from armor_export.verify.inputs import valid_positions

    for _, iterations in results:
        for index, iteration in enumerate(iterations):
            for name in list(iteration.keys()):
                value = iteration[name]
                valid = valid_positions(feeds[index], name, value.shape)
                iteration[name] = np.where(valid, value, np.zeros((), value.dtype))


def _non_finite(results, feeds) -> dict[str, str]:
    """Each runner whose outputs hold NaN/Inf at real (not padded) positions, with the
    first step and output that do."""
    from armor_export.runtime.finite import non_finite_message
    from armor_export.verify.inputs import valid_positions

    def real(feed, name, value):
        return value[np.broadcast_to(valid_positions(feed, name, value.shape), value.shape)]

    broken = {}
    for runner, iterations in results:
        found = (
            non_finite_message(
                real(feeds[index], name, value), name, _step_name(index), display_name(runner)
            )
            for index, iteration in enumerate(iterations)
            for name, value in iteration.items()
        )
        message = next((m for m in found if m), None)
        if message:
            broken[runner] = message
    return broken


def _parity_rows(
    results, dtype: str, cfg: VerifyConfig, broken: set[str], quant: str | None = None
) -> list[OutputParity]:
    """Compare each runner's (padding-masked) outputs to PyTorch's; a runner in ``broken``
    (non-finite outputs) is not compared, and nothing is when PyTorch itself is."""
    from polygraphy.comparator import Comparator, SimpleCompareFunc

    from armor_export.verify.tolerances import per_output

    comparisons = [(i, 0) for i, (runner, _) in enumerate(results) if i and runner not in broken]
    if results[0][0] in broken or not comparisons:
        return []
    names = list(results[0][1][0].keys())
    atol, rtol = per_output(dtype, names, cfg.atol, cfg.rtol, quant)
    compare = SimpleCompareFunc(atol=atol, rtol=rtol, check_error_stat="elemwise")
    with _quiet_polygraphy():
        accuracy = Comparator.compare_accuracy(
            results, comparisons=comparisons, compare_func=compare
        )
    rows = []
    for (runner, _reference), iterations in accuracy[0].items():
        for index, outputs in enumerate(iterations):
            for output, res in outputs.items():
                rows.append(
                    OutputParity(
                        step=_step_name(index),
                        runner=runner,
                        output=output,
                        max_abs=float(res.max_absdiff),
                        max_rel=float(res.max_reldiff),
                        atol=atol[output],
                        rtol=rtol[output],
                        passed=bool(res),
                    )
                )
    return rows
