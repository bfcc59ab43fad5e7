"""Structural ops: they move entries without changing them, so they only transform the id
tensor of the layout exactly as they transform the data (DESIGN §3).

reshape / view / flatten / unflatten / squeeze / unsqueeze (one rule: from the input and
output shapes), permute / transpose, flip, select, slice, split / chunk / unbind, expand,
index_select / gather with constant indices, and identities (clone, contiguous, dropout in eval
mode, dtype casts). ``cat`` / ``stack`` are in :mod:`plugins.concat`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from gmn_compiler.rules import (Layout, LoweringContext, Op, ParamRef, Registrar, Unsupported, Value, hookimpl,
                                layout as L)

# what a normalizer returns: the kind's canonical inputs and attrs
_Normalized = tuple[list[Any], dict[str, Any]]



def _keep_none(ctx: LoweringContext, op: Op) -> bool:
    """Outputs of an op on a value without neurons have none either. (When it returns False,
    the op's one activation operand has a layout: rules read it with ``require_layout``.)"""
    layouts = [ctx.layout(v) for v in op.values()]
    if all(l is None for l in layouts):
        for out in op.outputs:
            ctx.set_layout(out, None)
        return True
    return False


def lower_identity(ctx: LoweringContext, op: Op) -> None:
    """Output aliases input ``op.inputs[0]`` entry for entry."""
    ctx.set_layout(op.output, ctx.layout(op.inputs[0]))


def lower_reshape(ctx: LoweringContext, op: Op) -> None:
    """Any op whose effect is ``x.reshape(out.shape)``."""
    if _keep_none(ctx, op):
        return
    x = op.inputs[0]
    ctx.set_layout(op.output, L.reshape(ctx.require_layout(x), x.shape, op.output.shape))


def lower_permute(ctx: LoweringContext, op: Op) -> None:
    """attrs ``dims``."""
    if _keep_none(ctx, op):
        return
    dims = [d % len(op.inputs[0].shape) for d in op.attrs["dims"]]
    ctx.set_layout(op.output, L.permute_view(ctx.require_layout(op.inputs[0]), dims, tuple(op.inputs[0].shape)))


def lower_flip(ctx: LoweringContext, op: Op) -> None:
    """attrs ``dims``: the entries along those axes in reverse order, a relabelling (along a
    free axis, whose ids do not vary, nothing changes but merged positions)."""
    if _keep_none(ctx, op):
        return
    layout = L.align(ctx.require_layout(op.inputs[0]), len(op.output.shape))
    dims = [d % len(op.output.shape) for d in op.attrs["dims"]]
    flipped = layout.map(lambda t: t.flip(dims))
    for d in dims:  # along a free axis a flip is a take of the positions in reverse
        n = op.output.shape[d]
        flipped = L.take(layout, op.output.shape, d, flipped, torch.arange(n - 1, -1, -1))
        layout = flipped
    ctx.set_layout(op.output, flipped)


def _cuts_neurons(ctx: LoweringContext, layout: Layout, dim: int, part: torch.Tensor | None = None) -> None:
    """Cutting a neuron axis (split, slice, select): the parts may play different roles
    downstream, so the nodes are no longer declared freely permutable; ``part`` (one entry
    per index along ``dim``: which part it goes to) is recorded as a partition of the units,
    so declarations made later over units tied to them are narrowed too."""
    if layout.ids.shape[dim] > 1:
        ctx.withdraw_symmetries(layout.ids)
        if part is not None:
            shape = [1] * layout.ids.dim()
            shape[dim] = part.numel()
            ctx.partition_units(layout.ids, part.view(shape), f"cut along axis {dim}")


def _part(size: int, selected: int | slice | torch.Tensor) -> torch.Tensor:
    """1 for the indices ``selected`` (an int, a slice or an index tensor), else 0."""
    if isinstance(selected, slice):  # tensors cannot be sliced with a negative step
        selected = torch.arange(*selected.indices(size))
    part = torch.zeros(size, dtype=torch.long)
    part[selected] = 1
    return part


def lower_select(ctx: LoweringContext, op: Op) -> None:
    """attrs ``dim``, ``index``."""
    if _keep_none(ctx, op):
        return
    x = op.inputs[0]
    dim, index = op.attrs["dim"] % len(x.shape), op.attrs["index"] % x.shape[op.attrs["dim"]]
    _cuts_neurons(ctx, ctx.require_layout(x), dim, _part(x.shape[dim], index))
    layout = L.select(ctx.require_layout(x), dim, index)
    ctx.set_layout(op.output, L.take(ctx.require_layout(x), x.shape, dim, layout, [index], squeeze=True))


def lower_slice(ctx: LoweringContext, op: Op) -> None:
    """attrs ``dim``, ``start``, ``end``, ``step`` (Python slice semantics), and ``more``: further
    ``(dim, start, end, step)`` slices applied after it (ONNX slices several axes at once)."""
    if _keep_none(ctx, op):
        return
    x = op.inputs[0]
    layout, shape = ctx.require_layout(x), tuple(x.shape)
    for dim, start, end, step in _slices(op.attrs):
        layout, shape = _slice_layout(ctx, layout, shape, dim, start, end, step)
    ctx.set_layout(op.output, layout)


def _slices(attrs: dict[str, Any]) -> list[tuple[int, int | None, int | None, int]]:
    first = (attrs["dim"], attrs.get("start"), attrs.get("end"), attrs.get("step", 1))
    return [first, *attrs.get("more", ())]


def _slice_layout(ctx: LoweringContext, layout: Layout, shape: tuple[int, ...], dim: int,
                  start: int | None, end: int | None, step: int) -> tuple[Layout, tuple[int, ...]]:
    """The layout (and shape) of a value of ``shape`` sliced along one axis."""
    dim %= len(shape)
    start, end, step = slice(start, end, step).indices(shape[dim])
    index = torch.arange(start, end, step)
    if (start, end, step) == (0, shape[dim], 1):
        return layout, shape
    _cuts_neurons(ctx, layout, dim, _part(shape[dim], index))
    narrowed = L.take(layout, shape, dim, L.narrow(layout, dim, start, end, step), index)
    return narrowed, shape[:dim] + (index.numel(),) + shape[dim + 1:]


def lower_split(ctx: LoweringContext, op: Op) -> None:
    """attrs ``dim``, ``squeeze`` (unbind); output sizes are read from the outputs."""
    if _keep_none(ctx, op):
        return
    x = op.inputs[0]
    layout = ctx.require_layout(x)
    dim = op.attrs["dim"] % len(x.shape)
    if len(op.outputs) > 1:
        sizes = [1 if op.attrs.get("squeeze") else out.shape[dim] for out in op.outputs]
        _cuts_neurons(ctx, layout, dim, torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes)))
    start = 0
    for out in op.outputs:
        if op.attrs.get("squeeze"):
            part = L.take(layout, x.shape, dim, L.select(layout, dim, start), [start], squeeze=True)
            start += 1
        else:
            size = out.shape[dim]
            part = L.narrow(layout, dim, start, start + size)
            if size != x.shape[dim]:
                part = L.take(layout, x.shape, dim, part, torch.arange(start, start + size))
            start += size
        ctx.set_layout(out, part)


