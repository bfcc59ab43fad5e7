"""IR rewrites that turn decomposed spellings of a layer back into the layer's own op, so that
every spelling compiles to the same graph.

- A linear layer without bias whose only consumer adds a parameter vector of its output
  size (``x @ W + b``; ONNX ``MatMul`` + ``Add``, also behind a ``Transpose`` of the
  weight; also through reshapes and permutes that keep the feature axis last, as ``einsum``
  is traced)  ⇒  one linear layer with bias, as ``nn.Linear`` gives.
- GroupNorm as written by the TorchScript ONNX exporter: ``reshape [N, C, ...] -> [N, G, -1]``
  → ``instance_norm`` with unit scale and zero shift → ``reshape`` back → ``mul`` by the
  weight → ``add`` the bias  ⇒  one ``group_norm`` op.
- Attention written out (``softmax(q·s1 @ (kᵀ·s2) [+ constant mask]) @ v``, as exporters
  decompose ``scaled_dot_product_attention`` and as hand-written attention reads)  ⇒  one
  ``sdpa`` op with scale ``s1·s2``.
- Activations written out as elementwise arithmetic (``x * sigmoid(x)``, an exporter's GELU)
  ⇒  the activation's own op (:mod:`gmn_compiler.ir_elementwise`).
"""

from __future__ import annotations

import math

import torch

from .ir import IRGraph, Op, ParamRef, Value
from .ir_elementwise import fuse_written_activations


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
        if len(x.shape) < 2 or len(grouped.shape) != 3 or grouped.shape[0] != x.shape[0]:
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
            identity = 1.0 if kind == "mul" else 0.0
            if (isinstance(other, ParamRef) and other.kind == "constant" and _is_constant(other, identity)) \
                    or (isinstance(other, (int, float)) and float(other) == identity):
                chain.append(nxt)  # an exporter's ones / zeros for GroupNorm(affine=False)
                last = nxt
                continue
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


def fuse_attention(ir: IRGraph) -> IRGraph:
    consumer = _single_consumer(ir)
    next_id = [max([v.id for op in ir.ops for v in op.outputs] + [v.id for v in ir.inputs] + [0])]
    producer = {v.id: op for op in ir.ops for v in op.outputs}
    replace: dict[int, Op] = {}
    drop: set[int] = set()
    for soft in ir.ops:
        if soft.kind != "softmax" or soft.attrs.get("log") or not isinstance(soft.inputs[0], Value):
            continue
        ndim = len(soft.output.shape)
        if ndim < 2 or not isinstance(soft.attrs.get("dim"), int) or soft.attrs["dim"] % ndim != ndim - 1:
            continue
        probs, chain = soft.output, [soft]
        guard = _nan_guard(ir, soft.output, consumer)
        if guard is not None:  # the exporter's where(isnan(p), 0, p) after a boolean mask
            chain += guard
            probs = guard[-1].output
        out = consumer.get(probs.id)
        if not _is_contract(out) or out.inputs[0] is not probs:
            continue
        scores, mask = soft.inputs[0], None
        add = producer.get(scores.id)
        if add is not None and add.kind == "add" and add.attrs.get("alpha", 1) == 1 and consumer.get(scores.id) is soft:
            left, right = add.inputs
            found = _constant_mask(right) if isinstance(left, Value) else None
            if found is None and isinstance(right, Value):
                found, left = _constant_mask(left), right
            if found is not None:
                scores, mask = left, found
                chain.append(add)
        scores, s0, post = _scaled(scores, producer, consumer)  # (q @ kᵀ) * s
        if post and consumer.get(post[0].output.id) not in chain:
            continue
        chain += post
        first = producer.get(scores.id)
        if not _is_contract(first) or consumer.get(scores.id) not in chain:
            continue
        q, s1, q_ops = _scaled(first.inputs[0], producer, consumer)
        kt, s2, k_ops = _scaled(first.inputs[1], producer, consumer)
        batched = _batched_transpose(kt, producer, consumer, next_id)
        transpose = producer.get(kt.id)
        if batched is None and (transpose is None or transpose.kind != "permute" or consumer.get(kt.id) is None
                                or not isinstance(transpose.inputs[0], Value)):
            continue
        v = out.inputs[1]
        if not (isinstance(v, Value) and len(q.shape) == len(kt.shape) == len(v.shape)):
            continue
        if batched is not None:  # a new reshape (grouped-query attention) takes the merge's place
            k, merged_ops, new_op = batched
            k_ops += merged_ops
            swapped = (merged_ops[0], new_op) if new_op is not None else None
        else:  # kᵀ was one permute of an earlier value: k is that permute with the last two swapped
            k, new_op = _untransposed(transpose, kt, next_id)
            k_ops.append(transpose)
            swapped = (transpose, new_op) if new_op is not None else None
        replace[id(out)] = Op("sdpa", [q, k, v, mask], [out.output],
                              {"is_causal": False, "scale": s0 * s1 * s2, "enable_gqa": False}, out.location, "attention")
        drop.update(id(op) for op in chain + [first] + q_ops + k_ops)
        if swapped is not None:
            drop.discard(id(swapped[0]))
            replace[id(swapped[0])] = swapped[1]
    if replace:
        ir.ops = [replace.get(id(op), op) for op in ir.ops if id(op) not in drop]
    return ir


