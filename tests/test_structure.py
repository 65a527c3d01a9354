"""The package layout the code promises (docs/design.md §7.5): building an engine (``engine/``)
and running one (``runtime/``) are two sides, the runtime importing the engine folder's
contract and never the reverse; one module per name on the deploy path; helpers that serve
several verbs live in the top-level module that names what they do, not inside one verb.

Read from the source (every import, lazy ones inside functions included), so a cycle hidden in
a function body fails here, not when two lazy imports first meet at run time.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "armor_export"
# deploy-path packages whose imports must not form a circle
DEPLOY = ("export", "engine", "runtime", "verify")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every armor_export module ``path`` imports, at any depth of its code."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith("armor_export"):
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("armor_export"))
    return found


def _subpackage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and (PACKAGE / parts[1]).is_dir() else None


def package_graph() -> dict[str, set[str]]:
    """Subpackage -> the other subpackages its modules import."""
    graph: dict[str, set[str]] = defaultdict(set)
    for path in PACKAGE.rglob("*.py"):
        source = _subpackage(_module_name(path))
        for target in map(_subpackage, _imports(path)):
            if source and target and target != source:
                graph[source].add(target)
    return graph


def _cycle(graph: dict[str, set[str]], nodes: tuple[str, ...]) -> list[str] | None:
    """One import circle among ``nodes`` (as a path), or None."""

    def visit(node, path):
        for nxt in sorted(set(graph.get(node, ())) & set(nodes)):
            if nxt in path:
                return path[path.index(nxt) :] + [nxt]
            found = visit(nxt, path + [nxt])
            if found:
                return found
        return None

    for start in nodes:
        found = visit(start, [start])
        if found:
            return found
    return None


def test_the_deploy_path_has_no_import_circle():
    graph = package_graph()
    assert _cycle(graph, DEPLOY) is None, " -> ".join(_cycle(graph, DEPLOY))


def test_the_engine_side_never_imports_the_runtime():
    """Building (``engine/``) needs nothing of running; running reads what building wrote."""
    graph = package_graph()
    assert "runtime" not in graph["engine"]
    assert "engine" in graph["runtime"]  # the folder contract and the backend loader


def test_one_module_per_name_on_the_deploy_path():
    """``runtime`` and ``engine`` name packages; a module of the same name elsewhere is a second
    thing called that (only the verb in ``cli/`` and the stage in ``stages/`` wrap them)."""
    clashes = [
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if path.stem in ("runtime", "engine")
        and path.parent.name not in ("cli", "stages")
        and path.parent != PACKAGE
    ]
    assert clashes == []


def test_heap_helpers_live_in_memory_not_in_a_verb():
    """``trim_heap``/``bound_heap`` serve prune, export and verify: ``memory`` defines them,
    and nobody imports them from ``prune``."""
    definers, from_prune = set(), []
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and node.name in ("trim_heap", "bound_heap"):
                definers.add(_module_name(path))
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                "armor_export.prune"
            ):
                names = {a.name for a in node.names}
                if names & {"trim_heap", "bound_heap"}:
                    from_prune.append(_module_name(path))
    assert definers == {"armor_export.memory"}
    assert from_prune == []