def lower_index_select(ctx: LoweringContext, op: Op) -> None:
    """attrs ``dim``, ``index`` (long tensor of constant indices, of any rank: selected flat,
    then reshaped to the output, as ``x[:, idx2d]`` does)."""
    if not _keep_none(ctx, op):
        _set_indexed_layout(ctx, op, op.attrs["dim"], torch.as_tensor(op.attrs["index"]))


def _set_indexed_layout(ctx: LoweringContext, op: Op, dim: int, index: torch.Tensor) -> None:
    x = op.inputs[0]
    dim %= len(x.shape)
    flat = index.reshape(-1)
    layout = _index_layout(ctx, x, dim, flat)
    if index.dim() != 1:
        layout = L.reshape(layout, x.shape[:dim] + (flat.numel(),) + x.shape[dim + 1:], op.output.shape)
    ctx.set_layout(op.output, layout)


def _index_layout(ctx: LoweringContext, x: Value, dim: int, index: torch.Tensor) -> Layout:
    """The layout of ``x.index_select(dim, index)`` (``index`` 1-D, constant)."""
    dim %= len(x.shape)
    index = index.long() % x.shape[dim]
    if torch.equal(index, torch.arange(x.shape[dim])):
        return L.index_select(ctx.require_layout(x), dim, index)
    _cuts_neurons(ctx, ctx.require_layout(x), dim, _part(x.shape[dim], index))
    layout = L.index_select(ctx.require_layout(x), dim, index)
    return L.take(ctx.require_layout(x), x.shape, dim, layout, index)


