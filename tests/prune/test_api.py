"""The prune verb end to end on a tiny model: methods, checkpoints, resume, armorize_."""

import json

import pytest
import torch

from armor_export.config import PruneConfig
from armor_export.errors import UserError
from armor_export.prune import api, jobs, schedule
from armor_export.prune.checkpoint import load_checkpoint
from armor_export.prune.linear import ArmorLinear
from armor_export.prune.masks import is_two_four
from tests.conftest import tiny_prune_config

N_LINEARS = 14  # 2 layers x 7
# every registered method (tests/prune/test_methods.py checks this list against the registry)
METHODS = ["magnitude", "wanda", "nowag-p", "sparsegpt", "armor"]


def make_config(model_dir, text_file, out, method="armor", **armor):
    return tiny_prune_config(model_dir, text_file, out, method, armor)


@pytest.mark.parametrize("method", METHODS)
def test_prune_writes_a_checkpoint_that_loads_back(method, tiny_model_dir, text_file, tmp_path):
    cfg = make_config(tiny_model_dir, text_file, tmp_path / "out", method)
    result = api.prune(cfg)
    assert len(result.results) == N_LINEARS
    model, manifest = load_checkpoint(result.output_dir)
    assert manifest["method"] == method
    assert len(manifest["matrices"]) == N_LINEARS
    for name, res in result.results.items():
        mod = model.get_submodule(name)
        if method == "armor":
            assert isinstance(mod, ArmorLinear)
            assert torch.equal(mod.mask, res.mask)
            assert res.metrics["proxy_loss"] <= res.metrics["nowag_loss"]
        else:
            assert is_two_four(mod.weight != 0) or is_two_four(res.mask)
            assert torch.equal(mod.weight * ~res.mask, torch.zeros_like(mod.weight))
    # weights are compact: no dense [d_out, d_in] float core is stored
    from safetensors import safe_open

    with safe_open(str(result.output_dir / "model.safetensors"), "pt") as fh:
        keys = set(fh.keys())
    assert not any(k.endswith((".core", ".mask")) for k in keys)
    assert "model.layers.0.mlp.up_proj.core_positions" in keys


def test_checkpoint_roundtrip_gives_equal_outputs(tiny_model_dir, text_file, tmp_path):
    cfg = make_config(tiny_model_dir, text_file, tmp_path / "out")
    api.prune(cfg)
    # in-memory: the same jobs applied to a fresh copy of the dense model
    from transformers import AutoModelForCausalLM

    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    store = jobs.JobStore(tmp_path / "out" / "work" / "jobs")
    from armor_export.prune.checkpoint import apply_result

    for name in api.adapter_for(reference).linears(reference):
        apply_result(reference, store.load(name))
    loaded, _ = load_checkpoint(tmp_path / "out")
    ids = torch.randint(0, 300, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, reference(ids).logits, atol=1e-5)


