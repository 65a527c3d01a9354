"""No process outlives its command, with real processes (issue #24, items 5, 9 and 10).

A ``prune`` or ``build`` with worker processes, and an ``engine`` with its builder child, are
started as a user starts them and stopped with SIGTERM or SIGKILL. Every process they
started is gone within a bounded wait, SIGTERM ends like Ctrl-C (one line, exit 130, no
traceback), and a killed ``engine`` publishes nothing and leaves no working folder. A second
``engine`` into a folder a live one is writing is refused in one line.
"""

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

ROOT = Path(__file__).resolve().parents[1]
WAIT_S = 180  # bound on every wait: starting torch in a worker is slow on a loaded machine
INTERRUPTED = "interrupted (finished work is kept)"
EXIT_INTERRUPTED = 130


def children_of() -> dict[int, list[int]]:
    found: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError):
            found.setdefault(int(stat.read_text().rsplit(")", 1)[1].split()[1]), []).append(
                int(stat.parent.name)
            )
    return found


def descendants(pid: int) -> list[int]:
    tree, found, todo = children_of(), [], [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def wait_for(condition, what: str, proc: subprocess.Popen):
    deadline = time.monotonic() + WAIT_S
    while not (found := condition()):
        assert proc.poll() is None, f"the command ended (exit {proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"no {what} within {WAIT_S} s"
        time.sleep(0.05)
    return found


def survivors(pids: list[int]) -> list[str]:
    """Those of ``pids`` still running after a bounded wait, with their command lines."""
    deadline = time.monotonic() + WAIT_S
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return [f"{p}: {cmdline(p)[:150]}" for p in pids if alive(p)]


def kill_all(seen: dict[int, str]) -> None:
    """SIGKILL those of ``seen`` (pid: command line) still running the same command."""
    for pid, line in seen.items():
        if alive(pid) and cmdline(pid) == line:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def remember(seen: dict[int, str], pids: list[int]) -> list[int]:
    seen.update({pid: cmdline(pid) for pid in pids if pid not in seen})
    return pids


def _default_sigint() -> None:
    """Ctrl-C's default action in the command, as in a terminal: a suite started in the
    background by a non-interactive shell runs with SIGINT ignored, which its children
    inherit (the command then rightly ignores Ctrl-C, and the Ctrl-C test cannot test it)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextlib.contextmanager
def command(args: list[str], tmp_path: Path, **env):
    """``python -m armor_export ARGS`` in a session of its own, stderr to a file (an orphan
    would keep a pipe open); whatever is left of it is killed at the end."""
    stderr = tmp_path / "stderr.txt"
    with stderr.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "armor_export", *args],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True,
            env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **env},
            preexec_fn=_default_sigint,
        )  # fmt: skip
    seen: dict[int, str] = {}
    try:
        yield proc, seen, stderr
    finally:
        remember(seen, descendants(proc.pid))
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        kill_all(seen)


def has_a_job(pid: int) -> bool:
    """A pool worker has received a job: it maps the job's tensors, which torch sends
    through shared memory."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False
    return "/dev/shm/torch_" in maps or "memfd:" in maps


def workers_of(proc: subprocess.Popen, seen: dict[int, str]) -> list[int]:
    """The pool's processes (the resource tracker too), once two workers are solving jobs."""
    kids = remember(seen, descendants(proc.pid))
    busy = [p for p in kids if "spawn_main" in cmdline(p) and has_a_job(p)]
    return kids if len(busy) >= 2 else []


def slow_prune_args(model_dir, text_file, out) -> list[str]:
    """Two workers and ARMOR jobs long enough to be stopped half way: no early stop (a job
    that stalls would end after 20 iterations, and on a loaded machine the whole prune could
    end before the test's signal)."""
    recipe = Path(out).parent / "slow.toml"
    recipe.write_text("[armor]\npatience = 100000\ncompile = false\n")
    return ["prune", "--config", str(recipe), "--model", str(model_dir), "--method", "armor",
            "--block-size", "16",
            "--iterations", "5000", "--calib-text", str(text_file), "--calib-samples", "4",
            "--calib-seqlen", "32", "--workers", "2", "--batch-same-shape", "off",
            "-o", str(out)]  # fmt: skip


def assert_interrupted(proc, stderr: Path, verb: str) -> str:
    assert proc.wait(timeout=WAIT_S) == EXIT_INTERRUPTED
    text = stderr.read_text()
    assert f"armor-export {verb}: {INTERRUPTED}" in text
    assert "Traceback" not in text, text
    return text


@pytest.mark.fault(
    "prune",
    "SIGTERM to a prune running 2 worker processes",
    "one line: interrupted, finished work is kept (exit 130, as Ctrl-C); no worker left",
)
def test_sigterm_stops_prune_and_its_workers(tiny_model_dir, text_file, tmp_path):
    args = slow_prune_args(tiny_model_dir, text_file, tmp_path / "out")
    with command(args, tmp_path) as (proc, seen, stderr):
        kids = wait_for(lambda: workers_of(proc, seen), "pool workers", proc)
        os.kill(proc.pid, signal.SIGTERM)
        assert_interrupted(proc, stderr, "prune")
        assert survivors(kids) == []


@pytest.mark.fault(
    "prune",
    "SIGKILL to a prune running 2 worker processes",
    "its workers and the resource tracker exit with it; no traceback afterwards",
)
def test_prune_workers_die_with_a_killed_parent(tiny_model_dir, text_file, tmp_path):
    args = slow_prune_args(tiny_model_dir, text_file, tmp_path / "out")
    with command(args, tmp_path) as (proc, seen, stderr):
        kids = wait_for(lambda: workers_of(proc, seen), "pool workers", proc)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=WAIT_S) == -signal.SIGKILL
        assert survivors(kids) == []
        # the resource tracker may say it removed the pool's semaphores; nothing else
        assert "Traceback" not in stderr.read_text()


