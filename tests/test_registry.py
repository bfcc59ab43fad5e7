"""The plugin system: built-ins through the public hook, entry points, duplicates, README."""

from __future__ import annotations

import importlib.metadata
import re
import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn

import gmn_compiler as gc
from gmn_compiler.registry import load_registry

README = Path(__file__).resolve().parents[1] / "README.md"


def test_builtin_rules_come_from_their_plugin_modules():
    registry = load_registry(entry_points=False)
    assert registry.rules["linear"].plugin == "gmn_plugins.linear"
    assert registry.rules["conv"].plugin == "gmn_plugins.conv"
    assert registry.rules["group_norm"].plugin == "gmn_plugins.norms"
    assert registry.aten["aten.conv2d.default"].kind == "conv"
    assert registry.frontends("linear") == ["torch", "onnx"]
    assert registry.onnx["Gemm"].kind == "linear"
    assert registry.is_aliasing("reshape") and not registry.is_aliasing("relu")


class _Dummy:
    def __init__(self, kind: str, override: bool = False):
        self.kind, self.override = kind, override

    @gc.hookimpl
    def gmn_register(self, registry):
        registry.add_rule(self.kind, lambda ctx, op: None, override=self.override)


def test_duplicate_registration_names_both_plugins():
    with pytest.raises(gc.DuplicateRegistrationError) as info:
        load_registry([_Dummy("linear")], entry_points=False)
    message = str(info.value)
    assert "gmn_plugins.linear" in message and "_Dummy" in message and "override=True" in message


def test_override_replaces_rule():
    registry = load_registry([_Dummy("linear", override=True)], entry_points=False)
    assert registry.rules["linear"].plugin == "_Dummy"


def _fake_distribution(monkeypatch, module_name: str, entry_name: str):
    module = types.ModuleType(module_name)

    @gc.hookimpl
    def gmn_register(registry):
        registry.add_rule("fancy_op", lambda ctx, op: None)
        registry.map_aten("aten.cumsum.default", "fancy_op")

    module.gmn_register = gmn_register
    monkeypatch.setitem(sys.modules, module_name, module)

    class Dist:
        entry_points = [importlib.metadata.EntryPoint(entry_name, module_name, "gmn_compiler")]
        metadata = {"name": "fake-dist"}
        version = "1.0"

        def read_text(self, *args):
            return None

    monkeypatch.setattr(importlib.metadata, "distributions", lambda **kw: [Dist()])


def test_third_party_plugin_loads_through_entry_point(monkeypatch):
    _fake_distribution(monkeypatch, "fake_gmn_plugin", "fancy")
    monkeypatch.delenv("GMN_COMPILER_PLUGINS", raising=False)
    registry = load_registry()
    assert registry.rules["fancy_op"].plugin == "fancy"
    assert registry.aten["aten.cumsum.default"].kind == "fancy_op"
    assert "fancy" in registry.plugins


def test_env_var_disables_third_party_plugins(monkeypatch):
    _fake_distribution(monkeypatch, "fake_gmn_plugin2", "fancy2")
    monkeypatch.setenv("GMN_COMPILER_PLUGINS", "none")
    assert "fancy_op" not in load_registry().rules
    monkeypatch.setenv("GMN_COMPILER_PLUGINS", "other")
    assert "fancy_op" not in load_registry().rules
    monkeypatch.setenv("GMN_COMPILER_PLUGINS", "fancy2")
    assert "fancy_op" in load_registry().rules


def test_unsupported_ops_are_all_reported_with_locations():
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            y = torch.cumsum(self.fc(x), dim=-1)
            return torch.sort(y, dim=-1).values + torch.cumprod(y, dim=-1)

    with pytest.raises(gc.UnsupportedOpsError) as info:
        gc.compile(Model(), (torch.randn(2, 4),))
    kinds = {kind for kind, _ in info.value.ops}
    assert {"aten.cumsum.default", "aten.sort.default", "aten.cumprod.default"} <= kinds
    message = str(info.value)
    assert "test_registry.py" in message and "plugin" in message
    assert "\n" not in message


def test_readme_plugin_example_runs():
    text = README.read_text()
    block = re.search(r"<!-- plugin-example-start -->\s*```python\n(.*?)```", text, re.S)
    assert block, "README lost its plugin example"
    namespace: dict = {"__name__": "readme_example"}
    exec(compile(block.group(1), str(README), "exec"), namespace)
    graph = namespace["graph"]
    assert graph.summary["positive_linear"]["edges"] == 4 * 8 + 8
    # Without the plugin the exp() on a parameter is reported, not silently mis-encoded.
    with pytest.raises(gc.UnsupportedOpsError, match="param_transform"):
        gc.compile(namespace["model"], (namespace["x"],), registry=load_registry(entry_points=False))
