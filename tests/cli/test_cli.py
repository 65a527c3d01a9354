"""``armor-export`` driven in-process: exit codes, one-line errors, JSON results.

Every bad input must end in exit code 1 and a single ``armor-export <verb>: error: ...``
line on stderr (no traceback); results go to stdout, logs and progress to stderr.
"""

import json
import math
import os
import shutil
import subprocess
import sys
import traceback

import pytest
import torch

from armor_export.cli.main import main
from armor_export.config import PruneConfig
from armor_export.errors import StatisticsError
from armor_export.prune import api
from armor_export.prune.checkpoint import load_checkpoint
from armor_export.prune.linear import ArmorLinear
from tests.conftest import TEXT, rehash_checkpoint, tiny_model

# torch.compile of the ARMOR solver costs ~20 s per process and block size, and a pool of
# spawned worker processes seconds more: both off in these tests (the CLI has no flags for
# them, so every prune run gets this recipe; flags override it)
FAST_RECIPE = "workers = 1\n[armor]\ncompile = false\n"
KV_PROJ = [f"model.layers.{i}.self_attn.{p}" for i in range(2) for p in ("k_proj", "v_proj")]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run_cli(capsys, *argv):
    """(exit code, stdout, stderr) of ``armor-export argv...``."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def error_line(err: str, verb: str) -> str:
    """The one error line of a failed run; fails on a traceback or several error lines."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith(f"armor-export {verb}: error:")]
    assert len(lines) == 1, err
    return lines[0]


def calib_args(text_file, block_size=16):
    """Fast calibration and ARMOR flags (with FAST_RECIPE written next to ``text_file``)."""
    recipe = text_file.parent / "fast-recipe.toml"
    recipe.write_text(FAST_RECIPE)
    return [
        "--config", recipe, "--calib-text", text_file, "--calib-samples", 4,
        "--calib-seqlen", 32, "--iterations", 3, "--block-size", block_size,
    ]  # fmt: skip


def save_model_dir(model, tokenizer, path):
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def armor_checkpoint(tmp_path_factory, tokenizer):
    """A pruned ARMOR checkpoint of the tiny Llama (built once; tests copy it)."""
    root = tmp_path_factory.mktemp("armor-checkpoint")
    model_dir = save_model_dir(tiny_model("llama"), tokenizer, root / "dense")
    (root / "text.txt").write_text(TEXT)
    cfg = PruneConfig.from_dict(
        {
            "model": str(model_dir),
            "output_dir": str(root / "pruned"),
            "workers": 1,
            "armor": {"block_size": 16, "iterations": 2, "compile": False},
            "calibration": {"text": str(root / "text.txt"), "n_samples": 4, "seqlen": 32},
        }
    )
    return api.prune(cfg).output_dir


@pytest.fixture
def nan_model_dir(tmp_path, tokenizer):
    """A tiny Llama whose weights are finite but whose activations are not: its first norm
    weight (3e38) overflows float32, so the calibration statistics come out NaN/Inf. (A NaN
    weight is refused when the model loads, before any calibration.)"""
    model = tiny_model("llama")
    with torch.no_grad():
        model.model.layers[0].input_layernorm.weight[:] = 3e38
    return save_model_dir(model, tokenizer, tmp_path / "nan-llama")


# --- shapes and block sizes ------------------------------------------------------------


@pytest.mark.fault(
    "prune",
    "a block size that does not divide a layer",
    "one line naming the layer and its valid block sizes",
)
def test_block_size_not_dividing_a_layer_names_it_and_the_valid_sizes(
    capsys, tiny_model_dir, text_file, tmp_path
):
    out_dir = tmp_path / "out"
    code, _, err = run_cli(
        capsys, "prune", "--model", tiny_model_dir, "-o", out_dir, *calib_args(text_file, 24)
    )
    assert code == 1
    line = error_line(err, "prune")
    assert "model.layers.0.self_attn.q_proj" in line
    assert "valid block sizes for this layer: 4, 8, 16, 32, 64" in line
    assert "--skip-incompatible" in line
    assert not (out_dir / "model.safetensors").exists()


