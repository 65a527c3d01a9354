"""The typed export manifest: the exporter's JSON round-trips, names follow from the decoder,
and damaged or foreign manifests give the reader's one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

from armor_export.errors import CorruptFileError
from armor_export.export_manifest import (
    MANIFEST,
    SELF_DIGEST,
    DecoderSpec,
    ExportManifest,
    LayerCache,
    Limits,
    Source,
    Tokens,
    manifest_digest,
    seal,
)

REPO = Path(__file__).resolve().parents[1]


def small_manifest(**fields) -> ExportManifest:
    """A hand-made manifest of a 2-layer decoder (no export behind it)."""
    decoder = DecoderSpec(num_layers=2, num_kv_heads=2, head_dim=16, vocab_size=300, hidden_size=64)
    base = dict(
        versions={"armor_export": "0"},
        config={"model": "m"},
        source=Source(model="m", pruned=False),
        family="llama",
        dtype="float32",
        lowering="plain",
        decoder=decoder,
        input_names=tuple(decoder.input_names()),
        output_names=tuple(decoder.output_names()),
        limits=Limits(max_batch=8, max_prompt=256, max_context=256),
        tokens=Tokens(eos_token_ids=(0,), bos_token_id=None, pad_token_id=0),
        counts={"armor": 0, "cores": 0},
        sha256={},
        graph_revision=4,
        attention="eager",
    )
    return ExportManifest(**{**base, **fields})


def written(folder: Path, data: dict) -> Path:
    """``folder`` holding ``data`` as its manifest and empty files for the ones it lists."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST).write_text(json.dumps(data, indent=2) + "\n")
    for key in ("onnx", "tokenizer", "external_data"):
        if isinstance(data, dict) and data.get(key):
            (folder / data[key]).write_text("")
    return folder


# ---------------------------------------------------------------- the exporter's manifest


def test_exported_manifest_round_trips_byte_for_byte(tiny_export, tiny_plugin_export):
    for export in (tiny_export, tiny_plugin_export):
        text = (export.output_dir / MANIFEST).read_text()
        manifest = ExportManifest.read(export.output_dir)
        assert manifest.to_dict() == json.loads(text) == export.manifest
        assert json.dumps(manifest.to_dict(), indent=2) + "\n" == text
    assert ExportManifest.read(tiny_plugin_export.output_dir).plugin.name == "ArmorBlockDiagMatMul"
    assert ExportManifest.read(tiny_export.output_dir).plugin is None


def test_names_of_the_tiny_export_follow_from_its_decoder(tiny_export):
    manifest = ExportManifest.read(tiny_export.output_dir)
    assert manifest.decoder.num_layers == 2
    assert manifest.token_inputs == ("input_ids", "attention_mask", "position_ids")
    assert manifest.logits == "logits"
    assert manifest.cache == [
        LayerCache(0, "past_key_values.0.key", "past_key_values.0.value",
                   "present.0.key", "present.0.value"),
        LayerCache(1, "past_key_values.1.key", "past_key_values.1.value",
                   "present.1.key", "present.1.value"),
    ]  # fmt: skip
    assert manifest.cache_feedback() == [
        ("past_key_values.0.key", "present.0.key"),
        ("past_key_values.0.value", "present.0.value"),
        ("past_key_values.1.key", "present.1.key"),
        ("past_key_values.1.value", "present.1.value"),
    ]
    # the recorded signature is the same names
    assert set(manifest.input_names) == {*manifest.token_inputs, *manifest.past_names}
    assert set(manifest.output_names) == {manifest.logits, *manifest.present_names}
    assert manifest.decoder.past_shape(3, 0) == (3, 2, 0, 16)


# ---------------------------------------------------------------- reading


