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


def test_batched_solves_on_cuda_match_single_solves(tmp_path):
    from armor_export.prune import batching
    from armor_export.prune.jobs import JobStore
    from armor_export.prune.schedule import run_jobs

    gen = torch.Generator().manual_seed(1)
    jobs = [
        MatrixJob(
            f"m{i}", torch.randn(192, 576, generator=gen), torch.rand(576, generator=gen) + 0.1
        )
        for i in range(4)
    ]
    # a batch holds at most the run's largest matrix: one 4x larger matrix makes room for 4
    jobs.append(
        MatrixJob("big", torch.randn(768, 576, generator=gen), torch.rand(576, generator=gen) + 0.1)
    )
    armor = {"block_size": 64, "iterations": 15}
    got = {}
    for batch in ("off", "on"):
        cfg = PruneConfig.from_dict({"device": "cuda", "batch_same_shape": batch, "armor": armor})
        into = got[batch] = {}
        run_jobs(
            jobs, cfg, JobStore(tmp_path / batch), lambda r, into=into: into.update({r.name: r})
        )
    assert got["on"]["big"].metrics.get("batch") is None  # alone in its shape
    for name, one in got["off"].items():
        if name == "big":
            continue
        many = got["on"][name]
        assert many.metrics["batch"] == 4
        assert many.metrics["proxy_loss"] <= many.metrics["nowag_loss"]
        # GPU kernels may round a batch differently: same quality, masks nearly equal
        assert many.metrics["proxy_loss"] == pytest.approx(one.metrics["proxy_loss"], rel=0.02)
        assert (many.mask == one.mask).float().mean() > 0.95
    # auto measures on the GPU and decides
    cfg = PruneConfig.from_dict({"device": "cuda", "armor": armor})
    batched, single = batching.probe_seconds((192, 576), 4, cfg)
    assert batched > 0 and single > 0
    assert batching.batch_size((192, 576), 4, cfg) in (1, 4)


def test_gpu_batches_are_not_capped_by_the_largest_matrix():
    """On the CPU a batch holds at most the run's largest matrix (RAM); on a GPU the solver
    tensors live in device memory, so SmolLM2's widest shape batches too."""
    from armor_export.prune import batching

    counts = {(192, 576): 60, (576, 576): 60, (1536, 576): 90}
    on_gpu = batching.batch_sizes(
        counts, PruneConfig.from_dict({"device": "cuda", "batch_same_shape": "on"})
    )
    on_cpu = batching.batch_sizes(counts, PruneConfig.from_dict({"batch_same_shape": "on"}))
    assert on_cpu == {(192, 576): 8, (576, 576): 2, (1536, 576): 1}
    assert on_gpu == dict.fromkeys(counts, batching.MAX_BATCH)
