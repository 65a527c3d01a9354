"""Parity verification: PyTorch vs ORT / NumPy reference, report on disk, exit codes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from armor_export.io import sha256_file
from tests.conftest import export_tiny, nan_norm_export

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("polygraphy")

from armor_export.cli.main import main  # noqa: E402
from armor_export.config import VerifyConfig  # noqa: E402
from armor_export.errors import BackendUnavailableError, CorruptFileError  # noqa: E402
from armor_export.export_manifest import ExportManifest, Limits, seal  # noqa: E402
from armor_export.verify import verify  # noqa: E402
from armor_export.verify.inputs import prefill_feed, valid_positions  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def strict_json(path: Path) -> dict:
    """The report as strict JSON: NaN/Infinity (which json.dumps writes) are refused."""

    def refuse(constant):
        raise AssertionError(f"{path} holds {constant}: not strict JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_plain_export_passes_prefill_and_decode(tiny_export, tmp_path):
    result = verify(
        VerifyConfig(
            export_dir=str(tiny_export.output_dir), decode_steps=2, report_dir=str(tmp_path)
        )
    )
    assert result.passed, result.report.markdown()
    report = result.report
    assert report.runners == ["onnxruntime"]
    assert "tensorrt" in report.skipped and "no built engine" in report.skipped["tensorrt"]
    assert report.engine is None and report.engine_executed is False
    assert report.verdict().startswith("PASSED: PyTorch = ONNX Runtime (max abs err ")
    assert report.verdict().endswith(
        "; no engine checked (no built engine: build one (armor-export engine) "
        "or pass --engine DIR)"
    )
    steps = {row.step for row in report.rows}
    assert steps == {"prefill", "decode-1", "decode-2"}
    outputs = {row.output for row in report.rows}
    assert outputs == set(tiny_export.manifest["output_names"])
    assert all(row.max_abs < 1e-4 for row in report.rows)
    data = json.loads((tmp_path / "verify_report.json").read_text())
    assert data["passed"] is True
    assert "PASSED" in (tmp_path / "verify_report.md").read_text()


def test_plugin_export_is_checked_against_the_numpy_reference(tiny_plugin_export):
    result = verify(VerifyConfig(export_dir=str(tiny_plugin_export.output_dir)))
    assert result.passed, result.report.markdown()
    assert result.report.runners == ["numpy-reference"]
    with pytest.raises(BackendUnavailableError, match="--lowering plain"):
        verify(
            VerifyConfig(export_dir=str(tiny_plugin_export.output_dir), backends=["onnxruntime"])
        )


@pytest.mark.fault(
    "verify",
    "a graph with wrong weights whose manifest agrees (as an exporter bug would make)",
    "FAILED naming logits beyond tolerance; exit 1; the report on disk",
)
def test_tampered_graph_fails_and_keeps_its_report(tiny_export, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_export.output_dir, broken)
    model = onnx.load(str(broken / "model.onnx"))
    init = next(
        i for i in model.graph.initializer if i.name.endswith("layers.1.mlp.down_proj.a_weight")
    )
    weight = onnx.numpy_helper.to_array(init) * 1.05
    init.CopyFrom(onnx.numpy_helper.from_array(weight.astype(np.float32), init.name))
    onnx.save(model, str(broken / "model.onnx"))
    # an export whose manifest agrees with its wrong graph (as an exporter bug would make):
    # only the comparison with PyTorch can catch it
    manifest = json.loads((broken / "export_manifest.json").read_text())
    manifest["sha256"]["model.onnx"] = sha256_file(broken / "model.onnx")
    (broken / "export_manifest.json").write_text(json.dumps(seal(manifest)))
    code = main(["verify", str(broken), "--report-dir", str(tmp_path / "report")])
    assert code == 1
    data = json.loads((tmp_path / "report" / "verify_report.json").read_text())
    assert data["passed"] is False
    failed = {r["output"] for r in data["rows"] if not r["passed"]}
    assert "logits" in failed
    assert "present.0.key" not in failed  # layer 0's cache is upstream of the change
    assert "FAILED" in (tmp_path / "report" / "verify_report.md").read_text()


def test_cli_verify_passes_with_exit_zero(tiny_export, tmp_path, capsys):
    code = main(
        [
            "verify",
            str(tiny_export.output_dir),
            "--report-dir",
            str(tmp_path),
            "--prompt",
            "a sparse road",
            "--decode-steps",
            "1",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "PASSED" in out


@pytest.mark.fault(
    "verify",
    "a bfloat16 export on ONNX Runtime's CPU provider",
    "one line saying to export with --dtype float16; the failed report on disk",
)
def test_bfloat16_on_ort_cpu_says_how_to_get_around_it(tiny_checkpoint, tmp_path):
    result = export_tiny(tiny_checkpoint, tmp_path / "bf16", dtype="bfloat16")
    with pytest.raises(BackendUnavailableError, match="bfloat16.*--dtype float16"):
        verify(VerifyConfig(export_dir=str(result.output_dir), report_dir=str(tmp_path / "r")))
    data = json.loads((tmp_path / "r" / "verify_report.json").read_text())
    assert data["passed"] is False and "bfloat16" in data["error"]


def test_float16_export_verifies_on_ort(tiny_fp16_export, tmp_path):
    cfg = VerifyConfig(export_dir=str(tiny_fp16_export.output_dir), report_dir=str(tmp_path))
    report = verify(cfg).report
    assert report.passed, report.markdown()
    atol = {row.output: row.atol for row in report.rows}
    assert atol["logits"] == pytest.approx(0.25) and atol["present.0.key"] == pytest.approx(0.1)
    assert all(row.max_abs < 0.02 for row in report.rows)  # tiny model: far inside them


@pytest.mark.fault(
    "verify",
    "an export folder that does not exist, or whose export did not finish",
    "one line each",
)
def test_missing_export_is_a_clear_error(tmp_path):
    with pytest.raises(CorruptFileError, match="no such export folder"):
        verify(VerifyConfig(export_dir=str(tmp_path / "nothing")))
    (tmp_path / "half").mkdir()
    with pytest.raises(CorruptFileError, match="did not finish"):
        verify(VerifyConfig(export_dir=str(tmp_path / "half")))


@pytest.mark.fault(
    "verify",
    "prompts beyond the export's max_batch or max_prompt",
    "one line naming the limit",
)
def test_prompts_beyond_the_export_limits_are_refused(tiny_export):
    from armor_export.errors import ShapeError

    manifest = replace(
        ExportManifest.read(tiny_export.output_dir),
        limits=Limits(max_batch=1, max_prompt=4, max_context=8),
    )
    tokenizer = tiny_export.output_dir / "tokenizer.json"
    with pytest.raises(ShapeError, match="max_batch 1"):
        prefill_feed(tokenizer, ["a", "b"], manifest)
    with pytest.raises(ShapeError, match="max_prompt 4"):
        prefill_feed(tokenizer, ["the quick brown fox jumps over the lazy dog"], manifest)


def test_padding_is_left_and_masked(tiny_export):
    feed = prefill_feed(
        tiny_export.output_dir / "tokenizer.json",
        ["a", "a much longer prompt here"],
        ExportManifest.read(tiny_export.output_dir),
    )
    mask = feed["attention_mask"]
    assert mask[0, 0] == 0 and mask[0, -1] == 1 and mask[1].all()
    assert feed["position_ids"][0, -1] == mask[0].sum() - 1
    logits_valid = valid_positions(feed, "logits", (2, mask.shape[1], 300))
    assert logits_valid.shape == (2, mask.shape[1], 1) and not logits_valid[0, 0, 0]


@pytest.mark.fault(
    "verify",
    "an exported model.onnx edited or damaged after export (weights scaled by 1.001)",
    "one error line naming the file whose sha256 differs; the failed report stays on disk",
)
def test_an_edited_graph_is_refused_before_it_is_compared(tiny_export, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_export.output_dir, broken)
    model = onnx.load(str(broken / "model.onnx"))
    init = model.graph.initializer[0]
    weight = onnx.numpy_helper.to_array(init)
    init.CopyFrom(onnx.numpy_helper.from_array((weight * 1.001).astype(weight.dtype), init.name))
    onnx.save(model, str(broken / "model.onnx"))
    code = main(["verify", str(broken), "--report-dir", str(tmp_path / "report")])
    assert code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    [line] = err.strip().splitlines()
    assert line.startswith("armor-export verify: error: ")
    assert "model.onnx is not the file this export wrote" in line
    data = json.loads((tmp_path / "report" / "verify_report.json").read_text())
    assert data["passed"] is False and "sha256 differs" in data["error"]


@pytest.mark.fault(
    "verify",
    "an export whose export_manifest.json was edited by hand (max_context raised)",
    "one error line naming export_manifest.json, no traceback, exit 1",
)
def test_an_edited_manifest_is_refused(tiny_export, tmp_path, capsys):
    edited = tmp_path / "edited"
    shutil.copytree(tiny_export.output_dir, edited)
    manifest = json.loads((edited / "export_manifest.json").read_text())
    manifest["limits"]["max_context"] *= 2
    (edited / "export_manifest.json").write_text(json.dumps(manifest, indent=2))
    code = main(["verify", str(edited), "--report-dir", str(tmp_path / "report")])
    assert code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    [line] = err.strip().splitlines()
    assert line.startswith("armor-export verify: error: ")
    assert f"{edited / 'export_manifest.json'} is not the manifest this export wrote" in line
    # the same content in another spelling (key order, indentation) is the same manifest
    (edited / "export_manifest.json").write_text(
        json.dumps(json.loads(json.dumps(tiny_export.manifest)), sort_keys=True)
    )
    assert ExportManifest.read(edited).limits == ExportManifest.read(tiny_export.output_dir).limits


def truncated_copy(export_dir: Path, out: Path) -> Path:
    """A copy whose model.onnx lost its second half, with the manifest's sha256 rewritten
    so the hash check passes and loading the graph is what fails."""
    shutil.copytree(export_dir, out)
    onnx_path = out / "model.onnx"
    onnx_path.write_bytes(onnx_path.read_bytes()[: onnx_path.stat().st_size // 2])
    manifest = json.loads((out / "export_manifest.json").read_text())
    manifest["sha256"]["model.onnx"] = sha256_file(onnx_path)
    (out / "export_manifest.json").write_text(json.dumps(seal(manifest)))
    return out


@pytest.mark.fault(
    "verify",
    "a truncated model.onnx whose manifest hash was rewritten to match (ONNX Runtime, and the "
    "NumPy reference of a plugin export)",
    "one error line naming the file, no traceback, exit 1; the failed report stays on disk",
)
def test_a_truncated_graph_is_one_line_without_a_traceback(
    tiny_export, tiny_plugin_export, tmp_path
):
    broken = truncated_copy(tiny_export.output_dir, tmp_path / "broken")
    report = tmp_path / "report"
    proc = subprocess.run(
        [sys.executable, "-m", "armor_export", "verify", str(broken), "--report-dir", str(report)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    [line] = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert line.startswith(
        f"armor-export verify: error: {broken / 'model.onnx'} is not a readable ONNX model, "
        "truncated or damaged ("
    )
    assert line.endswith("): export again")
    data = strict_json(report / "verify_report.json")
    assert data["passed"] is False and "is not a readable ONNX model" in data["error"]

    plugin = truncated_copy(tiny_plugin_export.output_dir, tmp_path / "plugin")
    with pytest.raises(CorruptFileError, match="model.onnx is not a readable ONNX model"):
        verify(VerifyConfig(export_dir=str(plugin), report_dir=str(tmp_path / "plugin-report")))


@pytest.mark.fault(
    "verify",
    "an export whose graph gives NaN outputs (a norm weight set to NaN, hashes rewritten)",
    "FAILED: ONNX Runtime produced non-finite logits at prefill (NaN in N of N values): the "
    "export or its weights are damaged; exit 1, the reason in the report JSON",
)
def test_non_finite_onnx_outputs_fail_with_the_reason(tiny_export, tmp_path, capsys):
    broken = nan_norm_export(tiny_export.output_dir, tmp_path / "nan")
    code = main(["verify", str(broken), "--report-dir", str(tmp_path / "report")])
    out = capsys.readouterr().out
    assert code == 1
    last = out.strip().splitlines()[-1]
    assert last.startswith("FAILED: ONNX Runtime produced non-finite logits at prefill (NaN in ")
    assert last.endswith(" values): the export or its weights are damaged")
    counts = last.split("(NaN in ")[1].split(" values)")[0].split(" of ")
    assert counts[0] == counts[1]  # every real (not padded) logit
    data = strict_json(tmp_path / "report" / "verify_report.json")
    assert data["passed"] is False and data["verdict"] == last
    assert data["error"] == last.removeprefix("FAILED: ")
    assert data["rows"] == []  # nothing compared with NaN: no NaN "max abs err" either
    assert "FAILED: ONNX Runtime produced non-finite" in (
        (tmp_path / "report" / "verify_report.md").read_text()
    )


@pytest.mark.fault(
    "verify",
    "a PyTorch reference whose outputs are NaN (its final norm weight set to NaN in memory)",
    "FAILED: PyTorch produced non-finite logits at prefill (...): nothing is compared, the "
    "reason is in the report JSON",
)
def test_non_finite_pytorch_outputs_fail_with_the_reason(tiny_checkpoint, tiny_export, tmp_path):
    import torch

    from armor_export.export.api import load_for_export

    model, _, _ = load_for_export(str(tiny_checkpoint))
    with torch.no_grad():
        model.model.norm.weight.fill_(float("nan"))
    cfg = VerifyConfig(export_dir=str(tiny_export.output_dir), report_dir=str(tmp_path))
    result = verify(cfg, model=model.eval())
    assert result.passed is False
    error = result.report.error
    assert error.startswith("PyTorch produced non-finite logits at prefill (NaN in ")
    assert "ONNX Runtime" not in error  # the export itself is sound
    data = strict_json(tmp_path / "verify_report.json")
    assert data["verdict"] == f"FAILED: {error}" and data["rows"] == []


def test_external_data_export_verifies(tiny_checkpoint, tmp_path):
    """Weights in model.onnx.data (what exports over 2 GB get): the export's own checks read
    them a core at a time, and ONNX Runtime matches PyTorch on them."""
    export = export_tiny(tiny_checkpoint, tmp_path / "ext", external_data="always")
    assert export.manifest["external_data"] == "model.onnx.data"
    result = verify(
        VerifyConfig(export_dir=str(export.output_dir), decode_steps=2, report_dir=str(tmp_path))
    )
    assert result.passed, result.report.markdown()
    assert result.report.runners == ["onnxruntime"]
    assert result.report.verdict().startswith("PASSED: PyTorch = ONNX Runtime")


def test_pytorch_is_loaded_in_the_export_dtype_and_freed_before_ort_opens(
    tiny_fp16_export, tmp_path, monkeypatch
):
    """#19: the PyTorch reference of a float16 export is loaded in float16 (a float32 load
    held 6+ GiB more on a 1.5 B model), and is gone before ONNX Runtime loads the graph
    to run it, so the two copies of the weights are never held at once."""
    import gc
    import weakref

    import torch

    from armor_export.export import api as export_api
    from armor_export.runtime import session as session_module

    loaded = []  # (weak reference to the model, its parameters' dtypes)
    load_for_export = export_api.load_for_export

    def recording_load(name, dtype="float32"):
        model, tokenizer, manifest = load_for_export(name, dtype)
        loaded.append((weakref.ref(model), {p.dtype for p in model.parameters()}))
        return model, tokenizer, manifest

    opened = []  # at each session ORT opens: whether each loaded model is still alive
    inference_session = session_module.inference_session

    def recording_session(*args, **kwargs):
        opened.append((kwargs.get("optimize", True), [ref() is not None for ref, _ in loaded]))
        return inference_session(*args, **kwargs)

    monkeypatch.setattr(export_api, "load_for_export", recording_load)
    monkeypatch.setattr(session_module, "inference_session", recording_session)
    cfg = VerifyConfig(export_dir=str(tiny_fp16_export.output_dir), report_dir=str(tmp_path))
    result = verify(cfg)
    assert result.passed, result.report.markdown()
    [(model_ref, dtypes)] = loaded
    assert dtypes == {torch.float16}
    # the only session that runs the graph (optimised) opens after the model was freed
    assert [alive for optimize, alive in opened if optimize] == [[False]]
    gc.collect()
    assert model_ref() is None


def test_a_model_passed_in_is_used_and_left_intact(tiny_checkpoint, tiny_export, tmp_path):
    """verify(cfg, model=...) compares that model (nothing is loaded) and frees nothing of
    it: the caller still holds and uses it."""
    import torch

    from armor_export.export.api import load_for_export

    model, _, _ = load_for_export(str(tiny_checkpoint))
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    cfg = VerifyConfig(export_dir=str(tiny_export.output_dir), report_dir=str(tmp_path))
    result = verify(cfg, model=model.eval())
    assert result.passed, result.report.markdown()
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[name], after[name]) for name in before)