def test_skip_incompatible_leaves_those_layers_dense(capsys, tiny_model_dir, text_file, tmp_path):
    out_dir = tmp_path / "out"
    code, out, err = run_cli(
        capsys,
        "prune", "--model", tiny_model_dir, "-o", out_dir, "--skip-incompatible",
        *calib_args(text_file, 64),
    )  # fmt: skip
    assert code == 0, err
    summary = json.loads(out)
    assert summary["skipped"] == 4 and summary["matrices"] == 10
    manifest = json.loads((out_dir / "armor_manifest.json").read_text())
    assert sorted(manifest["skipped"]) == sorted(KV_PROJ)
    assert not set(KV_PROJ) & set(manifest["matrices"])
    model, _ = load_checkpoint(out_dir)
    for name in KV_PROJ:
        assert type(model.get_submodule(name)) is torch.nn.Linear
    assert isinstance(model.get_submodule("model.layers.0.self_attn.q_proj"), ArmorLinear)


def test_block_size_not_a_multiple_of_4(capsys, tiny_model_dir, text_file, tmp_path):
    code, _, err = run_cli(
        capsys, "prune", "--model", tiny_model_dir, "-o", tmp_path / "o", *calib_args(text_file, 6)
    )
    assert code == 1
    assert "block_size must be a positive multiple of 4, got 6" in error_line(err, "prune")


# --- models that cannot be used ----------------------------------------------------------


@pytest.mark.fault(
    "load",
    "a model folder that does not exist",
    "one error line",
)
def test_missing_model_dir(capsys, text_file, tmp_path):
    missing = tmp_path / "no-such-model"
    code, _, err = run_cli(
        capsys, "prune", "--model", missing, "-o", tmp_path / "o", *calib_args(text_file)
    )
    assert code == 1
    line = error_line(err, "prune")
    assert "model folder not found" in line and str(missing) in line


def test_pickle_only_model_dir_is_refused_unloaded(
    capsys, tiny_model_dir, text_file, tmp_path, monkeypatch
):
    folder = tmp_path / "pickled"
    folder.mkdir()
    shutil.copy(tiny_model_dir / "config.json", folder)
    torch.save(tiny_model("llama").state_dict(), folder / "pytorch_model.bin")

    def no_unpickling(*args, **kwargs):
        raise AssertionError("a pickle checkpoint was loaded")

    monkeypatch.setattr(torch, "load", no_unpickling)
    code, _, err = run_cli(
        capsys, "prune", "--model", folder, "-o", tmp_path / "o", *calib_args(text_file)
    )
    assert code == 1
    line = error_line(err, "prune")
    assert "pytorch_model.bin" in line and "safetensors" in line


@pytest.mark.fault(
    "load",
    "a model of an unsupported architecture",
    "one line naming the supported model types",
)
def test_unknown_architecture_names_the_supported_ones(capsys, tokenizer, text_file, tmp_path):
    import transformers

    gpt2 = transformers.AutoModelForCausalLM.from_config(
        transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=300)
    )
    folder = save_model_dir(gpt2, tokenizer, tmp_path / "gpt2")
    assert (folder / "model.safetensors").is_file()
    code, _, err = run_cli(
        capsys, "prune", "--model", folder, "-o", tmp_path / "o", *calib_args(text_file)
    )
    assert code == 1
    line = error_line(err, "prune")
    assert "unsupported architecture 'gpt2'" in line
    assert "llama" in line and "qwen3" in line and "gemma" in line


# --- corrupt pruned checkpoints ----------------------------------------------------------


def _truncate_weights(ckpt):
    path = ckpt / "model.safetensors"
    path.write_bytes(path.read_bytes()[:100])


def _manifest_not_a_table(ckpt):
    (ckpt / "armor_manifest.json").write_text("[]")


def _config_not_json(ckpt):
    (ckpt / "config.json").write_text("{")


def _wrong_factor_shape(ckpt):
    from safetensors.torch import load_file, save_file

    path = ckpt / "model.safetensors"
    tensors = load_file(path)
    tensors["model.layers.0.mlp.up_proj.a_blocks"] = torch.zeros(3, 16, 16)
    save_file(tensors, path, metadata={"format": "armor-export-checkpoint"})
    rehash_checkpoint(ckpt)


