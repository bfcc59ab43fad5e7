"""ONNX graph rewrites applied before lowering.

:func:`fuse` merges the Erf GELU subgraph ``0.5 · x · (1 + erf(x / √2))`` (three exporter
spellings) into ``Gelu``, and torch's thresholded softplus ``Where(x > t, x, Softplus(x))``
into ``Softplus`` with a ``threshold`` attribute, writes ``Tile`` as torch decomposes
``repeat`` (``Expand``, ``Transpose``, ``Reshape``) and a ``ScatterND`` into a block of rows
as the slices around the block concatenated with it (as the torch frontend writes
``x[a:b] = y``), and a ``Gather`` of sliding windows (a 2-D index whose rows are equally
strided runs, as exporters write ``F.unfold``) as the windows' slices stacked: the ops the
torch frontend sees.
(``MatMul`` + ``Add`` is fused at IR level, :mod:`gmn_compiler.ir_patterns`, for both
frontends. A layout op on an initializer is seen through its kind's declared view,
:attr:`gmn_compiler.registry.OpKind.view`.)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import onnx
import torch
from onnx import helper

from ..ir import ParamRef, Value

FUSABLE_OP_TYPES = frozenset({"Erf", "Div", "Mul", "Add", "Greater", "Where", "Tile", "ScatterND", "Gather"})
"""Op types :func:`fuse` may rewrite (whether each one stays is known only then)."""


def _consumers(nodes: list[onnx.NodeProto], protected: set[str]) -> dict[str, list[int]]:
    uses: dict[str, list[int]] = {}
    for i, node in enumerate(nodes):
        for name in node.input:
            uses.setdefault(name, []).append(i)
    for name in protected:
        uses.setdefault(name, []).append(-1)  # a graph output: never fused away
    return uses


def fuse(nodes: list[onnx.NodeProto], env: dict[str, Any], values: dict[str, np.ndarray],
         graph_outputs: set[str] | None = None, constants: set[str] | None = None) -> list[onnx.NodeProto]:
    """``nodes`` rewritten (see the module's docstring); ``values`` gains the new values.
    ``constants``: the names computed from constants and shapes only (the Tile repeats and
    scatter indices that may be read as fixed); none when not given."""
    outputs, constants = graph_outputs or set(), constants or set()
    nodes = _fuse_gelu(nodes, env, values, outputs)
    nodes = _fuse_softplus_threshold(nodes, env, values, outputs, constants)
    nodes = _tile_as_torch_repeat(nodes, env, values, constants)
    nodes = _scatter_rows_as_slices(nodes, env, values, constants)
    return _windows_as_stacked_slices(nodes, env, values, constants)


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


def _fuse_softplus_threshold(nodes, env, values, outputs, constants: set[str]) -> list[onnx.NodeProto]:
    """``Where(Greater(x, t), x, Softplus(x))``, ``t`` one number computed from constants only
    (never a weight, never a value of the input), the Greater and the Softplus
    read by that Where only: ``Softplus(x)`` with attribute ``threshold = t`` (torch's
    ``F.softplus(x, beta=1, threshold=t)`` as its exporters write it)."""
    uses = _consumers(nodes, outputs)
    producer = {o: i for i, n in enumerate(nodes) for o in n.output}
    replaced: dict[int, onnx.NodeProto] = {}
    dropped: set[int] = set()
    for w, where in enumerate(nodes):
        if where.op_type != "Where" or len(where.input) != 3:
            continue
        cond, x, other = where.input
        g, s = producer.get(cond), producer.get(other)
        if g is None or s is None or {g, s} & dropped:
            continue
        greater, softplus = nodes[g], nodes[s]
        if greater.op_type != "Greater" or greater.input[0] != x or softplus.op_type != "Softplus" \
                or softplus.input[0] != x or uses.get(cond) != [w] or uses.get(other) != [w]:
            continue
        threshold = _constant_array(greater.input[1], env, values, constants)
        if threshold is None or np.size(threshold) != 1:
            continue
        replaced[w] = helper.make_node("Softplus", [x], list(where.output), name=where.name or softplus.name,
                                       threshold=float(np.asarray(threshold).reshape(-1)[0]))
        dropped |= {g, s}
    return [replaced.get(i, n) for i, n in enumerate(nodes) if i not in dropped]


def _tile_as_torch_repeat(nodes, env, values, constants: set[str]) -> list[onnx.NodeProto]:
    """``Tile(x, r)`` with constant repeats ``r`` as PyTorch decomposes ``x.repeat(*r)``: an
    ``Expand`` to ``r + shape``, a ``Transpose`` interleaving each repeat with its axis, and a
    ``Reshape`` to ``r[i] * shape[i]`` (so both frontends lower the same ops). The new values
    are added to ``values``. Tiles with computed repeats are left for lowering to refuse."""
    out: list[onnx.NodeProto] = []
    for node in nodes:
        repeats = _constant_ints(node.input[1], env, values, constants) if node.op_type == "Tile" else None
        shape = _shape_of(node.input[0], env, values) if repeats is not None else None
        if shape is None or len(shape) != len(repeats):
            out.append(node)
            continue
        x, name, rank = node.input[0], node.output[0], len(shape)
        expanded = list(repeats) + list(shape)
        perm = [axis for i in range(rank) for axis in (i, rank + i)]
        final = [r * s for r, s in zip(repeats, shape)]
        data = values.get(x)
        expand_shape = _int_constant(out, values, f"{name}__expand_shape", expanded)
        reshape_shape = _int_constant(out, values, f"{name}__reshape_shape", final)
        out.append(helper.make_node("Expand", [x, expand_shape], [f"{name}__expanded"],
                                    name=f"{node.name}__expand"))
        out.append(helper.make_node("Transpose", [f"{name}__expanded"], [f"{name}__interleaved"],
                                    name=f"{node.name}__transpose", perm=perm))
        out.append(helper.make_node("Reshape", [f"{name}__interleaved", reshape_shape], [name], name=node.name))
        if data is not None:
            values[f"{name}__expanded"] = np.broadcast_to(data, expanded)
            values[f"{name}__interleaved"] = np.transpose(values[f"{name}__expanded"], perm)
    return out


def _int_constant(out: list[onnx.NodeProto], values: dict[str, np.ndarray], name: str, ints: list[int]) -> str:
    """Append a ``Constant`` node holding ``ints`` (int64) as ``name`` to ``out``, record its
    value in ``values``; returns ``name``."""
    array = np.array(ints, dtype=np.int64)
    values[name] = array
    out.append(helper.make_node("Constant", [], [name], name=name, value=onnx.numpy_helper.from_array(array)))
    return name


def _constant_ints(name: str, env: dict[str, Any], values: dict[str, np.ndarray],
                   constants: set[str]) -> list[int] | None:
    """The integers ``name`` holds when it is one of ``constants`` (a value computed from a
    model input may change with it)."""
    array = _constant_array(name, env, values, constants)
    if array is None or not np.issubdtype(np.asarray(array).dtype, np.integer):
        return None
    return [int(v) for v in np.asarray(array).reshape(-1)]


def _constant_array(name: str, env: dict[str, Any], values: dict[str, np.ndarray],
                    constants: set[str]) -> np.ndarray | None:
    if name not in constants:
        return None
    tensor = getattr(env.get(name), "tensor", None)
    return tensor.numpy() if isinstance(tensor, torch.Tensor) else values.get(name)


def _shape_of(name: str, env: dict[str, Any], values: dict[str, np.ndarray]) -> list[int] | None:
    if name in values:
        return list(np.shape(values[name]))
    tensor = getattr(env.get(name), "tensor", None)
    return list(tensor.shape) if isinstance(tensor, torch.Tensor) else None


def _scatter_rows_as_slices(nodes, env, values, constants: set[str]) -> list[onnx.NodeProto]:
    """``ScatterND(data, indices, updates)`` (no reduction) whose constant ``indices`` of shape
    ``[n, 1]`` name rows ``a, a + 1, ..., a + n - 1`` of ``data``: ``Concat(data[:a], updates,
    data[a + n:])`` along axis 0. Any other scatter is left for lowering to refuse."""
    out: list[onnx.NodeProto] = []
    for node in nodes:
        rows = _written_rows(node, env, values, constants)
        if rows is None:
            out.append(node)
            continue
        (start, stop), name = rows, node.output[0]
        data, updates, size = node.input[0], node.input[2], _shape_of(node.input[0], env, values)[0]

        def rows_of_data(part: str, a: int, b: int) -> str:
            """``data[a:b]`` along axis 0, as a new Slice node's output."""
            bounds = [_int_constant(out, values, f"{name}__{part}_{k}", [n])
                      for k, n in zip(("starts", "ends", "axes"), (a, b, 0))]
            out.append(helper.make_node("Slice", [data, *bounds], [f"{name}__{part}"], name=f"{node.name}__{part}"))
            if data in values:
                values[f"{name}__{part}"] = np.asarray(values[data])[a:b]
            return f"{name}__{part}"

        head = [rows_of_data("head", 0, start)] if start > 0 else []
        tail = [rows_of_data("tail", stop, size)] if stop < size else []
        out.append(helper.make_node("Concat", head + [updates] + tail, [name], name=node.name, axis=0))
    return out


def _written_rows(node, env, values, constants: set[str]) -> tuple[int, int] | None:
    """``(a, a + n)`` when ``node`` is a plain ScatterND writing rows ``a .. a + n - 1``."""
    if node.op_type != "ScatterND" or any(a.name == "reduction" and a.s not in (b"", b"none")
                                          for a in node.attribute):
        return None
    indices = _constant_array(node.input[1], env, values, constants)
    shape = _shape_of(node.input[0], env, values)
    if indices is None or shape is None or np.ndim(indices) != 2 or np.shape(indices)[1] != 1:
        return None
    rows = np.asarray(indices).reshape(-1) % shape[0]
    start = int(rows[0]) if rows.size else 0
    if rows.size == 0 or not np.array_equal(rows, np.arange(start, start + rows.size)):
        return None
    return start, start + int(rows.size)


def _windows_as_stacked_slices(nodes, env, values, constants: set[str]) -> list[onnx.NodeProto]:
    """``Gather(x, index, axis)`` of an activation with a constant 2-D ``index`` of at least
    two rows whose rows are runs ``a_k, a_k + s, ..., a_k + s (n - 1)`` (one step ``s`` and
    length ``n`` for all): each row a strided ``Slice`` of ``x`` along ``axis``, stacked
    there -- ``torch.stack`` of the windows, as the torch frontend writes
    ``F.unfold``, so each window offset gets its own units. (The stack is a ``Concat`` with the
    attribute ``stack=1``, which only this rewrite writes.) Other gathers are unchanged."""
    out: list[onnx.NodeProto] = []
    activations = _from_model_inputs(nodes, env)
    for node in nodes:
        windows = _window_rows(node, env, values, constants) if node.input and node.input[0] in activations else None
        if windows is None:
            out.append(node)
            continue
        starts, step, length, axis = windows
        data, name = node.input[0], node.output[0]
        stacked = []
        for k, start in enumerate(starts):
            bounds = [_int_constant(out, values, f"{name}__window{k}_{b}", [n]) for b, n in
                      zip(("starts", "ends", "axes", "steps"), (start, start + step * (length - 1) + 1, axis, step))]
            piece = f"{name}__window{k}"
            out.append(helper.make_node("Slice", [data, *bounds], [piece], name=piece))
            if data in values:
                values[piece] = np.take(np.asarray(values[data]), np.arange(start, start + step * length, step), axis=axis)
            stacked.append(piece)
        out.append(helper.make_node("Concat", stacked, [name], name=node.name, axis=axis, stack=1))
    return out


def _from_model_inputs(nodes, env) -> set[str]:
    """The names computed from a model input (activations and data, not a parameter table
    however it is viewed: tables read through an index are views, see param_tables)."""
    active = {name for name, v in env.items() if isinstance(v, Value)}
    for node in nodes:
        if any(n in active for n in node.input):
            active.update(o for o in node.output if o)
    return active


def _window_rows(node, env, values, constants: set[str]) -> tuple[list[int], int, int, int] | None:
    """``(row starts, step, row length, axis)`` when ``node`` gathers sliding windows."""
    if node.op_type != "Gather":
        return None
    index = _constant_array(node.input[1], env, values, constants)
    shape = _shape_of(node.input[0], env, values)
    if index is None or shape is None or np.ndim(index) != 2 or np.shape(index)[0] < 2 or np.shape(index)[1] < 2:
        return None
    axis = next((a.i for a in node.attribute if a.name == "axis"), 0) % len(shape)
    rows = np.asarray(index, dtype=np.int64) % shape[axis]
    step = int(rows[0, 1] - rows[0, 0])
    if step < 1 or not (np.diff(rows, axis=1) == step).all():
        return None
    return [int(a) for a in rows[:, 0]], step, int(rows.shape[1]), axis
