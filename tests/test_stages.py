"""The stage registry drives ``build``: a stage registered here runs without editing pipeline.py.

Fast and torch-light: the real stages are "not selected" (their own tests are in
test_pipeline.py); only a small stamp stage registered by the test runs.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from armor_export import stages
from armor_export.cli.main import build_parser, main
from armor_export.config import BuildConfig
from armor_export.errors import ConfigError
from armor_export.pipeline import MANIFEST, build

BUILT_IN = ("prune", "quantize", "export", "engine", "verify")


@dataclasses.dataclass
class StampConfig:
    export_dir: str
    output_dir: str
    word: str = "stamped"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class StampStage(stages.Stage):
    """Copies the export manifest's hash into stamp.txt: reads one stage, feeds the next."""

    name = "stamp"
    section = "export"  # no settings of its own
    folder = "stamp"
    fail = False

    def configure(self, build):
        return StampConfig(str(stages.stage_dir(build, "export")), str(self.folder_in(build)))

    def outputs(self, cfg) -> list[Path]:
        return [Path(cfg.output_dir) / "stamp.txt"]

    def run(self, cfg, reporter) -> tuple[str, bool]:
        source = (Path(cfg.export_dir) / "export_manifest.json").read_text()
        Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
        (Path(cfg.output_dir) / "stamp.txt").write_text(f"{cfg.word}: {source}")
        return f"{cfg.word} 1 file", not self.fail


@pytest.fixture
def stamp():
    stage = stages.register(StampStage(), after="export")
    yield stage
    stages.unregister("stamp")


def statuses(result) -> list[tuple[str, str]]:
    return [(s.name, s.status) for s in result.stages]


def fake_export(build_dir: Path, text: str = '{"counts": {}}') -> Path:
    """A finished export (its manifest) without running one."""
    manifest = build_dir / "onnx" / "export_manifest.json"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text(text)
    return manifest


def test_built_in_stages_in_run_order():
    assert stages.stage_names() == BUILT_IN
    assert BuildConfig().stages == list(BUILT_IN)


def test_every_stage_has_a_config_section_folder_and_outputs(tmp_path):
    cfg = BuildConfig(model=str(tmp_path / "model"), output_dir=str(tmp_path / "b"))
    fields = {f.name for f in dataclasses.fields(BuildConfig)}
    folders = [stage.folder for stage in stages.registered()]
    assert len(set(folders)) == len(folders)
    for stage in stages.registered():
        assert stage.section in fields, stage.name
        stage_cfg = stage.configure(cfg)
        assert isinstance(stage_cfg.to_dict(), dict)
        outputs = stage.outputs(stage_cfg)
        assert outputs and all(Path(cfg.output_dir) in p.parents for p in outputs), stage.name


def test_a_registered_stage_runs_between_the_others(stamp, tmp_path):
    out = tmp_path / "b"
    export_manifest = fake_export(out)
    cfg = BuildConfig(model=str(tmp_path / "dense"), output_dir=str(out), stages=["stamp"])
    assert BuildConfig().stages == ["prune", "quantize", "export", "stamp", "engine", "verify"]

    result = build(cfg)
    assert result.passed
    assert statuses(result) == [
        ("prune", "not selected"),
        ("quantize", "provided"),
        ("export", "not selected"),
        ("stamp", "done"),
        ("engine", "not selected"),
        ("verify", "not selected"),
    ]
    record = json.loads((out / MANIFEST).read_text())["stages"]["stamp"]
    assert record["status"] == "done" and record["detail"] == "stamped 1 file"
    assert record["config_values"]["export_dir"] == str(out / "onnx")
    assert (out / "stamp" / "stamp.txt").read_text() == 'stamped: {"counts": {}}'

    assert dict(statuses(build(cfg)))["stamp"] == "skipped (up to date)"
    assert dict(statuses(build(cfg, force=("stamp",))))["stamp"] == "done"
    export_manifest.write_text('{"counts": {"cores": 1}}')  # a new export redoes the stamp
    assert dict(statuses(build(cfg)))["stamp"] == "done"
    redone = json.loads((out / MANIFEST).read_text())["stages"]["stamp"]
    assert redone["input"] != record["input"]  # its input is the export's outputs hash


def test_a_failed_stage_stops_the_build(stamp, tmp_path):
    fake_export(tmp_path)
    stamp.fail = True
    cfg = BuildConfig(model=str(tmp_path / "dense"), output_dir=str(tmp_path), stages=["stamp"])
    result = build(cfg)
    assert not result.passed
    assert dict(statuses(result))["stamp"] == "failed"
    record = json.loads((tmp_path / MANIFEST).read_text())["stages"]["stamp"]
    assert record["status"] == "failed"


def test_the_cli_lists_registered_stages(stamp, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["build", "--help"])
    assert "prune,quantize,export,stamp,engine,verify" in capsys.readouterr().out
    from armor_export.cli.build import config_from_args

    args = build_parser().parse_args(["build", "--stages", "stamp", "--force", "stamp"])
    cfg, force = config_from_args(args)
    assert cfg.stages == ["stamp"] and force == ("stamp",)


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["--stages", "prune,deploy"],
            "stages must be one of prune, quantize, export, engine, verify",
        ),
        (["--force", "deploy"], "--force: unknown stage(s) deploy; registered stages: prune, "),
    ],
)
def test_an_unknown_stage_names_the_registered_ones(argv, message):
    from armor_export.cli.build import config_from_args

    with pytest.raises(ConfigError) as info:
        config_from_args(build_parser().parse_args(["build", *argv]))
    assert message in str(info.value)


def test_build_refuses_an_unknown_forced_stage(tmp_path):
    with pytest.raises(
        ConfigError, match="registered stages: prune, quantize, export, engine, verify"
    ):
        build(BuildConfig(output_dir=str(tmp_path)), force=("deploy",))


def test_register_refuses_a_duplicate_and_an_unknown_position(stamp):
    with pytest.raises(ValueError, match="already registered"):
        stages.register(StampStage())

    class Other(StampStage):
        name = "other"

    with pytest.raises(ConfigError, match="unknown stage 'deploy'"):
        stages.register(Other(), after="deploy")
    assert "other" not in stages.stage_names()