@pytest.mark.parametrize(
    "corrupt, expected",
    [
        (_truncate_weights, "model.safetensors: corrupt safetensors file"),
        (_manifest_not_a_table, "armor_manifest.json: not an armor-export checkpoint"),
        (_config_not_json, "config.json:"),
        (_wrong_factor_shape, "matrix model.layers.0.mlp.up_proj: a_blocks has shape (3, 16, 16)"),
    ],
)
def test_eval_of_a_corrupt_checkpoint(
    capsys, armor_checkpoint, text_file, tmp_path, corrupt, expected
):
    ckpt = shutil.copytree(armor_checkpoint, tmp_path / "ckpt")
    corrupt(ckpt)
    code, _, err = run_cli(
        capsys, "eval", ckpt, "--text", text_file, "--windows", 2, "--seqlen", 32
    )
    assert code == 1
    assert expected in error_line(err, "eval")


# --- calibration text and statistics -----------------------------------------------------


@pytest.mark.fault(
    "prune",
    "a calibration text file that does not exist",
    "one error line",
)
def test_missing_calibration_text(capsys, tiny_model_dir, tmp_path):
    missing = tmp_path / "missing.txt"
    code, _, err = run_cli(
        capsys, "prune", "--model", tiny_model_dir, "-o", tmp_path / "o", *calib_args(missing)
    )
    assert code == 1
    assert f"text file not found: {missing}" in error_line(err, "prune")


