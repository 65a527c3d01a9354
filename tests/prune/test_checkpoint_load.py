"""``load_checkpoint`` builds the model on ``meta`` and reads one tensor at a time (#19).

The reference below is the way checkpoints were loaded before: the whole file read, the
model built eagerly in float32 (every buffer computed by its own constructor), the matrices
applied and ``load_state_dict``; then ``.to(dtype)`` as the export did. The lean loader
must give the same tensors, bit for bit, in every family case (rotary scaling, biases, q/k
norms, tied and untied heads), in float32 and straight in float16.
"""

from __future__ import annotations

import shutil

import pytest
import torch

from armor_export.errors import CorruptFileError
from armor_export.io import read_tensors
from armor_export.prune.checkpoint import (
    WEIGHTS,
    _matrix_result,
    _read_config,
    apply_result,
    load_checkpoint,
    read_checkpoint_manifest,
)
from tests.conftest import FAMILY_CASES, family_config, prune_tiny, rehash_checkpoint


def eager_reference(path):
    """The checkpoint loaded the whole-model way (float32)."""
    from transformers import AutoModelForCausalLM

    manifest = read_checkpoint_manifest(path)
    state = read_tensors(path / WEIGHTS)
    config = _read_config(path)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    for name, info in manifest["matrices"].items():
        apply_result(model, _matrix_result(name, info, state, model, manifest["method"]))
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected
    if config.tie_word_embeddings:
        model.tie_weights()
    return model.eval()


def tensors(model) -> dict[str, torch.Tensor]:
    out = dict(model.named_parameters(remove_duplicate=False))
    out.update(model.named_buffers(remove_duplicate=False))
    return out


def assert_bit_identical(got, want):
    got, want = tensors(got), tensors(want)
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key].dtype == value.dtype, key
        assert got[key].shape == value.shape, key
        if value.is_floating_point():  # bits, so that -0.0 and NaN payloads count too
            bits = {2: torch.int16, 4: torch.int32}[value.element_size()]
            assert torch.equal(got[key].view(bits), value.view(bits)), key
        else:
            assert torch.equal(got[key], value), key


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("cases")
    out = {case: prune_tiny(root, family=case, config=family_config(case)) for case in FAMILY_CASES}
    out["llama-magnitude"] = prune_tiny(root, "magnitude", "llama")  # masked nn.Linear
    return out


@pytest.mark.parametrize("case", [*sorted(FAMILY_CASES), "llama-magnitude"])
def test_lean_load_equals_the_whole_model_load(case, checkpoints):
    reference = eager_reference(checkpoints[case])
    model, _ = load_checkpoint(checkpoints[case])
    assert_bit_identical(model, reference)
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    assert (head.weight is embed.weight) == bool(model.config.tie_word_embeddings)
    assert model.config.dtype == reference.config.dtype
    half, _ = load_checkpoint(checkpoints[case], torch.float16)
    assert_bit_identical(half, reference.to(torch.float16))
    # loaded straight in float16: no float32 tensor left behind
    assert {t.dtype for t in tensors(half).values() if t.is_floating_point()} == {torch.float16}
    assert not any(t.is_meta for t in tensors(half).values())


def _edit(checkpoint, tmp_path, edit):
    from safetensors.torch import load_file, save_file

    copy = shutil.copytree(checkpoint, tmp_path / "ckpt")
    state = load_file(copy / WEIGHTS)
    edit(state)
    save_file(state, copy / WEIGHTS, metadata={"format": "armor-export-checkpoint"})
    rehash_checkpoint(copy)
    return copy


@pytest.mark.fault(
    "load",
    "a pruned checkpoint lacking a tensor, or with an extra one",
    "one line naming the tensors missing and unexpected",
)
def test_a_missing_or_extra_tensor_is_one_line(tiny_checkpoint, tmp_path):
    def drop_norm(state):
        del state["model.norm.weight"]
        state["model.extra"] = torch.zeros(3)

    broken = _edit(tiny_checkpoint, tmp_path, drop_norm)
    with pytest.raises(CorruptFileError, match=r"missing \['model.norm.weight'\] / unexpected "
                       r"\['model.extra'\]"):  # fmt: skip
        load_checkpoint(broken)


@pytest.mark.fault(
    "load",
    "a pruned checkpoint whose unpruned tensor has the wrong shape",
    "one line naming the tensor, its shape and the model's",
)
def test_a_misshapen_tensor_is_one_line(tiny_checkpoint, tmp_path):
    def shrink(state):
        state["model.norm.weight"] = state["model.norm.weight"][:-1].clone()

    broken = _edit(tiny_checkpoint, tmp_path, shrink)
    with pytest.raises(CorruptFileError, match=r"model.norm.weight has shape \(63,\), the model "
                       r"expects \(64,\)"):  # fmt: skip
        load_checkpoint(broken)


def _flip_bytes(path, count: int = 8) -> None:
    """``count`` bytes in the middle of a safetensors file's data changed: the header and
    the size stay valid, so only a hash can see it (issue #24: a wrapper value 2.7e23)."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + count] = bytes(b ^ 0x5A for b in data[middle : middle + count])
    path.write_bytes(bytes(data))


@pytest.mark.fault(
    "load",
    "eight bytes flipped in a pruned checkpoint's model.safetensors (values still finite)",
    "one line from export, eval and verify's reference: not the file prune wrote, re-run prune",
)
def test_a_damaged_checkpoint_is_refused_by_every_loader(tiny_checkpoint, tmp_path):
    from armor_export.eval.api import load_any_model
    from armor_export.export.api import load_for_export
    from armor_export.verify.api import load_reference

    copy = shutil.copytree(tiny_checkpoint, tmp_path / "ckpt")
    _flip_bytes(copy / WEIGHTS)
    expected = rf"{copy / WEIGHTS} is not the file prune wrote .*re-run prune"
    for load in (load_checkpoint, load_any_model, lambda p: load_for_export(p, "float32"),
                 lambda p: load_reference(p, "float32")):  # fmt: skip
        with pytest.raises(CorruptFileError, match=expected) as info:
            load(str(copy))
        assert "\n" not in str(info.value)


def test_the_manifest_records_the_weights_sha256(tiny_checkpoint):
    from armor_export.io import sha256_file

    manifest = read_checkpoint_manifest(tiny_checkpoint)
    assert manifest["sha256"] == {WEIGHTS: sha256_file(tiny_checkpoint / WEIGHTS)}


def test_a_checkpoint_from_before_the_hash_loads_with_a_warning(tiny_checkpoint, tmp_path, caplog):
    """Checkpoints written before the manifest held the weights' sha256 stay usable (a prune
    can take hours); the warning says their weights are not checked and how to get a hash."""
    from armor_export.io import read_json, write_json
    from armor_export.prune.checkpoint import MANIFEST

    copy = shutil.copytree(tiny_checkpoint, tmp_path / "ckpt")
    manifest = read_json(copy / MANIFEST)
    del manifest["sha256"]
    write_json(copy / MANIFEST, manifest)
    with caplog.at_level("WARNING"):
        load_checkpoint(copy)
    assert "records no sha256 of model.safetensors" in caplog.text
