"""The pruning-method registry: every consumer reads it, and a new method is one module.

A method registered here, in a test module, goes through config validation, the CLI, the
job driver (in process and in worker processes), the checkpoint, the plan and the report
without any other file knowing its name.
"""

from __future__ import annotations

import json

import pytest
import torch

from armor_export.config import PruneConfig
from armor_export.errors import ConfigError
from armor_export.prune import methods
from armor_export.prune.masks import is_two_four, mask_from_scores
from tests.conftest import tiny_prune_config

# the methods that ship; tests/prune/test_api.py runs each of them end to end
BUILT_IN = ["magnitude", "wanda", "sparsegpt", "nowag-p", "armor"]
NAME = "wanda-h"  # tests/prune/wanda_h.py


@pytest.fixture
def new_method():
    """Registered while a test runs (importing the module registers it)."""
    import importlib

    module = importlib.import_module("tests.prune.wanda_h")
    yield methods.register(module.METHOD)
    methods.unregister(NAME)


def test_every_built_in_method_is_registered_and_described():
    from tests.prune.test_api import METHODS

    assert list(methods.names()) == BUILT_IN
    assert sorted(METHODS) == sorted(BUILT_IN)  # each is pruned end to end there
    for name, method in methods.registered().items():
        assert method.name == name and method.title and method.summary
        if method.settings:  # its settings are a PruneConfig section
            assert hasattr(PruneConfig(), method.settings)
        if method.bounded_by_nowag:
            assert method.needs_statistics
        assert (method.iterations is None) == (method.probe_config is None)
    assert methods.get("sparsegpt").needs_gram
    assert not methods.get("magnitude").needs_statistics
    assert methods.get("armor").wrappers and methods.get("armor").solve_batch is not None


def test_unknown_method_is_refused_naming_the_registered_ones():
    with pytest.raises(ConfigError, match="nowag-p, armor"):
        PruneConfig(method="obs").validate()
    with pytest.raises(KeyError, match="registered: magnitude"):
        methods.get("obs")


def test_cli_choices_come_from_the_registry(new_method):
    from armor_export.cli.main import build_parser

    parser = build_parser()
    for verb in (["prune"], ["plan"], ["build"]):
        args = parser.parse_args([*verb, "--method", NAME])
        assert args.method == NAME
    with pytest.raises(SystemExit):
        parser.parse_args(["prune", "--method", "obs"])


@pytest.mark.parametrize("workers", [1, 2])
def test_a_registered_method_prunes_end_to_end(
    new_method, workers, tiny_model_dir, text_file, tmp_path
):
    """No file but this one names the method: prune, checkpoint, resume and report work."""
    from armor_export.prune import api
    from armor_export.prune.checkpoint import load_checkpoint
    from armor_export.report import write_report

    cfg = tiny_prune_config(tiny_model_dir, text_file, tmp_path / "out", NAME, workers=workers)
    result = api.prune(cfg)
    assert len(result.metrics) == 14
    model, manifest = load_checkpoint(result.output_dir)
    assert manifest["method"] == NAME
    # each matrix is this method's mask of the dense weight under the run's statistics
    from transformers import AutoModelForCausalLM

    from armor_export.io import read_tensors
    from armor_export.prune.proxy import clean_hdiag

    dense = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    stats = read_tensors(result.output_dir / "work" / "stats.safetensors")
    for name, metrics in result.metrics.items():
        weight = model.get_submodule(name).weight
        original = dense.get_submodule(name).weight.detach()
        hdiag = clean_hdiag(stats[f"{name}.hdiag"].float(), name)
        assert torch.equal(weight != 0, mask_from_scores(original.abs() * hdiag))
        assert is_two_four(weight != 0)
        assert metrics["proxy_loss"] > 0 and metrics["nowag_loss"] > 0  # added by the driver
    # the report names the method by its title and shows its calibration
    html = write_report(result.output_dir).read_text()
    assert "Wanda-h" in html and "calibration" in html
    # a rerun reuses every finished job (the same registry lookups on resume)
    again = api.prune(cfg)
    assert {n: m["proxy_loss"] for n, m in again.metrics.items()} == {
        n: m["proxy_loss"] for n, m in result.metrics.items()
    }


def test_plan_reads_the_registry(new_method, tiny_model_dir, text_file, tmp_path):
    from armor_export.prune.plan import make_plan

    cfg = tiny_prune_config(tiny_model_dir, text_file, tmp_path / "out", NAME)
    plan = make_plan(cfg)
    assert plan.method == NAME and plan.jobs == 14
    assert all(s.probe_iterations == 0 for s in plan.shapes)  # a one-shot method
    assert plan.calibration["batches"] > 0  # it needs statistics: calibration is planned
    json.dumps(plan.to_dict())


def test_batching_asks_the_method(new_method):
    from armor_export.prune import batching
    from armor_export.prune.jobs import MatrixJob

    jobs = [MatrixJob(f"m{i}", torch.zeros(32, 32)) for i in range(4)]
    cfg = PruneConfig(method=NAME, batch_same_shape="on")
    assert batching.group_jobs(jobs, cfg) == [[j] for j in jobs]  # no batched solve
