"""Engines for the GPUs they are for (engine/targets.py): real TensorRT-RTX engines built on
this CPU for several targets, and the engine itself asked which GPUs it runs on.

No GPU here, so ``get_engine_validity`` (TensorRT-RTX's answer for the GPU in the machine) can
only be asked where it has no GPU to read: it refuses, and that refusal is tested. The answer
for a named GPU comes from the engine's header, which these tests check against TensorRT-RTX's
own builds, one per target it names.
"""

from __future__ import annotations

import json

import pytest

from armor_export.config import EngineConfig
from armor_export.errors import ConfigError

trt = pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX missing: pip install '.[rtx]'")

from armor_export.engine import build_engine, targets  # noqa: E402
from armor_export.engine.folder import ENGINE_FILE  # noqa: E402
from armor_export.runtime import trt_session  # noqa: E402

KNOWN = targets.known_targets(trt)


def tiny_network_engine(names: list[str]) -> bytes:
    """A one-layer network built by TensorRT-RTX for ``names`` ([]: its default set)."""
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    x = network.add_input("x", trt.float32, (1, 4))
    network.mark_output(network.add_activation(x, trt.ActivationType.RELU).get_output(0))
    config = builder.create_builder_config()
    targets.set_targets(trt, config, names)
    return bytes(builder.build_serialized_network(network, config))


@pytest.mark.fault(
    "engine",
    "which GPUs an engine runs on: every target TensorRT-RTX names, a set, and its default",
    "build_report.json's engine_targets: what the engine's header says, e.g. sm80, sm86, sm89, "
    "sm120, sm121 and newer for the default",
)
def test_the_engine_header_names_the_targets_it_was_built_for():
    assert {"sm75", "sm86", "sm89", "sm120"} <= set(KNOWN)
    for name in KNOWN:
        assert targets.engine_targets(trt, tiny_network_engine([name])) == [name]
    assert targets.engine_targets(trt, tiny_network_engine(["sm75", "sm86"])) == ["sm75", "sm86"]
    default = targets.engine_targets(trt, tiny_network_engine([]))
    # TensorRT-RTX's documented default: compute capability 8.0, 8.6, 8.9, 12.0 and later
    assert {"sm80", "sm86", "sm89", "sm120", targets.NEWER} <= set(default)
    assert "sm75" not in default  # Turing must be named
    assert targets.engine_targets(trt, b"not an engine" * 8) is None


@pytest.fixture(scope="module")
def built(tiny_export, tmp_path_factory):
    """``target -> (engine folder, report)``: the tiny export's real engines."""

    def build(target):
        out = tmp_path_factory.mktemp("targets") / target.replace(",", "-")
        cfg = EngineConfig(export_dir=str(tiny_export.output_dir), output_dir=str(out))
        if target:
            cfg.compute_capability = target
        return out, build_engine(cfg).report

    return {t: build(t) for t in ("", "sm120")}


@pytest.mark.fault(
    "runtime",
    "an engine for sm120 on an RTX 30 (sm86); the default engine on RTX 30, 40 and 50",
    "one line: engine built for sm120, not run: the engine runs on sm120, this GPU is sm86; "
    "the default engine is not refused for its targets",
)
def test_engines_are_asked_which_gpus_they_run_on(built):
    default_dir, default = built[""]
    assert default["compute_capability"] == "default"  # TensorRT-RTX's portable set
    head = (default_dir / ENGINE_FILE).read_bytes()
    assert targets.engine_targets(trt, head) == default["engine_targets"]
    for gpu in ("sm86", "sm89", "sm120"):
        assert targets.covers(default["engine_targets"], gpu, KNOWN) is True
    assert targets.covers(default["engine_targets"], "sm75", KNOWN) is False

    sm120_dir, sm120 = built["sm120"]
    head = (sm120_dir / ENGINE_FILE).read_bytes()
    assert sm120["engine_targets"] == ["sm120"]
    for gpu in ("sm86", "sm89", "sm75"):
        assert targets.covers(targets.engine_targets(trt, head), gpu, KNOWN) is False
    why = trt_session.not_run_reason(sm120, ["sm86"], "", trt, head)
    assert why == "the engine runs on sm120, this GPU is sm86"
    # the report's string is not what decides: an edited report changes nothing
    assert trt_session.not_run_reason({**sm120, "compute_capability": "sm86"}, ["sm86"], "",
                                      trt, head) == why  # fmt: skip


