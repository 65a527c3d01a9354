"""The engine backends table (no TensorRT needed): one name per backend, aliases resolved."""

from __future__ import annotations

import pytest

from armor_export.config import ENGINE_BACKEND_ALIASES, ENGINE_BACKENDS, EngineConfig
from armor_export.engine.api import uses_timing_cache
from armor_export.engine.backends import BACKENDS, backend_spec


def test_every_config_backend_has_a_spec():
    assert tuple(BACKENDS) == ENGINE_BACKENDS
    assert set(ENGINE_BACKEND_ALIASES.values()) <= set(ENGINE_BACKENDS)


@pytest.mark.parametrize(
    "name, module, aot", [("tensorrt-rtx", "tensorrt_rtx", True), ("tensorrt", "tensorrt", False)]
)
def test_specs_by_name_and_old_name(name, module, aot):
    old = {v: k for k, v in ENGINE_BACKEND_ALIASES.items()}[name]
    assert backend_spec(name) is backend_spec(old) is BACKENDS[name]
    assert (BACKENDS[name].module, BACKENDS[name].aot) == (module, aot)


def test_only_tensorrt_keeps_a_timing_cache():
    assert not uses_timing_cache(EngineConfig())
    assert uses_timing_cache(EngineConfig(backend="tensorrt"))
    assert uses_timing_cache(EngineConfig(backend="trt"))  # not yet validated: still resolved
