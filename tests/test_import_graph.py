"""No import cycle between the package's modules (module-level imports; imports inside functions
are allowed: they run after every module is loaded)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "nasdistill"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _module_level_imports(tree: ast.Module):
    """Import statements that run when the module is imported (not in functions, nor under TYPE_CHECKING)."""
    def walk(nodes):
        for node in nodes:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                yield node
            elif isinstance(node, ast.If):
                test = ast.unparse(node.test)
                if test not in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
                    yield from walk(node.body)
                yield from walk(node.orelse)
            elif isinstance(node, (ast.Try, ast.With)):
                for block in (node.body, *(h.body for h in getattr(node, "handlers", [])),
                              getattr(node, "orelse", []), getattr(node, "finalbody", [])):
                    yield from walk(block)
    yield from walk(tree.body)


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports at module level."""
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for module, path in files.items():
        is_package = path.name == "__init__.py"
        for node in _module_level_imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = _resolve(module, is_package, node)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            for target in targets:
                while target and target not in files:  # `import a.b.c` of a name inside a module
                    target = target.rpartition(".")[0]
                if target and target != module and target.startswith("nasdistill"):
                    graph[module].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` (as a path that ends where it starts), or None. A package importing its
    own submodule is not a cycle by itself: the submodule importing its package back is."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if node.startswith(nxt + "."):  # a submodule "imports" its parent package only by being in it
                continue
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert "nasdistill.search.optuna_backend" in graph and graph["nasdistill.search.optuna_backend"]
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_work_sits_below_search_and_validate():
    graph = import_graph()
    for module, targets in graph.items():
        if module.startswith("nasdistill.work"):
            assert not {t for t in targets if t.startswith(("nasdistill.search", "nasdistill.validate"))}, module


ON_THEIR_OWN = ["nasdistill.work", "nasdistill.search.optuna_backend", "nasdistill.search.workers",
                "nasdistill.search.backend", "nasdistill.validate.reference", "nasdistill.validate.table",
                "nasdistill.validate.validation"]


@pytest.mark.slow
def test_each_module_imports_on_its_own():
    """Each module imports first in a fresh interpreter (no cycle hides behind another's import);
    the interpreters run at once."""
    procs = {m: subprocess.Popen([sys.executable, "-c", f"import {m}"], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, cwd=ROOT) for m in ON_THEIR_OWN}
    failed = {}
    for m, p in procs.items():
        _, err = p.communicate(timeout=180)
        if p.returncode:
            failed[m] = err[-1500:]
    assert not failed, failed


def _all_imports_graph(prefixes: tuple[str, ...]) -> dict[str, set[str]]:
    """Like :func:`import_graph`, but counting every import (in functions, under TYPE_CHECKING too),
    between modules whose names start with ``prefixes``."""
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in files if m.startswith(prefixes)}
    for module in graph:
        path = files[module]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(module, path.name == "__init__.py", node)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in files:
                    target = target.rpartition(".")[0]
                if target in graph and target != module:
                    graph[module].add(target)
    return graph


def test_search_and_the_work_sharing_layer_have_no_cycle_even_through_local_imports():
    # optuna_backend <-> workers and validate.claims <-> validate.reference used to be such cycles.
    graph = _all_imports_graph(("nasdistill.search.", "nasdistill.work", "nasdistill.validate.reference",
                                "nasdistill.validate.validation", "nasdistill.validate.table"))
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)
