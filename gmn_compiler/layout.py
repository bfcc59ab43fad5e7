"""Neuron-axis layouts: which graph node each entry of an activation belongs to.

A :class:`Layout` holds ``ids``, a long tensor with the value's number of dimensions whose
every axis has either size 1 (a *free* axis: batch, sequence, spatial — weights are shared
along it) or the value's full size (a *neuron* axis: its entries are graph nodes). Entry
``v[i0, i1, ...]`` belongs to node ``ids[i0 or 0, i1 or 0, ...]`` (broadcasting).

When a reshape merges a neuron axis with free axes (flatten C×H×W), several entries of one
neuron axis belong to the same node at different free positions. ``pos`` (same shape as
``ids``, or ``None``) then records that position, so that an op consuming the axis (a linear
layer) can emit one edge per (node, position) with the position as an edge feature.

Structural ops transform layouts exactly as they transform data: every function here applies
the corresponding torch op to the id tensor. A value with no neuron axis at all (the result
of a reduction over all neuron axes, a shape computation) has layout ``None``.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True, eq=False)
class Layout:
    """``ids`` (and ``pos``) as described above. ``sig`` is the *view signature*: the
    selections and reorderings along free axes (``h[:, 0]``, a slice, a flip, a transpose
    of two free axes) applied since the nodes were made, as a tuple of hashable entries.
    Two values on the same nodes with different signatures hold different data, so a
    consumer never reads a signed layout directly: the lowering context first copies it
    into fresh nodes whose edges carry the signature (DESIGN §4, faithful by construction)."""

    ids: torch.Tensor
    pos: torch.Tensor | None = None
    sig: tuple = ()

    def __post_init__(self) -> None:
        if self.pos is not None and self.pos.shape != self.ids.shape:
            raise ValueError(f"pos shape {tuple(self.pos.shape)} != ids shape {tuple(self.ids.shape)}")

    @property
    def ndim(self) -> int:
        return self.ids.dim()

    def neuron_axes(self) -> list[int]:
        return [a for a in range(self.ids.dim()) if self.ids.shape[a] > 1]

    def nodes(self) -> torch.Tensor:
        """The distinct node ids (sorted)."""
        return torch.unique(self.ids)

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "Layout":
        """Apply a pure indexing function to ids and pos alike (the signature is kept)."""
        return Layout(fn(self.ids), None if self.pos is None else fn(self.pos), self.sig)

    def signed(self, *entries: Hashable) -> "Layout":
        """This layout with ``entries`` appended to its view signature."""
        return Layout(self.ids, self.pos, self.sig + tuple(entries))

    def unsigned(self) -> "Layout":
        return Layout(self.ids, self.pos)


def plain(a: object) -> Hashable:
    """An op attribute as a plain hashable for a signature: numbers as float32-rounded
    floats (so torch's 1e-5 and ONNX's float32 epsilon agree, and 1 equals 1.0)."""
    if isinstance(a, bool) or a is None or isinstance(a, str):
        return a
    if isinstance(a, (int, float)):
        return float(torch.tensor(float(a), dtype=torch.float32))
    if isinstance(a, (list, tuple)):
        return tuple(plain(x) for x in a)
    if isinstance(a, torch.Tensor) and a.numel() <= 64:
        return tuple(plain(x) for x in a.reshape(-1).tolist())
    return repr(a)


def content_digest(t: torch.Tensor) -> str:
    """A digest of a constant's values and largest magnitude, each rounded to 2^-16 relative
    to that magnitude, so the same table computed by torch and by an exporter's constant
    folding (values an ulp apart) agrees."""
    import hashlib
    import math

    x = t.detach().to(torch.float64)
    finite = x[torch.isfinite(x)]
    scale = float(finite.abs().max()) if finite.numel() else 0.0
    q = torch.round(x / scale * 65536) if scale > 0 else x  # ±inf stay themselves
    q = torch.where(torch.isnan(q), torch.full_like(q, 0.5), q)  # one NaN, whatever its payload
    mantissa, exponent = math.frexp(scale)  # the magnitude too: [0.7] and [1.3] differ
    head = f"{round(mantissa * 65536)}e{exponent}".encode()
    return hashlib.sha1(head + q.contiguous().numpy().tobytes()).hexdigest()


def keys_per_node(ids: torch.Tensor, values: torch.Tensor) -> dict[int, tuple[int, ...]]:
    """For every node in ``ids``, the sorted set of ``values`` (same shape) it meets: a node
    met at several indices or blocks is told apart by the set of them."""
    found: dict[int, set[int]] = {}
    for n, v in zip(ids.reshape(-1).tolist(), values.expand(ids.shape).reshape(-1).tolist()):
        found.setdefault(n, set()).add(v)
    return {n: tuple(sorted(vs)) for n, vs in sorted(found.items())}


def rank_keys(keys: dict[int, tuple[int, ...]]) -> dict[int, int]:
    """Each node's key replaced by its rank among the distinct keys."""
    rank = {k: r for r, k in enumerate(sorted(set(keys.values())))}
    return {n: rank[k] for n, k in keys.items()}


