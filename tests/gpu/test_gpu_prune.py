"""GPU checks: the prune verb end to end with ``--device cuda[:i]``. Skipped without a CUDA GPU."""

import pytest
import torch

from armor_export.prune import api
from armor_export.prune.checkpoint import load_checkpoint
from armor_export.prune.linear import ArmorLinear
from armor_export.prune.masks import is_two_four
from tests.conftest import tiny_prune_config

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"
)


def masks(result) -> dict[str, torch.Tensor]:
    return {name: res.mask for name, res in result.results.items()}


def test_armor_prune_on_cuda_end_to_end(tiny_model_dir, text_file, tmp_path):
    runs = {}
    for device in ("cuda", "cuda:0", "cpu"):
        cfg = tiny_prune_config(tiny_model_dir, text_file, tmp_path / device, device=device)
        runs[device] = api.prune(cfg)
    result = runs["cuda"]
    model, manifest = load_checkpoint(result.output_dir)
    assert manifest["method"] == "armor" and len(manifest["matrices"]) == 14
    for name, res in result.results.items():
        mod = model.get_submodule(name)
        assert isinstance(mod, ArmorLinear) and mod.mask.device.type == "cpu"
        assert is_two_four(res.mask)
        assert res.metrics["proxy_loss"] <= res.metrics["nowag_loss"]
        # the same problem on the CPU: the same quality within GPU rounding
        cpu = runs["cpu"].results[name]
        assert res.metrics["proxy_loss"] == pytest.approx(cpu.metrics["proxy_loss"], rel=0.05)
    # same seed, same device: the same masks (cuda and cuda:0 are the same GPU)
    for name, mask in masks(runs["cuda"]).items():
        assert torch.equal(mask, runs["cuda:0"].results[name].mask), name
