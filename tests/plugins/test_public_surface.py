"""The built-in plugins are written against the public rule surface only (issue 15): every
import of the compiler in ``plugins/*.py`` is ``from gmn_compiler.rules import ...``, and no
plugin imports another (helpers plugins share live in the core, where a user's plugin can
reach them too)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import gmn_compiler.rules as rules

PLUGIN_FILES = sorted(p for p in (Path(__file__).parents[2] / "plugins").glob("*.py") if p.name != "__init__.py")


def _compiler_imports(path: Path) -> list[tuple[str, list[str]]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names if alias.name.split(".")[0] in ("gmn_compiler", "gmn_plugins")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                found.append(("." * node.level + (node.module or ""), [a.name for a in node.names]))
            elif (node.module or "").split(".")[0] in ("gmn_compiler", "gmn_plugins"):
                found.append((node.module, [a.name for a in node.names]))
    return found


@pytest.mark.parametrize("path", PLUGIN_FILES, ids=lambda p: p.name)
def test_plugins_import_only_the_rules_module(path):
    imports = _compiler_imports(path)
    assert imports, f"{path.name} imports nothing from gmn_compiler.rules"
    for module, names in imports:
        assert module == "gmn_compiler.rules", f"{path.name} imports {module} (use gmn_compiler.rules)"
        missing = [n for n in names if n not in rules.__all__]
        assert not missing, f"{path.name} imports {missing}, which gmn_compiler.rules does not export"


def test_the_checker_sees_a_private_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from gmn_compiler.builder import GraphBuilder\nfrom .structural import take\n")
    assert _compiler_imports(bad) == [("gmn_compiler.builder", ["GraphBuilder"]), (".structural", ["take"])]


def test_rules_exports_resolve():
    for name in rules.__all__:
        assert getattr(rules, name) is not None
