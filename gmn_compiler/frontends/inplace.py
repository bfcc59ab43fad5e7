"""In-place writes in an exported graph that the torch frontend can read as plain values.

``torch.export`` keeps ``x.copy_(y)`` (what ``x[...] = y`` traces to) as a mutation: the write
reaches ``x`` and every view of it. Only the case without aliasing is read, as the value ``y``
in ``x``'s shape: the copy covers all of ``x``, ``x`` is no view of another tensor, and nothing
reads ``x`` after the copy (MViT-v2's ``attn[:, :, 0:, 0:] = ...`` without a class token). Any
other write stays an ``aten.copy_`` op without a rule, refused in one line.
"""

from __future__ import annotations

from typing import Any

import torch


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
