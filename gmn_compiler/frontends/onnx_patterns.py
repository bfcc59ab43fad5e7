"""ONNX graph rewrites applied before lowering, and layout ops on initializers.

- :func:`fuse` merges the Erf GELU subgraph ``0.5 · x · (1 + erf(x / √2))`` (three
  exporter spellings) into ``Gelu``, the op the torch frontend sees. (``MatMul`` + ``Add``
  is fused at IR level, :mod:`gmn_compiler.ir_patterns`, for both frontends.)
- :func:`transform_params` applies a layout op (Transpose, Reshape, Slice…) to an
  initializer's values and offsets alike, keeping it a parameter seen through a view.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import onnx
import torch
from onnx import helper

from ..ir import ParamRef

FUSABLE_OP_TYPES = frozenset({"Erf", "Div", "Mul", "Add"})
"""Op types :func:`fuse` may merge into ``Gelu`` (whether each one stays is known only then)."""
PARAM_LAYOUT_OPS = frozenset({"Identity", "Dropout", "CastLike", "Cast", "Reshape", "Flatten",
                              "Squeeze", "Unsqueeze", "Transpose", "Gather", "Slice", "Split"})
"""Op types :func:`transform_params` turns into views of a parameter."""


def _consumers(nodes: list[onnx.NodeProto], protected: set[str]) -> dict[str, list[int]]:
    uses: dict[str, list[int]] = {}
    for i, node in enumerate(nodes):
        for name in node.input:
            uses.setdefault(name, []).append(i)
    for name in protected:
        uses.setdefault(name, []).append(-1)  # a graph output: never fused away
    return uses


def fuse(nodes: list[onnx.NodeProto], env: dict[str, Any], values: dict[str, np.ndarray],
         graph_outputs: set[str] | None = None) -> list[onnx.NodeProto]:
    return _fuse_gelu(nodes, env, values, graph_outputs or set())


def _scalar(name: str, env: dict[str, Any], values: dict[str, np.ndarray]) -> float | None:
    ref = env.get(name)
    if isinstance(ref, ParamRef):
        return float(ref.tensor.reshape(-1)[0]) if ref.tensor.numel() == 1 else None
    if name in values and np.size(values[name]) == 1 and name not in env:
        return float(np.asarray(values[name]).reshape(-1)[0])
    return None


def _other(node: onnx.NodeProto, name: str) -> str | None:
    if len(node.input) != 2 or name not in node.input:
        return None
    return node.input[1] if node.input[0] == name else node.input[0]


def _fuse_gelu(nodes, env, values, outputs) -> list[onnx.NodeProto]:
    uses = _consumers(nodes, outputs)
    producer = {o: i for i, n in enumerate(nodes) for o in n.output}

    def only_user(name: str, op_type: str) -> int | None:
        users = uses.get(name, [])
        if len(users) == 1 and users[0] >= 0 and nodes[users[0]].op_type == op_type:
            return users[0]
        return None

    replaced: dict[int, onnx.NodeProto] = {}
    dropped: set[int] = set()
    for e, erf in enumerate(nodes):
        if erf.op_type != "Erf" or erf.input[0] not in producer:
            continue
        d = producer[erf.input[0]]
        scale = nodes[d]
        if scale.op_type not in ("Div", "Mul") or len(uses.get(scale.output[0], [])) != 1:
            continue
        x = scale.input[0]
        c = _scalar(scale.input[1], env, values)
        want = math.sqrt(2.0) if scale.op_type == "Div" else 1 / math.sqrt(2.0)
        if c is None or abs(c - want) > 1e-3:
            continue
        a = only_user(erf.output[0], "Add")
        if a is None or _scalar(_other(nodes[a], erf.output[0]) or "", env, values) != 1.0:
            continue
        m1 = only_user(nodes[a].output[0], "Mul")
        if m1 is None:
            continue
        other = _other(nodes[m1], nodes[a].output[0])
        m1_out = nodes[m1].output[0]
        if other == x:  # Mul(Mul(x, 1 + erf), 0.5)
            m2 = only_user(m1_out, "Mul")
            if m2 is None or _scalar(_other(nodes[m2], m1_out) or "", env, values) != 0.5:
                continue
            group, last = {d, e, a, m1, m2}, m2
        elif _scalar(other or "", env, values) == 0.5:  # Mul(x, Mul(0.5, 1 + erf))
            m2 = only_user(m1_out, "Mul")
            if m2 is None or _other(nodes[m2], m1_out) != x:
                continue
            group, last = {d, e, a, m1, m2}, m2
        elif other in producer and nodes[producer[other]].op_type == "Mul" \
                and _other(nodes[producer[other]], x) is not None \
                and _scalar(_other(nodes[producer[other]], x), env, values) == 0.5 \
                and len(uses.get(other, [])) == 1:  # Mul(Mul(x, 0.5), 1 + erf)
            group, last = {producer[other], d, e, a, m1}, m1
        else:
            continue
        replaced[last] = helper.make_node("Gelu", [x], list(nodes[last].output),
                                          name=nodes[last].name or erf.name)
        dropped |= group - {last}
    return [replaced.get(i, n) for i, n in enumerate(nodes) if i not in dropped]


# ---------------------------------------------------------------- layout ops on parameters
def transform_params(node: onnx.NodeProto, args: list, attrs: dict, shape_of: Callable[[str], tuple],
                     constant: Callable[[str], torch.Tensor]) -> list[ParamRef] | None:
    """The node's outputs as views of its (single) initializer input, or ``None`` if the
    node is not a pure layout op on one parameter."""
    refs = [a for a in args if isinstance(a, ParamRef)]
    if node.op_type not in PARAM_LAYOUT_OPS or len(refs) != 1 or not isinstance(args[0], ParamRef):
        return None
    ref = args[0]
    op = node.op_type
    if op in ("Identity", "Dropout", "CastLike"):  # CastLike: same dtype in practice
        return [ref]
    if op == "Cast":
        return [ParamRef(ref.name, ref.tensor.to(_onnx_dtype(attrs["to"])), ref.offsets, ref.kind)]
    if op in ("Reshape", "Flatten", "Squeeze", "Unsqueeze"):
        shape = shape_of(node.output[0])
        return [ref.apply(lambda t: t.reshape(shape))]
    if op == "Transpose":
        perm = attrs.get("perm") or list(range(ref.tensor.dim()))[::-1]
        return [ref.apply(lambda t: t.permute(*perm))]
    if op == "Gather":
        indices = constant(node.input[1]).long()
        axis = attrs.get("axis", 0)
        if indices.dim() == 0:
            return [ref.apply(lambda t: t.select(axis, int(indices) % t.shape[axis]))]
        return [ref.apply(lambda t: t.index_select(axis, indices.reshape(-1) % t.shape[axis])
                          .reshape(t.shape[:axis % t.dim()] + indices.shape + t.shape[axis % t.dim() + 1:]))]
    if op == "Slice":
        return [ref.apply(lambda t: _slice(t, node, attrs, constant))]
    if op == "Split":
        axis = attrs.get("axis", 0)
        sizes = [shape_of(o)[axis] for o in node.output]
        return [ParamRef(ref.name, v, o, ref.kind) for v, o in
                zip(torch.split(ref.tensor, sizes, axis), torch.split(ref.flat_offsets(), sizes, axis))]
    return None


def _slice(t: torch.Tensor, node, attrs, constant) -> torch.Tensor:
    if len(node.input) > 1:
        starts = constant(node.input[1]).tolist()
        ends = constant(node.input[2]).tolist()
        axes = constant(node.input[3]).tolist() if len(node.input) > 3 and node.input[3] else list(range(len(starts)))
        steps = constant(node.input[4]).tolist() if len(node.input) > 4 and node.input[4] else [1] * len(starts)
    else:  # opset < 10 attributes
        starts, ends = attrs["starts"], attrs["ends"]
        axes = attrs.get("axes", list(range(len(starts))))
        steps = [1] * len(starts)
    index = [slice(None)] * t.dim()
    for s, e, a, st in zip(starts, ends, axes, steps):
        index[a] = slice(*slice(s, e, st).indices(t.shape[a]))
    if any(st < 0 for st in steps):
        raise ValueError("negative Slice steps on a parameter are not supported")
    return t[tuple(index)]


def _onnx_dtype(code: int) -> torch.dtype:
    np_type = onnx.helper.tensor_dtype_to_np_dtype(code)
    return torch.from_numpy(np.zeros(1, dtype=np_type)).dtype
