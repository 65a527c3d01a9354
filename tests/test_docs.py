"""Docs as tests: the README's commands and the shipped recipes stay valid, the README stays an
introduction, every relative link of the docs resolves, and facts that went stale once stay
fixed."""

import re
import shlex
from pathlib import Path

import pytest

from armor_export.cli.main import build_parser
from armor_export.config import PruneConfig

ROOT = Path(__file__).resolve().parents[1]
# the README is an introduction; reference material lives in docs/
README_MAX_LINES = 160


def docs() -> list[Path]:
    """The hand-written docs: the README, docs/*.md and the plugins' READMEs (docs/benchmarks/
    is written by the benchmark tools, docs/reliability.md by tests/reliability_doc.py)."""
    found = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    found += sorted((ROOT / "plugins").rglob("README.md"))
    return [p for p in found if p.name != "reliability.md"]


def readme_commands():
    """Every `armor-export ...` invocation inside the bash blocks of the README and docs/."""
    found = []
    for path in docs():
        for block in re.findall(r"```bash\n(.*?)```", path.read_text(), re.S):
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


def test_the_readme_is_an_introduction():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= README_MAX_LINES, "move reference material to docs/"
    headings = re.findall(r"^## (.+)$", text, re.M)
    for needed in ("Usage", "GPUs and engine targets"):
        assert needed in headings
    for doc in ("pruning.md", "onnx.md", "engines.md", "development.md", "design.md"):
        assert f"](docs/{doc})" in text, f"the README does not point to docs/{doc}"


def slug(heading: str) -> str:
    """A heading's anchor as GitHub makes it."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {slug(h) for h in re.findall(r"^#{1,6}\s+(.+?)\s*$", text, re.M)}


def relative_links(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    return [t for t in targets if not re.match(r"[a-z]+:", t)]


def broken_links(path: Path) -> list[str]:
    broken = []
    for link in relative_links(path):
        target, _, anchor = link.partition("#")
        file = (path.parent / target).resolve() if target else path
        if not file.exists():
            broken.append(f"{path.name}: {link} (no such file)")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{path.name}: {link} (no such heading)")
    return broken


def test_every_relative_link_of_the_docs_resolves():
    broken = [line for path in docs() for line in broken_links(path)]
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_the_link_check_sees_a_broken_file_and_heading(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "# A page\n\n## Some `--flag`: heading\n\n"
        "[ok](#some---flag-heading) [bad](#nothing) [file](page.md) [gone](gone.md#x)\n"
    )
    assert broken_links(page) == [
        "page.md: #nothing (no such heading)",
        "page.md: gone.md#x (no such file)",
    ]
    gpu = "GPU results and what still needs a GPU"
    assert slug(gpu) == "gpu-results-and-what-still-needs-a-gpu"


def paragraphs(path: Path) -> list[str]:
    return [" ".join(p.split()) for p in re.split(r"\n\s*\n", path.read_text())]


@pytest.mark.fault(
    "engine",
    "the docs tell the user to make the libtensorrt_rtx.so link the engine child now makes",
    "every doc that names the link says the engine child makes it (a doc test)",
)
def test_no_doc_asks_the_user_for_the_libtensorrt_rtx_link():
    stale = []
    for path in docs():
        if path.parent.name == "repro":
            continue  # the reproducer makes the link by hand, on purpose
        for text in paragraphs(path):
            if "libtensorrt_rtx.so" not in text:
                continue
            if "ln -s" in text or "ARMOR_EXPORT_NO_LIBRARY_LINKS" not in text:
                stale.append(f"{path.relative_to(ROOT)}: {text[:160]}")
    assert not stale, "paragraphs that ask for the link by hand:\n" + "\n".join(stale)


@pytest.mark.fault(
    "runtime",
    "the docs named cuda-python<13 for a CUDA 12 driver, but [rtx] installs TensorRT-RTX's "
    "CUDA 13 build",
    "the README and docs/engines.md name the driver branch [rtx] needs and the CUDA 12 packages "
    "(a doc test against the installed metadata)",
)
def test_the_docs_give_the_driver_the_rtx_extra_needs():
    """``[rtx]`` resolves ``tensorrt-rtx`` to one CUDA build (its metapackage requires it, read
    from the installed metadata) and cuda-python to its newest major: the docs name that CUDA
    major's driver branch, and the package to install with a CUDA 12 driver."""
    from importlib import metadata

    from armor_export.cli.env import DRIVER_BRANCH

    try:
        requires = metadata.requires("tensorrt-rtx") or []
    except metadata.PackageNotFoundError:
        pytest.skip("tensorrt-rtx is not installed here (the rtx extra installs it)")
    build = next(r for r in requires if r.startswith("tensorrt_rtx_cu"))
    major = int(re.match(r"tensorrt_rtx_cu(\d+)", build).group(1))
    readme = " ".join((ROOT / "README.md").read_text().split())
    engines = " ".join((ROOT / "docs" / "engines.md").read_text().split())
    assert f"CUDA {major} build" in readme and DRIVER_BRANCH[major] in readme
    assert build.split("=")[0] in engines and DRIVER_BRANCH[major] in engines
    for text in [p for path in docs() for p in paragraphs(path)]:
        if "cuda-python<13" in text.replace(">=12,", ""):
            assert "tensorrt-rtx-cu12" in text, f"cuda-python<13 without TensorRT-RTX's: {text}"
