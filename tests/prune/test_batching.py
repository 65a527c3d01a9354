"""Same-shape ARMOR jobs as one batched solve: grouping, the probe, and equal results."""

from __future__ import annotations

import pytest
import torch

from armor_export.config import PruneConfig
from armor_export.errors import ConfigError
from armor_export.prune import batching
from armor_export.prune.jobs import JobStore, MatrixJob
from armor_export.prune.schedule import resolve_workers, run_jobs


def _jobs(shapes, seed=0):
    gen = torch.Generator().manual_seed(seed)
    jobs = []
    for i, (m, n) in enumerate(shapes):
        weight = torch.randn(m, n, generator=gen) * (torch.rand(n, generator=gen) + 0.2)
        jobs.append(MatrixJob(f"m{i}", weight, torch.rand(n, generator=gen).pow(2) * 4 + 0.01))
    return jobs


def _collect(into: dict):
    return lambda result: into.update({result.name: result})


def _cfg(batch="on", **armor):
    settings = {"block_size": 16, "iterations": 12, "compile": False, **armor}
    return PruneConfig.from_dict({"batch_same_shape": batch, "armor": settings})


@pytest.fixture(autouse=True)
def fresh_decisions(monkeypatch):
    monkeypatch.setattr(batching, "_DECISIONS", {})


def test_grouping_keeps_the_order_and_gathers_same_shapes(monkeypatch):
    jobs = _jobs([(64, 96), (32, 96), (64, 96), (64, 96), (32, 96), (128, 96)])
    names = lambda groups: [[j.name for j in g] for g in groups]  # noqa: E731
    assert names(batching.group_jobs(jobs, _cfg("off"))) == [[j.name] for j in jobs]
    # a batch holds no more weight elements than the largest matrix (128x96): 2 of 64x96
    on = batching.group_jobs(jobs, _cfg("on"))
    assert names(on) == [["m0", "m2"], ["m1", "m4"], ["m3"], ["m5"]]
    # ... and at most BATCH_ELEMENTS
    monkeypatch.setattr(batching, "BATCH_ELEMENTS", 64 * 96)
    assert names(batching.group_jobs(jobs, _cfg("on"))) == [
        ["m0"], ["m1", "m4"], ["m2"], ["m3"], ["m5"]
    ]  # fmt: skip
    # baselines solve one matrix at a time
    wanda = PruneConfig.from_dict({"method": "wanda", "batch_same_shape": "on"})
    assert names(batching.group_jobs(jobs, wanda)) == [[j.name] for j in jobs]


def test_batch_size_caps():
    cfg = _cfg("on")
    assert batching.batch_size((32, 96), 40, cfg, budget=10**9) == batching.MAX_BATCH
    assert batching.batch_size((32, 96), 40, cfg, budget=3 * 32 * 96 + 5) == 3
    assert batching.batch_size((32, 96), 2, cfg, budget=10**9) == 2
    assert batching.batch_size((32, 96), 40, _cfg("off"), budget=10**9) == 1


def test_auto_asks_the_probe_once_per_shape_and_follows_it():
    calls = []

    def probe(shape, count, cfg):
        calls.append((shape, count))
        return (0.1, 1.0) if shape == (32, 96) else (1.0, 1.0)

    jobs = _jobs([(64, 96), (32, 96), (64, 96), (32, 96), (32, 96), (16, 96), (128, 96)])
    groups = batching.group_jobs(jobs, _cfg("auto"), probe=probe)
    assert [[j.name for j in g] for g in groups] == [
        ["m0"], ["m1", "m3", "m4"], ["m2"], ["m5"], ["m6"]
    ]  # fmt: skip
    # lone shapes (16x96, 128x96) are not probed
    assert sorted(calls) == [((32, 96), 3), ((64, 96), 2)]


def test_measured_decision_batches_only_when_clearly_faster():
    calls = []

    def fast(shape, count, cfg):
        calls.append((shape, count))
        return 0.2, 1.0

    cfg = _cfg("auto")
    assert batching.measured_batch_size((64, 96), 5, cfg, fast) == 5
    assert batching.measured_batch_size((64, 96), 5, cfg, fast) == 5
    assert calls == [((64, 96), 5)]  # one probe per shape and setting
    slow = lambda shape, count, cfg: (0.9, 1.0)  # noqa: E731
    assert batching.measured_batch_size((32, 96), 5, cfg, slow) == 1


def test_probe_times_the_real_solver():
    batched, single = batching.probe_seconds((32, 64), 3, _cfg("auto"))
    assert batched > 0 and single > 0


def test_batched_jobs_give_the_results_of_single_jobs(tmp_path):
    shapes = [(64, 96), (32, 96), (64, 96), (64, 96), (32, 96), (128, 96)]
    results = {}
    for batch in ("off", "on"):
        got = results[batch] = {}
        run_jobs(_jobs(shapes), _cfg(batch), JobStore(tmp_path / batch), _collect(got))
    assert set(results["on"]) == {f"m{i}" for i in range(6)}
    for name, one in results["off"].items():
        many = results["on"][name]
        assert torch.equal(one.mask, many.mask)
        torch.testing.assert_close(many.core, one.core, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(many.b_blocks, one.b_blocks, rtol=1e-5, atol=1e-6)
        assert many.metrics["proxy_loss"] <= many.metrics["nowag_loss"]
        assert many.metrics.get("batch") == (2 if name in {"m0", "m2", "m1", "m4"} else None)
        assert "batch" not in one.metrics


def test_a_resumed_run_batches_only_the_unfinished_jobs(tmp_path):
    store = JobStore(tmp_path / "jobs")
    jobs = _jobs([(64, 96)] * 3 + [(128, 96)])  # the 128x96 lets two 64x96 share a batch
    run_jobs(jobs[:1], _cfg("on"), store, lambda r: None)
    got = {}
    run_jobs(jobs, _cfg("on"), store, _collect(got))
    assert sorted(got) == ["m0", "m1", "m2", "m3"]
    assert "batch" not in got["m0"].metrics  # reloaded, not solved again
    assert got["m1"].metrics["batch"] == got["m2"].metrics["batch"] == 2


def test_batch_setting_is_validated_and_does_not_define_the_run():
    from armor_export.prune.api import _defining_config

    with pytest.raises(ConfigError, match="batch_same_shape"):
        PruneConfig.from_dict({"batch_same_shape": "always"})
    assert "batch_same_shape" not in _defining_config(_cfg("on"))


def test_a_gpu_gets_one_worker_process_by_default():
    assert resolve_workers(0, 10, "cuda:0") == 1
    assert resolve_workers(3, 10, "cuda:0") == 3
    assert resolve_workers(0, 1, "cpu") == 1


def test_a_batched_prune_writes_the_same_checkpoint(tiny_model_dir, text_file, tmp_path):
    from armor_export.io import read_tensors
    from armor_export.prune import api
    from tests.conftest import tiny_prune_config

    tensors = {}
    for batch in ("off", "on"):
        out = tmp_path / batch
        result = api.prune(
            tiny_prune_config(tiny_model_dir, text_file, out, batch_same_shape=batch)
        )
        tensors[batch] = read_tensors(out / "model.safetensors")
        batched = [m.get("batch", 1) for m in result.metrics.values()]
        assert (max(batched) > 1) == (batch == "on")  # 2 layers: pairs of same-shape matrices
    assert tensors["on"].keys() == tensors["off"].keys()
    for name, value in tensors["off"].items():
        assert torch.equal(tensors["on"][name], value), name
