"""The ArmorBlockDiagMatMul plugin: the CUDA kernel compiles with nvcc and validates its
arguments, the C++ glue and YAML spec name the contract of ``reference.py``, and (on a GPU) the
kernel matches ``reference.blockdiag_matmul`` for fp32/fp16/bf16 and b = 32/64/128.

The C++ IPluginV3 glue is compiled against TensorRT's public headers and exercised in
test_plugin_library.py; here its constants are checked against reference.py textually.
"""

from __future__ import annotations

import ctypes
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from armor_export.export import reference
from tests.plugins.plugin_build import find_nvcc

ROOT = Path(__file__).resolve().parents[2]
PLUGIN_DIR = ROOT / "plugins" / "armorBlockDiagPlugin"
KERNEL_SOURCE = PLUGIN_DIR / "armorBlockDiagKernel.cu"
TEST_ARCH = "sm_80"  # one explicit architecture keeps the compile short (~5 s)

# (atol, rtol) of the kernel against the float32 reference; the YAML spec must agree
TOLERANCES = {"float32": (1e-4, 1e-4), "float16": (5e-3, 5e-3), "bfloat16": (3e-2, 3e-2)}
CUDA_ERROR_INVALID_VALUE = 1
CUDA_ERROR_NOT_SUPPORTED = 801


def gpu_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available() and Path("/dev/nvidia0").exists()


NVCC = find_nvcc()
needs_nvcc = pytest.mark.skipif(
    NVCC is None, reason="nvcc not found (neither on PATH nor /usr/local/bin/nvcc)"
)
needs_gpu = pytest.mark.skipif(not gpu_available(), reason="needs a CUDA GPU")


def run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}"


def build_kernel_library(out_dir: Path, arch: str) -> Path:
    """``nvcc -c`` the kernel for one architecture, then link it into a shared library."""
    obj = out_dir / f"armorBlockDiagKernel_{arch}.o"
    lib = out_dir / f"libarmor_blockdiag_kernel_{arch}.so"
    common = [NVCC, "-std=c++17", f"-arch={arch}"]
    run([*common, "-O3", "-Xcompiler", "-fPIC", "-c", str(KERNEL_SOURCE), "-o", str(obj)])
    assert obj.stat().st_size > 0
    run([*common, "-shared", str(obj), "-o", str(lib)])
    return lib


