"""The one declaration of an op kind (issue 15, item 4): the core reads what ``add_rule``
declares (operands, attributes, input axis, elementwise, view) instead of knowing kinds by name,
and a normalizer refuses an instance with a typed ``Unsupported``."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gmn_compiler as gc
from gmn_compiler.registry import load_registry
from gmn_compiler.rules import LoweringContext, Op, Registrar, Unsupported, hookimpl
from gmn_compiler.testing import assert_oracles, assert_round_trip
from cumsum_plugin import lower_cumsum


class _Plugin:
    """A plugin made of one ``gmn_register`` body (a function of the registrar)."""

    def __init__(self, name: str, register: Any):
        self.__name__, self._register = name, register

    @hookimpl
    def gmn_register(self, registry: Registrar) -> None:
        self._register(registry)


def _registry(register: Any, name: str = "test_plugin") -> Any:
    return load_registry([_Plugin(name, register)], entry_points=False)


def _inputs(graph: Any) -> int:
    """How many nodes of the graph are model-input nodes."""
    return int((graph.data.x[:, 0] == gc.schema.NODE_ROLES.index("input")).sum())


# ---------------------------------------------------------------- input_axis
class CumsumThenLinear(nn.Module):
    """The model input's first reader is a running sum along its axis 2."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4 * 6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.cumsum(x, dim=2).flatten(1))


def _cumsum(**declaration: Any) -> Any:
    def register(registry: Registrar) -> None:
        registry.add_activation("cumsum")
        registry.add_rule("cumsum", lower_cumsum, **declaration)
        registry.map_aten("aten.cumsum.default", "cumsum", lambda x, dim, *rest, **kw: ([x], {"dim": dim}))
    return register


def test_the_declared_input_axis_decides_where_a_model_input_has_neurons():
    x = torch.randn(2, 4, 6)
    graph = gc.compile(CumsumThenLinear(), (x,), registry=_registry(_cumsum(input_axis=1)))
    assert _inputs(graph) == 4  # the 4 entries of axis 1
    # declared on the last axis, the running sum would mix the input's neurons: the rule refuses
    with pytest.raises(gc.LoweringError, match="cumsum along a neuron axis"):
        gc.compile(CumsumThenLinear(), (x,), registry=_registry(_cumsum(input_axis=-1)))


# ---------------------------------------------------------------- elementwise
class AtanThenLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.atan(x))


def _atan(elementwise: bool) -> Any:
    def lower_atan(ctx: LoweringContext, op: Op) -> None:
        ctx.set_layout(op.output, ctx.derive(op.inputs[0], "atan"))

    def register(registry: Registrar) -> None:
        registry.add_activation("atan")
        registry.add_rule("atan", lower_atan, inputs=("x",), attributes=(), elementwise=elementwise)
        registry.map_aten("aten.atan.default", "atan", lambda x: ([x], {}))
    return register


def test_an_elementwise_kind_is_followed_to_the_layer_that_names_the_input_axis():
    x = torch.randn(2, 5, 3)
    graph = assert_oracles(AtanThenLinear(), (x,), registry=_registry(_atan(elementwise=True)))
    assert _inputs(graph) == 3
    # not declared elementwise, the search stops at atan and takes axis 1 (the 5 positions
    # become input nodes): the linear layer then runs once per input node, over an axis
    # without neurons (a faithful graph, but not the one the model's author meant)
    other = assert_oracles(AtanThenLinear(), (x,), registry=_registry(_atan(elementwise=False)))
    assert _inputs(other) == 5


# ---------------------------------------------------------------- operands and attributes
def _misdeclared(register_attrs: dict[str, Any], declared: tuple[str, ...]) -> Any:
    def register(registry: Registrar) -> None:
        registry.add_activation("atan")
        registry.add_rule("atan", lambda ctx, op: ctx.set_layout(op.output, ctx.derive(op.inputs[0], "atan")),
                          inputs=("x",), attributes=declared, elementwise=True)
        registry.map_aten("aten.atan.default", "atan", lambda x: ([x], dict(register_attrs)))
    return register


