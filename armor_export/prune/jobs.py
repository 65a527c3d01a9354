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
from armor_export.prune import armor, masks, methods
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
    # a quantized checkpoint's stored 8-bit core values (``core`` is then filled from them)
    quant_values: torch.Tensor | None = None

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


def _baseline_losses(core: torch.Tensor, weight: torch.Tensor, hdiag: torch.Tensor):
    """(proxy loss of ``core``, NoWag-P's proxy loss) of ``weight``, in NoWag coordinates."""
    norm = normalize(weight)
    approx_bar = core / norm.row_scale[:, None] / norm.col_scale[None, :]
    nowag_bar = norm.w_bar * armor.nowag_p_mask(norm.w_bar, hdiag)
    return proxy_loss(approx_bar, norm.w_bar, hdiag), proxy_loss(nowag_bar, norm.w_bar, hdiag)


def _on_device(job: MatrixJob, device: torch.device) -> MatrixJob:
    """The job's tensors in fp32 on ``device``, its input norms cleaned of dead columns."""

    def move(t):
        return None if t is None else t.detach().to(device, torch.float32)

    hdiag = None if job.hdiag is None else clean_hdiag(move(job.hdiag), job.name)
    return MatrixJob(job.name, move(job.weight), hdiag, move(job.gram))


@torch.no_grad()
def run_job(
    job: MatrixJob, cfg: PruneConfig, progress: Callable[[int, float], None] | None = None
) -> MatrixResult:
    """Prune one matrix with ``cfg.method``; deterministic for the same inputs."""
    start = time.perf_counter()
    ready = _on_device(job, torch.device(cfg.device))
    result = methods.get(cfg.method).solve(ready, cfg, progress)
    if "proxy_loss" not in result.metrics and ready.hdiag is not None:
        losses = _baseline_losses(result.core, ready.weight, ready.hdiag)
        result.metrics["proxy_loss"], result.metrics["nowag_loss"] = losses
    result.metrics["seconds"] = time.perf_counter() - start
    return result.to("cpu")


@torch.no_grad()
def run_job_batch(jobs: list[MatrixJob], cfg: PruneConfig) -> list[MatrixResult]:
    """Same-shape jobs of a batching method as one solve; each result is the one
    ``run_job`` gives, with ``seconds`` the batch's time shared out evenly."""
    if len(jobs) == 1:
        return [run_job(jobs[0], cfg)]
    start = time.perf_counter()
    device = torch.device(cfg.device)
    solve_batch = methods.get(cfg.method).solve_batch
    if solve_batch is None:
        raise ValueError(f"method {cfg.method!r} has no batched solve")
    results = solve_batch([_on_device(job, device) for job in jobs], cfg)
    seconds = (time.perf_counter() - start) / len(jobs)
    for result in results:
        result.metrics.update(seconds=seconds, batch=len(jobs))
    return [result.to("cpu") for result in results]


class JobStore:
    """Results of finished jobs, one safetensors file each, written atomically."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)

    def path(self, name: str) -> Path:
        return self.dir / f"{name}.safetensors"

    def is_done(self, name: str, key: str | None = None) -> bool:
        """A finished, intact result of ``name``; with ``key``, one computed from the same
        inputs (``prune/provenance.job_key``), else it is stale."""
        path = self.path(name)
        if not path.is_file():
            return False
        try:
            meta = read_metadata(path)
        except CorruptFileError:
            log.warning("result of %s is corrupt; the job will run again", name)
            return False
        if key is not None and meta.get("key") != key:
            log.warning(
                "%s: the stored result was computed from other inputs (weight, calibration "
                "statistics or solver settings); the job will run again",
                name,
            )
            return False
        return True

    def save(self, result: MatrixResult, key: str = "", solved_with: dict | None = None) -> None:
        """Write ``result`` atomically, with the key of its inputs and the solver settings
        it was computed with."""
        values, positions = masks.pack(result.core, result.mask)
        tensors = {"core_values": values, "core_positions": positions}
        if result.is_armor:
            tensors.update(a_blocks=result.a_blocks, b_blocks=result.b_blocks)
        meta = {"name": result.name, "method": result.method, "metrics": json.dumps(result.metrics)}
        if key:
            meta["key"] = key
        if solved_with is not None:
            meta["solved_with"] = json.dumps(solved_with, sort_keys=True)
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
