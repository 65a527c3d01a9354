"""The pruning report on the tiny ARMOR checkpoint: data, overhead, eval records, parity
files, the CLI and the report without matplotlib."""

import dataclasses
import importlib
import math
import shutil
import sys
from pathlib import Path

import pytest

from armor_export.cli.main import main
from armor_export.config import EvalConfig
from armor_export.errors import CorruptFileError
from armor_export.eval.api import EVAL_RESULTS, EvalResult, evaluate, read_recorded, record_result
from armor_export.io import read_json, write_json
from armor_export.report import collect, write_report
from armor_export.report.overhead import WrapperOverhead, total, wrapper_flops_per_token
from armor_export.report.plots import matplotlib_missing
from armor_export.verify.report import OutputParity, VerifyReport
from tests.conftest import TINY_DIMS, prune_tiny

ROOT = Path(__file__).resolve().parents[2]
PROJECTIONS = ["q", "k", "v", "o", "gate", "up", "down"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def ckpt(tiny_checkpoint, tmp_path):
    """A private copy of the session checkpoint (these tests write into it)."""
    return Path(shutil.copytree(tiny_checkpoint, tmp_path / "build" / "checkpoint"))


def verify_report(folder: Path, passed: bool = True) -> Path:
    """A parity report written by verify's own writer."""
    rows = [
        OutputParity("prefill", "onnxruntime", "logits", 2e-5, 1e-4, 1e-3, 1e-3, passed),
        OutputParity("prefill", "onnxruntime", "present.0.key", 1e-6, 1e-5, 1e-3, 1e-3, True),
        OutputParity("decode-1", "onnxruntime", "logits", 3e-5, 2e-4, 1e-3, 1e-3, True),
    ]
    report = VerifyReport(
        "onnx", "ckpt", "float32", "composite", runners=["onnxruntime"], rows=rows,
        skipped={"tensorrt": "TensorRT is not installed"},
    )  # fmt: skip
    return report.write(folder)


# --- collect ------------------------------------------------------------------------------


def test_collect_one_row_per_matrix_with_finite_losses_at_or_below_nowag(tiny_checkpoint):
    data = collect(tiny_checkpoint)
    manifest = read_json(tiny_checkpoint / "armor_manifest.json")
    assert sorted(m.name for m in data.matrices) == sorted(manifest["matrices"])
    assert len(data.matrices) == TINY_DIMS["num_hidden_layers"] * 7
    assert [m.projection for m in data.matrices[:7]] == PROJECTIONS
    assert {m.layer for m in data.matrices} == {0, 1}
    for m in data.matrices:
        assert m.kind == "armor" and m.block_size == 16
        assert math.isfinite(m.proxy_loss) and math.isfinite(m.nowag_loss)
        assert m.proxy_loss <= m.nowag_loss, m.name  # ARMOR's promise
        # history: the NoWag-P start, then one loss per iteration; the kept loss is its minimum
        assert len(m.history) == m.iterations + 1 == 4
        assert m.history[0] == pytest.approx(m.nowag_loss)
        assert min(m.history) == pytest.approx(m.proxy_loss)
    assert data.above_nowag == [] and data.history_note is None
    assert data.evals == [] and data.parity is None


def test_collect_without_job_store_loses_only_the_curves(ckpt):
    shutil.rmtree(ckpt / "work")
    data = collect(ckpt)
    assert all(m.history == [] for m in data.matrices)
    assert "job store" in data.history_note
    assert all(m.proxy_loss is not None for m in data.matrices)


def test_magnitude_report_says_there_are_no_losses(tmp_path):
    ckpt = prune_tiny(tmp_path, method="magnitude")
    data = collect(ckpt)
    assert all(m.kind == "sparse" and m.ratio is None for m in data.matrices)
    text = write_report(ckpt, tmp_path / "rep").with_suffix(".md").read_text()
    assert "magnitude pruning uses no calibration statistics" in text
    assert "adds no wrappers" in text
    assert "Proxy loss curves" not in text


def test_header_holds_the_run_settings(ckpt):
    write_json(ckpt / "work" / "ranks" / "rank0.json", {"rank": 0, "world": 1, "seconds": 75.0})
    md = write_report(ckpt).with_suffix(".md").read_text()
    for row in (
        "| method | ARMOR |",
        "| block size b | 16 |",
        "| iterations | 3 at most, 3 run (patience 20) |",
        "| matrices pruned | 14 (14 with ARMOR wrappers) |",
        "| skipped (left dense) | none |",
        "| wall time | 75.0 s |",
    ):
        assert row in md
    assert ": 4 × 32 = 128 tokens, batch 2, seed 0 |" in md


def test_a_matrix_above_nowag_is_listed_at_the_top(ckpt):
    manifest = read_json(ckpt / "armor_manifest.json")
    entry = manifest["matrices"]["model.layers.1.self_attn.k_proj"]
    entry["proxy_loss"] = entry["nowag_loss"] * 1.5
    write_json(ckpt / "armor_manifest.json", manifest)
    data = collect(ckpt)
    assert [m.name for m in data.above_nowag] == ["model.layers.1.self_attn.k_proj"]
    md = write_report(ckpt).with_suffix(".md").read_text()
    top = md.split("## Run")[0]
    assert "1 of 14 ARMOR matrices ended ABOVE their NoWag-P proxy loss" in top
    assert "`model.layers.1.self_attn.k_proj`" in top
    assert "| `model.layers.1.self_attn.k_proj` |" in md and "| 1.5000 |" in md


def test_baseline_report_has_heat_map_but_no_curves(tmp_path):
    ckpt = prune_tiny(tmp_path, method="wanda")
    data = collect(ckpt)
    assert all(m.kind == "sparse" and m.ratio is not None for m in data.matrices)
    assert "only for ARMOR" in data.history_note
    md = write_report(ckpt).with_suffix(".md").read_text()
    assert "Proxy loss curves" not in md
    assert "median Wanda loss" in md
    assert ("](heatmap.png)" in md) == (matplotlib_missing() is None)
    assert "Wanda adds no wrappers" in md


# --- overhead -----------------------------------------------------------------------------


def test_overhead_equals_a_hand_computation():
    q = WrapperOverhead.of(64, 64, 16)  # A: 4 blocks of 16x16, B: 4 blocks
    assert q.wrapper_params == 2 * 4 * 16 * 16 == 2048
    assert q.dense_params == 4096 and q.params_vs_dense == 0.5
    assert q.wrapper_flops == 2 * 16 * (64 + 64) == wrapper_flops_per_token(64, 64, 16)
    assert q.dense_flops == 8192 and q.core_flops == 4096
    assert (q.flops_vs_dense, q.flops_vs_core) == (0.5, 1.0)
    gate = WrapperOverhead.of(128, 64, 16)
    assert gate.wrapper_params == (8 + 4) * 256 and gate.flops_vs_dense == 2 * 16 * 192 / 16384
    assert WrapperOverhead.of(128, 64, None).wrapper_params == 0


def test_overhead_totals_of_the_tiny_model_match_the_benchmark_script(tiny_checkpoint, monkeypatch):
    data = collect(tiny_checkpoint)
    cost = total(WrapperOverhead.of(m.d_out, m.d_in, m.block_size) for m in data.matrices)
    # per layer, sum over projections of d_out + d_in = 1024 and of d_out·d_in = 36864
    assert cost.wrapper_params == 2 * 16 * 1024
    assert cost.dense_params == 2 * 36864
    assert cost.wrapper_flops == 2 * 2 * 16 * 1024
    assert cost.flops_vs_core == pytest.approx(65536 / 73728)
    monkeypatch.syspath_prepend(str(ROOT / "tools"))
    benchlib = importlib.import_module("benchlib")  # the ONNX benchmarks' FLOP count
    assert benchlib.wrapper_flops_per_token(str(tiny_checkpoint)) == cost.wrapper_flops


# --- eval results -------------------------------------------------------------------------


def test_evaluate_records_into_the_checkpoint_and_replaces_on_rerun(ckpt, text_file):
    cfg = EvalConfig(text=str(text_file), n_windows=2, seqlen=32, batch_size=2)
    first = evaluate(str(ckpt), cfg)
    entries = read_recorded(ckpt / EVAL_RESULTS)
    assert len(entries) == 1
    assert entries[0]["perplexity"] == first.perplexity
    assert (entries[0]["text"], entries[0]["seqlen"], entries[0]["windows"]) == (
        str(text_file), 32, 2
    )  # fmt: skip
    evaluate(str(ckpt), cfg)
    assert len(read_recorded(ckpt / EVAL_RESULTS)) == 1  # replaced, not duplicated
    other = EvalResult(str(ckpt), 9.5, 32, 0.1, True, str(text_file), 32, 1)
    record_result(ckpt, other)
    assert [e["windows"] for e in read_recorded(ckpt / EVAL_RESULTS)] == [2, 1]
    rows = collect(ckpt).evals
    assert len(rows) == 2 and all(r.pruned for r in rows)


def test_evaluate_of_a_dense_model_records_nothing(tiny_model_dir, text_file):
    cfg = EvalConfig(text=str(text_file), n_windows=1, seqlen=32, batch_size=1)
    result = evaluate(str(tiny_model_dir), cfg)
    assert not result.pruned and result.text == str(text_file)
    assert not (tiny_model_dir / EVAL_RESULTS).exists()


def test_a_broken_results_file_is_kept_and_reported(ckpt):
    (ckpt / EVAL_RESULTS).write_text("[1, 2]")
    assert record_result(ckpt, EvalResult("x", 1.0, 1, 0.0, True, "t", 1, 1)) is None
    assert (ckpt / EVAL_RESULTS).read_text() == "[1, 2]"
    with pytest.raises(CorruptFileError, match="eval results"):
        collect(ckpt)


def test_report_adds_eval_json_rows_and_compares_with_dense(ckpt, tmp_path):
    record_result(ckpt, EvalResult(str(ckpt), 30.0, 64, 0.1, True, "wikipedia", 32, 2))
    dense = tmp_path / "dense.json"
    dense_result = EvalResult("tiny", 20.0, 64, 0.1, False, "wikipedia", 32, 2)
    write_json(dense, dataclasses.asdict(dense_result))  # as `armor-export eval --json` does
    md = write_report(ckpt, eval_files=[dense]).with_suffix(".md").read_text()
    assert "| `tiny` | dense | `wikipedia` | 32 | 2 | 64 | 20.000 |  |" in md
    assert "| pruned | `wikipedia` | 32 | 2 | 64 | 30.000 | 1.500× |" in md


def test_report_without_eval_results_says_how_to_get_them(ckpt):
    md = write_report(ckpt).with_suffix(".md").read_text()
    assert f"`armor-export eval {ckpt}`" in md
    assert "--json dense.json" in md


# --- parity ---------------------------------------------------------------------------------


def test_verify_report_next_to_the_checkpoint_is_found(ckpt):
    verify_report(ckpt.parent / "verify")  # the layout of `armor-export build`
    data = collect(ckpt)
    assert data.parity is not None and data.parity.passed
    assert data.parity.runners == ["onnxruntime"]
    assert [(r["step"], r["output"]) for r in data.parity.rows] == [
        ("prefill", "logits"), ("prefill", "present.* (1)"), ("decode-1", "logits"),
    ]  # fmt: skip
    md = write_report(ckpt).with_suffix(".md").read_text()
    assert "Export parity PASSED" in md
    assert "| prefill | onnxruntime | logits | 2e-05 | 0.0001 | 0.001 | 0.001 | ✓ |" in md
    assert "skipped tensorrt | TensorRT is not installed" in md


def test_verify_report_given_explicitly_and_failed(ckpt, tmp_path):
    path = verify_report(tmp_path / "elsewhere", passed=False)
    data = collect(ckpt, verify_report=path)
    assert data.parity.path == path and not data.parity.passed
    md = write_report(ckpt, verify_report=path).with_suffix(".md").read_text()
    assert "Export parity FAILED" in md and "✗ (logits)" in md


def test_malformed_verify_report_is_a_user_error(ckpt, tmp_path):
    bad = tmp_path / "verify_report.json"
    write_json(bad, {"rows": [{"step": "prefill"}]})
    with pytest.raises(CorruptFileError, match="malformed verify report"):
        collect(ckpt, verify_report=bad)


# --- CLI ------------------------------------------------------------------------------------


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def error_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("armor-export report: error:")]
    assert len(lines) == 1, err
    return lines[0]


