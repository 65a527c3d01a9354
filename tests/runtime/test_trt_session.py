"""``generate --backend tensorrt`` opens the export's built engine (TensorRT-RTX here, built on
CPU for sm80): each refusal is one line naming what is missing, before TensorRT deserialises
anything or CUDA is called. Running the engine needs a CUDA GPU: tests/gpu/test_gpu_runtime.py.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from armor_export.errors import BackendUnavailableError, ConfigError
from armor_export.export_manifest import seal

trt = pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX missing: pip install '.[rtx]'")

from armor_export.engine import folder  # noqa: E402
from armor_export.runtime import Generator, trt_session  # noqa: E402
from tests.runtime.torch_free import assert_runs_without_torch  # noqa: E402

GPUS, NO_GPU = trt_session.cuda_gpus()
needs_no_gpu = pytest.mark.skipif(bool(GPUS), reason=f"a CUDA GPU is here ({GPUS})")


@pytest.fixture(scope="module")
def export_with_engine(tiny_export, tmp_path_factory):
    """A copy of the tiny float32 export with its real TensorRT-RTX engine (sm80) in
    <export>/engine, where the engine verb writes it by default."""
    from armor_export.config import EngineConfig
    from armor_export.engine import build_engine

    export = tmp_path_factory.mktemp("trt-session") / "onnx"
    shutil.copytree(tiny_export.output_dir, export)
    build_engine(EngineConfig(export_dir=str(export), compute_capability="sm80"))
    return export


@pytest.fixture
def copy_of(tmp_path):
    """``copy_of(folder, **report_fields)``: a copy of an export whose build report is edited."""

    def copy(folder, **fields):
        target = tmp_path / "export"
        shutil.copytree(folder, target)
        path = target / "engine" / "build_report.json"
        if fields:
            path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))
        return target

    return copy


def refusal(folder, backend="tensorrt") -> str:
    with pytest.raises(BackendUnavailableError) as info:
        Generator(folder, backend=backend)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.fault(
    "runtime",
    "--backend tensorrt on an export with no built engine",
    "one line: the engine file it looked for, 'armor-export engine' to build one, or "
    "--backend onnxruntime",
)
def test_an_export_without_an_engine_says_how_to_build_one(tiny_export, tmp_path):
    export = tmp_path / "onnx"
    shutil.copytree(tiny_export.output_dir, export, ignore=shutil.ignore_patterns("engine"))
    message = refusal(export)
    assert f"{export / 'engine' / 'model.engine'} is not a file" in message
    assert f"armor-export engine {export}" in message and "--backend onnxruntime" in message


@needs_no_gpu
@pytest.mark.fault(
    "runtime",
    "--backend tensorrt without a CUDA GPU",
    "one line: engine built for sm80, not run: no CUDA GPU (and why the driver says so)",
)
def test_no_gpu_is_refused_in_one_line(export_with_engine, monkeypatch):
    def deserialise_must_not_run(*args, **kwargs):
        raise AssertionError("the engine was loaded before the GPU check")

    monkeypatch.setattr(trt_session, "TensorRTSession", deserialise_must_not_run)
    message = refusal(export_with_engine)
    assert message == f"engine built for sm80, not run: {NO_GPU}"
    assert message.endswith(NO_GPU) and NO_GPU.startswith("no CUDA GPU")


@needs_no_gpu
def test_the_cli_refuses_in_one_line_with_exit_1(export_with_engine, capsys):
    from armor_export.cli.main import main

    argv = ["generate", str(export_with_engine), "--prompt", "A", "--backend", "tensorrt"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert f"engine built for sm80, not run: {NO_GPU}" in " ".join(err.split())
    assert "Traceback" not in err


@pytest.mark.fault(
    "runtime",
    "--backend tensorrt with a GPU of another compute capability than the engine's",
    "one line: engine built for sm80, not run: the engine runs on sm80, this GPU is sm89 (the "
    "engine's own header asked, not the report)",
)
def test_a_gpu_of_another_compute_capability_is_refused(export_with_engine, monkeypatch):
    """The refusal happens before any CUDA call, so the GPU list is the only thing simulated
    (as in tests/verify: this machine has no GPU)."""
    monkeypatch.setattr(trt_session, "cuda_gpus", lambda: (["sm89"], ""))
    message = refusal(export_with_engine)
    assert message == "engine built for sm80, not run: the engine runs on sm80, this GPU is sm89"


@pytest.mark.fault(
    "runtime",
    "--backend tensorrt without the TensorRT module that built the engine",
    "one line: TensorRT-RTX (or TensorRT) is not importable, and the pip install to run",
)
def test_a_missing_tensorrt_module_gives_the_install_hint(export_with_engine, copy_of, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", None)
    message = refusal(export_with_engine)
    assert message.startswith("TensorRT-RTX is not importable")
    assert "pip install 'armor-export[rtx]'" in message
    # an engine datacenter TensorRT built is run with the tensorrt module (not installed here)
    datacenter = copy_of(
        export_with_engine,
        backend="TensorRT",
        backend_module="tensorrt",
        compute_capability="the local GPU",
        config={"backend": "tensorrt"},
        versions={"tensorrt": "10.13.0"},
    )
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    message = refusal(datacenter)
    assert message.startswith("TensorRT is not importable")
    assert "pip install 'armor-export[trt]'" in message


@pytest.mark.fault(
    "runtime",
    "--backend tensorrt without cuda-python (the CUDA binding for device buffers)",
    "one line: cuda-python is not installed, and the pip install to run",
)
def test_missing_cuda_python_gives_the_install_hint(export_with_engine, monkeypatch):
    """On a GPU of the engine's target (simulated: the refusal comes before any CUDA call, and
    TensorRT-RTX's validity check, which would read the GPU, answers as on that GPU)."""
    monkeypatch.setattr(trt_session, "cuda_gpus", lambda: (["sm80"], ""))
    monkeypatch.setattr(trt_session, "engine_validity", lambda trt, engine: ("VALID", []))
    for module in ("cuda", "cuda.bindings", "cuda.bindings.runtime", "cuda.cudart"):
        monkeypatch.setitem(sys.modules, module, None)
    message = refusal(export_with_engine)
    assert message.startswith("cuda-python is not installed")
    assert "pip install 'armor-export[rtx]'" in message


