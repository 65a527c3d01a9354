"""Resume reuses work only when its inputs are the same content (issue #18, items 2-3).

A model folder overwritten in place, or an edited calibration text, at the same paths and
with the same config, must redo exactly the statistics and jobs whose inputs changed.
"""

from __future__ import annotations

import pytest
import torch

from armor_export.prune import api, jobs, schedule
from tests.conftest import TEXT, tiny_model, tiny_prune_config

N_LINEARS = 14


@pytest.fixture
def counted(monkeypatch):
    """The names of the jobs solved (not reloaded) by the prunes that follow."""
    calls: list[str] = []
    real = jobs.run_job

    def counting(job, cfg, progress=None):
        calls.append(job.name)
        return real(job, cfg, progress)

    monkeypatch.setattr(schedule, "run_job", counting)
    return calls


def _prune(model_dir, text_file, out, method="nowag-p"):
    return api.prune(tiny_prune_config(model_dir, text_file, out, method))


def _save(model, model_dir):
    model.save_pretrained(model_dir)


def test_an_unchanged_rerun_reuses_everything(tiny_model_dir, text_file, tmp_path, counted):
    _prune(tiny_model_dir, text_file, tmp_path / "out")
    assert len(counted) == N_LINEARS
    counted.clear()
    _prune(tiny_model_dir, text_file, tmp_path / "out")
    assert counted == []


@pytest.mark.fault(
    "prune",
    "the model folder overwritten with other weights, same path and command",
    "statistics and every job redone; the result equals a fresh run",
)
def test_a_model_overwritten_in_place_redoes_every_job(
    tiny_model_dir, text_file, tmp_path, counted
):
    first = _prune(tiny_model_dir, text_file, tmp_path / "out")
    _save(tiny_model("llama", seed=1), tiny_model_dir)  # other weights, same folder
    counted.clear()
    second = _prune(tiny_model_dir, text_file, tmp_path / "out")
    assert sorted(counted) == sorted(first.metrics)
    fresh = _prune(tiny_model_dir, text_file, tmp_path / "fresh")
    for name in fresh.results:  # the resumed run equals a fresh run on the new model
        assert torch.equal(second.results[name].core, fresh.results[name].core)


@pytest.mark.fault(
    "prune",
    "the calibration text edited in place between runs",
    "calibration redone; every job whose statistics changed redone",
)
def test_an_edited_calibration_text_recalibrates(tiny_model_dir, text_file, tmp_path, counted):
    first = _prune(tiny_model_dir, text_file, tmp_path / "out")
    stats = tmp_path / "out" / "work" / "stats.safetensors"
    before = api.read_tensors(stats)
    text_file.write_text(TEXT.upper())
    counted.clear()
    _prune(tiny_model_dir, text_file, tmp_path / "out")
    after = api.read_tensors(stats)
    name = "model.layers.0.self_attn.q_proj.hdiag"
    assert not torch.equal(before[name], after[name])
    assert sorted(counted) == sorted(first.metrics)  # every hdiag changed


@pytest.mark.fault(
    "prune",
    "one weight of the model changed in place",
    "only that matrix's job redone",
)
def test_one_changed_weight_redoes_that_job_alone(tiny_model_dir, text_file, tmp_path, counted):
    """The last layer's down projection feeds nothing that is calibrated after it: its
    statistics and every other job's inputs stay bit-identical, so only it is solved."""
    _prune(tiny_model_dir, text_file, tmp_path / "out")
    model = tiny_model("llama")
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight.mul_(1.5)
    _save(model, tiny_model_dir)
    counted.clear()
    _prune(tiny_model_dir, text_file, tmp_path / "out")
    assert counted == ["model.layers.1.mlp.down_proj"]


def test_jobs_record_the_settings_they_were_solved_with(tiny_model_dir, text_file, tmp_path):
    import json

    from armor_export.io import read_metadata

    _prune(tiny_model_dir, text_file, tmp_path / "out", "armor")
    path = jobs.JobStore(tmp_path / "out" / "work" / "jobs").path("model.layers.0.mlp.up_proj")
    meta = read_metadata(path)
    solved_with = json.loads(meta["solved_with"])
    assert solved_with["method"] == "armor" and solved_with["armor"]["iterations"] == 8
    assert len(meta["key"]) == 64


@pytest.mark.fault(
    "load",
    "a pruned checkpoint copied without armor_manifest.json",
    "one line: pruned weights but no armor_manifest.json (not a dense model with random linears)",
)
def test_a_checkpoint_without_its_manifest_is_refused_not_loaded_dense(tmp_path):
    """Loaded as a plain model, its linears would be initialised randomly (ppl ~ 321)."""
    import shutil

    from armor_export.data.models import load_model_and_tokenizer
    from armor_export.errors import CorruptFileError
    from armor_export.eval.api import load_any_model
    from tests.conftest import prune_tiny

    checkpoint = prune_tiny(tmp_path)
    copy = tmp_path / "copy"
    shutil.copytree(checkpoint, copy, ignore=shutil.ignore_patterns("work", "report"))
    (copy / "armor_manifest.json").unlink()
    for load in (load_model_and_tokenizer, load_any_model):
        with pytest.raises(CorruptFileError, match="pruned weights .* no armor_manifest.json"):
            load(str(copy))


