"""The import graph of the project: no cycle at all, and the engine on its own.

import-linter's contracts (`make lint`) check the layers and the cycles among a package's
modules; a cycle that crosses packages (a package and one of its modules, or two top-level
packages) is checked here, on grimp's graph, which counts imports inside functions and
under TYPE_CHECKING as much as those at the top of a file.
"""

from __future__ import annotations

import re
from pathlib import Path

import grimp

PROJECT = ("backups", "dashboard")


def _imported(graph: grimp.ImportGraph, module: str):
    return iter(sorted(graph.find_modules_directly_imported_by(module)))


def import_cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Return each group of modules that import each other in a circle, sorted.

    The strongly connected components of the graph with more than one module (Tarjan's
    algorithm, iterative: the graph has hundreds of modules).
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, _imported(graph, root))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            module, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append(
                        (child, iter(sorted(graph.find_modules_directly_imported_by(child))))
                    )
                elif child in on_stack:
                    low[module] = min(low[module], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[module])
            if low[module] == index[module]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == module:
                        break
                if len(group) > 1:
                    cycles.append(sorted(group))
    return sorted(cycles)


def test_no_module_of_the_project_imports_itself_back():
    graph = grimp.build_graph(*PROJECT, cache_dir=None)
    cycles = import_cycles(graph)
    assert cycles == [], "These modules import each other in a circle: " + "; ".join(
        " <-> ".join(group) for group in cycles
    )


def test_the_engine_imports_nothing_of_the_project_outside_it():
    graph = grimp.build_graph(*PROJECT, cache_dir=None)
    outside = sorted(
        f"{module} -> {imported}"
        for module in graph.find_descendants("backups.engine") | {"backups.engine"}
        for imported in graph.find_modules_directly_imported_by(module)
        if not imported.startswith("backups.engine")
    )
    assert outside == []


def test_a_cycle_through_an_import_inside_a_function_is_found(tmp_path, monkeypatch):
    package = tmp_path / "circular"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from circular import b\n")
    (package / "b.py").write_text("def late():\n    from circular import a\n\n    return a\n")
    (package / "c.py").write_text("from circular import a\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    graph = grimp.build_graph("circular", cache_dir=None)
    assert import_cycles(graph) == [["circular.a", "circular.b"]]


def test_the_pages_hold_no_sql():
    # Queries with SQL of their own (the manifest search, the health probe) belong to the
    # services, where they are tested without a test client.
    views = Path(__file__).resolve().parent.parent / "dashboard" / "views"
    found = [
        f"{path.name}: {line.strip()}"
        for path in sorted(views.glob("*.py"))
        for line in path.read_text().splitlines()
        if re.search(r"\b(SELECT|INSERT|UPDATE|DELETE)\s|cursor\(|\.raw\(|\.extra\(|RawSQL", line)
    ]
    assert found == []