def lower_gather(ctx: LoweringContext, op: Op) -> None:
    """Gather with constant indices: a ``select`` (scalar index) or ``index_select`` (indices of
    any rank: selected flat, then reshaped to the output); on an initializer indexed by
    activations: an embedding lookup."""
    x = op.inputs[0]
    index_rank = len(op.output.shape) - len(x.shape) + 1  # a one-entry index arrives as a number
    if op.attrs["kind"] == "embedding":
        ctx.lower_as("embedding", op)
    elif op.attrs["kind"] == "select" and index_rank > 0:  # an index of shape [1], [1, 1]...
        if not _keep_none(ctx, op):
            index = torch.full((1,) * index_rank, op.attrs["index"])
            _set_indexed_layout(ctx, op, op.attrs["dim"], index)
    elif op.attrs["kind"] == "select":
        lower_select(ctx, op)
    elif not _keep_none(ctx, op):
        _set_indexed_layout(ctx, op, op.attrs["dim"], op.attrs["index"])


def lower_expand(ctx: LoweringContext, op: Op) -> None:
    if _keep_none(ctx, op):
        return
    ctx.set_layout(op.output, L.expand_to(ctx.require_layout(op.inputs[0]), op.output.shape))


# ------------------------------------------------------------------ ATen signatures
def _x_only(x: Any, *args: Any, **kwargs: Any) -> _Normalized:
    return [x], {}


def _permute(x: Any, dims: Sequence[int]) -> _Normalized:
    return [x], {"dims": list(dims)}


def _transpose(x: Any, dim0: int, dim1: int) -> _Normalized:
    n = len(x.shape)
    dims = list(range(n))
    dims[dim0 % n], dims[dim1 % n] = dims[dim1 % n], dims[dim0 % n]
    return [x], {"dims": dims}


def _t(x: Any) -> _Normalized:
    return [x], {"dims": list(range(len(x.shape)))[::-1]}


def _last_two_swapped(x: Any) -> _Normalized:
    return _transpose(x, -2, -1)


def _movedim(x: Any, source: int, destination: int) -> _Normalized:
    n = len(x.shape)
    dims = [d for d in range(n) if d != source % n]
    dims.insert(destination % n, source % n)
    return [x], {"dims": dims}


def _select(x: Any, dim: int, index: int) -> _Normalized:
    return [x], {"dim": dim % len(x.shape), "index": index}


def _slice(x: Any, dim: int = 0, start: int | None = None, end: int | None = None, step: int = 1) -> _Normalized:
    return [x], {"dim": dim, "start": start, "end": end, "step": step}


def _narrow(x: Any, dim: int, start: int, length: int) -> _Normalized:
    return [x], {"dim": dim, "start": start, "end": start + length, "step": 1}


def _split(x: Any, split_size: int | Sequence[int], dim: int = 0) -> _Normalized:
    return [x], {"dim": dim}


def _chunk(x: Any, chunks: int, dim: int = 0) -> _Normalized:
    return [x], {"dim": dim}


def _unbind(x: Any, dim: int = 0) -> _Normalized:
    return [x], {"dim": dim, "squeeze": True}


def _onnx_transpose(x: Any, perm: Sequence[int] | None = None) -> _Normalized:
    return [x], {"dims": list(perm) if perm is not None else list(range(len(x.shape)))[::-1]}


def _onnx_split(x: Any, split: Any = None, axis: int = 0, num_outputs: int | None = None) -> _Normalized:
    return [x], {"dim": axis}


def _onnx_gather(x: Any, indices: Any, axis: int = 0) -> _Normalized:
    constant = isinstance(indices, (int, torch.Tensor))
    if isinstance(x, ParamRef) and axis == 0 and not constant:  # a table indexed by token ids
        return [x, indices], {"kind": "embedding"}
    if not constant:
        raise Unsupported("Gather with indices computed from activations")
    indices = torch.as_tensor(indices).long()
    if indices.dim() == 0:
        return [x], {"dim": axis % len(x.shape), "index": int(indices), "kind": "select"}
    return [x], {"dim": axis % len(x.shape), "index": indices, "kind": "index_select"}


def _onnx_slice(x: Any, starts: Any = None, ends: Any = None, axes: Any = None, steps: Any = None,
                **attrs: Any) -> _Normalized:
    starts = torch.as_tensor(starts if starts is not None else attrs["starts"]).reshape(-1).tolist()
    ends = torch.as_tensor(ends if ends is not None else attrs["ends"]).reshape(-1).tolist()
    axes = torch.as_tensor(axes).reshape(-1).tolist() if axes is not None else attrs.get("axes", list(range(len(starts))))
    steps = torch.as_tensor(steps).reshape(-1).tolist() if steps is not None else [1] * len(starts)
    changed = []
    for s, e, a, st in zip(starts, ends, axes, steps):
        a %= len(x.shape)
        if slice(s, e, st).indices(x.shape[a]) != (0, x.shape[a], 1):
            changed.append((a, s, e, st))
    if not changed:
        return [x], {"dim": 0, "start": None, "end": None, "step": 1}
    (a, s, e, st), *more = changed
    return [x], {"dim": a, "start": s, "end": e, "step": st, **({"more": more} if more else {})}


