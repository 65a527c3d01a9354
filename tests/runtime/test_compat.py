"""The ONNX Runtime rules shared by the runtime and verify: one place, each caller's remedy."""

from __future__ import annotations

import pytest

from armor_export.errors import BackendUnavailableError
from armor_export.runtime.compat import CPU_PROVIDER, ORT_RULES, check_ort_compatible
from tests.test_export_manifest import small_manifest

CUDA = "CUDAExecutionProvider"


def test_plain_float_exports_run_anywhere():
    for dtype in ("float32", "float16"):
        check_ort_compatible(small_manifest(dtype=dtype), [CPU_PROVIDER])
    check_ort_compatible(small_manifest(dtype="bfloat16"), [CUDA, CPU_PROVIDER])


def test_plugin_graphs_are_refused_on_every_provider():
    for providers in ([CPU_PROVIDER], [CUDA, CPU_PROVIDER]):
        with pytest.raises(BackendUnavailableError, match="plugin nodes.*--lowering plain"):
            check_ort_compatible(small_manifest(lowering="plugin"), providers)


@pytest.mark.parametrize("providers", [[CPU_PROVIDER], []])
def test_bfloat16_is_refused_where_the_cpu_provider_runs_it(providers):
    with pytest.raises(BackendUnavailableError, match="CPU provider has no bfloat16 MatMul"):
        check_ort_compatible(small_manifest(dtype="bfloat16"), providers)


def test_each_caller_adds_its_own_alternative():
    manifest = small_manifest(dtype="bfloat16")
    with pytest.raises(BackendUnavailableError) as plain:
        check_ort_compatible(manifest, [CPU_PROVIDER])
    with pytest.raises(BackendUnavailableError) as offered:
        check_ort_compatible(manifest, [CPU_PROVIDER], {"bfloat16-cpu": "run it on TensorRT"})
    assert str(plain.value).endswith("export with --dtype float16 or --dtype float32")
    assert str(offered.value) == str(plain.value) + ", or run it on TensorRT"


def test_verify_names_an_alternative_for_every_rule():
    pytest.importorskip("polygraphy")
    from armor_export.verify.runners import ORT_ALTERNATIVES

    assert set(ORT_ALTERNATIVES) == {rule.name for rule in ORT_RULES}
