"""``armor-export env`` says whether cuda-python, which runs a built engine's device memory, is
installed, which CUDA runtime it carries, and whether the driver here can run it."""

from __future__ import annotations

import sys
import types
from importlib import metadata

import pytest

from armor_export.cli.main import main


def env_rows(capsys) -> dict[str, str]:
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    return {k: v.strip() for k, v in (line.split(None, 1) for line in out.splitlines() if line)}


def fake_cudart(monkeypatch, runtime: int, driver: int) -> None:
    """cuda-python as imported by the env verb, reporting these CUDA versions (CUDA's
    encoding: 13040 is 13.4)."""
    cudart = types.SimpleNamespace(
        cudaRuntimeGetVersion=lambda: (0, runtime), cudaDriverGetVersion=lambda: (0, driver)
    )
    monkeypatch.setitem(sys.modules, "cuda.bindings", types.SimpleNamespace(runtime=cudart))
    real = metadata.version
    monkeypatch.setattr(
        metadata, "version", lambda name: "13.0.1" if name == "cuda-python" else real(name)
    )


def test_env_names_the_installed_cuda_python_and_its_cuda_major(capsys):
    try:
        version = metadata.version("cuda-python")
    except metadata.PackageNotFoundError:
        pytest.skip("cuda-python is not installed here (the [rtx] extra installs it)")
    from cuda.bindings import runtime

    major = runtime.cudaRuntimeGetVersion()[1] // 1000
    row = env_rows(capsys)["cuda-python"]
    assert row.startswith(f"{version} (CUDA {major}.")
    assert f"needs an NVIDIA driver for CUDA {major}" in row


@pytest.mark.fault(
    "runtime",
    "cuda-python, which a TensorRT engine needs, is not installed",
    "`armor-export env` says it is not installed and how to install it",
)
def test_env_says_when_cuda_python_is_missing(capsys, monkeypatch):
    real = metadata.version

    def version(name):
        if name in ("cuda-python", "cuda-bindings"):
            raise metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(metadata, "version", version)
    row = env_rows(capsys)["cuda-python"]
    assert row.startswith("not installed") and "armor-export[rtx]" in row


@pytest.mark.fault(
    "runtime",
    "cuda-python built for CUDA 13 on a machine whose driver runs only CUDA 12",
    "`armor-export env` names both CUDA versions and says to install cuda-python<13",
)
def test_env_says_when_the_driver_is_too_old_for_cuda_python(capsys, monkeypatch):
    fake_cudart(monkeypatch, runtime=13040, driver=12080)
    rows = env_rows(capsys)
    assert rows["cuda-python"].startswith("13.0.1 (CUDA 13.4 runtime")
    assert "R580" in rows["cuda-python"]
    assert rows["driver"].startswith("CUDA 12.8: too old")
    assert "'cuda-python<13'" in rows["driver"]


def test_env_says_when_the_driver_fits(capsys, monkeypatch):
    fake_cudart(monkeypatch, runtime=13040, driver=13000)
    assert env_rows(capsys)["driver"] == "CUDA 13.0"
    fake_cudart(monkeypatch, runtime=13040, driver=0)
    assert env_rows(capsys)["driver"] == "none found"
