"""docs/reliability.md from the tests themselves, so the table cannot drift from the suite.

Every test that tries a bad input or a fault carries ``@pytest.mark.fault(area, case,
sees)``. This module reads those markers from the test sources (``ast``: nothing is
imported or run) and renders the table. ``tests/test_reliability_doc.py`` fails when the
committed file differs; ``python -m tests.reliability_doc`` rewrites it.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "reliability.md"
AREAS = (
    "prune",
    "quantize",
    "plan",
    "load",
    "assets",
    "config",
    "export",
    "build",
    "engine",
    "verify",
    "runtime",
    "report",
)


@dataclass(frozen=True)
class Fault:
    area: str
    case: str
    sees: str
    test: str  # path::name


def _marker(decorator: ast.expr) -> ast.Call | None:
    """The ``pytest.mark.fault(...)`` call of a decorator, if it is one."""
    if not isinstance(decorator, ast.Call):
        return None
    func = decorator.func
    if isinstance(func, ast.Attribute) and func.attr == "fault":
        return decorator
    return None


def collect(root: Path = ROOT) -> list[Fault]:
    faults = []
    for path in sorted((root / "tests").rglob("test_*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in tree.body:
            if not isinstance(node, ast.FunctionDef) or not node.name.startswith("test_"):
                continue
            for decorator in node.decorator_list:
                call = _marker(decorator)
                if call is None:
                    continue
                args = [ast.literal_eval(a) for a in call.args]
                if len(args) != 3 or not all(isinstance(a, str) and a for a in args):
                    raise ValueError(
                        f"{path}:{node.lineno}: fault(area, case, sees) needs 3 strings"
                    )
                where = f"{path.relative_to(root)}::{node.name}"
                faults.append(Fault(*args, where))
    return faults


def render(faults: list[Fault]) -> str:
    lines = [
        "# Reliability: bad inputs and faults the test suite tries",
        "",
        "Generated from the `@pytest.mark.fault(area, case, sees)` markers of the tests by",
        "`python -m tests.reliability_doc`; `tests/test_reliability_doc.py` fails when this",
        "file and the tests disagree. Each row is one test that runs the case and checks what",
        "the user sees.",
    ]
    for area in AREAS:
        rows = [f for f in faults if f.area == area]
        if not rows:
            continue
        lines += ["", f"## {area}", "", "| case | what the user sees | test |", "|---|---|---|"]
        lines += [f"| {f.case} | {f.sees} | `{f.test}` |" for f in rows]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    DOC.write_text(render(collect()))
    print(f"wrote {DOC.relative_to(ROOT)}", file=sys.stderr)