@pytest.mark.fault(
    "runtime",
    "--backend tensorrt with an engine another TensorRT version built",
    "one line: which version built it and which is installed; rebuild with armor-export engine",
)
def test_an_engine_of_another_tensorrt_version_is_refused(export_with_engine, copy_of):
    export = copy_of(export_with_engine, versions={"tensorrt_rtx": "1.0.0.1"})
    with pytest.raises(folder.EngineMismatchError, match=r"built with TensorRT-RTX 1\.0\.0\.1"):
        Generator(export, backend="tensorrt")


@pytest.mark.fault(
    "runtime",
    "--backend tensorrt with a model.engine that is not the one its build report describes",
    "one line: the engine's sha256 differs from its build report; rebuild it",
)
def test_an_engine_that_is_not_the_built_one_is_refused(export_with_engine, copy_of):
    export = copy_of(export_with_engine)
    with (export / "engine" / "model.engine").open("ab") as f:
        f.write(b"\0")
    with pytest.raises(folder.EngineMismatchError, match="sha256 differs"):
        Generator(export, backend="tensorrt")


def test_a_bfloat16_export_is_refused_before_the_engine_is_read(export_with_engine, copy_of):
    export = copy_of(export_with_engine)
    manifest = export / "export_manifest.json"
    manifest.write_text(json.dumps(seal({**json.loads(manifest.read_text()), "dtype": "bfloat16"})))
    message = refusal(export)
    assert "tensorrt runtime feeds numpy arrays, which have no bfloat16" in message


def test_an_unknown_backend_names_both(export_with_engine):
    with pytest.raises(ConfigError, match="backend must be one of onnxruntime, tensorrt"):
        Generator(export_with_engine, backend="tvm")


def test_opening_the_engine_imports_neither_torch_nor_the_exporter(export_with_engine):
    """A fresh interpreter opens the engine session as far as this machine allows (without a
    GPU: through the TensorRT-RTX import, the build report and the GPU check; with one: the
    whole way) and has loaded no torch, transformers or exporter code."""
    assert_runs_without_torch(
        f"""
        import sys
        from armor_export.errors import BackendUnavailableError
        from armor_export.runtime import Generator
        from armor_export.runtime.trt_session import import_cudart

        try:
            Generator({str(export_with_engine)!r}, backend="tensorrt")
        except BackendUnavailableError as exc:
            assert "not run" in str(exc), exc
        assert "tensorrt_rtx" in sys.modules
        import_cudart()  # cuda-python (an [rtx] dependency) is importable without a GPU
        """
    )


def test_unreadable_engine_limits_are_a_corrupt_build_report(export_with_engine, copy_of):
    from armor_export.errors import CorruptFileError

    export = copy_of(export_with_engine, limits={"max_batch": 2})
    with pytest.raises(CorruptFileError, match="build_report.json: unreadable limits"):
        Generator(export, backend="tensorrt")


def _members_used(source: str, receivers: set[str]) -> set[tuple[str, str]]:
    """(receiver, attribute) for every ``receiver.attribute`` in ``source``, where the receiver
    is a name (``cudart``, ``trt``, ``context``) or ``self.<name>`` (``self._engine``)."""
    import ast

    used = set()
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Attribute):
            continue
        value = node.value
        name = value.id if isinstance(value, ast.Name) else (
            value.attr if isinstance(value, ast.Attribute) and isinstance(value.value, ast.Name)
            and value.value.id == "self" else None
        )  # fmt: skip
        if name in receivers:
            used.add((name, node.attr))
    return used


def test_the_session_calls_only_members_the_installed_modules_have():
    """The run path needs a GPU, but every TensorRT and CUDA member it calls must exist in the
    installed tensorrt_rtx and cuda-python: a misspelt or removed name fails here, not first on
    a GPU machine. The receivers are read from the session's source, not listed by hand."""
    cudart = pytest.importorskip("cuda.bindings.runtime", reason="cuda-python missing")
    source = Path(trt_session.__file__).read_text()
    objects = {
        "trt": trt,
        "cudart": cudart,
        "_cudart": cudart,
        "_engine": trt.ICudaEngine,
        "_context": trt.IExecutionContext,
        "context": trt.IExecutionContext,
        "_runtime": trt.Runtime,
    }
    used = _members_used(source, set(objects))
    assert {"execute_async_v3", "set_tensor_address", "cudaMemcpyAsync"} <= {a for _, a in used}
    missing = sorted(f"{r}.{a}" for r, a in used if not hasattr(objects[r], a))
    assert not missing, f"not in the installed modules: {missing}"