@pytest.mark.fault(
    "load",
    "a model whose safetensors lack a weight",
    "one line naming the missing weight (not a random initialisation)",
)
def test_a_model_missing_a_weight_is_refused(tiny_model_dir):
    from safetensors.torch import load_file, save_file

    from armor_export.data.models import load_model_and_tokenizer
    from armor_export.errors import CorruptFileError

    weights = tiny_model_dir / "model.safetensors"
    state = load_file(weights)
    del state["model.norm.weight"]
    save_file(state, weights, metadata={"format": "pt"})
    with pytest.raises(CorruptFileError, match=r"missing .* model\.norm\.weight"):
        load_model_and_tokenizer(str(tiny_model_dir))


@pytest.mark.fault(
    "load",
    "NaN/Inf in a tensor that is not pruned (the final norm)",
    "one line naming the tensor, before anything is written",
)
def test_nan_in_a_weight_that_is_not_pruned_is_refused(tiny_model_dir, text_file, tmp_path):
    """A NaN final norm made every logit NaN and generate print blank text, exit 0."""
    from safetensors.torch import load_file, save_file

    from armor_export.errors import CorruptFileError
    from armor_export.prune.checkpoint import load_checkpoint
    from tests.conftest import prune_tiny, rehash_checkpoint

    weights = tiny_model_dir / "model.safetensors"
    state = load_file(weights)
    state["model.norm.weight"][3] = float("nan")
    save_file(state, weights, metadata={"format": "pt"})
    with pytest.raises(CorruptFileError, match="model.norm.weight contains NaN"):
        _prune(tiny_model_dir, text_file, tmp_path / "out", "magnitude")
    assert not (tmp_path / "out").exists()  # refused before anything was written
    checkpoint = prune_tiny(tmp_path / "ckpt")
    state = load_file(checkpoint / "model.safetensors")
    state["model.norm.weight"][0] = float("inf")
    save_file(state, checkpoint / "model.safetensors", metadata={"format": "pt"})
    rehash_checkpoint(checkpoint)
    with pytest.raises(CorruptFileError, match="model.norm.weight contains NaN or Inf"):
        load_checkpoint(checkpoint)


@pytest.mark.fault(
    "prune",
    "an empty calibration text",
    "an error before anything is written; the corrected rerun runs",
)
def test_an_empty_calibration_text_fails_before_anything_is_written(
    tiny_model_dir, text_file, tmp_path
):
    from armor_export.errors import UserError

    text_file.write_text("")
    with pytest.raises(UserError):
        _prune(tiny_model_dir, text_file, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    text_file.write_text(TEXT)  # the corrected rerun is not refused
    assert len(_prune(tiny_model_dir, text_file, tmp_path / "out").metrics) == N_LINEARS


@pytest.mark.fault(
    "prune",
    "--skip-incompatible where no layer fits the block size",
    "one line: every layer left dense, with a layer's valid block sizes",
)
def test_skip_incompatible_that_skips_everything_says_so(tiny_model_dir, text_file, tmp_path):
    from armor_export.errors import ShapeError

    cfg = tiny_prune_config(
        tiny_model_dir, text_file, tmp_path / "out", "armor", {"block_size": 96},
        skip_incompatible=True,
    )  # fmt: skip
    with pytest.raises(ShapeError, match=r"left every selected layer dense \(14 of them\).*"
                       r"valid block sizes for this layer: 4, 8, 16, 32, 64"):  # fmt: skip
        api.prune(cfg)


@pytest.mark.fault(
    "prune",
    "-o set to the input model's folder, to a folder holding it, or to one holding the "
    "calibration text",
    "one line before anything is written; the model is untouched",
)
@pytest.mark.parametrize("where", ["the model", "the model's parent", "the text's parent"])
def test_an_output_folder_holding_an_input_is_refused(tiny_model_dir, tmp_path, where):
    from armor_export.errors import UserError

    texts = tmp_path / "texts"
    texts.mkdir()
    text = texts / "calibration.txt"
    text.write_text(TEXT)
    out = {"the model": tiny_model_dir, "the model's parent": tmp_path, "the text's parent": texts}
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(UserError, match="would write into") as info:
        _prune(tiny_model_dir, text, out[where], "magnitude")
    assert "\n" not in str(info.value)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


@pytest.mark.fault(
    "prune",
    "a rerun naming its folders by other spellings (relative, trailing slash), after the "
    "output folder was moved, or with a copy of the model",
    "the run resumes and solves nothing again (not 'a different config (output_dir)')",
)
def test_another_spelling_or_a_moved_folder_resumes(
    tiny_model_dir, text_file, tmp_path, counted, monkeypatch
):
    import shutil

    _prune(tiny_model_dir, text_file, tmp_path / "out")
    counted.clear()
    monkeypatch.chdir(tmp_path)
    api.prune(tiny_prune_config("tiny-llama/", "text.txt", "out/", "nowag-p"))
    shutil.move(tmp_path / "out", tmp_path / "moved")
    _prune(tiny_model_dir, text_file, "moved")
    copy = shutil.copytree(tiny_model_dir, tmp_path / "copy")  # the same content elsewhere
    _prune(copy, text_file, tmp_path / "moved")
    assert counted == []


def test_another_model_into_the_same_folder_is_still_refused(tiny_model_dir, text_file, tmp_path):
    """Neither the same folder nor the same content: another model's run, refused (its
    checkpoint would overwrite the first one's)."""
    from armor_export.errors import UserError

    _prune(tiny_model_dir, text_file, tmp_path / "out", "magnitude")
    other = tmp_path / "other"
    tiny_model("llama", seed=1).save_pretrained(other)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (other / name).write_bytes((tiny_model_dir / name).read_bytes())
    with pytest.raises(UserError, match=r"different config \(differs in: model\)"):
        _prune(other, text_file, tmp_path / "out", "magnitude")
