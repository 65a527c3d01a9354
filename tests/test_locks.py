"""One writer per output folder, with real processes (issue #18, item 3).

A second prune or build into a folder that a live process holds is refused with one line
naming the holder. The lock of a process killed with SIGKILL is gone at once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from armor_export.errors import OutputInUseError
from armor_export.locks import LOCK_FILE, hold
from tests.conftest import tiny_prune_config

ROOT = Path(__file__).resolve().parents[1]
HOLDER = """
import sys, time
from armor_export.locks import hold
with hold(sys.argv[1], "prune"):
    print("held", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def holder(tmp_path):
    """A live process that holds ``tmp_path / 'out'``; killed at the end."""
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(out)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    yield out, proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()


@pytest.mark.fault(
    "prune",
    "a second prune into a folder another live prune is writing",
    "one line naming the holder (verb and pid); no run_config.json written",
)
def test_a_second_writer_is_refused_naming_the_holder(holder, tiny_model_dir, text_file):
    from armor_export.prune import api

    out, proc = holder
    cfg = tiny_prune_config(tiny_model_dir, text_file, out, "magnitude")
    with pytest.raises(
        OutputInUseError, match=rf"being written by prune \(pid {proc.pid} on "
    ) as info:
        api.prune(cfg)
    assert "\n" not in str(info.value)
    assert not (out / "run_config.json").exists()  # nothing written under another's lock


def test_the_cli_says_it_in_one_line(holder, tiny_model_dir, text_file):
    out, proc = holder
    run = subprocess.run(
        [sys.executable, "-m", "armor_export", "prune", "--model", str(tiny_model_dir),
         "--method", "magnitude", "--calib-text", str(text_file), "-o", str(out), "-q"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 1
    lines = [line for line in run.stderr.splitlines() if "error" in line]
    assert lines == [
        next(line for line in run.stderr.splitlines() if line.startswith("armor-export prune"))
    ]
    assert f"pid {proc.pid}" in lines[0] and "being written by" in lines[0]


@pytest.mark.fault(
    "prune",
    "the prune that held a folder was killed with SIGKILL",
    "the next prune takes the folder at once",
)
def test_a_killed_holder_leaves_no_stuck_lock(holder, tiny_model_dir, text_file):
    from armor_export.prune import api

    out, proc = holder
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (out / LOCK_FILE).exists()  # the file stays; the lock went with the process
    result = api.prune(tiny_prune_config(tiny_model_dir, text_file, out, "magnitude"))
    assert len(result.metrics) == 14


@pytest.mark.fault(
    "build",
    "a second build into a folder another live process is writing",
    "one line naming the holder",
)
def test_build_holds_its_folder(holder):
    from armor_export.config import BuildConfig
    from armor_export.pipeline import build

    out, _ = holder
    with pytest.raises(OutputInUseError, match="being written by"):
        build(BuildConfig(model="unused", output_dir=str(out), stages=["export"]))


def test_one_process_may_hold_a_folder_again_after_releasing_it(tmp_path):
    with hold(tmp_path, "prune"):
        pass
    start = time.monotonic()
    with hold(tmp_path, "prune"):
        assert time.monotonic() - start < 60  # not blocked by its own released lock
