"""Docs as tests: the README's commands and the shipped recipes stay valid."""

import re
import shlex
from pathlib import Path

import pytest

from armor_export.cli.main import build_parser
from armor_export.config import PruneConfig

ROOT = Path(__file__).resolve().parents[1]


def readme_commands():
    """Every `armor-export ...` invocation inside the README's bash blocks."""
    text = (ROOT / "README.md").read_text()
    found = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.splitlines():
            match = re.search(r"(?:^|&& )(?:\.venv/bin/)?armor-export (.+?)(?:\s+#.*)?$", line)
            if match:
                found.append(match.group(1))
    return found


def test_readme_opens_with_the_two_commands_and_ci_runs_the_second():
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    commands = [line for line in block.splitlines() if line and not line.startswith("#")]
    assert len(commands) == 2
    assert "armor-export build" in commands[0]
    test_cmd = commands[1].split("&& ")[-1]
    assert "pytest" in test_cmd
    assert test_cmd in (ROOT / ".ci" / "run").read_text()


@pytest.mark.parametrize("command", readme_commands())
def test_readme_cli_commands_parse(command):
    args = build_parser().parse_args(shlex.split(command))
    assert args.handler is not None


@pytest.mark.parametrize("recipe", sorted((ROOT / "prune").glob("*.toml")), ids=lambda p: p.name)
def test_recipes_are_valid_configs(recipe):
    cfg = PruneConfig.from_toml(recipe)
    assert cfg.method in ("armor", "nowag-p", "wanda", "sparsegpt", "magnitude")


def test_the_main_command_installs_what_the_full_report_needs():
    """The build's report has its figures only with matplotlib (the plots extra)."""
    text = (ROOT / "README.md").read_text()
    first = re.search(r"```bash\n(.*?)```", text, re.S).group(1).splitlines()[1]
    extras = re.search(r'-e "\.\[(.*?)\]"', first).group(1).split(",")
    assert {"assets", "plots", "onnx", "rtx"} <= set(extras)
