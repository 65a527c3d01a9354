"""``armor-export eval EXPORT_DIR``: perplexity of the shipped graph through ONNX Runtime,
torch-free, on the PyTorch eval's windows; the same number as PyTorch's within float32 noise.

The tiny checkpoint and its float32 export are the suite's session fixtures.
"""

import json
import math
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from armor_export.config import EvalConfig
from armor_export.errors import CorruptFileError, NonFiniteOutputError, ShapeError
from armor_export.eval.api import eval_windows_for, evaluate, load_any_model
from armor_export.eval.exported import next_token_nll, window_ids
from armor_export.runtime.generate import load_tokenizer
from tests.conftest import nan_norm_export
from tests.runtime.torch_free import REPO, assert_runs_without_torch

pytest.importorskip("onnxruntime")

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Relative tolerance on ONNX Runtime's perplexity of the float32 export against PyTorch's of
# its checkpoint. Each token's NLL is logsumexp(logits) - logits[target]: both terms move by
# at most max|Δlogit|, so the NLL by at most 2·max|Δlogit|, and perplexity = exp(mean NLL)
# by a factor of at most exp(2·max|Δlogit|). The runtime's parity tests hold this export's
# logits to PyTorch's within 1e-4 (float32 graphs only reorder sums): 2e-4 relative. A wrong
# window, shift or tokenisation moves the number by whole percents. Measured: 5e-7.
FLOAT32_RTOL = 2e-4


@pytest.fixture(scope="module")
def export_dir(tiny_export):
    return tiny_export.output_dir


@pytest.fixture(scope="module")
def checkpoint_model(tiny_checkpoint):
    """The checkpoint loaded once, passed to ``evaluate`` (which then records nothing into
    the suite's shared checkpoint)."""
    model, tokenizer, _ = load_any_model(str(tiny_checkpoint))
    return model, tokenizer


def run_cli(capsys, *argv):
    from armor_export.cli.main import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def error_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("armor-export eval: error:")]
    assert len(lines) == 1, err
    return lines[0]


# batch 3 leaves a last batch of 1; batch 16 is cut to the export's limits.max_batch 8 (8 + 2)
@pytest.mark.parametrize("windows, batch_size", [(4, 3), (10, 16)])
def test_export_perplexity_equals_pytorch_on_the_same_windows(
    export_dir, tiny_checkpoint, checkpoint_model, text_file, windows, batch_size, monkeypatch
):
    from armor_export.runtime.session import OrtSession

    batches, run = [], OrtSession.run

    def recording_run(self, feeds):
        batches.append(feeds["input_ids"].shape)
        return run(self, feeds)

    monkeypatch.setattr(OrtSession, "run", recording_run)
    model, hf_tokenizer = checkpoint_model
    cfg = EvalConfig(str(text_file), windows, 64, batch_size)
    # the same windows: the export's tokenizer.json cuts what the checkpoint's tokenizer cuts
    want_ids = eval_windows_for(hf_tokenizer, cfg).numpy()
    got_ids = window_ids(load_tokenizer(export_dir / "tokenizer.json"), text_file.read_text(),
                         cfg.seqlen, cfg.n_windows)  # fmt: skip
    assert np.array_equal(got_ids, want_ids)

    pytorch = evaluate(str(tiny_checkpoint), cfg, model=model, tokenizer=hf_tokenizer)
    onnx = evaluate(str(export_dir), cfg)
    want = [min(batch_size, 8)] * (windows // min(batch_size, 8))
    want += [windows % min(batch_size, 8)] if windows % min(batch_size, 8) else []
    assert batches == [(n, 64) for n in want]  # one prefill per batch, none above max_batch
    assert (pytorch.runtime, onnx.runtime) == ("pytorch", "onnxruntime")
    assert onnx.providers == ["CPUExecutionProvider"] and onnx.dtype == "float32"
    assert (onnx.windows, onnx.tokens, onnx.seqlen) == (windows, windows * 64, 64)
    assert (onnx.windows, onnx.tokens) == (pytorch.windows, pytorch.tokens)
    assert onnx.pruned
    assert onnx.perplexity == pytest.approx(pytorch.perplexity, rel=FLOAT32_RTOL)


def test_numpy_nll_is_pytorch_cross_entropy():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 17, 300, generator=gen) * 8
    ids = torch.randint(0, 300, (3, 17), generator=gen)
    want = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, 300), ids[:, 1:].reshape(-1), reduction="sum"
    )
    got = next_token_nll(logits.numpy(), ids.numpy())
    assert got == pytest.approx(float(want), rel=1e-6)
    # float16 logits (an fp16 export's) are read in float32, as PyTorch eval's .float()
    half = logits.half()
    assert next_token_nll(half.numpy(), ids.numpy()) == pytest.approx(
        float(
            torch.nn.functional.cross_entropy(
                half[:, :-1].float().reshape(-1, 300), ids[:, 1:].reshape(-1), reduction="sum"
            )
        ),
        rel=1e-6,
    )