def test_cli_writes_the_report_and_prints_its_path(ckpt, tmp_path, capsys):
    code, out, err = run_cli(capsys, "report", ckpt, "-o", tmp_path / "out")
    assert code == 0, err
    assert out.splitlines()[0] == str(tmp_path / "out" / "report.html")
    assert {p.name for p in (tmp_path / "out").iterdir()} >= {"report.html", "report.md"}


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("not a checkpoint", "is not a pruned checkpoint (no armor_manifest.json)"),
        ("missing dir", "no such directory"),
        ("missing job", "no job file for model.layers.0.self_attn.q_proj"),
        ("corrupt job", "corrupt safetensors file"),
        ("bad manifest", "not valid JSON"),
        ("bad eval file", "not an `armor-export eval --json` result"),
    ],
)
def test_cli_bad_input_is_one_error_line(ckpt, tmp_path, capsys, damage, message):
    target, extra = ckpt, []
    jobs = ckpt / "work" / "jobs"
    if damage == "not a checkpoint":
        target = tmp_path
    elif damage == "missing dir":
        target = tmp_path / "nowhere"
    elif damage == "missing job":
        (jobs / "model.layers.0.self_attn.q_proj.safetensors").unlink()
    elif damage == "corrupt job":
        (jobs / "model.layers.1.mlp.up_proj.safetensors").write_bytes(b"\x00" * 20)
    elif damage == "bad manifest":
        (ckpt / "armor_manifest.json").write_text("{")
    elif damage == "bad eval file":
        (tmp_path / "e.json").write_text('{"model": "x"}')
        extra = ["--eval", tmp_path / "e.json"]
    code, _out, err = run_cli(capsys, "report", target, "-o", tmp_path / "out", *extra)
    assert code == 1
    assert message in error_line(err)


def test_page_is_self_contained(ckpt):
    html = write_report(ckpt).read_text()
    for needle in ('src="http', 'href="http', "<script", "<link"):
        assert needle not in html
    assert len(html.encode()) < 2_000_000


# --- without matplotlib ---------------------------------------------------------------------


def test_report_without_matplotlib_says_which_extra_to_install(ckpt, monkeypatch):
    pytest.importorskip("matplotlib")
    write_report(ckpt)  # with figures first: a later report must not keep stale PNGs
    assert (ckpt / "report" / "curves.png").is_file()
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now fails
    html_path = write_report(ckpt)
    html = html_path.read_text()
    md = html_path.with_suffix(".md").read_text()
    for text in (html, md):
        assert "armor-export[plots]" in text
        assert "All 14 ARMOR matrices ended at or below their NoWag-P proxy loss" in text
    assert "<img" not in html and "](curves.png)" not in md
    assert sorted(p.name for p in html_path.parent.iterdir()) == ["report.html", "report.md"]


def test_report_help_does_not_import_torch():
    import subprocess

    code = (
        "import sys\n"
        "from armor_export.cli.main import main\n"
        "try:\n    main(['report', '--help'])\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules and 'matplotlib' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=60)