def load_kernel_library(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    tensor_args = [ctypes.c_void_p] * 3 + [ctypes.c_int64, ctypes.c_int32, ctypes.c_int32]
    for name in ("armor_blockdiag_f32", "armor_blockdiag_f16", "armor_blockdiag_bf16"):
        fn = getattr(lib, name)
        fn.restype = ctypes.c_int32
        fn.argtypes = [*tensor_args, ctypes.c_void_p]
    lib.armor_blockdiag_launch.restype = ctypes.c_int32
    lib.armor_blockdiag_launch.argtypes = [
        *tensor_args,
        ctypes.c_int32,
        ctypes.c_int32,
        ctypes.c_void_p,
    ]
    lib.armor_blockdiag_selected_path.restype = ctypes.c_int32
    lib.armor_blockdiag_selected_path.argtypes = [ctypes.c_int32] * 3
    lib.armor_blockdiag_error_string.restype = ctypes.c_char_p
    lib.armor_blockdiag_error_string.argtypes = [ctypes.c_int32]
    return lib


@pytest.fixture(scope="module")
def kernel_library(tmp_path_factory) -> Path:
    if NVCC is None:
        pytest.skip("nvcc not found (neither on PATH nor /usr/local/bin/nvcc)")
    return build_kernel_library(tmp_path_factory.mktemp("armor_kernel"), TEST_ARCH)


# ---------------------------------------------------------------------------------------------
# Compiles and validates its arguments (no GPU needed)
# ---------------------------------------------------------------------------------------------
@needs_nvcc
def test_kernel_compiles_to_object_and_shared_library(kernel_library):
    assert kernel_library.stat().st_size > 0
    lib = load_kernel_library(kernel_library)  # static cudart: loads without a driver
    assert lib.armor_blockdiag_error_string(0) == b"no error"


@needs_nvcc
def test_kernel_rejects_bad_arguments_before_touching_the_device(kernel_library):
    lib = load_kernel_library(kernel_library)
    fake = 256  # never dereferenced: validation fails first
    assert lib.armor_blockdiag_f32(None, None, None, 0, 4, 32, None) == 0  # rows == 0: no-op
    bad_calls = [
        lib.armor_blockdiag_f32(fake, fake, fake, 8, 4, 30, None),  # b % 4 != 0
        lib.armor_blockdiag_f16(fake, fake, fake, 8, 4, 512, None),  # b > 256
        lib.armor_blockdiag_bf16(fake, fake, fake, 8, 0, 32, None),  # no blocks
        lib.armor_blockdiag_f32(fake, fake, fake, -1, 4, 32, None),  # negative rows
        lib.armor_blockdiag_f32(None, fake, fake, 8, 4, 32, None),  # null pointer
        lib.armor_blockdiag_launch(fake, fake, fake, 8, 4, 32, 3, 0, None),  # int32 dtype
        lib.armor_blockdiag_launch(fake, fake, fake, 8, 4, 32, 0, 7, None),  # unknown path
    ]
    assert bad_calls == [CUDA_ERROR_INVALID_VALUE] * len(bad_calls)
    assert lib.armor_blockdiag_selected_path(1, 30, 0) == 0  # unsupported b


# ---------------------------------------------------------------------------------------------
# The C++ glue and the YAML spec cannot drift from reference.py
# ---------------------------------------------------------------------------------------------
def cpp_constant(name: str) -> str:
    header = (PLUGIN_DIR / "armorBlockDiagPlugin.h").read_text()
    match = re.search(rf'constexpr char const\* {name}\{{"([^"]*)"\}};', header)
    assert match, f"{name} not defined in armorBlockDiagPlugin.h"
    return match.group(1)


def test_cpp_glue_names_the_reference_contract():
    assert cpp_constant("kARMOR_PLUGIN_NAME") == reference.PLUGIN_NAME
    assert cpp_constant("kARMOR_PLUGIN_VERSION") == reference.PLUGIN_VERSION
    assert cpp_constant("kARMOR_PLUGIN_NAMESPACE") == reference.PLUGIN_NAMESPACE
    source = (PLUGIN_DIR / "armorBlockDiagPlugin.cpp").read_text()
    # plugin and creator both answer with the constants, never with other literals
    for constant in ("kARMOR_PLUGIN_NAME", "kARMOR_PLUGIN_VERSION", "kARMOR_PLUGIN_NAMESPACE"):
        assert source.count(f"return {constant};") == 2, constant
    assert "REGISTER_TENSORRT_PLUGIN(ArmorBlockDiagPluginCreator)" in source
    assert 'extern "C" nvinfer1::IPluginCreatorInterface* const* getCreators' in source
    assert "launchArmorBlockDiag(" in source


def test_cpp_glue_overrides_every_ipluginv3_method():
    """Every pure virtual of IPluginV3 / V3One{Core,Build,Runtime} / IPluginCreatorV3One in
    TensorRT 10 is declared ``override`` (the glue cannot be compiled here)."""
    header = (PLUGIN_DIR / "armorBlockDiagPlugin.h").read_text()
    declared = set(re.findall(r"(\w+)\([^;]*\)\s*(?:const\s*)?noexcept override;", header, re.S))
    required = {
        "getCapabilityInterface", "clone",  # IPluginV3
        "getPluginName", "getPluginVersion", "getPluginNamespace",  # core
        "configurePlugin", "getOutputDataTypes", "getOutputShapes",  # build
        "supportsFormatCombination", "getNbOutputs",
        "onShapeChange", "enqueue", "attachToContext", "getFieldsToSerialize",  # runtime
        "createPlugin", "getFieldNames",  # creator
    }  # fmt: skip
    assert required <= declared, sorted(required - declared)
    for base in (
        "IPluginV3OneCore",
        "IPluginV3OneBuild",
        "IPluginV3OneRuntime",
        "IPluginCreatorV3One",
    ):
        assert f"public nvinfer1::{base}" in header


def test_yaml_spec_matches_the_reference_contract():
    yaml = pytest.importorskip("yaml", reason="PyYAML not installed: spec not parsed")
    spec = yaml.safe_load((PLUGIN_DIR / "armorBlockDiagPlugin.yaml").read_text())
    assert spec["name"] == reference.PLUGIN_NAME
    assert spec["interface"] == "IPluginV3"
    version = spec["versions"][reference.PLUGIN_VERSION]
    assert version["onnx_domain"] == reference.PLUGIN_DOMAIN
    assert version["plugin_namespace"] == reference.PLUGIN_NAMESPACE
    assert version["inputs"] == ["x", "weight"] and version["outputs"] == ["y"]
    assert version["attributes"] == []
    configs = version["configs"]
    assert {k: (v["abs_tol"], v["rel_tol"]) for k, v in configs.items()} == TOLERANCES


def test_readme_documents_the_contract():
    readme = (PLUGIN_DIR / "README.md").read_text()
    for needle in (reference.PLUGIN_NAME, reference.PLUGIN_DOMAIN, "libarmor_blockdiag_plugin.so"):
        assert needle in readme


# ---------------------------------------------------------------------------------------------
# On a GPU: the kernel against reference.blockdiag_matmul
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gpu_kernel(tmp_path_factory) -> ctypes.CDLL:
    if NVCC is None:
        pytest.skip("nvcc not found (neither on PATH nor /usr/local/bin/nvcc)")
    if not gpu_available():
        pytest.skip("needs a CUDA GPU")
    import torch

    major, minor = torch.cuda.get_device_capability()
    out_dir = tmp_path_factory.mktemp("armor_kernel_gpu")
    return load_kernel_library(build_kernel_library(out_dir, f"sm_{major}{minor}"))


def run_kernel(lib: ctypes.CDLL, x, weight, path: int):
    import torch

    n_blocks, block_size, _ = weight.shape
    y = torch.empty_like(x)
    dtype_code = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 7}[x.dtype]
    rows = x.numel() // x.shape[-1]
    stream = torch.cuda.current_stream().cuda_stream
    code = lib.armor_blockdiag_launch(
        x.data_ptr(), weight.data_ptr(), y.data_ptr(), rows, n_blocks, block_size,
        dtype_code, path, stream,
    )  # fmt: skip
    assert code == 0, lib.armor_blockdiag_error_string(code).decode()
    torch.cuda.synchronize()
    return y


