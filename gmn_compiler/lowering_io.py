"""The model's inputs and outputs in the graph: pinned nodes (DESIGN §3)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from . import layout as L
from .ir_analysis import MADE_AXIS, infer_input_axis

if TYPE_CHECKING:
    from .context import LoweringContext


def create_inputs(ctx: LoweringContext) -> None:
    """One pinned ``input`` node per entry of each model input's neuron axis (one per integer
    input of token ids), at consecutive positions."""
    position = 0
    for value in ctx.ir.inputs:
        axis = infer_input_axis(ctx.ir, value, ctx.registry)
        if axis is None:
            ctx.set_layout(value, None)
            if value.dtype in (torch.long, torch.int32, torch.int64) and len(value.shape) > 0:
                node = ctx.builder.add_nodes(1, "input", depth=0)  # token ids: one node says which input
                ctx.builder.pin(node, torch.tensor([position]))
                ctx.io_nodes.add(int(node))
                ctx.integer_inputs[value.id] = int(node)
                position += 1
            continue
        size = 1 if axis == MADE_AXIS else value.shape[axis]
        ids = ctx.builder.add_nodes(size, "input", depth=0)
        ctx.builder.pin(ids, torch.arange(position, position + size))
        ctx.io_nodes.update(ids.tolist())
        position += size
        if axis == MADE_AXIS:  # one node for every entry (mono audio: its samples are positions)
            ctx.set_layout(value, L.Layout(ids.view((1,) * len(value.shape))))
        else:
            ctx.set_layout(value, L.for_axis(ids, len(value.shape), axis))


def pin_outputs(ctx: LoweringContext) -> None:
    """Every node of a model output gets its own position, in entry order."""
    position = 0
    positions = ctx.builder.node_column("position")
    roles = ctx.builder.node_column("role")
    for value in ctx.ir.outputs:
        layout = ctx.layouts.get(value.id)
        if layout is None:
            continue
        ids = layout.ids.reshape(-1)
        # first occurrence of each node, in entry order
        uniq, inverse = torch.unique(ids, return_inverse=True)
        first = torch.full((uniq.numel(),), ids.numel(), dtype=torch.long)
        first.scatter_reduce_(0, inverse, torch.arange(ids.numel()), "amin")
        order = uniq[torch.argsort(first)]
        ctx.io_nodes.update(order.tolist())
        # every output unit is told apart, including units a constant pinned to one
        # position shared by several of them (a table over tokens two blocks hold)
        free = order[roles[order] != 0]
        positions[free] = torch.arange(position, position + free.numel())
        position += free.numel()