def test_calibration_text_too_short_for_the_seqlen(capsys, tiny_model_dir, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("hello world")
    code, _, err = run_cli(
        capsys, "prune", "--model", tiny_model_dir, "-o", tmp_path / "o", *calib_args(short)
    )
    assert code == 1
    line = error_line(err, "prune")
    assert "calibration text has" in line and "windows of 32 tokens need at least 33" in line


@pytest.mark.fault(
    "prune",
    "calibration statistics that come out NaN",
    "one error line",
)
def test_nan_statistics_are_a_one_line_error(capsys, nan_model_dir, text_file, tmp_path):
    code, _, err = run_cli(
        capsys,
        "prune", "--model", nan_model_dir, "-o", tmp_path / "o", "--method", "wanda",
        *calib_args(text_file),
    )  # fmt: skip
    assert code == 1
    line = error_line(err, "prune")
    assert "model.layers.0.self_attn.q_proj" in line and "NaN/Inf" in line


@pytest.mark.parametrize("method", ["wanda", "sparsegpt", "armor"])
def test_nan_statistics_are_caught_when_summed_not_in_the_solver(
    method, nan_model_dir, text_file, tmp_path
):
    cfg = PruneConfig.from_dict(
        {
            "model": str(nan_model_dir),
            "method": method,
            "output_dir": str(tmp_path / "o"),
            "workers": 1,
            "armor": {"block_size": 16, "iterations": 3, "compile": False},
            "calibration": {"text": str(text_file), "n_samples": 4, "seqlen": 32},
        }
    )
    with pytest.raises(StatisticsError, match="NaN/Inf") as info:
        api.prune(cfg)
    raised_in = traceback.extract_tb(info.tb)[-1]
    assert raised_in.filename.endswith("prune/statistics.py")
    assert raised_in.name in ("hdiag", "gram")


# --- successful runs ---------------------------------------------------------------------


def test_prune_with_eval_then_eval_the_checkpoint(capsys, tiny_model_dir, text_file, tmp_path):
    out_dir = tmp_path / "out"
    eval_args = ["--eval-text", text_file, "--eval-windows", 2, "--eval-seqlen", 32]
    code, out, err = run_cli(
        capsys,
        "prune", "--model", tiny_model_dir, "-o", out_dir, "--eval", *eval_args,
        *calib_args(text_file),
    )  # fmt: skip
    assert code == 0, err
    *json_lines, last = out.strip().splitlines()
    summary = json.loads("\n".join(json_lines))  # stdout holds the result only, no log lines
    assert summary["method"] == "armor" and summary["matrices"] == 14
    assert math.isfinite(summary["dense_ppl"]) and math.isfinite(summary["pruned_ppl"])
    assert last.startswith(f"perplexity on {text_file}: dense ")
    assert f"armor 2:4 {summary['pruned_ppl']:.2f}" in last

    report = tmp_path / "eval.json"
    code, out, err = run_cli(
        capsys,
        "eval", out_dir, "--text", text_file, "--windows", 2, "--seqlen", 32, "--json", report,
    )  # fmt: skip
    assert code == 0, err
    result = json.loads(report.read_text())
    assert result == json.loads(out)
    assert result["pruned"] is True and result["tokens"] == 64
    assert result["perplexity"] == pytest.approx(summary["pruned_ppl"], abs=1e-3)


def test_env_lists_versions(capsys):
    code, out, _ = run_cli(capsys, "env")
    assert code == 0
    rows = dict(line.split(None, 1) for line in out.splitlines() if line.strip())
    assert rows["torch"].strip() == torch.__version__
    assert "transformers" in rows and "cuda" in rows


@pytest.mark.parametrize("argv", [["--help"], ["prune", "--help"], ["eval", "--help"]])
def test_help(capsys, argv):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: armor-export")
    if argv == ["--help"]:
        assert all(verb in out for verb in ("prune", "eval", "env"))
    if argv[0] == "prune":
        assert "--block-size" in out and "--skip-incompatible" in out


def test_help_does_not_import_torch():
    code = (
        "import sys\n"
        "from armor_export.cli.main import main\n"
        "try:\n    main(['prune', '--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted({'torch', 'transformers'} & set(sys.modules)), file=sys.stderr)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert proc.stderr.strip() == "[]"


# --- configs and options -----------------------------------------------------------------


@pytest.mark.parametrize(
    "toml, key",
    [('method = "wanda"\nbogus = 1\n', "bogus"), ("[armor]\nblok_size = 16\n", "armor.blok_size")],
)
def test_config_with_an_unknown_key(capsys, tmp_path, toml, key):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(toml)
    code, _, err = run_cli(capsys, "prune", "--config", recipe)
    assert code == 1
    assert f"unknown config key(s) {key}" in error_line(err, "prune")


def test_unwritable_log_file(capsys, tmp_path):
    log_file = tmp_path / "no-such-dir" / "run.log"
    code, _, err = run_cli(capsys, "env", "--log-file", log_file)
    assert code == 1
    assert f"cannot open log file {log_file}" in error_line(err, "env")


# --- windows beyond the model, outputs that cannot be written, bytes that are not text ----


@pytest.mark.fault(
    "prune",
    "--calib-seqlen (or eval --seqlen) beyond the model's positions (300 on a 256-position model)",
    "refused, not clamped: one line naming the model's max_position_embeddings and the flag",
)
def test_windows_beyond_the_models_positions_are_refused(
    capsys, tiny_model_dir, text_file, tmp_path
):
    code, _, err = run_cli(
        capsys, "prune", "--model", tiny_model_dir, "-o", tmp_path / "o",
        *calib_args(text_file), "--calib-seqlen", 300,
    )  # fmt: skip
    assert code == 1
    assert (
        "calibration.seqlen 300 exceeds the model's max_position_embeddings 256: use "
        "--calib-seqlen 256 or less" in error_line(err, "prune")
    )
    assert not (tmp_path / "o" / "run_config.json").exists()
    code, _, err = run_cli(
        capsys, "eval", tiny_model_dir, "--text", text_file, "--windows", 1, "--seqlen", 300
    )
    assert code == 1
    line = error_line(err, "eval")
    assert "eval.seqlen 300 exceeds the model's max_position_embeddings 256" in line


def full_disk(monkeypatch, when):
    """safetensors' writer (job results) and the streaming writer (checkpoints) fail as they
    do on a full disk (the Rust writer reports the I/O error as text) for the temporary files
    whose name ``when`` accepts."""
    import safetensors.torch
    from safetensors import SafetensorError

    real = safetensors.torch.save_file

    def save_file(tensors, filename, metadata=None):
        if when(os.path.basename(filename)):
            raise SafetensorError(
                "Error while serializing: I/O error: No space left on device (os error 28)"
            )
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)

    # the checkpoint is streamed by our own writer: its write fails as a full disk's does
    import errno

    from armor_export.prune import lazy

    real_atomic = lazy.atomic_path

    def atomic_path(path, write):
        def failing(tmp):
            if when(os.path.basename(tmp)):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return write(tmp)

        return real_atomic(path, failing)

    monkeypatch.setattr(lazy, "atomic_path", atomic_path)


@pytest.mark.fault(
    "prune",
    "no space left on device while a job result is saved, then while the checkpoint is "
    "written (the writer failing with ENOSPC, in-process)",
    "one line each: no space left on device writing <that file>: free some space, or choose "
    "another output folder; once there is space, the rerun finishes",
)
def test_a_full_disk_while_pruning_is_one_line_naming_the_file(
    capsys, monkeypatch, tiny_model_dir, text_file, tmp_path
):
    out = tmp_path / "o"
    argv = ["prune", "--model", tiny_model_dir, "-o", out, *calib_args(text_file)]
    advice = ": free some space, or choose another output folder"
    with monkeypatch.context() as patch:
        full_disk(patch, lambda name: name.startswith(".model.layers."))
        code, _, err = run_cli(capsys, *argv)
    assert code == 1
    line = error_line(err, "prune")
    assert f"no space left on device writing {out / 'work' / 'jobs'}/model.layers." in line
    assert line.endswith(advice), line
    with monkeypatch.context() as patch:
        full_disk(patch, lambda name: name.startswith(".model.safetensors."))
        code, _, err = run_cli(capsys, *argv)
    assert code == 1
    assert error_line(err, "prune").endswith(
        f"no space left on device writing {out / 'model.safetensors'}{advice}"
    )
    assert not (out / "armor_manifest.json").exists()
    assert not list(out.glob(".model.safetensors.*"))  # no temporary file left behind
    code, _, err = run_cli(capsys, *argv)
    assert code == 0, err
    assert (out / "armor_manifest.json").is_file()


@pytest.mark.fault(
    "export",
    "no space left on device while the ONNX writer saves the graph (an OSError naming no "
    "file, in-process)",
    "one line: no space left on device writing <the export folder>: free some space, or "
    "choose another output folder",
)
def test_a_full_disk_while_exporting_names_the_export_folder(
    capsys, monkeypatch, armor_checkpoint, tmp_path
):
    import errno

    from armor_export.export import api as export_api

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(export_api, "_trace_and_save", no_space)
    out = tmp_path / "onnx"
    code, _, err = run_cli(capsys, "export", armor_checkpoint, "-o", out)
    assert code == 1
    assert error_line(err, "export").endswith(
        f"no space left on device writing {out}: free some space, or choose another output folder"
    )


@pytest.mark.fault(
    "prune",
    "an output path that is a file (prune -o FILE, export -o FILE/sub, eval --json FOLDER)",
    "one line: FILE is a file, not a folder (or: a folder where a file is needed)",
)
def test_an_output_path_that_is_a_file_is_one_line(
    capsys, armor_checkpoint, tiny_model_dir, text_file, tmp_path
):
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    code, _, err = run_cli(
        capsys, "prune", "--model", tiny_model_dir, "-o", a_file, *calib_args(text_file)
    )
    assert code == 1
    assert f"{a_file} is a file, not a folder: give a folder path" in error_line(err, "prune")
    code, _, err = run_cli(capsys, "export", armor_checkpoint, "-o", a_file / "sub")
    assert code == 1
    assert f"{a_file} is a file, not a folder, so {a_file / 'sub'}" in error_line(err, "export")
    code, _, err = run_cli(
        capsys, "eval", tiny_model_dir, "--text", text_file, "--windows", 1, "--seqlen", 16,
        "--json", tmp_path,
    )  # fmt: skip
    assert code == 1
    assert f"a folder where a file is needed: {tmp_path}: give a file path" in error_line(
        err, "eval"
    )
    assert a_file.read_text() == "not a folder"


@pytest.mark.fault(
    "runtime",
    "a prompt that is not UTF-8 (the byte 0xff on the command line of a real process; generate "
    "and verify)",
    "one config error line naming the byte and its position, before the export is opened",
)
def test_a_prompt_that_is_not_utf8_is_one_line(capsys, tmp_path):
    for verb in ("generate", "verify"):
        # what Python makes of the argument bytes b"ab\xff": a lone surrogate
        code, _, err = run_cli(capsys, verb, tmp_path / "no-export", "--prompt", "ab\udcff")
        assert code == 1
        assert "prompt 0 is not UTF-8 text (byte 0xff at character 2)" in error_line(err, verb)
    run = subprocess.run(
        [sys.executable, "-m", "armor_export", "generate", str(tmp_path), "--prompt", b"ab\xff"],
        capture_output=True, timeout=120, check=False,
    )  # fmt: skip
    err = run.stderr.decode(errors="replace")
    assert run.returncode == 1 and "Traceback" not in err, err
    assert "prompt 0 is not UTF-8 text (byte 0xff at character 2)" in err