@pytest.mark.fault(
    "prune",
    "Ctrl-C (SIGINT to the whole process group) during a prune with 2 workers",
    "one line: interrupted, finished work is kept; no worker traceback, no worker left",
)
def test_ctrl_c_stops_prune_without_worker_tracebacks(tiny_model_dir, text_file, tmp_path):
    args = slow_prune_args(tiny_model_dir, text_file, tmp_path / "out")
    with command(args, tmp_path) as (proc, seen, stderr):
        kids = wait_for(lambda: workers_of(proc, seen), "pool workers", proc)
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal sends
        assert_interrupted(proc, stderr, "prune")
        assert survivors(kids) == []


@pytest.mark.fault(
    "build",
    "SIGTERM to a build while its prune stage runs 2 worker processes",
    "one line (exit 130); the prune stage is recorded as failed; no worker left",
)
def test_sigterm_stops_build_and_records_the_stage(tiny_model_dir, text_file, tmp_path):
    out = tmp_path / "build"
    config = tmp_path / "build.toml"
    config.write_text(
        f'model = "{tiny_model_dir}"\noutput_dir = "{out}"\nstages = ["prune"]\n'
        '[prune]\nworkers = 2\nbatch_same_shape = "off"\n'
        "[prune.armor]\nblock_size = 16\niterations = 5000\ncompile = false\n"
        f'[prune.calibration]\ntext = "{text_file}"\nn_samples = 4\nseqlen = 32\n'
        "batch_size = 2\n"
    )
    with command(["build", "--config", str(config)], tmp_path) as (proc, seen, stderr):
        kids = wait_for(lambda: workers_of(proc, seen), "pool workers", proc)
        os.kill(proc.pid, signal.SIGTERM)
        assert_interrupted(proc, stderr, "build")
        assert survivors(kids) == []
    stage = json.loads((out / "build_manifest.json").read_text())["stages"]["prune"]
    assert stage["status"] == "failed" and "SIGTERM" in stage["error"]


def test_a_worker_whose_parent_died_first_ends_itself():
    """The race PR_SET_PDEATHSIG leaves: the parent died before the request. The worker
    compares its parent with the one that started it, and ends itself."""
    code = (
        "import os; from armor_export import lifetime; "
        "lifetime.die_with_parent(os.getppid() + 1); print('still here')"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=WAIT_S)  # fmt: skip
    assert run.returncode == -signal.SIGKILL and "still here" not in run.stdout


