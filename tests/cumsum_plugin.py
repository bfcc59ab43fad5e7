"""A plugin as a user writes it (issue 15): a rule for ``aten.cumsum`` with an activation name
of its own, importing from ``gmn_compiler.rules`` only. Shared by the tests of open
vocabularies and of the dense-feature transform."""

from __future__ import annotations

import torch
from torch import nn

from gmn_compiler.rules import LoweringContext, Op, Registrar, hookimpl


def lower_cumsum(ctx: LoweringContext, op: Op) -> None:
    """A running sum along a free axis is a per-neuron function of the sequence: fresh nodes
    marked ``cumsum``, their edges carrying the axis. Along a neuron axis it would mix
    neurons in their order: refused."""
    x = op.inputs[0]
    axis = op.attrs["dim"] % len(x.shape)
    layout = ctx.layout(x)
    if layout is not None and axis in layout.neuron_axes():
        raise ctx.error("cumsum along a neuron axis mixes neurons in order")
    ctx.set_layout(op.output, ctx.derive(x, "cumsum", sig=("cumsum", axis - len(x.shape))))


class CumsumPlugin:
    __name__ = "cumsum_plugin"

    @hookimpl
    def gmn_register(self, registry: Registrar) -> None:
        registry.add_activation("cumsum")
        registry.add_rule("cumsum", lower_cumsum)
        registry.map_aten("aten.cumsum.default", "cumsum", lambda x, dim, *rest, **kw: ([x], {"dim": dim}))


class RunningSum(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.cumsum(torch.relu(self.a(x)), dim=1))
