"""The report of an 8-bit checkpoint (#26): a Quantization section with the scheme and
settings, each core's proxy loss pruned -> quantized -> re-fitted in a table and a figure,
and the re-fit's promise (never above the quantized loss) checked; float reports unchanged."""

from __future__ import annotations

import shutil
import statistics
from pathlib import Path

import pytest

from armor_export.errors import CorruptFileError
from armor_export.io import read_json, write_json
from armor_export.prune.checkpoint import MANIFEST
from armor_export.quant import api
from armor_export.report import collect, write_report
from armor_export.report.plots import matplotlib_missing
from tests.conftest import TINY_DIMS, prune_tiny

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    """ARMOR + INT8 with smoothing and the re-fit, SparseGPT + FP8 (no wrappers)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("qreport")
    armor, sparsegpt = prune_tiny(root, "armor"), prune_tiny(root, "sparsegpt")
    out = {
        "armor": api.quantize_checkpoint(
            armor, root / "armor-int8", api.QuantSettings("int8", smoothing=0.5)
        ),
        "sparsegpt": api.quantize_checkpoint(
            sparsegpt, root / "sgpt-fp8", api.QuantSettings("fp8")
        ),
    }
    torch.set_num_threads(threads)
    return out


def copy(path: Path, tmp_path: Path) -> Path:
    """A private copy (tests that edit the manifest); its source stays where it was."""
    return Path(shutil.copytree(path, tmp_path / path.name))


def md_of(ckpt: Path, out: Path) -> str:
    return write_report(ckpt, out).with_suffix(".md").read_text()


def section(md: str, name: str) -> str:
    return md.split(f"## {name}\n", 1)[1].split("\n## ", 1)[0]


def test_armor_int8_report_shows_scheme_losses_and_the_checked_refit(quantized, tmp_path):
    ckpt = quantized["armor"]
    manifest = read_json(ckpt / MANIFEST)
    data = collect(ckpt)
    assert data.quant is not None and data.quant.scheme == "int8"
    n = TINY_DIMS["num_hidden_layers"] * 7
    assert len(data.quant.rows) == n == len(data.quant.refitted)
    for row in data.quant.rows:
        entry = manifest["matrices"][row.name]["quant"]
        assert (row.loss_pruned, row.loss_quantized, row.loss_refit, row.loss_smoothed) == (
            entry["loss_pruned"], entry["loss_quantized"], entry["loss_refit"],
            entry["loss_smoothed"],
        )  # fmt: skip
    md = md_of(ckpt, tmp_path / "rep")
    assert md.startswith("# Pruning report: ARMOR + INT8 on ")
    quant = section(md, "Quantization")
    assert "| scheme | INT8: W8A8 integer: per-output-channel weight scales" in quant
    assert (
        "| re-fit | on: A and B re-solved around the quantized core, 20 rounds at most |" in quant
    )
    assert "| smoothing | SmoothQuant α = 0.5, folded into B |" in quant
    assert f"| quantized from | `{manifest['quant']['source']['checkpoint']}`" in quant
    improved = sum(e["quant"]["loss_refit"] < e["quant"]["loss_quantized"]
                   for e in manifest["matrices"].values())  # fmt: skip
    assert improved > 0
    assert f"Re-fit checked: no matrix ended above its quantized loss; the re-fit lowered " \
           f"{improved} of {n}" in quant  # fmt: skip
    losses = [e["quant"] for e in manifest["matrices"].values()]

    def mean(key: str) -> str:
        return f"{statistics.fmean(q[key] for q in losses):.4g}"

    worst = max(q["loss_refit"] / q["loss_pruned"] for q in losses)
    assert (
        f"| **all** | **{n}** | **{mean('loss_pruned')}** | **{mean('loss_quantized')}** | "
        f"**{mean('loss_refit')}** |" in quant
    )
    assert f"**{worst:.4f}** | **{improved} / {n}** |" in quant
    assert "| matrix | pruned | smoothed | quantized | re-fitted | rounds |" in quant
    assert "✗" not in quant
    if not matplotlib_missing():
        assert (tmp_path / "rep" / "quant.png").is_file() and "![" in quant
        # the ARMOR curves come from the pruned checkpoint's job store (same weights' sha256)
        assert (tmp_path / "rep" / "curves.png").is_file() and data.history_note is None


def test_baseline_fp8_report_has_no_refit_columns(quantized, tmp_path):
    md = md_of(quantized["sparsegpt"], tmp_path / "rep")
    assert md.startswith("# Pruning report: SparseGPT + FP8 on ")
    quant = section(md, "Quantization")
    assert "| scheme | FP8: W8A8 float (E4M3)" in quant
    assert "| re-fit | none: SparseGPT has no wrappers (plain quantization) |" in quant
    assert "SparseGPT has no wrappers to re-fit" in quant
    assert "| projection | matrices | mean pruned | mean quantized | worst quantized / pruned |" \
        in quant  # fmt: skip
    assert "re-fitted" not in quant and "Re-fit checked" not in quant


@pytest.mark.fault(
    "quantize",
    "an 8-bit checkpoint whose manifest records a re-fitted loss above the quantized one",
    "the report says so in red at its top, naming the matrix, and flags its row ✗",
)
def test_a_refit_above_the_quantized_loss_is_flagged_at_the_top(quantized, tmp_path):
    ckpt = copy(quantized["armor"], tmp_path)
    manifest = read_json(ckpt / MANIFEST)
    name = "model.layers.1.mlp.up_proj"
    entry = manifest["matrices"][name]["quant"]
    entry["loss_refit"] = entry["loss_quantized"] * 1.25
    write_json(ckpt / MANIFEST, manifest)
    assert [r.name for r in collect(ckpt).quant.raised] == [name]
    md = md_of(ckpt, tmp_path / "rep")
    top = md.split("## Run")[0]
    assert f"1 of {len(manifest['matrices'])} re-fitted matrices ended ABOVE their quantized " \
           f"proxy loss: `{name}`" in top  # fmt: skip
    quant = section(md, "Quantization")
    assert "Re-fit checked: 1 of" in quant and "no matrix ended above" not in quant
    row = next(line for line in quant.splitlines() if line.startswith(f"| `{name}` |"))
    assert row.endswith("| ✗ ABOVE quantized |")


@pytest.mark.fault(
    "quantize",
    "an 8-bit checkpoint's manifest with a core's loss_quantized removed",
    "the report is one line naming the manifest and the matrix",
)
def test_a_core_without_its_losses_is_one_line(quantized, tmp_path):
    ckpt = copy(quantized["armor"], tmp_path)
    manifest = read_json(ckpt / MANIFEST)
    del manifest["matrices"]["model.layers.0.self_attn.q_proj"]["quant"]["loss_quantized"]
    write_json(ckpt / MANIFEST, manifest)
    with pytest.raises(CorruptFileError, match=r"matrix model.layers.0.self_attn.q_proj: "):
        write_report(ckpt, tmp_path / "rep")


def test_a_float_checkpoint_has_no_quantization_section(tiny_checkpoint, tmp_path):
    data = collect(tiny_checkpoint)
    assert data.quant is None
    md = md_of(tiny_checkpoint, tmp_path / "rep")
    assert md.startswith("# Pruning report: ARMOR on ")
    assert "Quantization" not in md and "quant.png" not in md
    assert not (tmp_path / "rep" / "quant.png").exists()


def test_8bit_report_without_matplotlib_drops_the_stale_figure(quantized, tmp_path, monkeypatch):
    import sys

    pytest.importorskip("matplotlib")
    out = tmp_path / "rep"
    write_report(quantized["armor"], out)
    assert (out / "quant.png").is_file()
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now fails
    quant = section(md_of(quantized["armor"], out), "Quantization")
    assert "No figure: matplotlib is missing" in quant and "| **all** |" in quant
    assert not (out / "quant.png").exists()
