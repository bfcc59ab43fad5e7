"""The oracles as a shipped API (gmn_compiler.testing, the gmn_oracles pytest fixture).

Every assert_* passes on correct models and catches a deliberately broken plugin passed
through the compile options: each broken plugin overrides the built-in ``linear`` rule with a
wrong variant, and each is caught by the oracle meant for it (and passes the others where the
bug is invisible to them).
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import gmn_compiler as gc
from gmn_compiler import layout, testing
from gmn_compiler.errors import SymmetryError
from gmn_compiler.ir import ParamRef
from gmn_compiler.registry import load_registry
from gmn_compiler.testing import (assert_complete, assert_oracles, assert_round_trip, assert_sound,
                                  assert_swap_faithful)
from gmn_plugins.linear import lower_linear

README = Path(__file__).resolve().parents[1] / "README.md"


def _mlp() -> tuple[nn.Module, tuple]:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    return model, (torch.randn(3, 4),)


def _cnn() -> tuple[nn.Module, tuple]:
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(),
                          nn.Flatten(), nn.Linear(4 * 2 * 2, 3))
    return model, (torch.randn(2, 2, 6, 6),)


class TwoHeads(nn.Module):
    """Two linear heads on the input: every unit is pinned to a model input or output, so the
    graph has no automorphism to test, and only the swap test sees their biases."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 2), nn.Linear(3, 2)

    def forward(self, x):
        return self.a(x), self.b(x)


# ---------------------------------------------------------------- broken linear rules
def _wrong_provenance(ctx, op):
    """Edge (o, i) carries W[o, i] but decompiles into W[o, n - 1 - i]."""
    x, weight, *rest = op.inputs
    reversed_offsets = ParamRef(weight.name, weight.tensor, weight.flat_offsets().flip(-1), weight.kind)
    lower_linear(ctx, dataclasses.replace(op, inputs=[x, reversed_offsets, *rest]))


def _forgotten_bias(ctx, op):
    """The bias gets no edges: hidden units look interchangeable without their biases."""
    lower_linear(ctx, dataclasses.replace(op, inputs=op.inputs[:2]))


def _marked_unit(ctx, op):
    """An extra structural edge singles out output unit 0, which is still declared free."""
    lower_linear(ctx, op)
    outs, _ = layout.axis_entries(ctx.require_layout(op.output), op.output.shape, -1)
    marker = ctx.add_nodes(1, "bias", ctx.depth_of(outs))
    ctx.add_edges((1,), marker, outs[:1], "linear_bias")


class BrokenLinear:
    """A plugin replacing the built-in linear rule with ``rule``."""

    def __init__(self, rule):
        self.rule = rule

    @gc.hookimpl
    def gmn_register(self, registry):
        registry.add_rule("linear", self.rule, override=True)


def _broken(rule):
    return load_registry([BrokenLinear(rule)], entry_points=False)


# ---------------------------------------------------------------- correct models pass
@pytest.mark.parametrize("build, declared", [
    (_mlp, "hidden units of linear"), (_cnn, "output channels of conv")], ids=["mlp", "cnn"])
def test_each_oracle_passes_on_a_correct_model(build, declared):
    model, inputs = build()
    base = testing.randomized(model)
    registry = load_registry(entry_points=False)  # options flow through: the built-ins, explicitly
    pg = assert_round_trip(base, inputs, registry=registry)
    stats = sum(b.numel() for n, b in base.named_buffers() if n.endswith(("running_mean", "running_var")))
    assert int(pg.data.edge_param.ge(0).sum()) == sum(p.numel() for p in base.parameters()) + stats
    sound = assert_sound(base, inputs, graph=pg, trials=2)
    assert sound.automorphisms_checked == 2 and sound.symmetries_checked == []
    complete = assert_complete(base, inputs, registry=registry)
    assert len(complete.symmetries_checked) == 2  # the last layer's units are pinned by the output
    assert all(s.startswith(declared) for s in complete.symmetries_checked)
    assert assert_swap_faithful(base, inputs, max_pairs=4, registry=registry).pairs
    graph = assert_oracles(model, inputs, trials=2, max_pairs=4, registry=registry)
    assert graph.data.num_nodes == pg.data.num_nodes


# ---------------------------------------------------------------- broken plugins are caught
def test_round_trip_catches_edges_written_back_to_the_wrong_entries():
    model, inputs = _mlp()
    with pytest.raises(SymmetryError, match=r"round trip: 0\.weight differs"):
        assert_round_trip(model, inputs, registry=_broken(_wrong_provenance))
    assert_round_trip(model, inputs)  # the built-in rule, by default


def test_soundness_catches_a_forgotten_bias_that_completeness_cannot():
    model, inputs = _mlp()
    registry = _broken(_forgotten_bias)
    assert_round_trip(model, inputs, registry=registry)  # what is represented still round-trips
    assert_complete(model, inputs, registry=registry)    # the declared units do still move
    with pytest.raises(SymmetryError, match="is not function-preserving") as info:
        assert_sound(testing.randomized(model), inputs, registry=registry)
    assert isinstance(info.value, AssertionError)


def test_completeness_catches_a_missing_symmetry_that_soundness_cannot():
    model, inputs = _mlp()
    registry = _broken(_marked_unit)
    assert_sound(testing.randomized(model), inputs, registry=registry)  # fewer automorphisms: still sound
    with pytest.raises(SymmetryError, match=r"missing symmetry \(proved\): swapping units 0 and 1"):
        assert_complete(model, inputs, registry=registry)


