"""GPU checks: the same ARMOR solve on CUDA as on CPU. Skipped without a CUDA GPU."""

import pytest
import torch

from armor_export.config import PruneConfig
from armor_export.prune.jobs import MatrixJob, run_job

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"
)


def test_armor_job_on_cuda_matches_cpu_guarantees():
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(256, 128, generator=gen)
    hdiag = torch.rand(128, generator=gen) + 0.1
    cfg = PruneConfig.from_dict({"device": "cuda", "armor": {"block_size": 32, "iterations": 20}})
    res = run_job(MatrixJob("w", weight, hdiag), cfg)
    assert res.core.device.type == "cpu"
    assert res.metrics["proxy_loss"] <= res.metrics["nowag_loss"]
    cpu = run_job(
        MatrixJob("w", weight, hdiag),
        PruneConfig.from_dict({"armor": {"block_size": 32, "iterations": 20, "compile": False}}),
    )
    assert res.metrics["proxy_loss"] == pytest.approx(cpu.metrics["proxy_loss"], rel=0.05)