def signature_id(sig: tuple) -> int:
    """A stable integer in [1, 2**20] identifying ``sig`` (the node column ``signature``)."""
    import zlib

    return zlib.crc32(repr(sig).encode()) % (1 << 20) + 1


def signature_code(sig: tuple) -> float:
    """A stable number identifying ``sig`` in [2, 3): the value of the edges into the nodes
    that materialise a signed view. It is an identifier (equal signatures, equal codes), not
    a magnitude; float32-exact."""
    return 2.0 + (signature_id(sig) - 1) / float(1 << 20)


def for_axis(ids: torch.Tensor, ndim: int, axis: int) -> Layout:
    """A layout whose only neuron axis is ``axis`` carrying ``ids``."""
    axis = axis % ndim
    shape = [1] * ndim
    shape[axis] = ids.numel()
    return Layout(ids.reshape(shape))


def align(layout: Layout, ndim: int) -> Layout:
    """Prepend size-1 axes as broadcasting does when the value gets ``ndim`` dimensions."""
    extra = ndim - layout.ndim
    if extra < 0:
        raise ValueError("cannot align a layout to fewer dimensions")
    if extra == 0:
        return layout
    return layout.map(lambda t: t.reshape((1,) * extra + tuple(t.shape)))


def same_along(t: torch.Tensor, axis: int) -> bool:
    """Whether every entry of ``t`` equals the first one along ``axis`` (a constant, mask or
    id tensor that does not vary there)."""
    return bool((t == t.narrow(axis, 0, 1)).all())


def compress(ids: torch.Tensor, pos: torch.Tensor | None) -> Layout:
    """Collapse every axis along which the ids do not vary into a free (size-1) axis."""
    for axis in range(ids.dim()):
        if ids.shape[axis] > 1:
            first = ids.narrow(axis, 0, 1)
            if bool((ids == first).all()):
                ids = first
                pos = None if pos is None else pos.narrow(axis, 0, 1)
    if pos is not None:
        pos = pos - pos.min()
        if bool((pos == 0).all()):
            pos = None
    return Layout(ids.contiguous(), None if pos is None else pos.contiguous())


def compress_selection(ids: torch.Tensor, pos: torch.Tensor | None) -> Layout:
    """:func:`compress` for entries selected from a value (slice, index, cat), where no entry
    may lose its identity. Along a free axis of size ``n`` an entry's position is
    ``base * n + coordinate`` (as :func:`axis_entries` reads it), so an axis along which the
    positions vary is collapsed only when they have that form (``h[:, 3:6]`` of a flattened
    3-position channel), never when they are other positions of the node (``h[:, 1:4]``, or
    its positions in another order): that axis stays explicit."""
    if pos is None:
        return compress(ids, None)
    pos = pos.expand(ids.shape)
    for axis in reversed(range(ids.dim())):
        n = ids.shape[axis]
        if n == 1 or not bool((ids == ids.narrow(axis, 0, 1)).all()):
            continue
        view = [1] * ids.dim()
        view[axis] = n
        shifted = pos - torch.arange(n).view(view)
        base = torch.div(shifted, n, rounding_mode="floor")
        if bool((pos == pos.narrow(axis, 0, 1)).all()):
            ids, pos = ids.narrow(axis, 0, 1), pos.narrow(axis, 0, 1)
        elif bool((shifted % n == 0).all()) and bool((base == base.narrow(axis, 0, 1)).all()):
            ids, pos = ids.narrow(axis, 0, 1), base.narrow(axis, 0, 1)
    if bool((pos == 0).all()):
        return Layout(ids.contiguous(), None)
    return Layout(ids.contiguous(), pos.contiguous())