@needs_gpu
@pytest.mark.parametrize("block_size", [32, 64, 128])
@pytest.mark.parametrize("dtype_name", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("path", [0, 1], ids=["auto", "simt"])
def test_kernel_matches_reference_on_gpu(gpu_kernel, dtype_name, block_size, path):
    import torch

    dtype = getattr(torch, dtype_name)
    n_blocks, rows = 5, 77  # a ragged last row tile
    gen = torch.Generator().manual_seed(block_size)
    x = torch.randn(7, rows // 7, n_blocks * block_size, generator=gen).to(dtype)
    weight = (torch.randn(n_blocks, block_size, block_size, generator=gen) / block_size**0.5).to(
        dtype
    )
    y = run_kernel(gpu_kernel, x.cuda(), weight.cuda(), path)

    want = reference.blockdiag_matmul(x.float().numpy(), weight.float().numpy())
    atol, rtol = TOLERANCES[dtype_name]
    np.testing.assert_allclose(y.float().cpu().numpy(), want, atol=atol, rtol=rtol)


@needs_gpu
def test_tensor_core_path_is_used_and_exact_enough(gpu_kernel):
    import torch

    if gpu_kernel.armor_blockdiag_selected_path(1, 64, torch.cuda.current_device()) != 2:
        pytest.skip("no tensor-core path on this GPU")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(130, 8 * 64, generator=gen).half()
    weight = (torch.randn(8, 64, 64, generator=gen) / 8).half()
    y = run_kernel(gpu_kernel, x.cuda(), weight.cuda(), path=2)
    want = reference.blockdiag_matmul(x.float().numpy(), weight.float().numpy())
    np.testing.assert_allclose(y.float().cpu().numpy(), want, atol=5e-3, rtol=5e-3)
    # b not a multiple of 16: the forced tensor-core path refuses, auto falls back to SIMT
    x20 = torch.zeros(4, 3 * 20, dtype=torch.half, device="cuda")
    w20 = torch.zeros(3, 20, 20, dtype=torch.half, device="cuda")
    out = torch.empty_like(x20)
    code = gpu_kernel.armor_blockdiag_launch(
        x20.data_ptr(), w20.data_ptr(), out.data_ptr(), 4, 3, 20, 1, 2, None
    )
    assert code == CUDA_ERROR_NOT_SUPPORTED