@pytest.mark.fault(
    "runtime",
    "a GPU the engine's header covers, where TensorRT-RTX's own validity check says no",
    "one line quoting TensorRT-RTX: the engine is invalid on this GPU, and why",
)
def test_tensorrt_rtx_has_the_last_word(built):
    """Here the GPU is simulated (there is none): TensorRT-RTX's real get_engine_validity is
    asked and, unable to read a GPU, says INVALID; the engine is refused, not passed."""
    if trt_session.cuda_gpus()[0]:
        pytest.skip("a CUDA GPU is here: tests/gpu runs the engine")
    default_dir, default = built[""]
    head = (default_dir / ENGINE_FILE).read_bytes()
    answer, said = targets.validity(trt, head)
    assert answer == "INVALID" and "CUDA GPU properties" in said[0]  # TensorRT-RTX's words
    why = trt_session.not_run_reason(default, ["sm86"], "", trt, head)
    assert why == (
        f"tensorrt_rtx {trt.__version__} says the engine is invalid on this GPU (sm86): {said[0]}"
    )


@pytest.mark.fault(
    "engine",
    "--compute-capability current on a machine without a GPU",
    "one line: current needs a CUDA GPU here (the driver's reason): name the target instead",
)
def test_current_is_refused_without_a_gpu_and_recorded_as_what_it_resolved_to(
    tiny_export, tmp_path, monkeypatch
):
    cfg = EngineConfig(
        export_dir=str(tiny_export.output_dir),
        output_dir=str(tmp_path),
        compute_capability="current",
    )
    monkeypatch.setattr(targets, "cuda_gpus", lambda: ([], "no CUDA GPU (simulated)"))
    with pytest.raises(targets.TargetError, match=r"current needs a CUDA GPU here \(no CUDA GPU"):
        build_engine(cfg)
    assert not (tmp_path / ENGINE_FILE).exists()
    monkeypatch.setattr(targets, "cuda_gpus", lambda: (["sm90"], ""))  # an H100
    with pytest.raises(targets.TargetError, match="cannot build for sm90.*--backend tensorrt"):
        build_engine(cfg)
    monkeypatch.setattr(targets, "cuda_gpus", lambda: (["sm86"], ""))  # an RTX 3090
    report = build_engine(cfg).report
    assert report["compute_capability"] == "sm86" and report["engine_targets"] == ["sm86"]
    assert report["config"]["compute_capability"] == "current"
    on_disk = json.loads((tmp_path / "build_report.json").read_text())
    assert "sm86 (the engine's header: runs on sm86)" in (tmp_path / "build_report.md").read_text()
    assert on_disk["engine_targets"] == ["sm86"]


@pytest.mark.fault(
    "config",
    "--compute-capability with a target list, or a name that is not a target",
    "the list is read in one spelling (sm86,sm89,sm120); a bad name: one line naming the targets",
)
def test_a_target_set_is_named_with_commas():
    cfg = EngineConfig(compute_capability="SM120, sm86,sm89")
    cfg.validate()
    assert cfg.compute_capability == "sm86,sm89,sm120"
    assert targets.resolve_targets(trt, cfg.compute_capability) == ["sm86", "sm89", "sm120"]
    assert targets.resolve_targets(trt, "default") == []
    for bad in ("sm90", "sm86,current", "", "ampere"):
        with pytest.raises(ConfigError, match="compute_capability must be default or current"):
            EngineConfig(compute_capability=bad).validate()