def test_cli_json_and_summary_say_which_runtime(
    export_dir, tiny_model_dir, text_file, tmp_path, capsys
):
    report = tmp_path / "onnx.json"
    code, out, err = run_cli(
        capsys, "eval", export_dir, "--text", text_file, "--windows", 2, "--seqlen", 32,
        "--json", report,
    )  # fmt: skip
    assert code == 0, err
    result = json.loads(report.read_text())
    assert result == json.loads(out)  # stdout holds the result only
    assert result["runtime"] == "onnxruntime"
    assert result["providers"] == ["CPUExecutionProvider"]
    assert result["model"] == str(export_dir) and result["tokens"] == 64
    assert math.isfinite(result["perplexity"])
    assert (
        f"perplexity on {text_file} through ONNX Runtime (CPUExecutionProvider, export "
        f"{export_dir}): {result['perplexity']:.2f}"
    ) in err

    code, out, err = run_cli(
        capsys, "eval", tiny_model_dir, "--text", text_file, "--windows", 2, "--seqlen", 32
    )
    assert code == 0, err
    dense = json.loads(out)
    assert dense["runtime"] == "pytorch" and dense["dtype"] == "float32"
    assert (
        f"perplexity on {text_file} through PyTorch (float32, model {tiny_model_dir}): "
        f"{dense['perplexity']:.2f}"
    ) in err


@pytest.mark.fault(
    "runtime",
    "eval of an export with a --seqlen longer than the export's limits.max_prompt",
    "one line: eval.seqlen 300 exceeds this export's limits.max_prompt 256, the longest "
    "prefill its graph takes: use --seqlen 256 or less; exit 1, before any window runs",
)
def test_a_seqlen_beyond_the_exports_limits_is_one_line(export_dir, text_file, capsys):
    code, _, err = run_cli(
        capsys, "eval", export_dir, "--text", text_file, "--windows", 1, "--seqlen", 300
    )
    assert code == 1
    line = error_line(err)
    assert (
        "eval.seqlen 300 exceeds this export's limits.max_prompt 256, the longest prefill its "
        "graph takes: use --seqlen 256 or less (256 is the model's own "
        "max_position_embeddings)"
    ) in line
    with pytest.raises(ShapeError, match="a window of one token predicts none"):
        evaluate(str(export_dir), EvalConfig(str(text_file), 1, 1, 1))


def _missing_graph(folder):
    (folder / "model.onnx").unlink()


def _truncated_graph(folder):
    graph = folder / "model.onnx"
    graph.write_bytes(graph.read_bytes()[:1000])


def _manifest_not_json(folder):
    (folder / "export_manifest.json").write_text("{not json")


@pytest.mark.fault(
    "runtime",
    "eval of an export folder with its graph missing or truncated, or its manifest not JSON",
    "one line naming the file (missing file model.onnx listed in export_manifest.json; "
    "model.onnx is not the file this export wrote; export_manifest.json: not valid JSON); "
    "exit 1",
)
@pytest.mark.parametrize(
    "damage, expected",
    [
        (_missing_graph, "missing file model.onnx listed in export_manifest.json"),
        (_truncated_graph, "model.onnx is not the file this export wrote"),
        (_manifest_not_json, "export_manifest.json: not valid JSON"),
    ],
)
def test_a_damaged_export_folder_is_one_line(
    export_dir, text_file, tmp_path, capsys, damage, expected
):
    folder = shutil.copytree(export_dir, tmp_path / "onnx")
    damage(folder)
    code, _, err = run_cli(
        capsys, "eval", folder, "--text", text_file, "--windows", 1, "--seqlen", 32
    )
    assert code == 1
    assert expected in error_line(err)
    with pytest.raises(CorruptFileError):
        evaluate(str(folder), EvalConfig(str(text_file), 1, 32, 1))


@pytest.mark.fault(
    "runtime",
    "eval of an export whose weights give NaN logits (a norm weight set to NaN, hashes rewritten)",
    "one line: non-finite logits at windows 1-1 of 2 (NaN in ...), the export or its weights "
    "are damaged; exit 1, no perplexity",
)
def test_nan_logits_stop_eval_in_one_line(export_dir, text_file, tmp_path, capsys):
    pytest.importorskip("onnx")
    folder = nan_norm_export(export_dir, tmp_path / "nan")
    code, out, err = run_cli(
        capsys, "eval", folder, "--text", text_file, "--windows", 2, "--seqlen", 32,
        "--batch-size", 1,
    )  # fmt: skip
    assert code == 1 and out == ""
    line = error_line(err)
    assert "non-finite logits at windows 1-1 of 2 (NaN in" in line
    with pytest.raises(NonFiniteOutputError):
        evaluate(str(folder), EvalConfig(str(text_file), 1, 32, 1))


def test_eval_of_an_export_imports_neither_torch_nor_transformers(export_dir, text_file, tmp_path):
    result = tmp_path / "result.json"
    assert_runs_without_torch(
        f"""
        import argparse
        from armor_export.cli import evaluate

        parser = argparse.ArgumentParser()
        evaluate.add_parser(parser.add_subparsers())
        args = parser.parse_args(["eval", {str(export_dir)!r}, "--text", {str(text_file)!r},
                                  "--windows", "2", "--seqlen", "32", "--json",
                                  {str(result)!r}])
        assert evaluate.run(args) == 0
        """
    )
    assert json.loads(result.read_text())["runtime"] == "onnxruntime"
    # the whole command too (its parser loads every verb's module: none imports torch)
    code = f"""
import sys
from armor_export.cli.main import main
assert main(["eval", {str(export_dir)!r}, "--text", {str(text_file)!r}, "--windows", "1",
             "--seqlen", "32"]) == 0
loaded = [m for m in ("torch", "transformers") if m in sys.modules]
assert not loaded, loaded
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
