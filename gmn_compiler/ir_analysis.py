"""What the lowering driver reads from the IR before any rule runs: which values alias one
another (so a rule knows whether it is the only reader of some nodes), and the neuron axis of
each model input."""

from __future__ import annotations

import torch

from . import schema
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



_ELEMENTWISE_KINDS = {"add", "sub", "mul", "div", "identity", "softmax", "maximum", "minimum",
                      "pow"} | set(schema.ACTIVATIONS)
INPUT_AXIS_BY_FIRST_USE = {"conv": 1, "conv_transpose": 1, "batch_norm": 1, "group_norm": 1,
                           "instance_norm": 1, "linear": -1, "layer_norm": -1}


def infer_input_axis(ir: IRGraph, value: Value) -> int | None:
    """The neuron axis of a model input: given by the user, else from its first consumer
    (channels for conv/norm layers, the last axis for linear/layer norm), else axis 1 for
    rank >= 2 (NC..., [B, F]); ``None`` (no neurons) for integer inputs and scalars."""
    if value.id in ir.input_neuron_axes:
        return ir.input_neuron_axes[value.id]
    if value.dtype in (torch.long, torch.int32, torch.int64, torch.bool) or len(value.shape) == 0:
        return None
    current = value
    origin = list(range(len(value.shape)))  # axis of `current` -> axis of the input
    for op in ir.ops:  # follow the value through elementwise ops and permutes
        if not any(v.id == current.id for v in op.values()):
            continue
        rank = len(current.shape)
        if op.kind == "linear" or (op.kind == "matmul" and len(op.inputs) == 3):
            return origin[op.attrs.get("axis", -1) % rank]
        if op.kind in INPUT_AXIS_BY_FIRST_USE:
            return origin[INPUT_AXIS_BY_FIRST_USE[op.kind] % rank]
        if op.kind == "permute" and len(op.outputs) == 1:
            origin = [origin[d % rank] for d in op.attrs["dims"]]
            current = op.output
            continue
        if op.kind in _ELEMENTWISE_KINDS and len(op.outputs) == 1 and op.output.shape == current.shape:
            current = op.output
            continue
        break
    return 1 if len(value.shape) >= 2 else 0
