"""IR rewrites that turn decomposed spellings of a layer back into the layer's own op, so that
every spelling compiles to the same graph.

- A linear layer without bias whose only consumer adds a parameter vector of its output
  size (``x @ W + b``; ONNX ``MatMul`` + ``Add``, also behind a ``Transpose`` of the
  weight; also through reshapes and permutes that keep the feature axis last, as ``einsum``
  is traced)  ⇒  one linear layer with bias, as ``nn.Linear`` gives.
- GroupNorm as written by the TorchScript ONNX exporter: ``reshape [N, C, ...] -> [N, G, -1]``
  → ``instance_norm`` with unit scale and zero shift → ``reshape`` back → ``mul`` by the
  weight → ``add`` the bias  ⇒  one ``group_norm`` op.
"""

from __future__ import annotations

import math

from .ir import IRGraph, Op, ParamRef, Value


def _single_consumer(ir: IRGraph) -> dict[int, Op]:
    """value id -> its only consumer op (values with several consumers are absent)."""
    counts = ir.consumers()
    found: dict[int, Op] = {}
    for op in ir.ops:
        for v in op.values():
            if counts.get(v.id) == 1:
                found[v.id] = op
    return found


def _is_constant(ref, value: float) -> bool:
    """Absent, or every entry equal to ``value`` (a constant, or an initializer an optimiser
    made of the exporter's constant)."""
    return ref is None or (isinstance(ref, ParamRef) and bool((ref.tensor == value).all()))


def _is_weight(ref) -> bool:
    """A parameter or buffer, not a lifted constant: a constant stays an operand read by its
    value (fused into a layer, it would become parameter edges whose values are not structure)."""
    return isinstance(ref, ParamRef) and ref.kind != "constant"


def _channel_param(ref, channels: int, ndim: int) -> ParamRef | None:
    """``ref`` if it broadcasts as one value per channel (axis 1) of a rank-``ndim`` value."""
    if not _is_weight(ref) or ref.tensor.numel() != channels:
        return None
    shape = (1,) * (ndim - ref.tensor.dim()) + tuple(ref.shape)
    if len(shape) != ndim or shape[1] != channels:
        return None
    return ref.apply(lambda t: t.reshape(channels))


def fuse_group_norm(ir: IRGraph) -> IRGraph:
    consumer = _single_consumer(ir)
    replace: dict[int, Op] = {}
    drop: set[int] = set()
    for first in ir.ops:
        if first.kind != "reshape" or not isinstance(first.inputs[0], Value):
            continue
        x, grouped = first.inputs[0], first.output
        if len(x.shape) < 3 or len(grouped.shape) != 3 or grouped.shape[0] != x.shape[0]:
            continue
        channels, groups = x.shape[1], grouped.shape[1]
        if groups == 0 or channels % groups:
            continue
        norm = consumer.get(grouped.id)
        if norm is None or norm.kind != "instance_norm" or not norm.attrs.get("use_input_stats", True):
            continue
        if not (_is_constant(norm.inputs[1], 1.0) and _is_constant(norm.inputs[2], 0.0)):
            continue
        back = consumer.get(norm.outputs[0].id)
        if back is None or back.kind != "reshape" or back.output.shape != x.shape:
            continue
        chain, last, weight, bias = [first, norm, back], back, None, None
        for kind in ("mul", "add"):
            nxt = consumer.get(last.output.id)
            if nxt is None or nxt.kind != kind or nxt.attrs.get("alpha", 1) != 1:
                break
            other = nxt.inputs[1] if nxt.inputs[0] is last.output else nxt.inputs[0]
            ref = _channel_param(other, channels, len(x.shape))
            if ref is None:
                break
            weight, bias = (ref, bias) if kind == "mul" else (weight, ref)
            chain.append(nxt)
            last = nxt
        fused = Op("group_norm", [x, weight, bias], [last.output],
                   {"num_groups": groups, "eps": norm.attrs.get("eps", 1e-5)}, norm.location, "GroupNorm")
        replace[id(last)] = fused
        drop.update(id(op) for op in chain if op is not last)
    if replace:
        ir.ops = [replace.get(id(op), op) for op in ir.ops if id(op) not in drop]
    return ir


def fuse_linear_bias(ir: IRGraph) -> IRGraph:
    consumer = _single_consumer(ir)
    replace: dict[int, Op] = {}
    drop: set[int] = set()
    for op in ir.ops:
        if op.kind not in ("linear", "matmul") or len(op.inputs) != 3 or op.inputs[2] is not None:
            continue
        weight = op.inputs[1]
        if not isinstance(weight, ParamRef) or op.attrs.get("axis", -1) % len(op.output.shape) != len(op.output.shape) - 1:
            continue
        out_features = weight.shape[0]
        last, axis = _through_feature_views(op.output, consumer, out_features)
        add = consumer.get(last.id)
        if add is None or add.kind != "add" or add.attrs.get("alpha", 1) != 1:
            continue
        bias = add.inputs[1] if add.inputs[0] is last else add.inputs[0]
        if not _is_weight(bias) or bias.tensor.numel() != out_features:
            continue
        aligned = (1,) * (len(last.shape) - bias.tensor.dim()) + tuple(bias.shape)
        if len(aligned) != len(last.shape) or aligned[axis] != out_features:
            continue
        direct = last is op.output
        fused = Op("linear", [op.inputs[0], weight, bias.apply(lambda t: t.reshape(out_features))],
                   [add.output if direct else op.output], dict(op.attrs), op.location, op.target)
        if direct:
            replace[id(add)] = fused
            drop.add(id(op))
        else:  # the bias moves before the views; the add becomes the identity
            replace[id(op)] = fused
            replace[id(add)] = Op("identity", [last], [add.output], {}, add.location, add.target)
    if replace:
        ir.ops = [replace.get(id(op), op) for op in ir.ops if id(op) not in drop]
    return ir


def _through_feature_views(value: Value, consumer: dict[int, Op], features: int) -> tuple[Value, int]:
    """Follow single-consumer reshapes and permutes (as ``einsum`` is traced) that keep the
    last axis, of size ``features``, whole: adding a bias over that axis commutes with them.
    Returns the last value of the chain and where the feature axis is in it."""
    axis = len(value.shape) - 1
    while True:
        nxt = consumer.get(value.id)
        if nxt is None or nxt.kind not in ("reshape", "permute", "identity") or len(nxt.outputs) != 1:
            return value, axis
        out = nxt.outputs[0]
        if nxt.kind == "permute":
            moved = [d % len(out.shape) for d in nxt.attrs["dims"]].index(axis)
        elif nxt.kind == "reshape":
            before = math.prod(value.shape[:axis])
            moved = next((j for j in range(len(out.shape)) if out.shape[j] == features
                          and math.prod(out.shape[:j]) == before), None)
            if moved is None:
                return value, axis
        else:
            moved = axis
        value, axis = out, moved


def normalize(ir: IRGraph) -> IRGraph:
    """Every rewrite above, in order; run by both frontends."""
    return fuse_group_norm(fuse_linear_bias(ir))
