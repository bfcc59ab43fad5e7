"""In-place writes in an exported graph that the torch frontend can read as plain values.

``torch.export`` keeps ``x.copy_(y)`` (what ``x[...] = y`` traces to) as a mutation: the write
reaches ``x`` and every view of it. Two cases are read as plain values:

- the copy covers all of ``x``, ``x`` is no view of another tensor, and nothing reads ``x``
  after the copy (MViT-v2's ``attn[:, :, 0:, 0:] = ...`` without a class token): the value ``y``
  in ``x``'s shape (:func:`overwrites_whole_value`);
- ``x`` is a chain of step-1 slices of a value ``base`` that is no view (MViT-v2's
  ``attn[:, :, 1:, 1:] = ...`` beside a class token): from the copy on, ``base`` is the value
  whose sliced block is ``y`` and whose other entries are ``base``'s, i.e. slices of ``base``
  concatenated around ``y`` (:func:`sliced_write`; the frontend writes that out). Refused when a
  view of ``base`` taken before the copy is read after it (it would miss the write).

Any other write stays an ``aten.copy_`` op without a rule, refused in one line.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..errors import CompileError
from ..ir import Value

Emit = Callable[[str, list, tuple[int, ...], torch.dtype, str], Value]
"""``emit(aten_name, args, shape, dtype, label)``: appends that op to the IR, returns its output."""


def overwrites_whole_value(node: torch.fx.Node) -> bool:
    """``copy_(dst, src)`` whose ``dst`` is no view of another tensor (the write would reach
    that one too), is read by nothing after the copy, and has the copy's shape."""
    dst = node.args[0]
    if not isinstance(dst, torch.fx.Node) or dst.op != "call_function" or _is_alias(dst.target):
        return False
    order = {n: i for i, n in enumerate(node.graph.nodes)}
    if any(order[user] > order[node] for user in dst.users if user is not node):
        return False
    val, out = dst.meta.get("val"), node.meta.get("val")
    return isinstance(val, torch.Tensor) and isinstance(out, torch.Tensor) and val.shape == out.shape


def _is_alias(target: Any) -> bool:
    """An op whose result aliases an operand (a view: ``slice``, ``view``, ``alias``...), by its
    schema; unknown targets count as views."""
    schema = getattr(target, "_schema", None)
    return schema is None or any(r.alias_info is not None for r in schema.returns)


def sliced_write(node: torch.fx.Node) -> tuple[torch.fx.Node, list[tuple[int, int | None, int | None]]] | None:
    """For ``copy_(dst, src)`` with ``dst`` a chain of step-1 ``slice`` ops of a value that is no
    view: that value and the slices ``(dim, start, end)``, outermost first; None otherwise."""
    order = {n: i for i, n in enumerate(node.graph.nodes)}
    chain: list[tuple[int, int | None, int | None]] = []
    dst = node.args[0]
    views: set[torch.fx.Node] = set()
    while isinstance(dst, torch.fx.Node) and dst.op == "call_function" and str(dst.target) == "aten.slice.Tensor":
        args = list(dst.args) + [None] * (5 - len(dst.args))
        dim, start, end, step = args[1] or 0, args[2], args[3], args[4] or 1
        if step != 1 or any(order[u] > order[node] for u in dst.users):
            return None
        chain.append((int(dim), start, end))
        views.add(dst)
        dst = args[0]
    if not chain or not isinstance(dst, torch.fx.Node) or dst.op != "call_function" or _is_alias(dst.target):
        return None
    for user in dst.users:  # an earlier view of the value, read after the write, would miss it
        if user not in views and order[user] < order[node] and _is_alias(user.target) \
                and any(order[u] > order[node] for u in user.users):
            return None
    return dst, chain[::-1]


def write_into(x: Value, chain: list[tuple[int, int | None, int | None]], y: Value, emit: Emit) -> Value:
    """``x`` with its block ``chain`` (step-1 slices ``(dim, start, end)``, outermost first)
    replaced by ``y``: slices of ``x`` concatenated around ``y``, written out with ``emit``."""
    (dim, start, end), rest = chain[0], chain[1:]
    dim %= len(x.shape)
    n = x.shape[dim]
    start, end, _ = slice(start, end).indices(n)
    if rest:
        block = _narrow(x, dim, start, end, emit)
        if block is None:
            raise CompileError("a write into an empty block is not supported")
        y = write_into(block, rest, y, emit)
    if list(y.shape) != [end - start if a == dim else s for a, s in enumerate(x.shape)]:
        raise CompileError(f"a write of shape {list(y.shape)} into a block of another shape is not supported")
    parts = [p for p in (_narrow(x, dim, 0, start, emit), y, _narrow(x, dim, end, n, emit)) if p is not None]
    if len(parts) == 1:
        return parts[0]
    shape = tuple(sum(p.shape[dim] for p in parts) if a == dim else s for a, s in enumerate(x.shape))
    return emit("aten.cat.default", [parts, dim], shape, x.dtype, "written")


def _narrow(x: Value, dim: int, start: int, end: int, emit: Emit) -> Value | None:
    """``x[start:end]`` along ``dim``: ``x`` itself when whole, None when empty."""
    if end <= start:
        return None
    if (start, end) == (0, x.shape[dim]):
        return x
    shape = tuple(end - start if a == dim else s for a, s in enumerate(x.shape))
    return emit("aten.slice.Tensor", [x, dim, start, end], shape, x.dtype, "kept")
