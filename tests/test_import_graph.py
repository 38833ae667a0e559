"""The package ``limpet`` has no import cycles, counting imports under ``TYPE_CHECKING``.

The graph is built from the source with :mod:`ast`, not by importing it: every
``import`` and ``from ... import`` anywhere in a module (top level, ``if TYPE_CHECKING:``,
inside functions) is an edge to the ``limpet`` module it names; ``from package import
name`` is an edge to ``package.name`` when that is a module, else to ``package``. A
package's ``__init__`` is not counted as imported by its submodules (Python runs it, but
the dependency is the other way round), which is how import-linter counts too.

A cycle is reported as the modules around it, e.g. ``a -> b -> a``; there must be none.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "operator"
PACKAGE = "limpet"


def module_files(root: Path = ROOT, package: str = PACKAGE) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_package(module: str, files: Mapping[str, Path]) -> bool:
    return files[module].name == "__init__.py"


def _targets(node: ast.AST, module: str, files: Mapping[str, Path]) -> Iterator[str]:
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name in files:
                yield alias.name
        return
    assert isinstance(node, ast.ImportFrom)
    if node.level:
        base = module.split(".")
        if not _is_package(module, files):
            base.pop()
        base = base[: len(base) - (node.level - 1)]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    if not source.startswith(PACKAGE):
        return
    for alias in node.names:
        sub = f"{source}.{alias.name}"
        if sub in files:
            yield sub
        elif source in files:
            yield source


def import_graph(files: Mapping[str, Path]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        edges = graph.setdefault(module, set())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                edges.update(t for t in _targets(node, module, files) if t != module)
    return graph


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def one_cycle(graph: Mapping[str, set[str]], component: list[str]) -> list[str]:
    """A concrete cycle through the component's first module: ``[a, b, ..., a]``."""
    members = set(component)
    start = component[0]
    paths: dict[str, list[str]] = {start: [start]}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(graph[v] & members):
            if w == start:
                return [*paths[v], start]
            if w not in paths:
                paths[w] = [*paths[v], w]
                queue.append(w)
    raise AssertionError(f"no cycle through {start}")  # pragma: no cover


def describe(graph: Mapping[str, set[str]], component: list[str]) -> str:
    return " -> ".join(one_cycle(graph, component)) + f"  (component: {', '.join(component)})"


def test_the_package_has_no_import_cycles() -> None:
    files = module_files()
    graph = import_graph(files)
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(describe(graph, c) for c in found)


def test_the_checker_finds_a_cycle_hidden_under_type_checking(tmp_path: Path) -> None:
    pkg = tmp_path / PACKAGE
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from limpet.sub import b\n")
    (pkg / "sub" / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..c import C\n"
    )
    (pkg / "c.py").write_text("def f() -> None:\n    from . import a\n")
    (pkg / "d.py").write_text("import limpet.a\n")
    files = module_files(tmp_path)
    graph = import_graph(files)
    assert graph["limpet.sub.b"] == {"limpet.c"}
    assert graph["limpet.d"] == {"limpet.a"}
    found = cycles(graph)
    assert found == [["limpet.a", "limpet.c", "limpet.sub.b"]]
    assert one_cycle(graph, found[0]) == ["limpet.a", "limpet.sub.b", "limpet.c", "limpet.a"]
