"""No import cycles between the modules of ``gmn_compiler``, ``gmn_plugins`` and ``gmn_models``.

The import graph is read from the source with :mod:`ast`, without importing anything: an edge
``a -> b`` for every ``import``/``from ... import`` in module ``a`` that names module ``b`` of
these packages (relative imports resolved; ``from pkg import name`` is an edge to the submodule
``pkg.name`` when there is one, else to ``pkg``). Imports inside functions and methods (lazy
imports) count: a lazy import that closes a cycle still makes two modules depend on each
other. Imports under ``if TYPE_CHECKING:`` do not (they never run). Not counted: the implicit
import of a module's parent packages, a module importing itself (the ``__main__`` idiom), and
names imported by string (``importlib.import_module``, entry points).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"gmn_compiler": ROOT / "gmn_compiler", "gmn_plugins": ROOT / "plugins",
            "gmn_models": ROOT / "gmn_models"}
"""Top-level package name -> its source folder (``gmn_plugins`` is installed from ``plugins/``)."""

Graph = dict[str, set[str]]


def module_files(packages: dict[str, Path]) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (its .py file, whether it is a package ``__init__``)."""
    found = {}
    for package, folder in packages.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if "__pycache__" in parts:
                continue
            is_init = parts[-1] == "__init__"
            name = ".".join([package] + (parts[:-1] if is_init else parts))
            found[name] = (path, is_init)
    return found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imported_names(tree: ast.AST, module: str, is_init: bool) -> list[str]:
    """Every dotted name the module imports (``from a import b`` gives ``a.b``), at any depth
    of the tree except under ``if TYPE_CHECKING:`` (its ``else:`` branch counts)."""
    package = module if is_init else module.rpartition(".")[0]
    names: list[str] = []
    pending: list[ast.AST] = [tree]
    while pending:
        node = pending.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            pending.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            names += [f"{source}.{alias.name}" for alias in node.names]
        pending.extend(ast.iter_child_nodes(node))
    return names


def _known_module(name: str, modules: set[str]) -> str | None:
    """The longest prefix of ``name`` that is one of ``modules`` (``a.b.func`` -> ``a.b``)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(packages: dict[str, Path] = PACKAGES) -> Graph:
    """Module -> the modules of ``packages`` it imports (see the module docstring)."""
    files = module_files(packages)
    graph: Graph = {}
    for module, (path, is_init) in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        targets = {_known_module(name, set(files)) for name in _imported_names(tree, module, is_init)}
        graph[module] = {t for t in targets if t is not None and t != module}
    return graph


def find_cycles(graph: Graph) -> list[list[str]]:
    """One cycle ``[m0, m1, ..., m0]`` per strongly connected component of more than one
    module (Tarjan's algorithm, iterative); empty when the graph is acyclic."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return [_cycle_through(graph, set(c), c[0]) for c in components]


def _cycle_through(graph: Graph, component: set[str], start: str) -> list[str]:
    """A shortest path ``start -> ... -> start`` inside ``component`` (breadth first)."""
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph[node] & component):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return path[::-1] + [start]
                if child not in parent:
                    parent[child] = node
                    following.append(child)
        frontier = following
    raise AssertionError(f"{start} is on no cycle of its component")  # pragma: no cover


# ------------------------------------------------------------------ the checker's own tests
def test_find_cycles_on_hand_made_graphs():
    cyclic = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"a"}}
    assert find_cycles(cyclic) == [["a", "b", "c", "a"]]
    two = {"a": {"b"}, "b": {"a"}, "x": {"y"}, "y": {"z"}, "z": {"x"}}
    assert sorted(find_cycles(two)) == [["a", "b", "a"], ["x", "y", "z", "x"]]
    assert find_cycles({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []
    shortest = {"a": {"b", "c"}, "b": {"c"}, "c": {"a"}}
    assert find_cycles(shortest) == [["a", "c", "a"]]


def test_graph_reader_counts_lazy_and_relative_imports_not_type_checking(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from . import leaf\n")
    (pkg / "sub" / "leaf.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from pkg import top\nelse:\n    import pkg.other\n"
        "def f():\n    from ..top import thing\n")
    (pkg / "top.py").write_text("import pkg.sub.leaf as leaf\n")
    (pkg / "other.py").write_text("import os\nfrom pkg.sub import leaf\n")
    graph = import_graph({"pkg": pkg})
    assert graph == {"pkg": set(), "pkg.sub": {"pkg.sub.leaf"}, "pkg.sub.leaf": {"pkg.top", "pkg.other"},
                     "pkg.top": {"pkg.sub.leaf"}, "pkg.other": {"pkg.sub.leaf"}}
    assert sorted(find_cycles(graph)) == [["pkg.other", "pkg.sub.leaf", "pkg.other"]]


def test_graph_covers_the_three_packages():
    graph = import_graph()
    assert {"gmn_compiler.registry", "gmn_plugins.linear", "gmn_models.zoo.experiment"} <= set(graph)
    assert "gmn_compiler.rules" in graph["gmn_plugins.linear"]
    assert "gmn_models.compile_folder" in graph["gmn_models.datasets"]  # a lazy import


# ------------------------------------------------------------------ the check
def test_no_import_cycles():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles:\n" + "\n".join("  " + " -> ".join(c) for c in cycles)