def test_the_parent_it_was_started_by_keeps_it_running():
    code = (
        "import os; from armor_export import lifetime; "
        "print(lifetime.die_with_parent(os.getppid()))"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=WAIT_S)  # fmt: skip
    assert run.returncode == 0
    assert run.stdout.strip() == str(sys.platform.startswith("linux"))


def test_sigterm_is_an_interrupt_only_inside_the_block():
    from armor_export import lifetime

    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(lifetime.Terminated), lifetime.sigterm_as_interrupt():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises as soon as the signal arrives
    assert signal.getsignal(signal.SIGTERM) is previous


# --- engine: the builder child ---------------------------------------------------------


def engine_child(proc: subprocess.Popen, seen: dict[int, str]) -> int | None:
    kids = remember(seen, descendants(proc.pid))
    return next((p for p in kids if "armor_export.engine.child" in cmdline(p)), None)


def leftovers(out: Path, tmp: Path) -> list[str]:
    """Working folders of a build: in the output folder, and the child's request folder in
    the temporary folder (TMPDIR)."""
    return sorted(
        [p.name for p in out.glob(".engine-*")] + [p.name for p in tmp.glob("armor-child-*")]
    )


@pytest.fixture
def engine_run(tiny_export, tmp_path):
    """``engine`` of the tiny export into ``tmp_path / 'engine'``, its TMPDIR in tmp_path."""
    pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX missing: pip install '.[rtx]'")
    out, tmp = tmp_path / "engine", tmp_path / "tmp"
    tmp.mkdir()
    args = ["engine", str(tiny_export.output_dir), "-o", str(out), "-q"]
    with command(args, tmp_path, TMPDIR=str(tmp)) as (proc, seen, stderr):
        child = wait_for(lambda: engine_child(proc, seen), "engine child", proc)
        yield proc, child, out, tmp, stderr


@pytest.mark.fault(
    "engine",
    "SIGKILL to engine while its child builds",
    "the child exits at once: no model.engine or build_report.json later, no working folder",
)
def test_a_killed_engine_publishes_nothing_later(engine_run):
    proc, child, out, tmp, _ = engine_run
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=WAIT_S)
    assert survivors([child]) == []
    assert not (out / "model.engine").exists() and not (out / "build_report.json").exists()
    assert leftovers(out, tmp) == []


@pytest.mark.fault(
    "engine",
    "SIGTERM to engine while its child builds",
    "one line: interrupted (exit 130); the child is stopped; nothing published, no folder left",
)
def test_sigterm_stops_engine_and_its_child(engine_run):
    proc, child, out, tmp, stderr = engine_run
    os.kill(proc.pid, signal.SIGTERM)
    assert_interrupted(proc, stderr, "engine")
    assert survivors([child]) == []
    assert not (out / "model.engine").exists() and not (out / "build_report.json").exists()
    assert leftovers(out, tmp) == []


@pytest.mark.fault(
    "engine",
    "a second engine into the folder another live engine is building",
    "one line naming the holder (engine, pid); the first one's engine is what the folder holds",
)
def test_a_second_engine_into_one_folder_is_refused(engine_run, tiny_export):
    proc, child, out, _, stderr = engine_run
    os.kill(child, signal.SIGSTOP)  # the first build holds its folder while it waits
    try:
        second = subprocess.run(
            [sys.executable, "-m", "armor_export", "engine", str(tiny_export.output_dir),
             "-o", str(out), "--no-sparse", "-q"],
            cwd=ROOT, capture_output=True, text=True, timeout=WAIT_S,
        )  # fmt: skip
    finally:
        os.kill(child, signal.SIGCONT)
    assert second.returncode == 1, second.stderr
    errors = [line for line in second.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("armor-export engine: error: ")
    assert f"being written by engine (pid {proc.pid} on " in errors[0]
    assert proc.wait(timeout=WAIT_S) == 0, stderr.read_text()
    report = json.loads((out / "build_report.json").read_text())
    assert report["sparse_weights_flag"] is True  # the first build's, not the refused one's
