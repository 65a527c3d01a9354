"""The verify backend registry: names for config and the CLI, one factory per backend."""

from __future__ import annotations

import pytest

from armor_export.config import VERIFY_BACKENDS, VerifyConfig
from armor_export.errors import ConfigError
from armor_export.verify.backends import AUTO, RUNNERS, requested, runner_factory


def test_config_and_cli_choices_are_the_registry():
    assert VERIFY_BACKENDS == (AUTO, *RUNNERS)
    assert VERIFY_BACKENDS == ("auto", "onnxruntime", "numpy-reference", "tensorrt")
    with pytest.raises(ConfigError, match="backends"):
        VerifyConfig(backends=["tvm"]).validate()


def test_every_registered_factory_resolves():
    pytest.importorskip("polygraphy")
    for name in RUNNERS:
        assert callable(runner_factory(name)), name


@pytest.mark.parametrize(
    "backends, lowering, want",
    [
        (["auto"], "plain", {"onnxruntime": True, "tensorrt": True}),
        (["auto"], "plugin", {"numpy-reference": False, "tensorrt": True}),
        (["tensorrt"], "plain", {"tensorrt": False}),
        # a backend named on its own is required, even when "auto" asks for it too
        (["auto", "onnxruntime"], "plain", {"onnxruntime": False, "tensorrt": True}),
        (["numpy-reference", "auto"], "plain",
         {"numpy-reference": False, "onnxruntime": True, "tensorrt": True}),
    ],
)  # fmt: skip
def test_auto_and_named_backends(backends, lowering, want):
    got = requested(backends, lowering)
    assert got == want and list(got) == list(want)