def test_swap_test_catches_what_no_automorphism_reaches():
    model, inputs = TwoHeads(), (torch.randn(2, 3),)
    registry = _broken(_forgotten_bias)
    assert_round_trip(model, inputs, registry=registry)
    assert_sound(testing.randomized(model), inputs, registry=registry)
    assert_complete(model, inputs, registry=registry)
    with pytest.raises(SymmetryError, match=r"swap test: exchanging a\.bias and b\.bias"):
        assert_swap_faithful(model, inputs, registry=registry)
    assert assert_swap_faithful(model, inputs).changed == 2  # the built-in rule tells both swaps


@pytest.mark.parametrize("rule, message", [
    (_wrong_provenance, "round trip"), (_forgotten_bias, "not function-preserving"),
    (_marked_unit, "missing symmetry"),
])
def test_assert_oracles_catches_every_broken_plugin(rule, message):
    model, inputs = _mlp()
    with pytest.raises(SymmetryError, match=message):
        assert_oracles(model, inputs, trials=2, max_pairs=4, registry=_broken(rule))


def test_a_graph_and_compile_options_are_exclusive():
    model, inputs = _mlp()
    pg = gc.compile(model, inputs)
    with pytest.raises(TypeError, match="graph="):
        assert_sound(model, inputs, graph=pg, registry=_broken(_forgotten_bias))
    with pytest.raises(TypeError, match="graph="):
        assert_complete(model, inputs, graph=pg, registry=_broken(_marked_unit))


def test_old_names_are_aliases():
    assert testing.check_round_trip is assert_round_trip
    assert testing.swap_test is assert_swap_faithful
    assert testing.check_all is assert_oracles


# ---------------------------------------------------------------- the pytest plugin
def test_fixture_serves_the_oracles(gmn_oracles):
    model, inputs = _mlp()
    assert gmn_oracles is testing
    gmn_oracles.assert_complete(model, inputs)
    with pytest.raises(SymmetryError, match="missing symmetry"):
        gmn_oracles.assert_complete(model, inputs, registry=_broken(_marked_unit))


def test_plugin_is_an_entry_point_and_imports_nothing_heavy(pytestconfig):
    from gmn_compiler import pytest_plugin

    assert pytestconfig.pluginmanager.get_plugin("gmn_compiler") is pytest_plugin
    heavy = ("torch", "networkx", "onnx", "gmn_compiler.testing")
    code = f"import sys, gmn_compiler.pytest_plugin; print(sorted(set({heavy}) & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------- the README's examples
def _readme_block(tag: str) -> str:
    block = re.search(rf"<!-- {tag}-start -->\s*```python\n(.*?)```", README.read_text(), re.S)
    assert block, f"README lost its {tag} example"
    return block.group(1)


def _readme_plugin_namespace() -> dict:
    namespace: dict = {"__name__": "readme_example"}
    for tag in ("plugin-example", "plugin-test", "plugin-fixture"):
        exec(compile(_readme_block(tag), str(README), "exec"), namespace)
    return namespace


def test_readme_three_line_test_runs_and_catches_a_broken_plugin():
    namespace = _readme_plugin_namespace()
    namespace["test_positive_linear"]()
    correct = namespace["lower_positive_linear"]

    def reversed_log_weight(ctx, op):  # the README plugin, writing log-weights back reversed
        params = dict(op.attrs["params"])
        w = params["log_weight"]
        params["log_weight"] = ParamRef(w.name, w.tensor, w.flat_offsets().flip(-1), w.kind)
        correct(ctx, dataclasses.replace(op, attrs={**op.attrs, "params": params}))

    namespace["lower_positive_linear"] = reversed_log_weight  # the plugin class looks it up here
    with pytest.raises(SymmetryError, match=r"round trip: 0\.log_weight differs"):
        namespace["test_positive_linear"]()


def test_readme_fixture_example_runs(gmn_oracles):
    _readme_plugin_namespace()["test_positive_linear_is_sound"](gmn_oracles)


def test_check_symmetry_refuses_a_graph_compiled_from_other_values():
    """``assert_oracles`` returns the graph of a randomized copy: checking that graph against
    the original model used to report a false 'not function-preserving' failure."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    x = (torch.randn(5, 3),)
    of_a_copy = assert_oracles(model, x, trials=2)
    with pytest.raises(ValueError, match="graph= does not hold this model's parameter values"):
        gc.check_symmetry(model, x, trials=2, graph=of_a_copy)
    assert gc.check_symmetry(model, x, trials=2, graph=gc.compile(model, x)).automorphisms_checked == 2


# ---------------------------------------------------------------- float32 runs
class CastsToFloat32(nn.Module):
    """Runs in float32 whatever its parameters' dtype (so the oracles cannot use float64)."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 64), nn.Linear(64, 2)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x.float())))


def _cancelling_float32_model() -> tuple[nn.Module, tuple]:
    """Outputs of a few hundred, one of which the bias cancels to zero: a reordered sum
    differs there by ulps of the tensor's scale (1.5e-5 here), more than atol allows."""
    torch.manual_seed(0)
    model, inputs = CastsToFloat32(), (torch.randn(4, 8) * 1000,)
    with torch.no_grad():
        model.fc2.bias[0] -= model(*inputs)[0, 0]
    return model, inputs


def test_float32_outputs_that_cancel_to_zero_are_compared_at_the_tensors_scale():
    model, inputs = _cancelling_float32_model()
    report = gc.check_symmetry(model, inputs, trials=8)
    assert 1e-5 < report.max_abs_error < 1e-3  # an entry-wise atol of 1e-5 would have failed
    assert report.automorphisms_checked == 8 and report.identity_automorphisms == 0
    assert [s.split(" at ")[0] for s in report.symmetries_checked] == ["hidden units of linear"]


def test_float32_runs_still_catch_a_forgotten_bias():
    model, inputs = _cancelling_float32_model()
    with pytest.raises(SymmetryError, match="is not function-preserving"):
        assert_sound(model, inputs, registry=_broken(_forgotten_bias))
