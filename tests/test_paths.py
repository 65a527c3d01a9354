"""Output folders apart from their inputs (#24 item 7): export and build refuse an output
folder that is, or holds, what they read, before anything is written."""

from __future__ import annotations

import shutil

import pytest

from armor_export.errors import UserError


def _files(root):
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.fault(
    "export",
    "-o set to the pruned checkpoint's own folder",
    "one line before anything is written; the checkpoint is untouched",
)
def test_an_export_into_its_checkpoint_is_refused(tiny_checkpoint, tmp_path):
    pytest.importorskip("onnx")
    from tests.conftest import export_tiny

    copy = shutil.copytree(tiny_checkpoint, tmp_path / "ckpt")
    before = _files(tmp_path)
    for out in (copy, tmp_path):
        with pytest.raises(UserError, match="would write into") as info:
            export_tiny(copy, out)
        assert "\n" not in str(info.value)
    assert _files(tmp_path) == before


def test_paths_are_compared_resolved(tmp_path, monkeypatch):
    from armor_export.paths import check_apart

    (tmp_path / "model").mkdir()
    monkeypatch.chdir(tmp_path)
    for out in ("model/", "./model", str(tmp_path / "model" / ".." / "model"), "."):
        with pytest.raises(UserError, match=r"(is|holds) the model folder \(model\)"):
            check_apart(out, {"model folder": "model"}, "prune")
    check_apart("model/out", {"model folder": "model"}, "prune")  # inside it: nothing overwritten
    check_apart("elsewhere", {"model folder": "model", "text": "botchan"}, "prune")
