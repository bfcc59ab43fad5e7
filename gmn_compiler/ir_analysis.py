"""What the lowering driver reads from the IR before any rule runs: which values alias one
another (so a rule knows whether it is the only reader of some nodes), and the neuron axis of
each model input."""

from __future__ import annotations

import torch

from .ir import IRGraph, Value
from .registry import Registry


class AliasFamilies:
    """Union-find over values linked by aliasing ops; counts value-changing uses per family."""

    def __init__(self, ir: IRGraph, registry: Registry):
        self.parent: dict[int, int] = {}
        for op in ir.ops:
            if registry.is_aliasing(op.kind):
                for a in op.values():
                    for out in op.outputs:
                        self._union(a.id, out.id)
        self.counts: dict[int, int] = {}
        for op in ir.ops:
            if not registry.is_aliasing(op.kind):
                for v in {v.id for v in op.values()}:
                    root = self._find(v)
                    self.counts[root] = self.counts.get(root, 0) + 1
        for v in ir.outputs:
            root = self._find(v.id)
            self.counts[root] = self.counts.get(root, 0) + 1

    def _find(self, v: int) -> int:
        self.parent.setdefault(v, v)
        while self.parent[v] != v:
            self.parent[v] = self.parent[self.parent[v]]
            v = self.parent[v]
        return v

    def _union(self, a: int, b: int) -> None:
        ra, rb = self._find(a), self._find(b)
        if ra != rb:
            self.parent[ra] = rb

    def uses(self, value: Value) -> int:
        return self.counts.get(self._find(value.id), 0)



def broadcast_axes(ir: IRGraph, registry: Registry) -> dict[int, frozenset[int]]:
    """For each value, axes of size > 1 along which all its entries are equal because an
    ``expand`` broadcast them from size 1 (``h / norm.expand_as(h)``), followed through
    permutes and elementwise kinds (:attr:`~gmn_compiler.registry.OpKind.elementwise`). An axis missing from the set may still hold equal entries:
    callers may only rely on the axes listed."""
    found: dict[int, frozenset[int]] = {}

    def aligned(operand, ndim: int) -> tuple[tuple[int, ...], frozenset[int]]:
        shape = tuple(getattr(operand, "shape", ()))
        extra = ndim - len(shape)
        equal = found.get(operand.id, frozenset()) if isinstance(operand, Value) else frozenset()
        return (1,) * extra + shape, frozenset(a + extra for a in equal)

    for op in ir.ops:
        if len(op.outputs) != 1:
            continue
        out = op.output
        ndim = len(out.shape)
        if op.kind == "expand" and isinstance(op.inputs[0], Value):
            shape, equal = aligned(op.inputs[0], ndim)
            found[out.id] = equal | {a for a in range(ndim) if shape[a] == 1 and out.shape[a] > 1}
        elif op.kind == "permute" and isinstance(op.inputs[0], Value):
            equal = found.get(op.inputs[0].id, frozenset())
            found[out.id] = frozenset(j for j, d in enumerate(op.attrs["dims"]) if d % ndim in equal)
        elif registry.is_elementwise(op.kind):
            operands = [aligned(x, ndim) for x in op.inputs if hasattr(x, "shape")]
            found[out.id] = frozenset(a for a in range(ndim) if out.shape[a] > 1 and
                                      all(shape[a] == 1 or a in equal for shape, equal in operands))
    return {v: axes for v, axes in found.items() if axes}


MADE_AXIS = "made"
"""What :func:`infer_input_axis` returns when the axis the first reader declares is one the
model inserts (``audio.unsqueeze(1)`` read by a conv as its single channel): the input then
gets one node, for all its entries."""


def infer_input_axis(ir: IRGraph, value: Value, registry: Registry) -> int | str | None:
    """The neuron axis of a model input: given by the user, else the one its first consumer
    declares (:attr:`~gmn_compiler.registry.OpKind.input_axis`: channels for conv/norm layers,
    the last axis for linear/layer norm), followed through permutes, elementwise kinds and
    reshapes that only insert unit axes (:data:`MADE_AXIS` when the declared axis is one of
    those: raw audio ``[B, T]`` unsqueezed into one conv channel); else axis 1 for rank >= 2
    (NC..., [B, F]); ``None`` (no neurons) for integer inputs and scalars."""
    if value.id in ir.input_neuron_axes:
        return ir.input_neuron_axes[value.id]
    if value.dtype in (torch.long, torch.int32, torch.int64, torch.bool) or len(value.shape) == 0:
        return None
    current = value
    origin: list[int | None] = list(range(len(value.shape)))  # axis of `current` -> input axis (None: made)
    for op in ir.ops:
        if not any(v.id == current.id for v in op.values()):
            continue
        rank = len(current.shape)
        declared = registry.rule(op.kind)
        axis = declared.axis_of_input(op) if declared is not None else None
        if axis is not None:
            found = origin[axis % rank]
            return MADE_AXIS if found is None else found
        if op.kind == "permute" and len(op.outputs) == 1:
            origin = [origin[d % rank] for d in op.attrs["dims"]]
            current = op.output
            continue
        inserted = _unit_axes_inserted(current.shape, op.output.shape) if op.kind == "reshape" \
            and len(op.outputs) == 1 else None
        if inserted is not None:
            origin = [None if a is None else origin[a] for a in inserted]
            current = op.output
            continue
        if registry.is_elementwise(op.kind) and len(op.outputs) == 1 and op.output.shape == current.shape:
            current = op.output
            continue
        break
    return 1 if len(value.shape) >= 2 else 0


def _unit_axes_inserted(before: tuple[int, ...], after: tuple[int, ...]) -> list[int | None] | None:
    """For a reshape from ``before`` to ``after`` that only inserts axes of size 1: the axis of
    ``before`` each axis of ``after`` is (None for an inserted one); None for any other reshape."""
    before, after = tuple(before), tuple(after)
    if len(after) <= len(before):
        return None
    mapped: list[int | None] = []
    i = 0
    for size in after:
        if i < len(before) and size == before[i]:
            mapped.append(i)
            i += 1
        elif size == 1:
            mapped.append(None)
        else:
            return None
    return mapped if i == len(before) else None

