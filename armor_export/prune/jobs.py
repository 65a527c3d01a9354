"""One matrix, one job: inputs in, a result out, persisted atomically as it completes.

The runner (:func:`run_job`) is a pure function of the job's inputs; the store
(:class:`JobStore`) persists results; scheduling (which job runs where) is up to the
caller, so the same jobs can later be spread over processes and machines.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from armor_export.config import PruneConfig
from armor_export.errors import CorruptFileError
from armor_export.io import read_metadata, read_tensors, write_tensors
from armor_export.prune import armor, baselines, masks
from armor_export.prune.proxy import clean_hdiag, normalize, proxy_loss

log = logging.getLogger(__name__)


@dataclass
class MatrixJob:
    """Inputs of one job: the dense weight and its calibration statistics."""

    name: str
    weight: torch.Tensor  # may be a ``meta`` tensor when ``load_weight`` is given
    hdiag: torch.Tensor | None = None
    gram: torch.Tensor | None = None
    load_weight: Callable[[], torch.Tensor] | None = None  # reads the weight when it runs

    def resolved(self) -> MatrixJob:
        """This job with its weight in memory (low-memory runs read it only now)."""
        if self.load_weight is None:
            return self
        return MatrixJob(self.name, self.load_weight(), self.hdiag, self.gram)


@dataclass
class MatrixResult:
    """A pruned matrix: a 2:4 core, plus ARMOR's block-diagonal wrappers when present."""

    name: str
    method: str
    core: torch.Tensor
    mask: torch.Tensor
    a_blocks: torch.Tensor | None = None
    b_blocks: torch.Tensor | None = None
    metrics: dict = field(default_factory=dict)

    @property
    def is_armor(self) -> bool:
        return self.a_blocks is not None

    def to(self, device: str | torch.device) -> MatrixResult:
        def move(t):
            return None if t is None else t.to(device)

        return MatrixResult(
            self.name,
            self.method,
            move(self.core),
            move(self.mask),
            move(self.a_blocks),
            move(self.b_blocks),
            self.metrics,
        )


def solver_settings(cfg: PruneConfig) -> armor.SolverSettings:
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


def _baseline_losses(core: torch.Tensor, weight: torch.Tensor, hdiag: torch.Tensor):
    """(proxy loss of ``core``, NoWag-P's proxy loss) of ``weight``, in NoWag coordinates."""
    norm = normalize(weight)
    approx_bar = core / norm.row_scale[:, None] / norm.col_scale[None, :]
    nowag_bar = norm.w_bar * armor.nowag_p_mask(norm.w_bar, hdiag)
    return proxy_loss(approx_bar, norm.w_bar, hdiag), proxy_loss(nowag_bar, norm.w_bar, hdiag)


@torch.no_grad()
def run_job(
    job: MatrixJob, cfg: PruneConfig, progress: Callable[[int, float], None] | None = None
) -> MatrixResult:
    """Prune one matrix with ``cfg.method``; deterministic for the same inputs."""
    start = time.perf_counter()
    device = torch.device(cfg.device)
    weight = job.weight.detach().to(device, torch.float32)
    hdiag = None
    if job.hdiag is not None:
        hdiag = clean_hdiag(job.hdiag.to(device, torch.float32), job.name)
    method = cfg.method
    metrics: dict = {}
    if method == "armor":
        factors = armor.solve(weight, hdiag, solver_settings(cfg), progress)
        result = _armor_result(job.name, factors, cfg)
        metrics = result.metrics
    else:
        if method == "magnitude":
            core, mask = baselines.magnitude(weight)
        elif method == "wanda":
            core, mask = baselines.wanda(weight, hdiag)
        elif method == "nowag-p":
            core, mask = baselines.nowag_p(weight, hdiag)
        elif method == "sparsegpt":
            core, mask = baselines.sparsegpt(
                weight,
                job.gram.to(device, torch.float32),
                cfg.sparsegpt.block_size,
                cfg.sparsegpt.damp,
            )
        else:  # config validation makes this unreachable for users
            raise ValueError(f"unknown method {method!r}")
        result = MatrixResult(job.name, method, core, mask)
        if hdiag is not None:
            metrics["proxy_loss"], metrics["nowag_loss"] = _baseline_losses(core, weight, hdiag)
    metrics["seconds"] = time.perf_counter() - start
    result.metrics = metrics
    return result.to("cpu")


def _armor_result(name: str, factors: armor.ArmorFactors, cfg: PruneConfig) -> MatrixResult:
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


@torch.no_grad()
def run_job_batch(jobs: list[MatrixJob], cfg: PruneConfig) -> list[MatrixResult]:
    """Same-shape ARMOR jobs as one batched solve; each result is the one ``run_job`` gives
    (``armor.solve_batch``), with ``seconds`` the batch's time shared out evenly."""
    if len(jobs) == 1:
        return [run_job(jobs[0], cfg)]
    start = time.perf_counter()
    device = torch.device(cfg.device)
    weights = [job.weight.detach().to(device, torch.float32) for job in jobs]
    hdiags = [clean_hdiag(job.hdiag.to(device, torch.float32), job.name) for job in jobs]
    factors = armor.solve_batch(weights, hdiags, solver_settings(cfg))
    seconds = (time.perf_counter() - start) / len(jobs)
    results = []
    for job, fac in zip(jobs, factors, strict=True):
        result = _armor_result(job.name, fac, cfg)
        result.metrics.update(seconds=seconds, batch=len(jobs))
        results.append(result.to("cpu"))
    return results


class JobStore:
    """Results of finished jobs, one safetensors file each, written atomically."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)

    def path(self, name: str) -> Path:
        return self.dir / f"{name}.safetensors"

    def is_done(self, name: str) -> bool:
        path = self.path(name)
        if not path.is_file():
            return False
        try:
            read_metadata(path)
        except CorruptFileError:
            log.warning("result of %s is corrupt; the job will run again", name)
            return False
        return True

    def save(self, result: MatrixResult) -> None:
        values, positions = masks.pack(result.core, result.mask)
        tensors = {"core_values": values, "core_positions": positions}
        if result.is_armor:
            tensors.update(a_blocks=result.a_blocks, b_blocks=result.b_blocks)
        meta = {"name": result.name, "method": result.method, "metrics": json.dumps(result.metrics)}
        write_tensors(self.path(result.name), tensors, meta)

    def load(self, name: str) -> MatrixResult:
        path = self.path(name)
        tensors = read_tensors(path)
        meta = read_metadata(path)
        try:
            core, mask = masks.unpack(tensors["core_values"], tensors["core_positions"])
            return MatrixResult(
                meta["name"],
                meta["method"],
                core,
                mask,
                tensors.get("a_blocks"),
                tensors.get("b_blocks"),
                json.loads(meta["metrics"]),
            )
        except (KeyError, ValueError) as exc:
            raise CorruptFileError(f"{path}: incomplete job result ({exc})") from None
