"""``armor-export build`` ends by writing one report of every stage it ran: the pruning
report plus the export counts, the engine build report and the parity results, with the
numbers of the files the stages wrote; a failed stage still leaves it."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")

from armor_export.cli.main import main  # noqa: E402
from armor_export.pipeline import MANIFEST  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

HAS_RTX = importlib.util.find_spec("tensorrt_rtx") is not None


def size(n: int) -> str:
    """A file size as the report writes it."""
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n:,} B".replace(",", " ")


def build_toml(path: Path, model: Path, out: Path, stages: list[str], extra: str = "") -> Path:
    path.write_text(
        f'model = "{model}"\noutput_dir = "{out}"\nstages = {json.dumps(stages)}\n'
        f'[export]\ndtype = "float32"\n{extra}'
    )
    return path


def printed_report(out: str) -> Path:
    """The report path ``build`` printed, on the line just before its PASSED/FAILED line."""
    lines = out.strip().splitlines()
    assert lines[-2].startswith("report: "), lines[-3:]
    return Path(lines[-2].removeprefix("report: "))


def assert_parity_from(md: str, verify_json: Path) -> dict:
    """The report's parity section holds verify_report.json's own numbers."""
    report = json.loads(verify_json.read_text())
    assert str(verify_json) in md
    for runner in report["runners"]:
        rows = [r for r in report["rows"] if r["runner"] == runner and r["output"] == "logits"]
        for step in {r["step"] for r in rows}:
            worst = max(r["max_abs"] for r in rows if r["step"] == step)
            assert f"| {step} | {runner} | logits | {worst:.3g} |" in md
    if report["engine"] is not None:
        assert f"`{report['engine']['dir']}`" in md
        ran = "yes" if report["engine_executed"] else f"no: {report['engine_not_run_reason']}"
        assert f"| engine executed | {ran} |" in md
    else:
        assert f"| engine | none checked ({report['engine_not_run_reason']}) |" in md
    return report


def assert_export_from(md: str, onnx_dir: Path) -> None:
    manifest = json.loads((onnx_dir / "export_manifest.json").read_text())
    counts = manifest["counts"]
    assert counts["armor"] > 0
    assert f"| ArmorLinear layers (A · 2:4 core · B) | {counts['armor']} |" in md
    assert f"| 2:4 core MatMuls (checked 2:4 along K) | {counts['cores']} |" in md
    assert f"| dtype / lowering | {manifest['dtype']} / {manifest['lowering']} |" in md
    external = manifest["external_data"]
    assert f"| external data | {f'`{external}`' if external else 'none'} |" in md
    onnx_size = (onnx_dir / manifest["onnx"]).stat().st_size
    assert f"| `{manifest['onnx']}` | {size(onnx_size)} |" in md


def test_build_report_covers_every_stage_and_its_path_is_printed(tiny_checkpoint, tmp_path, capsys):
    """A build laid out like `runs/build` (its checkpoint in checkpoint/): the report is
    `checkpoint/report/report.html`, rewritten at the end with every stage's results, and
    `armor-export report` on that checkpoint finds the same stages."""
    build_dir = tmp_path / "b"
    ckpt = Path(shutil.copytree(tiny_checkpoint, build_dir / "checkpoint"))
    stages = ["export", "engine", "verify"] if HAS_RTX else ["export", "verify"]
    toml = build_toml(tmp_path / "build.toml", ckpt, build_dir, stages)
    assert main(["build", "--config", str(toml), "--plugin-library", ""]) == 0
    out = capsys.readouterr().out
    final = out.strip().splitlines()[-1]
    assert final.startswith("PASSED: ")
    path = printed_report(out)
    assert path == ckpt / "report" / "report.html"  # the pruning report's place, rewritten
    md = path.with_suffix(".md").read_text()
    html = path.read_text()
    assert md.startswith("# Build report: ARMOR on ")
    assert f"> **Build {final}**" in md  # the build's own final line heads the report
    assert "No parity results" not in md and "No parity results" not in html
    verify = assert_parity_from(md, build_dir / "verify" / "verify_report.json")
    assert verify["passed"] and "Export parity PASSED" in md
    assert_export_from(md, build_dir / "onnx")
    record = json.loads((build_dir / MANIFEST).read_text())["stages"]
    for name in stages:  # the build table: each stage's status and the detail it recorded
        assert f"| {name} | done |" in md and record[name]["detail"] in md
    if HAS_RTX:
        built = json.loads((build_dir / "engine" / "build_report.json").read_text())
        engine_bytes = (build_dir / "engine" / "model.engine").stat().st_size
        assert built["engine_bytes"] == engine_bytes
        assert f"| built | yes: `model.engine`, {size(engine_bytes)} |" in md
        from armor_export.engine.api import report_rows

        target = dict(report_rows(built))["target"]  # what was set, and what the engine says
        assert target.startswith(f"{built['compute_capability']} (the engine's header: runs on")
        assert f"| target | {target} |" in md
        module = built["backend_module"]
        assert f"| backend | {built['backend']} {built['versions'][module]} |" in md
        core = built["sparsity"]["core_matmuls_2_4"]
        assert f"| 2:4 core MatMuls in the graph | {core} |" in md
    else:
        assert "The engine stage did not run in this build (not selected)." in md
    # the figures stay
    assert (path.parent / "curves.png").is_file() and 'src="data:image/png;base64,' in html

    # an up-to-date build rewrites the same report, and says so again
    assert main(["build", "--config", str(toml)]) == 0
    again = capsys.readouterr().out
    assert printed_report(again) == path and "| verify | skipped (up to date) |" in (
        path.with_suffix(".md").read_text()
    )

    # `armor-export report` on the build's checkpoint finds the build's stages by itself
    assert main(["report", str(ckpt), "-o", str(tmp_path / "standalone")]) == 0
    capsys.readouterr()
    standalone = (tmp_path / "standalone" / "report.md").read_text()
    assert_parity_from(standalone, build_dir / "verify" / "verify_report.json")
    assert_export_from(standalone, build_dir / "onnx")
    assert "| verify | done |" in standalone


@pytest.mark.fault(
    "build",
    "verify fails (tolerance 1e-12), then the engine stage fails (max_batch beyond the export)",
    "each build still rewrites its report: FAILED with verify's errors, then FAILED at the "
    "engine with the export's counts and verify not reached; the path is printed or logged",
)
def test_a_failed_build_still_rewrites_its_report(tiny_checkpoint, tmp_path, capsys):
    """A checkpoint given from outside the build folder: the report goes to <build>/report."""
    build_dir = tmp_path / "b"
    toml = build_toml(
        tmp_path / "build.toml", tiny_checkpoint, build_dir, ["export", "verify"],
        "[verify]\natol = 1e-12\nrtol = 1e-12\n",
    )  # fmt: skip
    assert main(["build", "--config", str(toml)]) == 1
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1].startswith("FAILED: ")
    path = printed_report(out)
    assert path == build_dir / "report" / "report.html"
    # the given checkpoint keeps its own pruning report
    assert (tiny_checkpoint / "report" / "report.md").read_text().startswith("# Pruning report")
    md = path.with_suffix(".md").read_text()
    verify = assert_parity_from(md, build_dir / "verify" / "verify_report.json")
    assert not verify["passed"]
    assert "> **Build FAILED: " in md and "Export parity FAILED" in md and "✗ (" in md
    assert "| verify | failed |" in md
    assert_export_from(md, build_dir / "onnx")

    # a stage that raises (bad engine limits): the report is rewritten before the error
    toml.write_text(toml.read_text().replace("[verify]", "[engine]\nmax_batch = 1000\n[verify]"))
    toml.write_text(toml.read_text().replace('"export", "verify"', '"export", "engine", "verify"'))
    assert main(["build", "--config", str(toml)]) == 1
    err = capsys.readouterr().err
    assert "max_batch 1000 exceeds the export's" in err
    assert f"buildreport:{path}" in "".join(err.split())  # logged before the error line
    md = path.with_suffix(".md").read_text()
    assert "> **Build FAILED: engine: max_batch 1000 exceeds" in md
    assert "| export | skipped (up to date) |" in md and "| engine | failed |" in md
    assert "| verify | not reached |" in md
    assert_export_from(md, build_dir / "onnx")  # what exists is shown
    # verify was not reached in this build: its old failed report is not passed off as current
    assert "The verify stage did not run in this build (not reached)." in md
    assert str(build_dir / "verify" / "verify_report.json") not in md


@pytest.mark.fault(
    "build",
    "build --quant int8 of a given checkpoint whose dense model cannot be loaded",
    "the quantize stage fails in one line, and the build report's Quantization section says "
    "so in red (no 8-bit losses from an earlier run)",
)
def test_a_failed_quantize_stage_is_shown_in_the_reports_quantization(
    tiny_checkpoint, tmp_path, capsys
):
    build_dir = tmp_path / "b"
    toml = build_toml(
        tmp_path / "build.toml", tiny_checkpoint, build_dir, ["quantize", "export"],
        f'[quantize]\ndense_model = "{tmp_path / "gone"}"\n',
    )  # fmt: skip
    assert main(["build", "--config", str(toml), "--quant", "int8"]) == 1
    err = capsys.readouterr().err
    assert "cannot be loaded" in err and "--dense-model" in err
    md = (build_dir / "report" / "report.md").read_text()
    quant = md.split("## Quantization\n", 1)[1].split("\n## ", 1)[0]
    assert "> **The quantize stage FAILED: the dense model " in quant
    assert "| quantize | failed |" in md and "| export | not reached |" in md
    # a float build of the same checkpoint has no such section
    assert main(["build", "--config", str(toml), "--quant", "none"]) == 0
    assert "## Quantization" not in (build_dir / "report" / "report.md").read_text()