def _index_select(x: Any, dim: int, index: Any) -> _Normalized:
    if not (isinstance(index, Value) and index.constant is not None):
        raise Unsupported("index_select with indices computed from activations")
    return [x], {"dim": dim, "index": index.constant}


def _index(x: Any, indices: Any) -> _Normalized:
    """``x[..., index, ...]`` with one constant integer index tensor (``aten.index.Tensor``,
    e.g. Falcon's ``fused_qkv[..., [-2], :]``, LeViT's ``attention_biases[:, idxs]`` with a 2-D
    ``idxs``): an ``index_select`` along that axis."""
    given = [(axis, i) for axis, i in enumerate(indices) if i is not None]
    if len(given) != 1:
        raise Unsupported("advanced indexing with several index tensors")
    dim, index = given[0]
    if not (isinstance(index, Value) and index.constant is not None):
        raise Unsupported("indexing with indices computed from activations")
    if index.constant.dtype == torch.bool:
        raise Unsupported("indexing with a boolean mask")
    return [x], {"dim": dim, "index": index.constant % x.shape[dim]}


def _repeat_interleave(x: Any, repeats: Any, dim: int | None = None, output_size: int | None = None) -> _Normalized:
    if dim is None or not isinstance(repeats, int):
        raise Unsupported("repeat_interleave without dim or with tensor repeats")
    dim %= len(x.shape)
    return [x], {"dim": dim, "index": torch.arange(x.shape[dim]).repeat_interleave(repeats)}


RESHAPE_TARGETS = ("aten.view.default", "aten.reshape.default", "aten._unsafe_view.default",
                   "aten.flatten.using_ints", "aten.unflatten.int", "aten.squeeze.dim",
                   "aten.squeeze.dims", "aten.squeeze.default", "aten.unsqueeze.default",
                   "aten.view_as.default", "aten.reshape_as.default", "aten.squeeze_.dim",
                   "aten.unsqueeze_.default")
IDENTITY_TARGETS = ("aten.clone.default", "aten.contiguous.default", "aten.alias.default",
                    "aten.detach.default", "aten.detach_.default", "aten.dropout.default", "aten.dropout_.default",
                    "aten.feature_dropout.default", "aten.alpha_dropout.default",
                    "aten._to_copy.default", "aten.to.dtype", "aten.to.dtype_layout",
                    "aten.type_as.default", "aten.lift_fresh_copy.default",
                    "aten.native_dropout.default", "aten.float.default", "aten.identity.default")


# ------------------------------------------------------------------ views (ops on a tensor)
_Shapes = list[tuple[int, ...]]


def _view_identity(t: torch.Tensor, attrs: dict[str, Any], shapes: _Shapes) -> list[torch.Tensor]:
    return [t]


def _view_reshape(t: torch.Tensor, attrs: dict[str, Any], shapes: _Shapes) -> list[torch.Tensor]:
    return [t.reshape(shapes[0])]


def _view_permute(t: torch.Tensor, attrs: dict[str, Any], shapes: _Shapes) -> list[torch.Tensor]:
    return [t.permute(*attrs["dims"])]


def _view_flip(t: torch.Tensor, attrs: dict[str, Any], shapes: _Shapes) -> list[torch.Tensor]:
    return [t.flip(attrs["dims"])]


def _view_select(t: torch.Tensor, attrs: dict[str, Any], shapes: _Shapes) -> list[torch.Tensor]:
    return [t.select(attrs["dim"], attrs["index"])]


def _view_slice(t: torch.Tensor, attrs: dict[str, Any], shapes: _Shapes) -> list[torch.Tensor]:
    for dim, start, end, step in _slices(attrs):
        dim %= t.dim()
        t = t.index_select(dim, torch.arange(*slice(start, end, step).indices(t.shape[dim])))
    return [t]


def _view_split(t: torch.Tensor, attrs: dict[str, Any], shapes: _Shapes) -> list[torch.Tensor]:
    dim = attrs["dim"] % t.dim()
    if attrs.get("squeeze"):
        return list(t.unbind(dim))
    return list(torch.split(t, [shape[dim] for shape in shapes], dim))


