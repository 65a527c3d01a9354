"""tools/: the benchmark scripts share code only through tools/benchlib.py and the package,
record how they were run, and time the runtime's own forwards."""

import ast
import importlib
import shlex
import statistics
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ROOT / "tools"
SCRIPTS = sorted(p.stem for p in TOOLS.glob("*.py") if p.stem != "benchlib")


@pytest.fixture
def benchlib(monkeypatch):
    monkeypatch.syspath_prepend(str(TOOLS))
    return importlib.import_module("benchlib")


def imported_by(node: ast.AST) -> set[str]:
    """The top-level names of the modules one import statement imports (none otherwise)."""
    if isinstance(node, ast.Import):
        return {alias.name.split(".")[0] for alias in node.names}
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        return {node.module.split(".")[0]}
    return set()


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth of its code (lazy imports included)."""
    return {name for node in ast.walk(ast.parse(path.read_text())) for name in imported_by(node)}


def test_scripts_are_found():
    assert {"bench_onnx", "bench_quality", "bench_gpu"} <= set(SCRIPTS)


@pytest.mark.parametrize("path", sorted(TOOLS.glob("*.py")), ids=lambda p: p.name)
def test_no_tools_file_imports_a_script(path):
    """A script is run, never imported: what two scripts share lives in benchlib."""
    assert not imported_modules(path) & set(SCRIPTS), path.name


def test_benchlib_loads_no_heavy_module():
    """Scripts that need neither torch nor onnxruntime do not pay for them through benchlib."""
    tree = ast.parse((TOOLS / "benchlib.py").read_text())
    at_load = {name for node in tree.body for name in imported_by(node)}
    assert not at_load & {"torch", "onnxruntime", "numpy", "transformers"}, at_load


def test_run_meta_records_command_date_and_machine(benchlib):
    meta = benchlib.run_meta(
        "bench_x.py", ["--out", "a dir", "--n", "3"], benchlib.machine("Linux", "no GPU"), ort="1"
    )
    assert list(meta)[:3] == ["command", "date", "machine"]
    assert meta["command"] == "python tools/bench_x.py --out 'a dir' --n 3"
    assert shlex.split(meta["command"])[2:] == ["--out", "a dir", "--n", "3"]
    assert meta["date"].endswith(" UTC") and meta["date"][:2] == "20"
    assert meta["machine"].startswith(benchlib.cpu_description())
    assert meta["machine"].endswith(", Linux, no GPU")
    assert meta["ort"] == "1"
    assert benchlib.meta_lines(meta) == [
        f"- command: `{meta['command']}`",
        f"- date: {meta['date']}",
    ]


def test_write_section_replaces_only_its_own_section(benchlib, tmp_path):
    path = tmp_path / "scale.md"
    path.write_text("# head\n\n<!-- a:begin -->\nold\n<!-- a:end -->\n\ntail\n")
    benchlib.write_section(path, "<!-- a:begin -->\nnew\n<!-- a:end -->")
    benchlib.write_section(path, "<!-- b:begin -->\nb\n<!-- b:end -->")
    assert path.read_text() == (
        "# head\n\n<!-- a:begin -->\nnew\n<!-- a:end -->\n\ntail\n\n"
        "<!-- b:begin -->\nb\n<!-- b:end -->\n"
    )


def test_best_of_shuffled_keeps_each_timers_least_time(benchlib):
    import random

    times = {"a": iter([3.0, 1.0, 2.0]), "b": iter([5.0, 6.0, 4.0])}
    timers = {name: (lambda it=it: next(it)) for name, it in times.items()}
    best = benchlib.best_of_shuffled(timers, 3, ["a", "b"], random.Random(0))
    assert best == {"a": 1.0, "b": 4.0}
    low, high = benchlib.bootstrap_median_ci([1.0, 2.0, 3.0, 4.0, 5.0])
    assert 1.0 <= low <= 3.0 <= high <= 5.0


def test_export_runner_times_the_runtimes_prefill_and_steps(benchlib, tiny_export, monkeypatch):
    pytest.importorskip("onnxruntime")
    runner = benchlib.ExportRunner(tiny_export.output_dir, threads=1)
    calls = []
    run = runner.generator.session.run
    monkeypatch.setattr(
        runner.generator.session, "run", lambda feeds: calls.append(feeds) or run(feeds)
    )
    ids = [5, 6, 7, 8]
    assert runner.prefill(ids) > 0
    assert runner.decode(ids, 3) > 0
    assert [f["input_ids"].shape for f in calls] == [(1, 4), (1, 4), (1, 1), (1, 1), (1, 1)]
    # the KV cache is the export's dtype and grows by one position per step
    past = [f["past_key_values.0.key"] for f in calls[1:]]
    assert [p.shape[2] for p in past] == [0, 4, 5, 6]
    assert {p.dtype.name for p in past} == {runner.manifest.dtype}


def test_wrapper_flops_count_every_armor_matrix(benchlib, tiny_checkpoint):
    # the tiny model: 2 layers, per layer sum over projections of d_out + d_in = 1024, b = 16
    assert benchlib.wrapper_flops_per_token(str(tiny_checkpoint)) == 2 * 2 * 16 * 1024


def test_quality_per_shape_groups_the_armor_matrices(monkeypatch, tiny_checkpoint):
    monkeypatch.syspath_prepend(str(TOOLS))
    bench_quality = importlib.import_module("bench_quality")
    from armor_export.report import collect

    matrices = [m for m in collect(tiny_checkpoint).matrices if m.kind == "armor"]
    shapes = bench_quality.per_shape(tiny_checkpoint)
    assert sum(n for n, _, _ in shapes.values()) == len(matrices)
    square = [m for m in matrices if (m.d_out, m.d_in) == (64, 64)]
    n, seconds, ratio = shapes["64x64"]
    assert n == len(square)
    assert seconds == statistics.median_low(m.seconds for m in square)
    assert ratio == statistics.median_low(m.ratio for m in square)


def test_genai_runner_times_prefill_and_steps(benchlib, tiny_export):
    pytest.importorskip("onnxruntime_genai", reason="onnxruntime_genai is not installed")
    runner = benchlib.GenaiRunner(tiny_export.output_dir, threads=1)
    ids = [5, 6, 7, 8]
    assert runner.prefill(ids) > 0
    assert runner.decode(ids, 3) > 0


def test_runtime_benchmark_runs_both_runtimes_and_says_what_it_did_not_run(
    benchlib, tiny_checkpoint, tiny_model_dir, tmp_path, monkeypatch
):
    """bench_runtime.py end to end on the tiny dense and ARMOR models, small settings."""
    pytest.importorskip("onnxruntime_genai", reason="onnxruntime_genai is not installed")
    import json

    from tests.conftest import TEXT

    bench_runtime = importlib.import_module("bench_runtime")
    # the tiny tokenizer's ids of the tests' text instead of the bundled Wikipedia sample
    monkeypatch.setattr(bench_runtime, "prompt_ids", lambda tok, n: tok.encode(TEXT).ids[:n])
    out = tmp_path / "out"
    argv = ["--dense", str(tiny_model_dir), "--armor", f"armor-b16={tiny_checkpoint}"]
    argv += ["--work", str(tmp_path / "work"), "--out", str(out), "--prefill", "32"]
    argv += ["--decode-prompt", "16", "--decode-tokens", "4", "--rounds", "2", "--repeats", "1"]
    assert bench_runtime.main([*argv, "--threads", "1"]) == 0
    data = json.loads((out / "runtime.json").read_text())
    assert set(data["results"]) == {"armor-export", "onnxruntime-genai"}
    for rows in data["results"].values():
        assert set(rows) == {"dense", "armor-b16"}
        assert rows["dense"]["prefill_ratio"] == 1.0
        assert all(len(r["prefill_ms_rounds"]) == 2 for r in rows.values())
    assert "decode_vs_ours" in data["results"]["onnxruntime-genai"]["armor-b16"]
    markdown = (out / "runtime.md").read_text()
    assert "TensorRT engine: not run" in markdown
    assert "onnxruntime-genai on armor-b16" in markdown


def test_the_trt_decode_benchmark_says_not_run_without_a_gpu(benchlib, tmp_path):
    """tools/bench_trt_decode.py (run by tools/gpu_check.sh) writes its report either way:
    here, with no GPU, one that says it was not run and why, and exits 1."""
    import json

    from armor_export.runtime.trt_session import cuda_gpus

    gpus, why = cuda_gpus()
    if gpus:
        pytest.skip(f"a CUDA GPU is here ({gpus}): tools/gpu_check.sh runs the benchmark")
    bench = importlib.import_module("bench_trt_decode")
    assert bench.main(["--out", str(tmp_path)]) == 1
    assert json.loads((tmp_path / "trt_decode.json").read_text())["not_run"] == why
    assert f"**Not run**: {why}." in (tmp_path / "trt_decode.md").read_text()
