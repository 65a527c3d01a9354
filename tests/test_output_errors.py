"""Outputs that cannot be written: a full disk, a read-only folder, a bug's OSError.

``io.user_os_error`` turns the OSErrors a user fixes into one line naming the path; the
atomic writers, the CLI and the build's stages use it. Any other OSError is a bug and keeps
its traceback.

The real-process probes run the CLI in a private mount namespace (``unshare --mount``; not
root: ``unshare --user --map-root-user --mount``) holding a small tmpfs, or a read-only bind
mount of a folder. Nothing is mounted on the host, and the mounts end with the process, even
when it is killed. Root ignores ``chmod 0o555``, so a read-only mount is how a test gets
EROFS as root (CI runs as root on the same kind of machine). Where ``unshare`` or ``mount`` is
not permitted (a container without CAP_SYS_ADMIN, no user namespaces), the probes skip saying
so.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from armor_export.cli.main import main
from armor_export.errors import OutputError
from armor_export.io import user_os_error, write_json

MOUNT_FAILED = 97  # the probe's exit code when its mount was refused
RECIPE = "workers = 1\n[armor]\ncompile = false\niterations = 2\nblock_size = 16\n"


def run_with_mounts(setup: str, argv: list[str]) -> subprocess.CompletedProcess:
    """``argv`` in a private mount namespace after the shell commands ``setup`` (mounts);
    skips, naming why, where such mounts are not permitted."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("no unshare command: cannot give this probe a tmpfs or a read-only folder")
    private = ["--mount"] if os.geteuid() == 0 else ["--user", "--map-root-user", "--mount"]
    script = f'{setup} || exit {MOUNT_FAILED}; exec "$@"'
    run = subprocess.run(
        [unshare, *private, "sh", "-c", script, "sh", *argv],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    if run.returncode == MOUNT_FAILED or "unshare: " in run.stderr:
        pytest.skip(f"mounts not permitted here ({' '.join(private)}): {run.stderr.strip()}")
    return run


def prune_argv(model_dir: Path, text_file: Path, out: Path) -> list[str]:
    recipe = text_file.parent / "recipe.toml"
    recipe.write_text(RECIPE)
    return [
        sys.executable, "-m", "armor_export", "prune", "--config", str(recipe), "--model",
        str(model_dir), "--calib-text", str(text_file), "--calib-samples", "4",
        "--calib-seqlen", "32", "--batch-same-shape", "off", "-o", str(out),
    ]  # fmt: skip


def the_error_line(stderr: str, verb: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith(f"armor-export {verb}:")]
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.mark.fault(
    "prune",
    "a real prune into a 100 KiB tmpfs that fills up",
    "exit 1 and one line: no space left on device writing <the file>: free some space, or "
    "choose another output folder",
)
def test_a_real_full_disk_is_one_line(tiny_model_dir, text_file, tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    run = run_with_mounts(
        f"mount -t tmpfs -o size=100k tmpfs {disk}",
        prune_argv(tiny_model_dir, text_file, disk / "out"),
    )
    assert run.returncode == 1, run.stderr
    line = the_error_line(run.stderr, "prune")
    assert f"no space left on device writing {disk / 'out'}/" in line, line
    assert line.endswith(": free some space, or choose another output folder"), line


@pytest.mark.fault(
    "prune",
    "a real prune into a read-only folder (a read-only bind mount: root ignores chmod)",
    "exit 1 and one line: read-only file system writing <the path>: choose a writable output "
    "folder",
)
def test_a_real_read_only_folder_is_one_line(tiny_model_dir, text_file, tmp_path):
    folder = tmp_path / "read-only"
    folder.mkdir()
    run = run_with_mounts(
        f"mount --bind {folder} {folder} && mount -o remount,ro,bind {folder}",
        prune_argv(tiny_model_dir, text_file, folder / "out"),
    )
    assert run.returncode == 1, run.stderr
    line = the_error_line(run.stderr, "prune")
    assert line.endswith(
        f"read-only file system writing {folder / 'out'}: choose a writable output folder"
    ), line


@pytest.mark.fault(
    "build",
    "no space left on device in the export stage (the ONNX writer failing with ENOSPC)",
    "one line naming the export folder; build_manifest.json records the stage as failed with "
    "that line, and the build's summary table and report are still written (Build FAILED: "
    "export: ...)",
)
def test_a_full_disk_in_a_stage_is_a_recorded_failed_stage(
    tiny_checkpoint, tmp_path, capsys, monkeypatch
):
    from armor_export.export import api as export_api

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(export_api, "_trace_and_save", no_space)
    out = tmp_path / "b"
    toml = tmp_path / "build.toml"
    toml.write_text(f'model = "{tiny_checkpoint}"\noutput_dir = "{out}"\nstages = ["export"]\n')
    assert main(["build", "--config", str(toml)]) == 1
    captured = capsys.readouterr()
    line = the_error_line(captured.err, "build")
    # the summary comes before the error line: the stages so far and where the report is
    assert "armor-export build:" in captured.out and "failed" in captured.out, captured.out
    assert f"report: {out / 'report' / 'report.html'}" in captured.out, captured.out
    message = (
        f"no space left on device writing {out / 'onnx'}: free some space, or choose another "
        "output folder"
    )
    assert line.endswith(message), line
    record = json.loads((out / "build_manifest.json").read_text())["stages"]["export"]
    assert record["status"] == "failed" and record["error"] == message
    report = (out / "report" / "report.md").read_text()
    assert "| export | failed |" in report
    assert "Build FAILED: export: no space left on device" in report


def test_a_writer_names_its_path_and_a_bug_keeps_its_traceback(tmp_path, monkeypatch):
    """ENOSPC while a file is written: an OutputError naming the file, no temporary file
    left; ENOENT of our own temporary file: the OSError itself (a bug, not the user's)."""
    real_replace = os.replace

    def failing(code):
        def replace(src, dst):
            raise OSError(code, os.strerror(code), src)

        return replace

    target = tmp_path / "result.json"
    monkeypatch.setattr(os, "replace", failing(errno.ENOSPC))
    with pytest.raises(OutputError, match=f"no space left on device writing {target}: "):
        write_json(target, {"a": 1})
    monkeypatch.setattr(os, "replace", failing(errno.ENOENT))
    with pytest.raises(FileNotFoundError):
        write_json(target, {"a": 1})
    monkeypatch.setattr(os, "replace", real_replace)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    assert user_os_error(OSError(errno.EIO, "I/O error", str(target))) is None
    assert str(user_os_error(OSError(errno.EROFS, "x", "/ro/x"))) == (
        "read-only file system writing /ro/x: choose a writable output folder"
    )
