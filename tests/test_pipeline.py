"""``armor-export build``: stages chain, finished stages are skipped, failures resume."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX missing: pip install '.[rtx]'")

from armor_export.cli.main import main  # noqa: E402
from armor_export.config import BuildConfig, from_dict  # noqa: E402
from armor_export.pipeline import MANIFEST, build  # noqa: E402


def statuses(result):
    return {s.name: s.status for s in result.stages}


def test_build_from_a_checkpoint_skips_finished_stages(tiny_checkpoint, tmp_path):
    data = {
        "model": str(tiny_checkpoint),
        "output_dir": str(tmp_path),
        "export": {"dtype": "float32"},
    }
    result = build(from_dict(BuildConfig, data))
    assert result.passed
    assert statuses(result) == {
        "prune": "provided",
        "quantize": "provided",
        "export": "done",
        "engine": "done",
        "verify": "done",
    }
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert manifest["stages"]["engine"]["detail"].startswith("TensorRT-RTX default")
    assert manifest["stages"]["engine"]["detail"].endswith(
        "sparse layers unknown (needs a GPU to inspect)"
    )
    assert (tmp_path / "engine" / "model.engine").is_file()
    assert (tmp_path / "verify" / "verify_report.json").is_file()

    again = build(from_dict(BuildConfig, data))
    assert set(statuses(again).values()) == {"provided", "skipped (up to date)"}

    data["engine"] = {"compute_capability": "sm86"}  # engine and what follows it are redone
    changed = build(from_dict(BuildConfig, data))
    assert statuses(changed) == {
        "prune": "provided",
        "quantize": "provided",
        "export": "skipped (up to date)",
        "engine": "done",
        "verify": "done",  # every stage after a changed one runs again
    }

    (tmp_path / "onnx" / "export_manifest.json").write_text("{}")  # a damaged artefact
    redone = build(from_dict(BuildConfig, data))
    assert statuses(redone)["export"] == "done"
    # the export is deterministic: the same files again, so the engine stays valid
    assert statuses(redone)["engine"] == "skipped (up to date)"

    # an export of an older graph form (before an upgrade) is redone
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    manifest["stages"]["export"]["graph_revision"] -= 1
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    upgraded = build(from_dict(BuildConfig, data))
    assert statuses(upgraded)["export"] == "done"


def test_build_says_exactly_what_was_checked(tiny_checkpoint, tmp_path, capsys):
    """The final line and verify_report.json name the comparisons and the shipped engine."""
    from armor_export.engine.targets import describe
    from armor_export.runtime.trt_session import cuda_gpus

    gpus, no_gpu = cuda_gpus()
    if gpus:
        pytest.skip(f"a CUDA GPU is here ({gpus}): the engine runs, see tests/gpu")
    toml = tmp_path / "build.toml"
    toml.write_text(
        f'model = "{tiny_checkpoint}"\noutput_dir = "{tmp_path / "b"}"\n'
        'stages = ["export", "engine", "verify"]\n[export]\ndtype = "float32"\n'
    )
    assert main(["build", "--config", str(toml), "--plugin-library", ""]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    built = json.loads((tmp_path / "b" / "engine" / "build_report.json").read_text())
    runs_on = describe(built["engine_targets"])  # 1.7: sm80, sm86, sm89, sm120, sm121 and newer
    assert built["compute_capability"] == "default" and runs_on.startswith("sm80, sm86, sm89, ")
    not_run = f"engine built for {runs_on}, not run: {no_gpu}"
    assert last.startswith("PASSED: PyTorch = ONNX Runtime (max abs err ")
    assert last.endswith(f"; {not_run}")
    report = json.loads((tmp_path / "b" / "verify" / "verify_report.json").read_text())
    assert report["engine_executed"] is False and report["engine_not_run_reason"] == not_run
    assert report["engine"]["dir"] == str(tmp_path / "b" / "engine")
    built = json.loads((tmp_path / "b" / "engine" / "build_report.json").read_text())
    assert report["engine"]["engine_sha256"] == built["engine_sha256"]
    assert report["verdict"] == last
    manifest = json.loads((tmp_path / "b" / MANIFEST).read_text())
    assert manifest["stages"]["verify"]["detail"] == last

    assert main(["build", "--config", str(toml)]) == 0  # up to date: the same words
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"{last} (verify up to date)"


def test_failed_verify_exits_1_keeps_report_and_reruns(tiny_checkpoint, tmp_path, capsys):
    toml = tmp_path / "build.toml"
    toml.write_text(
        f'model = "{tiny_checkpoint}"\noutput_dir = "{tmp_path / "b"}"\n'
        'stages = ["export", "verify"]\n[export]\ndtype = "float32"\n'
        "[verify]\natol = 1e-12\nrtol = 1e-12\n"
    )
    assert main(["build", "--config", str(toml)]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and "not selected" in out
    manifest = json.loads((tmp_path / "b" / MANIFEST).read_text())
    assert manifest["stages"]["verify"]["status"] == "failed"
    assert not json.loads((tmp_path / "b" / "verify" / "verify_report.json").read_text())["passed"]

    toml.write_text(toml.read_text().replace("atol = 1e-12\nrtol = 1e-12\n", ""))
    assert main(["build", "--config", str(toml)]) == 0
    out = capsys.readouterr().out
    assert "PASSED" in out and "skipped (up to date)" in out  # export was not redone


def test_build_prunes_a_dense_model_first(tiny_model_dir, text_file, tmp_path):
    data = {
        "model": str(tiny_model_dir),
        "output_dir": str(tmp_path),
        "stages": ["prune", "export"],
        "prune": {
            "workers": 1,
            "armor": {"block_size": 16, "iterations": 2, "compile": False},
            "calibration": {"text": str(text_file), "n_samples": 4, "seqlen": 32, "batch_size": 2},
        },
    }
    result = build(from_dict(BuildConfig, data))
    assert statuses(result) == {
        "prune": "done",
        "quantize": "provided",
        "export": "done",
        "engine": "not selected",
        "verify": "not selected",
    }
    assert (tmp_path / "checkpoint" / "armor_manifest.json").is_file()
    export = json.loads((tmp_path / "onnx" / "export_manifest.json").read_text())
    assert export["dtype"] == "float16" and export["counts"]["armor"] == 14  # build default fp16


def test_unknown_stage_is_refused():
    from armor_export.errors import ConfigError

    with pytest.raises(ConfigError, match="stages"):
        from_dict(BuildConfig, {"stages": ["prune", "deploy"]}).validate()
    assert main(["build", "--force", "deploy"]) == 1


@pytest.mark.fault(
    "build",
    "the build's model.onnx truncated after a finished build, then the same build again",
    "the export stage is redone (its record covers every file the export lists), then PASSED",
)
def test_a_damaged_onnx_redoes_the_export(tiny_checkpoint, tmp_path):
    data = {
        "model": str(tiny_checkpoint),
        "output_dir": str(tmp_path),
        "stages": ["export", "verify"],
        "export": {"dtype": "float32"},
    }
    assert build(from_dict(BuildConfig, data)).passed
    onnx_path = tmp_path / "onnx" / "model.onnx"
    onnx_path.write_bytes(onnx_path.read_bytes()[:1000])
    again = build(from_dict(BuildConfig, data))
    assert statuses(again)["export"] == "done"
    assert again.passed


def _prune_build(model, text, out, stages=("prune",)) -> dict:
    return {
        "model": str(model),
        "output_dir": str(out),
        "stages": list(stages),
        "export": {"dtype": "float32"},
        "prune": {
            "method": "nowag-p",
            "workers": 1,
            "calibration": {"text": str(text), "n_samples": 4, "seqlen": 32, "batch_size": 2},
        },
    }


@pytest.mark.fault(
    "build",
    "the model's weights, then the calibration text, changed at the same paths after a build",
    "the prune stage is redone each time (its record keys on the content it came from)",
)
def test_a_changed_model_or_text_redoes_the_prune(tiny_model_dir, text_file, tmp_path):
    from tests.conftest import TEXT, tiny_model

    data = _prune_build(tiny_model_dir, text_file, tmp_path / "b")
    assert statuses(build(from_dict(BuildConfig, data)))["prune"] == "done"
    assert statuses(build(from_dict(BuildConfig, data)))["prune"] == "skipped (up to date)"
    tiny_model("llama", seed=1).save_pretrained(tiny_model_dir)  # other weights, same folder
    assert statuses(build(from_dict(BuildConfig, data)))["prune"] == "done"
    text_file.write_text(TEXT.upper())
    assert statuses(build(from_dict(BuildConfig, data)))["prune"] == "done"
    assert statuses(build(from_dict(BuildConfig, data)))["prune"] == "skipped (up to date)"


@pytest.mark.fault(
    "build",
    "build --model CKPT, then CKPT/model.safetensors damaged (eight bytes), the same build again",
    "the export is redone, not skipped, and fails in one line naming the file",
)
def test_a_changed_provided_checkpoint_redoes_the_export(tiny_checkpoint, tmp_path):
    import shutil

    from armor_export.errors import CorruptFileError

    ckpt = shutil.copytree(tiny_checkpoint, tmp_path / "ckpt")
    data = {"model": str(ckpt), "output_dir": str(tmp_path / "b"), "stages": ["export"],
            "export": {"dtype": "float32"}}  # fmt: skip
    assert statuses(build(from_dict(BuildConfig, data)))["export"] == "done"
    weights = ckpt / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[len(raw) // 2 : len(raw) // 2 + 8] = bytes(8)
    weights.write_bytes(bytes(raw))
    with pytest.raises(CorruptFileError, match="model.safetensors is not the file prune wrote"):
        build(from_dict(BuildConfig, data))
    manifest = json.loads((tmp_path / "b" / MANIFEST).read_text())
    assert manifest["stages"]["export"]["status"] == "failed"


@pytest.mark.fault(
    "build",
    "a finished build run again by another spelling of its paths (relative, trailing slash), "
    "then after its folder was moved",
    "every stage skipped (up to date), not 'a different config (output_dir)'",
)
def test_another_spelling_or_a_moved_build_folder_is_up_to_date(
    tiny_model_dir, text_file, tmp_path, monkeypatch
):
    import shutil

    stages = ("prune", "export")
    first = build(from_dict(BuildConfig, _prune_build(tiny_model_dir, text_file, tmp_path / "b",
                                                      stages)))  # fmt: skip
    assert set(statuses(first).values()) == {"done", "not selected", "provided"}
    monkeypatch.chdir(tmp_path)
    again = build(from_dict(BuildConfig, _prune_build("tiny-llama/", "text.txt", "b/", stages)))
    assert set(statuses(again).values()) == {"skipped (up to date)", "not selected", "provided"}
    shutil.move(tmp_path / "b", tmp_path / "moved")
    moved = build(from_dict(BuildConfig, _prune_build(tiny_model_dir, text_file, "moved", stages)))
    assert set(statuses(moved).values()) == {"skipped (up to date)", "not selected", "provided"}


def _quant_build_toml(path, model, text, out) -> None:
    path.write_text(
        f'model = "{model}"\noutput_dir = "{out}"\n'
        'stages = ["prune", "quantize", "export", "verify"]\n'
        '[prune]\nmethod = "armor"\nworkers = 1\n'
        "[prune.armor]\nblock_size = 16\niterations = 2\ncompile = false\n"
        f'[prune.calibration]\ntext = "{text}"\nn_samples = 4\nseqlen = 32\nbatch_size = 2\n'
        '[export]\ndtype = "float32"\n'
    )


def _printed_stage(out: str, name: str) -> str:
    """The summary table's line of the stage ``name``."""
    return next(line for line in out.splitlines() if line.strip("│┃ ").startswith(f"{name} "))