def _view_expand(t: torch.Tensor, attrs: dict[str, Any], shapes: _Shapes) -> list[torch.Tensor]:
    return [t.expand(shapes[0])]


def _view_index_select(t: torch.Tensor, attrs: dict[str, Any], shapes: _Shapes) -> list[torch.Tensor]:
    dim = attrs["dim"] % t.dim()
    index = torch.as_tensor(attrs["index"]).long()
    return [t.index_select(dim, index.reshape(-1) % t.shape[dim]).reshape(shapes[0])]


def _view_gather(t: torch.Tensor, attrs: dict[str, Any], shapes: _Shapes) -> list[torch.Tensor]:
    if attrs["kind"] == "select":
        return _view_select(t, attrs, shapes)
    if attrs["kind"] == "index_select":
        return _view_index_select(t, attrs, shapes)
    return []  # an embedding lookup reads activations: never a view


@hookimpl
def gmn_register(registry: Registrar) -> None:
    x = ("x",)
    declared: list[tuple[str, Any, tuple[str, ...], tuple[str, ...], Any]] = [
        ("identity", lower_identity, x, (), _view_identity),
        ("reshape", lower_reshape, x, (), _view_reshape),
        ("permute", lower_permute, x, ("dims",), _view_permute),
        ("flip", lower_flip, x, ("dims",), _view_flip),
        ("select", lower_select, x, ("dim", "index"), _view_select),
        ("slice", lower_slice, x, ("dim", "start", "end", "step", "more"), _view_slice),
        ("split", lower_split, x, ("dim", "squeeze"), _view_split),
        ("expand", lower_expand, x, (), _view_expand),
        ("index_select", lower_index_select, x, ("dim", "index"), _view_index_select),
        ("gather", lower_gather, ("x", "indices"), ("dim", "index", "kind"), _view_gather),
    ]
    for kind, rule, inputs, attributes, view in declared:
        registry.add_rule(kind, rule, inputs=inputs, attributes=attributes, aliasing=True, view=view,
                          elementwise=kind == "identity")
    for target in RESHAPE_TARGETS:
        registry.map_aten(target, "reshape", _x_only)
    for target in IDENTITY_TARGETS:
        registry.map_aten(target, "identity", _x_only)
    registry.map_aten("aten.permute.default", "permute", _permute)
    registry.map_aten("aten.flip.default", "flip", _permute)
    registry.map_aten("aten.transpose.int", "permute", _transpose)
    registry.map_aten("aten.swapaxes.default", "permute", _transpose)
    registry.map_aten("aten.t.default", "permute", _t)
    registry.map_aten("aten.numpy_T.default", "permute", _t)
    registry.map_aten("aten.mT.default", "permute", _last_two_swapped)
    registry.map_aten("aten.matrix_H.default", "permute", _last_two_swapped)  # real tensors only
    registry.map_aten("aten.movedim.int", "permute", _movedim)
    registry.map_aten("aten.select.int", "select", _select)
    registry.map_aten("aten.slice.Tensor", "slice", _slice)
    registry.map_aten("aten.narrow.default", "slice", _narrow)
    registry.map_aten("aten.split.Tensor", "split", _split)
    registry.map_aten("aten.split_with_sizes.default", "split", _split)
    registry.map_aten("aten.chunk.default", "split", _chunk)
    registry.map_aten("aten.unbind.int", "split", _unbind)
    registry.map_aten("aten.expand.default", "expand", _x_only)
    registry.map_aten("aten.expand_as.default", "expand", _x_only)
    registry.map_aten("aten.index_select.default", "index_select", _index_select)
    registry.map_aten("aten.index.Tensor", "index_select", _index)
    registry.map_aten("aten.repeat_interleave.self_int", "index_select", _repeat_interleave)
    for op_type in ("Reshape", "Flatten", "Squeeze", "Unsqueeze"):
        registry.map_onnx(op_type, "reshape", _x_only)
    for op_type in ("Identity", "Dropout", "Cast", "CastLike"):
        registry.map_onnx(op_type, "identity", _x_only)
    registry.map_onnx("Transpose", "permute", _onnx_transpose)
    registry.map_onnx("Split", "split", _onnx_split)
    registry.map_onnx("Slice", "slice", _onnx_slice)
    registry.map_onnx("Gather", "gather", _onnx_gather)
    registry.map_onnx("Expand", "expand", _x_only)
