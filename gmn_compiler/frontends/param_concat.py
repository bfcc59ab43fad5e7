"""A bias assembled in ``forward`` from several parameters and constants (issue 20).

BEiT and EVA-02 build their fused query/key/value bias as ``cat((q_bias, zeros, v_bias))`` and
pass it to ``F.linear``: no single parameter holds it, so it cannot be one parameter reference.
The frontend keeps the pieces (:class:`ParamConcat`) and, where the concatenation is added to
an activation (``linear(x, W, bias)`` is ``linear(x, W) + bias``), emits what that computes
piece by piece: the activation sliced along the concatenated axis, each slice plus its piece
(a parameter attached as usual, a constant added as a constant, exact zeros left out: adding
them changes nothing), the slices concatenated back. Edges carry the stored parameters (round
trips stay exact); the slices cut the units into the pieces' ranges, which the next reshape
into (query, key, value) heads cuts anyway. Any other use stays a ``param_transform`` refusal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..ir import ParamRef, Value


@dataclass(eq=False)
class ParamConcat:
    """``cat(parts, dim)`` of parameter references and constant values; ``dim`` counted from
    the end (negative), so that it holds however the result is broadcast."""

    parts: list[Any]
    dim: int
    shape: tuple[int, ...]

    @staticmethod
    def of(args: list[Any], kwargs: dict[str, Any]) -> "ParamConcat | None":
        tensors = args[0] if args else kwargs.get("tensors")
        dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
        if not isinstance(tensors, (list, tuple)) or not all(_piece(t) for t in tensors):
            return None
        shapes = [tuple(t.shape) for t in tensors]
        ndim = len(shapes[0])
        if any(len(s) != ndim for s in shapes):
            return None
        dim = dim % ndim - ndim
        total = sum(s[dim] for s in shapes)
        shape = shapes[0][:ndim + dim] + (total,) + shapes[0][ndim + dim + 1:]
        return ParamConcat(list(tensors), dim, shape)


def _piece(t: Any) -> bool:
    return isinstance(t, ParamRef) or (isinstance(t, Value) and t.constant is not None)


def add_concat(x: Value, concat: ParamConcat, emit: Callable[[str, tuple, list[Value]], None],
               new_value: Callable[[tuple[int, ...], torch.dtype], Value]) -> Value:
    """``x + concat`` as slices of ``x`` plus each piece, concatenated back. ``emit(aten name,
    args, outputs)`` appends the op; ``new_value(shape, dtype)`` makes an activation. Returns
    the result (shaped like ``x``)."""
    axis = len(x.shape) + concat.dim
    if axis < 0 or x.shape[axis] != concat.shape[concat.dim]:
        raise ValueError("the concatenated axis does not match the activation")
    pieces, start = [], 0
    for part in concat.parts:
        size = part.shape[concat.dim]
        shape = x.shape[:axis] + (size,) + x.shape[axis + 1:]
        piece = new_value(shape, x.dtype)
        emit("aten.slice.Tensor", (x, axis, start, start + size, 1), [piece])
        start += size
        if isinstance(part, Value) and bool((part.constant == 0).all()):
            pieces.append(piece)  # + 0: nothing to encode
            continue
        summed = new_value(shape, x.dtype)
        emit("aten.add.Tensor", (piece, part), [summed])
        pieces.append(summed)
    out = new_value(x.shape, x.dtype)
    emit("aten.cat.default", (pieces, axis), [out])
    return out


def concat_used(converter: Any, node: torch.fx.Node, name: str, args: list, kwargs: dict, location: str) -> bool:
    """``linear(x, W, cat(...))`` or ``x + cat(...)`` with a :class:`ParamConcat` of
    parameters: emitted piece by piece (:func:`add_concat`) into ``converter`` (the torch
    frontend: its ``append_op``, ``env``, ``new_value``). False for any other use."""
    val = node.meta.get("val")
    if not isinstance(val, torch.Tensor):
        return False

    made = []

    def new_value(shape: tuple[int, ...], dtype: torch.dtype) -> Value:
        made.append(converter.new_value(torch.empty(shape, dtype=dtype, device="meta"), f"{node.name}.{len(made)}"))
        return made[-1]

    def emit(target: str, operands: tuple, outs: list[Value]) -> None:
        converter.append_op(target, operands, {}, outs, location)

    bias = args[2] if len(args) > 2 else kwargs.get("bias")
    if name == "aten.linear.default" and isinstance(bias, ParamConcat) and isinstance(args[0], Value) \
            and isinstance(args[1], ParamRef) and not args[1].transform:
        h = new_value(tuple(val.shape), val.dtype)
        emit(name, (args[0], args[1], None), [h])
        converter.env[node.name] = add_concat(h, bias, emit, new_value)
        return True
    if name == "aten.add.Tensor" and len(args) == 2 and not kwargs:
        x, concat = args if isinstance(args[1], ParamConcat) else args[::-1]
        if isinstance(x, Value) and isinstance(concat, ParamConcat) and tuple(x.shape) == tuple(val.shape):
            converter.env[node.name] = add_concat(x, concat, emit, new_value)
            return True
    return False
