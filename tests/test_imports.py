"""caetune's imports point one way: no cycle among its modules, and search -> analysis -> models.

The graph is read from the source (every ``import caetune...`` and ``from caetune... import``,
function-local ones included), not from what Python happens to load, so an import that only a
rarely taken branch runs counts as well.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "caetune"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _imported(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The caetune modules ``name`` imports (a package's ``__init__`` for a name in it)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x, from ..models import y
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # `from caetune.search import _warm` imports the module caetune.search._warm.
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            # The longest caetune module the dotted name starts with: a module, or its package.
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imported(name, path, modules) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that import each other, directly or not.

    Tarjan's strongly connected components of more than one module.
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for start in sorted(graph):
        if start not in index:
            visit(start)
    return groups


def _is_in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_the_graph_sees_function_local_and_package_imports():
    graph = import_graph()
    # _searcher imports _explore at the top; _run imports _searcher inside functions only.
    assert "caetune.search._explore" in graph["caetune.search._searcher"]
    assert "caetune.search._searcher" in graph["caetune.search._run"]
    assert "caetune.models" in graph["caetune.search._trainable"]  # inside train_trial


def test_the_graph_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_no_import_cycle_among_caetune_modules():
    # A module of a package imports its siblings, not the package: the package's __init__
    # imports it (a cycle, even when the import is function-local).
    assert _cycles(import_graph()) == []


@pytest.mark.parametrize(
    ("lower", "higher"),
    [
        ("caetune.models", "caetune.analysis"),
        ("caetune.models", "caetune.search"),
        ("caetune.analysis", "caetune.search"),
    ],
)
def test_layers_import_one_way(lower, higher):
    wrong = sorted(
        f"{module} imports {target}"
        for module, targets in import_graph().items()
        if _is_in(module, lower)
        for target in targets
        if _is_in(target, higher)
    )
    assert not wrong, wrong
