"""Concatenation: ``cat`` / ``concat`` / ``stack`` (and ONNX ``Concat``).

Like every structural op, a concatenation moves entries without changing them, so it moves the
id tensors of its parts' layouts exactly as it moves the data (DESIGN §3). What needs more than
that: parts along an axis without neurons that hold different units (PiT's class token beside
pooled patches: one node per unit of the result, fed through ``cat_part`` edges that say which
entries the part fills), constants beside one part along an axis free in it (MobileBERT's
shifted copies: padding), different views of the same nodes (a roll spelled with slices: the
view's signature), and parameters concatenated with activations (a class token:
:func:`_cat_with_params`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from gmn_compiler.rules import LoweringContext, Op, ParamRef, Registrar, Value, hookimpl, layout as L

# what a normalizer returns: the kind's canonical inputs and attrs
_Normalized = tuple[list[Any], dict[str, Any]]


def lower_cat(ctx: LoweringContext, op: Op) -> None:
    """inputs ``[[x0, x1, ...]]``; attrs ``dim`` (and ``stack``: a new axis at ``dim``)."""
    if all(ctx.layout(v) is None for v in op.values()):  # parts without neurons: none either
        ctx.set_layout(op.output, None)
        return
    parts = op.inputs[0]
    if any(isinstance(p, ParamRef) for p in parts):
        _cat_with_params(ctx, op, parts)
        return
    dim = op.attrs.get("dim", 0) % len(op.output.shape)
    if not op.attrs.get("stack") and _views_along_free_axis(ctx, op, parts, dim):
        return
    # parts that are different views of the same nodes get their own nodes first
    if not op.attrs.get("stack") and _constants_as_padding(ctx, op, parts, dim):
        return
    found = [ctx.materialize(v) if ctx.layout(v) is not None else None for v in parts]
    layouts = [l for l in found if l is not None]
    if len(layouts) != len(found):
        raise ctx.error("concatenating a value without neurons (a constant or an invariant "
                        "statistic) with one that has neurons is not supported")
    dim = op.attrs.get("dim", 0) % len(op.output.shape)
    ndim = len(op.output.shape)
    if not op.attrs.get("stack") and _merge_along_free_axis(ctx, op, [L.align(l, ndim) for l in layouts], dim):
        return
    if op.attrs.get("stack"):
        layouts = [L.unsqueeze(l, dim) for l in layouts]
        shapes = [tuple(v.shape[:dim]) + (1,) + tuple(v.shape[dim:]) for v in parts]
    else:
        shapes = [tuple(v.shape) for v in parts]
    ctx.set_layout(op.output, L.cat([L.align(l, ndim) for l in layouts], shapes, dim))


def _merge_along_free_axis(ctx: LoweringContext, op: Op, layouts: list[L.Layout], dim: int) -> bool:
    """``cat([fc(cls), pooled.flatten(2).transpose(1, 2)], dim=tokens)`` (PiT, CoaT, EVA's
    class token beside rotary patch tokens): parts on different nodes, laid out alike, along
    an axis free in all of them. Unit ``k`` of the result is one node, fed by unit ``k`` of
    every part through a ``cat_part`` edge that says which entries along ``dim`` the part
    fills (``spatial``: its start; ``kernel0``: its length); the parts' units are tied to it
    (whatever reads the result with shared weights moves them together), and the result
    stays free along ``dim``. Only where some part holds several entries along ``dim`` on the
    same nodes (``dim`` is an axis of data, the tokens, not one of units: heads concatenated
    one by one must keep their own nodes). True when handled (parts with merged positions, or
    repeating a node, are left to the general concatenation)."""
    first = layouts[0]
    if any(l.pos is not None or l.ids.shape != first.ids.shape or l.ids.shape[dim] != 1 for l in layouts):
        return False
    sizes = [int(v.shape[dim - len(op.output.shape) + len(v.shape)]) for v in op.inputs[0]]
    if max(sizes) < 2:  # one entry per part (one head each, as GQA spelled with slices): an axis of units
        return False
    if any(torch.unique(l.ids).numel() != l.ids.numel() for l in layouts):
        return False
    if all(torch.equal(l.ids, first.ids) for l in layouts):
        return False
    merged = ctx.add_nodes(first.ids.numel(), "neuron", max(ctx.depth_of(l.ids.reshape(-1)) for l in layouts) + 1)
    start = 0
    for layout, length in zip(layouts, sizes):
        count = merged.numel()
        ctx.add_edges((count,), layout.ids.reshape(-1), merged, "cat_part", spatial=torch.full((count,), start),
                      kernel=(torch.full((count,), length),))
        ctx.tie_units(layout.ids.reshape(-1), merged)
        start += length
    parts = [l.ids.reshape(-1) for l in layouts]
    if any(ctx.anchored(p) for p in parts):  # told apart by what tells each part's unit apart
        keys = list(zip(*(ctx.anchor_keys(p) for p in parts)))
        ctx.anchor(merged, [("cat", k) for k in keys])
    ctx.set_layout(op.output, L.Layout(merged.view(first.ids.shape)))
    return True


def _constants_as_padding(ctx: LoweringContext, op: Op, parts: list[Value], dim: int) -> bool:
    """``cat([h[:, 1:], zeros], dim=tokens)`` (MobileBERT's shifted copies of a sequence): one
    part has neurons, the others are constants, along an axis free in it. That is padding: the
    output is a view of the part's nodes with a ``pad`` signature -- the one ``F.pad`` gets when
    every constant entry is one value, else one naming the constants' values. Constants that
    vary along an axis carrying neurons would tell units apart: not handled here (False, and
    the caller refuses); True when handled."""
    with_nodes = [i for i, v in enumerate(parts) if ctx.layout(v) is not None]
    constants = [v.constant for i, v in enumerate(parts) if i not in with_nodes and v.constant is not None]
    if len(with_nodes) != 1 or len(constants) != len(parts) - 1:
        return False
    ndim = len(op.output.shape)
    (i,) = with_nodes
    layout = L.align(ctx.require_layout(parts[i]), ndim)
    neuron_axes = [a for a in range(ndim) if layout.ids.shape[a] > 1]
    if dim in neuron_axes or any(not torch.equal(c, c.narrow(a, 0, 1).expand_as(c))
                                 for c in constants for a in neuron_axes):
        return False
    before = sum(int(v.shape[dim]) for v in parts[:i])
    after = sum(int(v.shape[dim]) for v in parts[i + 1:])
    entries = torch.cat([c.reshape(-1).double() for c in constants])
    if bool((entries == entries[0]).all()):
        fill: Any = L.plain(float(entries[0]) or 0.0)
    else:
        fill = ("constants", tuple(tuple(c.shape) for c in constants), tuple(entries.tolist()))
    sig = ("pad", ((dim - ndim, before, after),), "constant", fill)
    ctx.set_layout(op.output, layout.signed(sig))
    return True


def _views_along_free_axis(ctx: LoweringContext, op: Op, parts: list[Value], dim: int) -> bool:
    """``cat([h[:, 1:], h[:, :1]], dim=tokens)`` (a roll written with slices, ONNX's
    spelling): every part is a view of the same nodes and ``dim`` is free in all of them.
    The result is one more view of those nodes, its signature made of the parts'; True when
    handled."""
    found = [ctx.layout(v) for v in parts]
    layouts = [l for l in found if l is not None]
    if len(layouts) != len(found):
        return False
    ndim = len(op.output.shape)
    aligned = [L.align(l, ndim) for l in layouts]
    base = aligned[0]
    if any(l.ids.shape[dim] > 1 or l.ids.shape != base.ids.shape or not torch.equal(l.ids, base.ids)
           or (l.pos is None) != (base.pos is None)
           or (l.pos is not None and base.pos is not None and not torch.equal(l.pos, base.pos))
           for l in aligned):
        return False
    sizes = [v.shape[dim - ndim + len(v.shape)] for v in parts]
    takes = [l.sig[-1] if l.sig and l.sig[-1][0] == "take" and l.sig[-1][1] == dim - ndim
             and not l.sig[-1][4] else None for l in aligned]
    prefixes = {l.sig[:-1] if t is not None else l.sig for l, t in zip(aligned, takes)}
    ns = {t[2] for t in takes if t is not None}
    if not ns and len(set(sizes)) == 1:  # cat([h, h]) along a free axis: h's positions twice
        ns = {sizes[0]}
    if len(prefixes) == 1 and len(ns) == 1 and all(t is not None or s == next(iter(ns)) for t, s in zip(takes, sizes)):
        indices = sum((t[3] if t is not None else tuple(range(s)) for t, s in zip(takes, sizes)), ())
        base = L.Layout(base.ids, base.pos, next(iter(prefixes)))  # roll, spelled with slices
        layout = base if indices == tuple(range(next(iter(ns)))) else base.signed(
            ("take", dim - ndim, next(iter(ns)), indices, False))
    else:
        layout = L.Layout(base.ids, base.pos, (("cat", dim - ndim, tuple(zip((l.sig for l in aligned), sizes))),))
    ctx.set_layout(op.output, layout)
    return True


def _cat_with_params(ctx: LoweringContext, op: Op, parts: list[Any]) -> None:
    """``cat([cls_token, x], dim=tokens)``: parameters concatenated to activations along a
    free axis. The activations must share their nodes; each parameter part is attached to
    them (``param_cat`` edges) with its position along ``dim`` in the ``spatial`` column."""
    ndim = len(op.output.shape)
    dim = op.attrs.get("dim", 0) % ndim
    if op.attrs.get("stack"):
        raise ctx.error("stacking parameters with activations is not supported")
    values = [p for p in parts if isinstance(p, Value)]
    found = [ctx.layout(v) for v in values]
    layouts = [l for l in found if l is not None]
    if not values or len(layouts) != len(found):
        raise ctx.error("concatenating parameters needs an activation with neurons among the parts")
    aligned = [L.align(l, ndim) for l in layouts]
    base = aligned[0]
    if any(l.ids.shape[dim] > 1 for l in aligned) or any(
            # torch.broadcast_tensors is unannotated
            not torch.equal(*torch.broadcast_tensors(l.ids, base.ids))  # type: ignore[no-untyped-call, unused-ignore]
            for l in aligned[1:]):
        raise ctx.error("concatenating parameters along a neuron axis, or with activations "
                        "on different nodes, is not supported")
    start = 0
    for part in parts:
        size = (part.shape if isinstance(part, ParamRef) else part.shape)[dim - ndim + len(part.shape)]
        if isinstance(part, ParamRef):
            view = [1] * ndim
            view[dim] = size
            position = (start + torch.arange(size)).view(view)
            ctx.attach_param(base, op.output.shape, part, "param_cat", "param_operand", spatial=position)
        start += size
    ctx.set_layout(op.output, L.compress_layout(base))


def _cat(tensors: Sequence[Any], dim: int = 0) -> _Normalized:
    return [list(tensors)], {"dim": dim}


def _stack(tensors: Sequence[Any], dim: int = 0) -> _Normalized:
    return [list(tensors)], {"dim": dim, "stack": True}


def _onnx_concat(*tensors: Any, axis: int = 0, stack: int = 0) -> _Normalized:
    """``stack=1``: not ONNX's; the frontend's rewrite of sliding windows
    (:mod:`gmn_compiler.frontends.onnx_patterns`) marks a ``torch.stack`` so."""
    return [list(tensors)], {"dim": axis, "stack": True} if stack else {"dim": axis}


@hookimpl
def gmn_register(registry: Registrar) -> None:
    registry.add_edge_type("cat_part")
    registry.add_rule("cat", lower_cat, inputs=("tensors",), attributes=("dim", "stack"), aliasing=True)
    registry.map_aten("aten.cat.default", "cat", _cat)
    registry.map_aten("aten.concat.default", "cat", _cat)
    registry.map_aten("aten.stack.default", "cat", _stack)
    registry.map_onnx("Concat", "cat", _onnx_concat)
