"""Pruning spread over torch.distributed ranks: real gloo processes, equality, resume."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from armor_export.config import PruneConfig
from armor_export.prune import api
from armor_export.prune.checkpoint import load_checkpoint
from armor_export.prune.distributed import assign


def test_assignment_is_balanced_and_deterministic():
    sizes = {f"m{i}": s for i, s in enumerate([9, 7, 6, 5, 4, 3, 3, 1])}
    shares = assign(sizes, 2)
    assert sorted(sum(shares, [])) == sorted(sizes)
    loads = [sum(sizes[n] for n in share) for share in shares]
    assert max(loads) <= 4 / 3 * sum(loads) / 2  # LPT's guarantee against the optimum
    assert assign(dict(reversed(list(sizes.items()))), 2) == shares


def write_config(path, model_dir, text_file, out, iterations=8, low_memory=False):
    path.write_text(
        f'model = "{model_dir}"\nmethod = "armor"\noutput_dir = "{out}"\nworkers = 1\n'
        f"low_memory = {str(low_memory).lower()}\n"
        f"[armor]\nblock_size = 16\niterations = {iterations}\ncompile = false\n"
        f'[calibration]\ntext = "{text_file}"\nn_samples = 4\nseqlen = 32\nbatch_size = 2\n'
    )
    return path


def torchrun(config, **kwargs):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "armor_export", "prune", "-q", "--config", str(config)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True, **kwargs)  # fmt: skip


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (Linux /proc): torchrun starts each rank in a session
    of its own, so killing the launcher's process group does not reach them."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_run(proc) -> None:
    """SIGKILL the launcher and every rank, and wait until none of them is left."""
    ranks = descendants(proc.pid)
    os.killpg(proc.pid, signal.SIGKILL)
    for pid in ranks:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 60
    while any(Path(f"/proc/{pid}").exists() and _alive(pid) for pid in ranks):
        assert time.monotonic() < deadline, "a killed rank did not exit"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def assert_same_checkpoints(a, b):
    model_a, manifest_a = load_checkpoint(a)
    model_b, manifest_b = load_checkpoint(b)
    assert set(manifest_a["matrices"]) == set(manifest_b["matrices"])
    for name in manifest_a["matrices"]:
        mod_a, mod_b = model_a.get_submodule(name), model_b.get_submodule(name)
        assert torch.equal(mod_a.mask, mod_b.mask), name
        for attr in ("core", "a_blocks", "b_blocks"):
            torch.testing.assert_close(getattr(mod_a, attr), getattr(mod_b, attr))


def test_two_gloo_ranks_give_the_single_process_result(
    tiny_model_dir, text_file, tmp_path, one_torch_thread
):
    """Ranks share the calibration batches and read their layers lazily (low memory); the
    reference is one ordinary in-memory process."""
    config = write_config(
        tmp_path / "dist.toml", tiny_model_dir, text_file, tmp_path / "dist", low_memory=True
    )
    proc = torchrun(config)
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output
    single = PruneConfig.from_toml(config)
    single.output_dir = str(tmp_path / "single")
    single.low_memory = False
    api.prune(single)
    assert_same_checkpoints(tmp_path / "dist", tmp_path / "single")
    ranks = [json.loads((tmp_path / "dist" / "work" / "ranks" / f"rank{r}.json").read_text())
             for r in (0, 1)]  # fmt: skip
    assert sum(r["jobs"] for r in ranks) == 14 and all(r["jobs"] >= 5 for r in ranks)
    assert all(r["peak_rss_mib"] > 0 and r["world"] == 2 for r in ranks)
    for r in ranks:  # peaks so far at the end of each phase: they can only grow
        phases = r["peak_rss_by_phase_mib"]
        assert 0 < phases["after_calibration"] <= phases["after_jobs"] <= r["peak_rss_mib"]


@pytest.mark.fault(
    "prune",
    "a torchrun prune killed mid-run",
    "the relaunch redoes no finished job",
)
def test_relaunch_after_a_kill_redoes_no_finished_job(
    tiny_model_dir, text_file, tmp_path, one_torch_thread
):
    out = tmp_path / "dist"
    config = write_config(tmp_path / "d.toml", tiny_model_dir, text_file, out, iterations=400)
    jobs = out / "work" / "jobs"
    proc = torchrun(config)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        if jobs.is_dir() and len(list(jobs.glob("*.safetensors"))) >= 2:
            break
        time.sleep(0.05)
    kill_run(proc)  # every rank and the launcher, mid-run
    finished = {p.name: p.stat().st_mtime_ns for p in jobs.glob("*.safetensors")}
    assert 2 <= len(finished) < 14, "the kill should land mid-run"
    assert not (out / "armor_manifest.json").exists()

    proc = torchrun(config)
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output
    for name, mtime in finished.items():
        assert (jobs / name).stat().st_mtime_ns == mtime, f"{name} was solved again"
    assert len(list(jobs.glob("*.safetensors"))) == 14
    single = PruneConfig.from_toml(config)
    single.output_dir = str(tmp_path / "single")
    api.prune(single)
    assert_same_checkpoints(out, tmp_path / "single")


@pytest.mark.fault(
    "prune",
    "the torchrun launcher of a prune killed with SIGKILL mid-run (its ranks run in sessions "
    "of their own)",
    "every rank stops within a minute (SIGTERM from the kernel, handled as Ctrl-C); no "
    "checkpoint is written",
)
def test_ranks_die_with_a_killed_launcher(tiny_model_dir, text_file, tmp_path, one_torch_thread):
    out = tmp_path / "dist"
    config = write_config(tmp_path / "d.toml", tiny_model_dir, text_file, out, iterations=400)
    jobs = out / "work" / "jobs"
    proc = torchrun(config)
    ranks: list[int] = []
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and proc.poll() is None:
            if jobs.is_dir() and len(list(jobs.glob("*.safetensors"))) >= 1:
                break
            time.sleep(0.05)
        ranks = [pid for pid in descendants(proc.pid) if _alive(pid)]
        assert ranks and proc.poll() is None, "the kill should land mid-run"
        os.kill(proc.pid, signal.SIGKILL)  # the launcher alone
        proc.wait()
        deadline = time.monotonic() + 60
        while any(_alive(pid) for pid in ranks) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = [pid for pid in ranks if _alive(pid)]
        assert not left, f"ranks outlived their launcher: {left}"
    finally:
        for pid in ranks:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert not (out / "armor_manifest.json").exists()