def test_an_attribute_the_kind_does_not_declare_is_reported_with_the_plugin():
    x = torch.randn(2, 5, 3)
    with pytest.raises(gc.LoweringError, match=r"attributes \['dimm'\].*'atan'.*'sloppy_plugin'"):
        gc.compile(AtanThenLinear(), (x,), registry=_registry(_misdeclared({"dimm": 1}, ("dim",)), "sloppy_plugin"))
    gc.compile(AtanThenLinear(), (x,), registry=_registry(_misdeclared({"dim": 1}, ("dim",))))


def test_more_operands_than_declared_are_reported():
    def register(registry: Registrar) -> None:
        registry.add_activation("atan")
        registry.add_rule("atan", lambda ctx, op: None, inputs=(), elementwise=True)
        registry.map_aten("aten.atan.default", "atan", lambda x: ([x], {}))
    with pytest.raises(gc.LoweringError, match="1 operands, but kind 'atan'"):
        gc.compile(AtanThenLinear(), (torch.randn(2, 5, 3),), registry=_registry(register))


def test_a_view_must_be_declared_aliasing():
    def register(registry: Registrar) -> None:
        registry.add_rule("roll", lambda ctx, op: None, view=lambda t, attrs, shapes: [t])
    with pytest.raises(ValueError, match="aliasing=True"):
        _registry(register)


# ---------------------------------------------------------------- view
class RolledWeight(nn.Module):
    """A weight read through ``roll``: a rearrangement of the stored parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(5, 3))
        self.b = nn.Parameter(torch.randn(5))
        self.out = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(F.linear(x, self.w.roll(2, 0), self.b)))


def _roll(view: bool) -> Any:
    def lower_roll(ctx: LoweringContext, op: Op) -> None:
        raise ctx.error("roll of an activation is not part of this test plugin")

    def roll(t: torch.Tensor, attrs: dict[str, Any], shapes: list[tuple[int, ...]]) -> list[torch.Tensor]:
        return [t.roll(attrs["shifts"], attrs["dims"])]

    def register(registry: Registrar) -> None:
        registry.add_rule("roll", lower_roll, inputs=("x",), attributes=("shifts", "dims"), aliasing=True,
                          view=roll if view else None)
        registry.map_aten("aten.roll.default", "roll",
                          lambda x, shifts, dims=(): ([x], {"shifts": list(shifts), "dims": list(dims)}))
    return register


def test_a_parameter_read_through_a_declared_view_stays_a_parameter():
    x = torch.randn(4, 3)
    registry = _registry(_roll(view=True))
    graph = assert_oracles(RolledWeight(), (x,), registry=registry)
    assert {p.name for p in graph.params} >= {"w", "b"}
    model = RolledWeight()
    graph = assert_round_trip(model, (x,), registry=registry)
    state = graph.to_state_dict(graph.data.edge_attr[:, 0])
    assert torch.equal(state["w"], model.w)  # written back in the stored order, not rolled
    with pytest.raises(gc.UnsupportedOpsError, match=r"param_transform\[aten.roll.default\]"):
        gc.compile(RolledWeight(), (x,), registry=_registry(_roll(view=False)))


# ---------------------------------------------------------------- Unsupported
def test_a_normalizer_refuses_an_instance_with_its_reason():
    def refuse(x: Any) -> tuple[list[Any], dict[str, Any]]:
        raise Unsupported("atan of a tensor this plugin does not handle")

    def register(registry: Registrar) -> None:
        registry.add_activation("atan")
        registry.add_rule("atan", lambda ctx, op: None, inputs=("x",), elementwise=True)
        registry.map_aten("aten.atan.default", "atan", refuse)
    with pytest.raises(gc.UnsupportedOpsError, match=r"atan \(atan of a tensor this plugin does not handle\)"):
        gc.compile(AtanThenLinear(), (torch.randn(2, 5, 3),), registry=_registry(register))