@pytest.mark.fault(
    "build",
    "build --quant int8 of a dense model, the same build again, then --quant fp8",
    "prune, quantize, export and verify done (the summary names the scheme, the export "
    "records it); then every stage up to date; then quantize and what follows redone, the "
    "prune kept; the build report holds the 8-bit checkpoint's Quantization section",
)
def test_a_quant_build_runs_resumes_and_redoes_only_what_the_scheme_changes(
    tiny_model_dir, text_file, tmp_path, capsys, monkeypatch
):
    from armor_export.quant import schemes

    monkeypatch.setenv("COLUMNS", "400")  # the summary table on one line per stage
    out = tmp_path / "b"
    toml = tmp_path / "build.toml"
    _quant_build_toml(toml, tiny_model_dir, text_file, out)
    runs = {}
    for scheme, expected in (
        ("int8", {"prune": "done", "quantize": "done", "export": "done", "verify": "done"}),
        ("int8", dict.fromkeys(("prune", "quantize", "export", "verify"), "skipped (up to date)")),
        ("fp8", {"prune": "skipped (up to date)", "quantize": "done", "export": "done",
                 "verify": "done"}),
    ):  # fmt: skip
        assert main(["build", "--config", str(toml), "--quant", scheme]) == 0
        printed = capsys.readouterr().out
        manifest = json.loads((out / MANIFEST).read_text())
        for name, status in expected.items():
            assert f" {status} " in _printed_stage(printed, name), (scheme, name)
        assert " not selected " in _printed_stage(printed, "engine")
        title = schemes.get(scheme).title
        quantize = manifest["stages"]["quantize"]["detail"]
        assert (
            quantize.startswith(f"14 cores {title}: mean proxy loss ") and " re-fitted" in quantize
        )
        assert quantize in _printed_stage(printed, "quantize")
        assert manifest["stages"]["quantize"]["config_values"]["scheme"] == scheme
        export = json.loads((out / "onnx" / "export_manifest.json").read_text())
        assert export["quant"]["scheme"] == scheme and export["counts"]["armor"] == 14
        verify = json.loads((out / "verify" / "verify_report.json").read_text())
        assert verify["passed"] and printed.strip().splitlines()[-1].startswith("PASSED: ")
        quantized = json.loads((out / "quantized" / "armor_manifest.json").read_text())
        assert quantized["quant"]["scheme"] == scheme
        assert verify["model"] == str(out / "quantized")  # verify compared the 8-bit model
        runs[scheme] = manifest
    # the prune was not redone for the new scheme: the same record, the same checkpoint
    assert runs["fp8"]["stages"]["prune"] == runs["int8"]["stages"]["prune"]
    # the build report is the pruned checkpoint's, with the 8-bit checkpoint's section
    md = (out / "checkpoint" / "report" / "report.md").read_text()
    assert md.startswith("# Build report: ARMOR + FP8 on ")
    quant = md.split("## Quantization\n", 1)[1].split("\n## ", 1)[0]
    assert f"| 8-bit checkpoint | `{(out / 'quantized').resolve()}` |" in quant
    assert "| scheme | FP8: " in quant and "Re-fit checked: no matrix ended above" in quant
    # `armor-export report` on the build's checkpoint finds the same 8-bit checkpoint
    assert main(["report", str(out / "checkpoint"), "-o", str(tmp_path / "rep")]) == 0
    again = (tmp_path / "rep" / "report.md").read_text()
    assert f"| 8-bit checkpoint | `{(out / 'quantized').resolve()}` |" in again
