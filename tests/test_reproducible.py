"""Two prunes of one model, text and config give the same checkpoint bytes (#24 item 8).

Each prune is a real ``armor-export prune`` process with a pool of two workers, so which
worker solves which matrix, and in what order, is up to the operating system: the bytes
must not depend on it (docs/design.md §7.8 lists what they do depend on).
"""

from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest

RECIPE = (
    'workers = 2\nbatch_same_shape = "off"\n'
    "[armor]\ncompile = true\niterations = 6\nblock_size = 16\n"
)


def _prune(model_dir, text_file, out, recipe) -> str:
    argv = [
        sys.executable, "-m", "armor_export", "prune", "--config", str(recipe), "--model",
        str(model_dir), "--calib-text", str(text_file), "--calib-samples", "4",
        "--calib-seqlen", "32", "-o", str(out), "-q",
    ]  # fmt: skip
    run = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    return hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()


@pytest.mark.fault(
    "prune",
    "the same prune run twice, each over a pool of two worker processes",
    "byte-identical model.safetensors: the job-to-worker schedule leaves no trace",
)
def test_two_prunes_of_one_config_give_identical_checkpoint_bytes(
    tiny_model_dir, text_file, tmp_path
):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(RECIPE)
    first = _prune(tiny_model_dir, text_file, tmp_path / "one", recipe)
    second = _prune(tiny_model_dir, text_file, tmp_path / "two", recipe)
    assert first == second