@pytest.mark.fault(
    "prune",
    "a prune that crashes after 5 of 14 jobs",
    "the rerun solves only the 9 unfinished jobs",
)
def test_resume_redoes_no_finished_job(tiny_model_dir, text_file, tmp_path, monkeypatch):
    cfg = make_config(tiny_model_dir, text_file, tmp_path / "out")
    calls = []
    real = jobs.run_job

    def crashing(job, c, progress=None):
        if len(calls) == 5:
            raise RuntimeError("simulated crash")
        calls.append(job.name)
        return real(job, c, progress)

    monkeypatch.setattr(schedule, "run_job", crashing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        api.prune(cfg)
    finished = list(calls)
    assert len(finished) == 5
    calls.clear()

    def counting(job, c, progress=None):
        calls.append(job.name)
        return real(job, c, progress)

    monkeypatch.setattr(schedule, "run_job", counting)
    result = api.prune(cfg)
    assert len(result.results) == N_LINEARS
    assert not set(calls) & set(finished)
    assert len(calls) == N_LINEARS - 5


@pytest.mark.fault(
    "prune",
    "a rerun into the same folder with another method",
    "one line: the folder holds a run with a different config",
)
def test_resume_with_a_different_config_is_refused(tiny_model_dir, text_file, tmp_path):
    api.prune(make_config(tiny_model_dir, text_file, tmp_path / "out", "magnitude"))
    with pytest.raises(UserError, match="different config"):
        api.prune(make_config(tiny_model_dir, text_file, tmp_path / "out", "wanda"))


@pytest.mark.fault(
    "prune",
    "a truncated job result file",
    "that job is solved again",
)
def test_corrupt_job_result_is_redone(tiny_model_dir, text_file, tmp_path):
    cfg = make_config(tiny_model_dir, text_file, tmp_path / "out", "nowag-p")
    api.prune(cfg)
    victim = tmp_path / "out" / "work" / "jobs" / "model.layers.1.mlp.down_proj.safetensors"
    victim.write_bytes(victim.read_bytes()[:50])
    result = api.prune(cfg)
    assert "model.layers.1.mlp.down_proj" in result.results
    jobs.JobStore(victim.parent).load("model.layers.1.mlp.down_proj")


def test_manifest_records_losses_and_versions(tiny_model_dir, text_file, tmp_path):
    api.prune(make_config(tiny_model_dir, text_file, tmp_path / "out"))
    manifest = json.loads((tmp_path / "out" / "armor_manifest.json").read_text())
    entry = manifest["matrices"]["model.layers.0.self_attn.q_proj"]
    assert entry["kind"] == "armor" and entry["block_size"] == 16
    assert entry["proxy_loss"] <= entry["nowag_loss"]
    assert {"torch", "transformers", "armor_export"} <= set(manifest["versions"])
    assert manifest["prune_config"]["armor"]["iterations"] == 8


def test_armorize_in_place_and_glob_selection(calib_batches):
    from tests.conftest import tiny_model

    model = tiny_model("llama")
    cfg = PruneConfig.from_dict(
        {
            "method": "armor",
            "armor": {"block_size": 16, "iterations": 5, "compile": False},
            "include": ["*.mlp.*"],
            "exclude": ["*down_proj"],
        }
    )
    results = api.armorize_(model, cfg, calib_batches)
    assert sorted(results) == [
        f"model.layers.{i}.mlp.{p}" for i in range(2) for p in ("gate_proj", "up_proj")
    ]
    assert isinstance(model.model.layers[0].mlp.up_proj, ArmorLinear)
    assert not isinstance(model.model.layers[0].mlp.down_proj, ArmorLinear)
    assert not isinstance(model.model.layers[0].self_attn.q_proj, ArmorLinear)


def test_filter_fn_and_methods_needing_batches():
    from tests.conftest import tiny_model

    model = tiny_model("llama")
    cfg = PruneConfig.from_dict({"method": "wanda"})
    with pytest.raises(UserError, match="calibration batches"):
        api.armorize_(model, cfg)
    cfg = PruneConfig.from_dict({"method": "magnitude"})
    res = api.armorize_(model, cfg, filter_fn=lambda name, mod: "layers.1." in name)
    assert len(res) == 7 and all("layers.1." in n for n in res)


def test_process_pool_gives_the_same_result_as_in_process(tiny_model_dir, text_file, tmp_path):
    one = api.prune(make_config(tiny_model_dir, text_file, tmp_path / "one"))
    cfg = make_config(tiny_model_dir, text_file, tmp_path / "two")
    cfg.workers = 2
    two = api.prune(cfg)
    assert one.results.keys() == two.results.keys()
    for name, res in one.results.items():
        assert torch.equal(res.mask, two.results[name].mask)
        assert torch.allclose(res.core, two.results[name].core, atol=1e-6)


def test_a_run_refused_for_bad_input_does_not_claim_the_directory(
    tiny_model_dir, text_file, tmp_path
):
    from armor_export.errors import ShapeError

    bad = make_config(tiny_model_dir, text_file, tmp_path / "out", block_size=24)
    with pytest.raises(ShapeError):
        api.prune(bad)
    good = make_config(tiny_model_dir, text_file, tmp_path / "out", block_size=16)
    assert len(api.prune(good).results) == N_LINEARS


def test_resume_may_change_scheduling_settings(tiny_model_dir, text_file, tmp_path):
    cfg = make_config(tiny_model_dir, text_file, tmp_path / "out", "nowag-p")
    api.prune(cfg)
    cfg.workers = 3
    cfg.armor.compile = True
    assert len(api.prune(cfg).results) == N_LINEARS


@pytest.mark.fault(
    "prune",
    "NaN in a weight to be pruned",
    "one line naming the layer; no run_config.json written",
)
def test_nan_weights_are_refused_naming_the_layer(tiny_model_dir, text_file, tmp_path):
    from safetensors.torch import load_file, save_file

    path = tiny_model_dir / "model.safetensors"
    state = load_file(path)
    state["model.layers.1.mlp.down_proj.weight"][0, 0] = float("nan")
    save_file(state, path, metadata={"format": "pt"})
    with pytest.raises(UserError, match="layers.1.mlp.down_proj.*NaN"):
        api.prune(make_config(tiny_model_dir, text_file, tmp_path / "out", "magnitude"))
    assert not (tmp_path / "out" / "run_config.json").exists()


@pytest.mark.fault(
    "config",
    "--device cuda on a machine without a GPU",
    "one config error line",
)
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_cuda_device_without_gpu_is_a_config_error():
    from armor_export.errors import ConfigError

    with pytest.raises(ConfigError, match="no CUDA GPU"):
        PruneConfig.from_dict({"device": "cuda"})
    with pytest.raises(ConfigError, match="not a torch device"):
        PruneConfig.from_dict({"device": "banana"})
