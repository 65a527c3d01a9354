import io

from rich.console import Console

from armor_export.progress import NullReporter, RichReporter
from armor_export.prune.schedule import resolve_workers


def test_rich_reporter_draws_a_bar_with_info():
    buf = io.StringIO()
    reporter = RichReporter(Console(file=buf, force_terminal=False, width=120))
    with reporter.task("prune (armor)", 3) as task:
        for _ in range(3):
            task.advance(1, loss="0.0123")
    out = buf.getvalue()
    assert "prune (armor)" in out and "3/3" in out and "loss=0.0123" in out


def test_null_reporter_accepts_the_same_calls():
    with NullReporter().task("x", None) as task:
        task.advance(2, anything=1)


def test_workers_auto_and_capped_by_pending_jobs(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    assert resolve_workers(0, 100) == 8
    assert resolve_workers(0, 3) == 3
    assert resolve_workers(2, 100) == 2
    assert resolve_workers(5, 0) == 1


def test_atomic_writes_leave_no_temp_files_and_usual_permissions(tmp_path):
    import os

    import torch

    from armor_export.io import read_json, read_tensors, write_json, write_tensors

    write_json(tmp_path / "a.json", {"x": 1})
    write_tensors(tmp_path / "t.safetensors", {"w": torch.ones(2)})
    assert read_json(tmp_path / "a.json") == {"x": 1}
    assert torch.equal(read_tensors(tmp_path / "t.safetensors")["w"], torch.ones(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "t.safetensors"]
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o666 & ~mask
