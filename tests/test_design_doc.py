"""The design notes the code cites are in the repository, and every cited section exists.

Docstrings and comments point at ``docs/design.md`` by section number; these tests keep the
pointers and the headings in step, and keep the code from citing documents that readers of
the repository cannot see.
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DESIGN = ROOT / "docs" / "design.md"
SOURCES = ("armor_export", "tools", "tests")
# a line citing the design notes; every "§N.M" on such a line is read as one of its sections
# (ranges "§2-§3" and follow-ups "(§2.8)" included)
CITES_DESIGN = re.compile(r"docs/design\.md\s+§")
SECTION = re.compile(r"§(\d+(?:\.\d+)*)")
# "## 3. The optimiser", "### 3.2 Sparse-core step"
HEADING = re.compile(r"^#{2,6}\s+(\d+(?:\.\d+)*)\.?\s", re.M)
# documents that live outside the repository
OUTSIDE = re.compile(r"armor-spec|platform\.md|\bspec §\d")


def source_files() -> list[Path]:
    files = []
    for folder in SOURCES:
        for path in sorted((ROOT / folder).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix == ".py":
                files.append(path)
    return files


def design_sections() -> list[str]:
    return HEADING.findall(DESIGN.read_text(encoding="utf-8"))


def citations() -> list[tuple[str, int, str]]:
    """``(file, line, section)`` for every section of docs/design.md cited in the sources."""
    found = []
    for path in source_files():
        if path.resolve() == Path(__file__).resolve():
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if CITES_DESIGN.search(line):
                rel = str(path.relative_to(ROOT))
                found += [(rel, number, section) for section in SECTION.findall(line)]
    return found


def test_design_sections_are_numbered_once():
    sections = design_sections()
    assert sections, f"{DESIGN} has no numbered headings"
    duplicates = sorted({s for s in sections if sections.count(s) > 1})
    assert not duplicates, f"sections numbered twice in {DESIGN.name}: {duplicates}"


def test_code_cites_the_design_notes():
    assert citations(), "no docstring or comment cites a section of docs/design.md"


def test_every_cited_section_exists():
    sections = set(design_sections())
    missing = [f"{f}:{line}: §{s}" for f, line, s in citations() if s not in sections]
    assert not missing, "cited sections with no heading in docs/design.md:\n" + "\n".join(missing)


def test_no_citations_of_documents_outside_the_repository():
    hits = []
    for path in source_files():
        if path.resolve() == Path(__file__).resolve():
            continue  # this file names the patterns it looks for
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if OUTSIDE.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not hits, "cite docs/design.md instead of documents outside the repository:\n" + (
        "\n".join(hits)
    )


def test_readme_links_point_into_the_repository():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    local = [t.split("#")[0] for t in targets if not re.match(r"[a-z]+:|#", t)]
    missing = sorted({t for t in local if t and not (ROOT / t).exists()})
    assert not missing, f"README links to files that are not in the repository: {missing}"


def sentences(text: str) -> list[str]:
    return re.split(r"(?<=[.;])\s+(?=[A-Z`(])", " ".join(text.split()))


@pytest.mark.fault(
    "verify",
    "the design notes said verify parses the ONNX file into a TensorRT network",
    "they say verify builds no network or engine, and name the runners it has (a doc test)",
)
def test_the_design_notes_say_what_verify_runs():
    """verify builds no engine: its runners are PyTorch, ONNX Runtime, the NumPy reference and
    an engine that was already built (verify/backends.py)."""
    from armor_export.verify.backends import RUNNERS

    text = DESIGN.read_text(encoding="utf-8")
    stale = [
        s
        for s in sentences(text)
        if re.search(r"\bverify\b", s) and re.search(r"\bpars\w*\b", s) and "network" in s
    ]
    assert not stale, "verify creates no TensorRT network:\n" + "\n".join(stale)
    section = text[text.index("### 7.6") : text.index("### 7.7")]
    assert set(RUNNERS) == {"onnxruntime", "numpy-reference", "tensorrt"}, "update §7.6"
    for says in ("ONNX Runtime", "NumPy reference", "never builds an engine", "child process"):
        assert says in section