def test_unknown_format_version_is_refused(tmp_path):
    folder = written(tmp_path / "e", {**small_manifest().to_dict(), "format_version": 2})
    with pytest.raises(CorruptFileError, match=r"format version 2 \(this armor-export reads 1\)"):
        ExportManifest.read(folder)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda folder: None, "no such export folder"),
        (lambda folder: folder.mkdir(), "did not finish"),
        (lambda folder: written(folder, {"format": "x"}), "not an armor-export ONNX manifest"),
        (lambda folder: written(folder, [1, 2]), "not an armor-export ONNX manifest"),
    ],
)
def test_not_an_export(tmp_path, damage, message):
    damage(tmp_path / "e")
    with pytest.raises(CorruptFileError, match=message):
        ExportManifest.read(tmp_path / "e")


def test_a_listed_file_that_is_missing(tmp_path):
    folder = written(tmp_path / "e", small_manifest(external_data="model.onnx.data").to_dict())
    (folder / "model.onnx.data").unlink()
    with pytest.raises(
        CorruptFileError, match=f"missing file model.onnx.data listed in {MANIFEST}"
    ):
        ExportManifest.read(folder)


def test_a_missing_or_malformed_field_names_itself(tmp_path):
    data = small_manifest().to_dict()
    del data["decoder"]
    with pytest.raises(CorruptFileError, match="no 'decoder' field"):
        ExportManifest.read(written(tmp_path / "a", data))
    data = {**small_manifest().to_dict(), "limits": {"max_batch": 1}}
    with pytest.raises(CorruptFileError, match="malformed manifest"):
        ExportManifest.read(written(tmp_path / "b", data))


def test_an_older_manifest_loads_and_is_written_back_as_it_was(tmp_path):
    """Graph revisions < 3 recorded neither the revision nor the attention; keys a newer
    armor-export adds are kept."""
    data = small_manifest().to_dict()
    del data["graph_revision"], data["attention"]
    data["future_field"] = {"x": 1}
    manifest = ExportManifest.read(written(tmp_path / "e", data))
    assert manifest.graph_revision is None and manifest.attention is None
    assert manifest.to_dict() == data


def test_a_manifest_carries_its_own_digest(tmp_path):
    """``seal`` adds the digest of the rest; a change to any field is refused, the same JSON
    in another spelling is not, and a tool that changes an export on purpose reseals it."""
    data = seal(small_manifest().to_dict())
    assert data[SELF_DIGEST] == manifest_digest(data)
    assert ExportManifest.read(written(tmp_path / "a", data)).to_dict() == data
    assert small_manifest().sealed().to_dict() == data
    spelled = tmp_path / "b"
    written(spelled, data)
    (spelled / MANIFEST).write_text(json.dumps(data, sort_keys=True))
    assert ExportManifest.read(spelled).manifest_sha256 == data[SELF_DIGEST]
    edited = {**data, "tokens": {**data["tokens"], "pad_token_id": 5}}
    with pytest.raises(CorruptFileError, match="is not the manifest this export wrote"):
        ExportManifest.read(written(tmp_path / "c", edited))
    assert ExportManifest.read(written(tmp_path / "d", seal(edited))).tokens.pad_token_id == 5


def test_source_of_a_pruned_checkpoint_records_how_it_was_pruned():
    dense = small_manifest().to_dict()["source"]
    assert dense == {"model": "m", "pruned": False}
    pruned = Source(model="ckpt", pruned=True, method="armor", block_sizes=(16, 32))
    data = replace(small_manifest(), source=pruned).to_dict()
    assert data["source"] == {
        "model": "ckpt",
        "pruned": True,
        "method": "armor",
        "block_sizes": [16, 32],
    }
    assert ExportManifest.from_dict(data).source == pruned


def test_the_manifest_module_imports_nothing_heavy():
    code = textwrap.dedent(
        """
        import sys
        import armor_export.export_manifest
        heavy = ("torch", "onnx", "numpy", "armor_export.export")
        loaded = [m for m in heavy if m in sys.modules]
        assert not loaded, loaded
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