def materialize(layout: Layout, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-size id and position tensors for a value of ``shape``.

    The position of an entry combines its stored ``pos`` with its coordinate along the free
    axes (row-major over the free axes only), so that entries of one node stay distinct.
    """
    ids = layout.ids.expand(shape)
    free = [a for a in range(len(shape)) if layout.ids.shape[a] == 1 and shape[a] > 1]
    coord = torch.zeros((1,) * len(shape), dtype=torch.long)
    stride = 1
    for axis in reversed(free):
        view = [1] * len(shape)
        view[axis] = shape[axis]
        coord = coord + torch.arange(shape[axis]).view(view) * stride
        stride *= shape[axis]
    base = layout.pos if layout.pos is not None else torch.zeros_like(layout.ids)
    pos = base * stride + coord
    return ids, pos.expand(shape)


def reshape(layout: Layout, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> Layout:
    """Layout after ``x.reshape(out_shape)`` for ``x`` of ``in_shape``."""
    if len(layout.neuron_axes()) == 0 and layout.pos is None:
        # Only one node (or one per free entry); the result is the same node everywhere.
        return Layout(layout.ids.reshape(-1)[:1].reshape((1,) * len(out_shape)))
    ids, pos = materialize(layout, in_shape)
    return compress(ids.reshape(out_shape), pos.reshape(out_shape))


def permute(layout: Layout, dims: list[int]) -> Layout:
    return layout.map(lambda t: t.permute(*dims))


def permute_view(layout: Layout, dims: list[int], shape: tuple[int, ...]) -> Layout:
    """:func:`permute` of a value of ``shape``, signed when free axes (of more than one entry)
    change their relative order: the result is then a different view of the same nodes."""
    out = permute(layout, dims)
    free = [d for d in dims if out.ids.shape[dims.index(d)] == 1 and shape[d] > 1]
    return out.signed(("permute", tuple(free))) if free != sorted(free) else out


def transpose(layout: Layout, dim0: int, dim1: int) -> Layout:
    return layout.map(lambda t: t.transpose(dim0, dim1))


def select(layout: Layout, dim: int, index: int) -> Layout:
    dim = dim % layout.ndim
    if layout.ids.shape[dim] == 1:
        return layout.map(lambda t: t.squeeze(dim))
    return layout.map(lambda t: t.select(dim, index))


def narrow(layout: Layout, dim: int, start: int, end: int, step: int = 1) -> Layout:
    dim = dim % layout.ndim
    if layout.ids.shape[dim] == 1:
        return layout
    index = torch.arange(start, end, step)
    return compress_selection(*_pair(layout.map(lambda t: t.index_select(dim, index))))


def index_select(layout: Layout, dim: int, index: torch.Tensor) -> Layout:
    dim = dim % layout.ndim
    if layout.ids.shape[dim] == 1:
        shape = list(layout.ids.shape)
        return layout if index.numel() == 1 else layout.map(lambda t: t.expand(shape))
    return compress_selection(*_pair(layout.map(lambda t: t.index_select(dim, index))))


def compress_layout(layout: Layout) -> Layout:
    return compress(layout.ids, layout.pos)


def _pair(layout: Layout) -> tuple[torch.Tensor, torch.Tensor | None]:
    return layout.ids, layout.pos


def cat(layouts: list[Layout], shapes: list[tuple[int, ...]], dim: int) -> Layout:
    """Layout of ``torch.cat`` along ``dim`` of values with ``shapes``."""
    dim = dim % len(shapes[0])
    ids_parts, pos_parts = [], []
    any_pos = any(l.pos is not None for l in layouts)
    others = []
    for l in layouts:
        s = list(l.ids.shape)
        s[dim] = 1  # parts differ along the concatenation axis; broadcast the others only
        others.append(tuple(s))
    common = list(torch.broadcast_shapes(*others))
    ids = torch.cat([l.ids.expand(common[:dim] + [s[dim]] + common[dim + 1:]) for l, s in zip(layouts, shapes)], dim)
    # once the parts' nodes differ along dim, dim is no free axis any more: the entries of a
    # part that was free there need their positions spelled out (else a node's entries at two
    # positions would look alike to whatever contracts dim)
    any_pos = any_pos or not bool((ids == ids.narrow(dim, 0, 1)).all())
    for layout, shape in zip(layouts, shapes):
        target = list(common)
        target[dim] = shape[dim]
        ids_parts.append(layout.ids.expand(target))
        if any_pos:
            pos = layout.pos if layout.pos is not None else torch.zeros_like(layout.ids)
            if layout.ids.shape[dim] == 1 and shape[dim] > 1:
                # one node at free positions along dim: spell its positions out
                # (base * n + coordinate, as axis_entries reads them)
                view = [1] * len(target)
                view[dim] = shape[dim]
                pos = pos * shape[dim] + torch.arange(shape[dim]).view(view)
            pos_parts.append(pos.expand(target))
    ids = torch.cat(ids_parts, dim)
    pos = torch.cat(pos_parts, dim) if any_pos else None
    return compress_selection(ids, pos)


def expand_to(layout: Layout, shape: tuple[int, ...]) -> Layout:
    """Layout of ``x.expand(shape)``: broadcast entries share their node."""
    return align(layout, len(shape))


def unsqueeze(layout: Layout, dim: int) -> Layout:
    dim = dim % (layout.ndim + 1)
    return layout.map(lambda t: t.unsqueeze(dim))


def squeeze(layout: Layout, dims: list[int], shape: tuple[int, ...]) -> Layout:
    dims = sorted({d % len(shape) for d in dims if shape[d % len(shape)] == 1}, reverse=True)
    out = layout
    for d in dims:
        out = out.map(lambda t, d=d: t.squeeze(d))
    return out


def broadcast_pair(a: Layout | None, b: Layout | None, ndim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Id tensors of two operands broadcast against each other (-1 where an operand has no
    nodes)."""
    ta = align(a, ndim).ids if a is not None else torch.full((1,) * ndim, -1, dtype=torch.long)
    tb = align(b, ndim).ids if b is not None else torch.full((1,) * ndim, -1, dtype=torch.long)
    shape = torch.broadcast_shapes(ta.shape, tb.shape)
    return ta.expand(shape), tb.expand(shape)


def axis_entries(layout: Layout, shape: tuple[int, ...], axis: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Node id and position of each entry along ``axis``, for an op that contracts that axis
    with a weight (linear, conv). All other axes must be free.

    Returns ``(ids[k], pos[k] or None)`` for ``k`` in ``range(shape[axis])``. Raises
    ``ValueError`` if another axis carries neurons.
    """
    axis = axis % len(shape)
    others = [a for a in layout.neuron_axes() if a != axis]
    if others:
        raise ValueError(f"axes {others} carry neurons besides the contracted axis {axis}")
    size = shape[axis]
    if layout.ids.shape[axis] > 1:
        return layout.ids.reshape(-1), None if layout.pos is None else layout.pos.reshape(-1)
    # One node seen at `size` free positions along the contracted axis.
    ids = layout.ids.reshape(-1)[:1].expand(size)
    if size == 1 and layout.pos is None:
        return ids, None
    base = 0 if layout.pos is None else int(layout.pos.reshape(-1)[0]) * size
    return ids, base + torch.arange(size)


def take(before: Layout, shape: tuple[int, ...], dim: int, after: Layout,
         indices: torch.Tensor | Sequence[int], squeeze: bool = False) -> Layout:
    """``after`` (entries ``indices`` along ``dim`` of a value laid out as ``before``) with a
    ``take`` entry in its view signature when ``dim`` is a free axis: which positions it
    keeps is then not recorded by the ids, and two such views of the same nodes hold
    different data. One canonical form for select, slice, flip, index_select and split, so
    torch and ONNX spellings of a view agree; consecutive takes along one axis compose, and
    a take that gives back every position in order is no view at all."""
    if not (before.ids.shape[dim] == 1 and shape[dim] > 1):
        return after
    ndim = len(shape)
    indices = tuple(int(i) for i in torch.as_tensor(indices).reshape(-1).tolist())
    last = before.sig[-1] if before.sig else None
    if last is not None and last[0] == "take" and last[1] == dim - ndim and not last[4] and not squeeze:
        indices = tuple(last[3][i] for i in indices)  # a view of a view along the same axis
        base = Layout(after.ids, after.pos, before.sig[:-1])
        n = last[2]
        if indices == tuple(range(n)):
            return base
        return base.signed(("take", dim - ndim, n, indices, False))
    if indices == tuple(range(shape[dim])) and not squeeze:
        return after
    return after.signed(("take", dim - ndim, shape[dim], indices, squeeze))


def fields(ids: torch.Tensor, pos: torch.Tensor | None, sizes: Sequence[int]) -> torch.Tensor:
    """The node of each *field* of a channel axis: the entries ``(ids, pos)`` of that axis (as
    :func:`axis_entries` returns them) split into consecutive fields of ``sizes`` channels.

    Contract: field ``f`` must be one node whose channels are its positions ``0..size-1`` in
    order (a single-channel field may instead have no position at all, when ``pos`` is None);
    the sizes must add up to the number of entries. Returns a long tensor of ``len(sizes)``
    node ids, one per field; raises ``ValueError`` naming the first field that breaks the
    contract (a field spanning several nodes, its channels rearranged, or an entry count that
    does not match). Pure: reads its arguments only."""
    ids = ids.reshape(-1)
    pos = None if pos is None else pos.reshape(-1)
    total = sum(sizes)
    if ids.numel() != total:
        raise ValueError(f"{ids.numel()} channels, but the fields have {total} ({len(sizes)} fields)")
    found, start = [], 0
    for f, size in enumerate(sizes):
        end = start + size
        same_node = bool((ids[start:end] == ids[start]).all()) if size else False
        in_order = (pos is None and size == 1) or (pos is not None and torch.equal(pos[start:end], torch.arange(size)))
        if not (same_node and in_order):
            raise ValueError(f"field {f} (channels {start}..{end - 1}) is not one node with its channels at "
                             f"positions 0..{size - 1} in order")
        found.append(int(ids[start]))
        start = end
    return torch.tensor(found, dtype=torch.long)