def _nan_guard(ir: IRGraph, probs: Value, consumer: dict) -> list[Op] | None:
    """``[isnan, where]`` when ``probs`` is read only by ``where(isnan(probs), 0, probs)``."""
    readers = [op for op in ir.ops if any(v is probs for v in op.inputs)]
    if len(readers) != 2:
        return None
    isnan = next((op for op in readers if op.kind == "isnan"), None)
    where = next((op for op in readers if op.kind == "where"), None)
    if isnan is None or where is None or consumer.get(isnan.output.id) is not where:
        return None
    x, cond, fill = (where.inputs + [None] * 3)[:3]
    if x is probs and cond is isnan.output and where.attrs.get("x_if_false") and fill == 0:
        return [isnan, where]
    return None


def _is_contract(op: Op | None) -> bool:
    return (op is not None and op.kind == "matmul" and op.attrs.get("between_activations", False)
            and len(op.inputs) == 2 and all(isinstance(v, Value) for v in op.inputs))


def _constant_mask(operand):
    """An additive attention mask known by value (a constant, a folded ONNX constant, or a
    number: the same for every score, which softmax ignores)."""
    if isinstance(operand, (int, float)) and not isinstance(operand, bool):
        return torch.tensor(float(operand))
    if isinstance(operand, Value) and operand.constant is not None:
        return operand
    if isinstance(operand, ParamRef) and operand.kind == "constant":
        return operand
    return None


def _scaled(value: Value, producer: dict, consumer: dict) -> tuple[Value, float, list[Op]]:
    """``value`` as ``x * s`` (or ``x / s``) with a Python scalar ``s``, the product read only
    once: ``(x, s, [mul])``; else ``(value, 1.0, [])``."""
    op = producer.get(value.id)
    if op is None or op.kind not in ("mul", "div") or consumer.get(value.id) is None or len(op.inputs) != 2:
        return value, 1.0, []
    if op.kind == "div" and op.attrs.get("rounding_mode"):
        return value, 1.0, []
    a, b = op.inputs
    number = lambda t: isinstance(t, (int, float)) and not isinstance(t, bool) and t != 0
    if isinstance(a, Value) and number(b):
        return a, float(b) if op.kind == "mul" else 1.0 / float(b), [op]
    if op.kind == "mul" and isinstance(b, Value) and number(a):
        return b, float(a), [op]
    return value, 1.0, []


def _batched_transpose(kt: Value, producer: dict, consumer: dict,
                       next_id: list[int]) -> tuple[Value, list[Op], Op | None] | None:
    """``(k, ops, new)`` when ``kt`` is ``k.transpose(-2, -1)`` written over merged leading
    axes, as the dynamo exporter writes it: ``reshape(permute(reshape(x, [-1, n, d]), [0, 2,
    1]), [..., d, n])``, each step read once. ``k`` is ``x`` when the leading axes come back
    as they were; else (grouped-query attention merges ``[b, kv_heads, groups]`` into
    ``[b, heads]``) ``new``, a reshape of ``x`` to ``kt``'s leading axes. None otherwise."""
    unmerge = producer.get(kt.id)
    if (unmerge is None or unmerge.kind != "reshape" or consumer.get(kt.id) is None
            or not isinstance(unmerge.inputs[0], Value)):
        return None
    swap = producer.get(unmerge.inputs[0].id)
    if (swap is None or swap.kind != "permute" or [d % 3 for d in swap.attrs.get("dims", [])] != [0, 2, 1]
            or consumer.get(swap.output.id) is not unmerge or not isinstance(swap.inputs[0], Value)):
        return None
    merge = producer.get(swap.inputs[0].id)
    if (merge is None or merge.kind != "reshape" or consumer.get(merge.output.id) is not swap
            or not isinstance(merge.inputs[0], Value)):
        return None
    x = merge.inputs[0]
    lead = tuple(kt.shape[:-2])
    if (len(x.shape) < 2 or len(kt.shape) < 2 or tuple(kt.shape[-2:]) != (x.shape[-1], x.shape[-2])
            or tuple(merge.output.shape) != (math.prod(x.shape[:-2]),) + tuple(x.shape[-2:])
            or math.prod(lead) != math.prod(x.shape[:-2])):
        return None
    if tuple(x.shape[:-2]) == lead:
        return x, [merge, swap, unmerge], None
    next_id[0] += 1
    k = Value(next_id[0], lead + tuple(x.shape[-2:]), x.dtype, kt.name + "_untransposed")
    return k, [merge, swap, unmerge], Op("reshape", [x], [k], {}, merge.location, merge.target)


def _untransposed(transpose: Op, kt: Value, next_id: list[int]) -> tuple[Value, Op | None]:
    """``k`` for ``kt = permute(x, dims)``: ``x`` itself when ``dims`` swaps the last two axes
    (no new op), else a new ``permute`` of ``x`` whose result is ``kt`` with its last two
    axes swapped (exporters merge ``k.transpose(-2, -1)`` into the permute that made k)."""
    ndim = len(kt.shape)
    dims = [d % ndim for d in transpose.attrs.get("dims", [])]
    if dims == list(range(ndim - 2)) + [ndim - 1, ndim - 2]:
        return transpose.inputs[0], None
    next_id[0] += 1
    k = Value(next_id[0], tuple(kt.shape[:-2]) + (kt.shape[-1], kt.shape[-2]), kt.dtype, kt.name + "_untransposed")
    return k, Op("permute", [transpose.inputs[0]], [k], {"dims": dims[:-2] + [dims[-1], dims[-2]]},
                 transpose.location, transpose.target)


def normalize(ir: IRGraph) -> IRGraph:
    """Every rewrite above, in order; run by both frontends."""
    return fuse_attention(fuse_written_activations(fuse_group_norm(fuse_linear_bias(ir))))
