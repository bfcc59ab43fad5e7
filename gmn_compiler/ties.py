"""Ties between the copies of a parameter's entries (see :meth:`GraphBuilder.tie_shared_params`).

An entry of a parameter has *copies* when it is the value of several edges: the parameter is
used by several edge blocks (a shared submodule, GPT-2's tied embedding) or one block repeats
it (an entry broadcast to several units). An automorphism of the graph moves edge values; it
keeps the copies of every entry equal only if the graph ties them: along each axis of the
parameter, one ``tie`` node per index is joined to the nodes that index meets in every use.
That works when the structure tells an edge's index along each axis apart -- by a node that
meets that one index, or by the edge's kernel/spatial features. Where it cannot (a weight
matrix gathered from a vector through an index table, ``W[i, j] = w[(i - j) % n]``: every
unit meets every entry), no tie makes the graph faithful and :func:`plan_ties` refuses.

Works on the blocks' broadcast inputs (:func:`~gmn_compiler.offsets.compact`), never on
per-edge tensors: GPT-2's tied 50257 x 768 token embedding costs microseconds.
"""

from __future__ import annotations

import math
from typing import Protocol, TypeVar

import torch

from .declarations import UnitClasses
from .errors import LoweringError
from .offsets import Affine, Offsets, compact, offsets_tensor


class Use(Protocol):
    """What the ties read of a lowering-time edge block (:class:`~gmn_compiler.builder.EdgeBlock`)."""

    grid: tuple[int, ...]
    src: torch.Tensor
    dst: torch.Tensor
    offsets: Offsets
    kernel: tuple[torch.Tensor, ...]
    spatial: torch.Tensor | None


U = TypeVar("U", bound=Use)
Relation = tuple[torch.Tensor, torch.Tensor]  # (index, node) pairs


def plan_ties(name: str, shape: tuple[int, ...], blocks: list[U]) -> list[tuple[int, list[Relation]]]:
    """The ties of one sharing group (:func:`sharing_groups`) of parameter ``name``: for each
    axis that gets tie nodes, the ``(index, node)`` relations of every use's sides (see
    :func:`side_relation`). Several uses are tied along an axis where two or more relations
    are found; a single use that repeats entries, where it broadcasts an entry to several
    nodes (one node per index needs no tie: every copy of an entry meets that node).

    Raises :class:`LoweringError` when the group has copies and, along some axis longer than
    one, a use's edges cannot be told apart by the graph (no side whose nodes each meet one
    index, and the index no function of the edges' kernel/spatial features), or the uses
    disagree on how (nodes in one, fixed features only in another): then an automorphism
    could move one copy of an entry and not the others, a false symmetry."""
    if len(blocks) < 2 and not (blocks and repeats_entries(blocks[0].offsets, blocks[0].grid)):
        return []
    plan = []
    strides = [math.prod(shape[a + 1:]) for a in range(len(shape))]
    for axis, (size, stride) in enumerate(zip(shape, strides)):
        maps: list[Relation] = []
        told_by = set()
        for block in blocks:
            position = axis_position(block, shape, axis, stride)
            found = [side_relation(position, compact(side, block.grid), size) for side in (block.src, block.dst)]
            maps += [f for f in found if f is not None]
            if size > 1:
                told_by.add(_told_apart_by(position, block, found))
        if None in told_by or len(told_by) > 1:
            raise LoweringError(
                f"parameter {name!r} has entries used on several edges, and along its axis {axis} "
                + ("the graph cannot tell which entry an edge holds" if None in told_by else
                   "one use tells entries apart by nodes, another only by fixed edge features")
                + ", so no tie keeps the copies together (an index-table gather such as "
                "w[idx] building a weight matrix); register a rule for this layer that emits "
                "each entry once (see README, 'Writing a plugin')")
        if len(maps) >= 2 or (len(blocks) == 1 and any(broadcasts(m) for m in maps)):
            plan.append((axis, maps))
    return plan


def distinct(t: torch.Tensor) -> bool:
    """Whether no value occurs twice in ``t``."""
    return torch.unique(t).numel() == t.numel()


def broadcasts(relation: Relation) -> bool:
    """Whether some index of ``relation`` meets several nodes (an entry broadcast to them)."""
    return not distinct(relation[0])


def _told_apart_by(position: torch.Tensor, block: Use, found: list[Relation | None]) -> str | None:
    """How a use's edges reveal their index along an axis: ``"nodes"`` (a side whose nodes
    each meet one index), ``"features"`` (the index is a function of the kernel/spatial
    features, which no automorphism changes), or ``None``."""
    if any(f is not None and distinct(f[1]) for f in found):
        return "nodes"
    if all(n == 1 for n in position.shape):
        return "features"
    keys = [compact(k, block.grid) for k in block.kernel]
    if block.spatial is not None:
        keys.append(compact(block.spatial, block.grid))
    if not keys:
        return None
    shape = torch.broadcast_shapes(position.shape, *(k.shape for k in keys))
    key_rows = torch.stack([k.expand(shape).reshape(-1) for k in keys])
    _, key = torch.unique(key_rows, dim=1, return_inverse=True)
    low, high = _extremes(key, position.expand(shape).reshape(-1), int(key.max()) + 1)
    return "features" if torch.equal(low, high) else None


def repeats_entries(offsets: Offsets, grid: tuple[int, ...]) -> bool:
    """Whether a view with ``offsets`` over ``grid`` holds some entry more than once."""
    if offsets is None:
        return False
    if isinstance(offsets, Affine) and offsets.injective(grid):
        return False  # a sufficient test; other affine offsets are materialised below
    t = compact(offsets_tensor(offsets, grid), grid)
    if any(n == 1 and g > 1 for n, g in zip(t.shape, grid)):
        return True
    return torch.unique(t).numel() < t.numel()


def sharing_groups(blocks: list[U], numel: int) -> list[list[U]]:
    """The uses of one parameter, grouped by the entries they share (connected by overlap).
    Uses of disjoint parts (the q, k and v rows of one in-projection) share no value, so
    nothing ties their nodes; a use of the whole tensor shares entries with every other."""
    if len(blocks) < 2 or any(b.offsets is None for b in blocks):
        return [blocks]
    masks = []
    for b in blocks:
        mask = torch.zeros(numel, dtype=torch.bool)
        mask[offsets_tensor(b.offsets, b.grid).reshape(-1)] = True
        masks.append(mask)
    groups = UnitClasses()
    for i in range(len(blocks)):
        for j in range(i + 1, len(blocks)):
            if bool((masks[i] & masks[j]).any()):
                groups.union(i, j)
    found: dict[int, list[U]] = {}
    for i, b in enumerate(blocks):
        found.setdefault(groups.find(i), []).append(b)
    return list(found.values())


def axis_position(block: Use, shape: tuple[int, ...], axis: int, stride: int) -> torch.Tensor:
    """The index along ``axis`` of the source entry (in a parameter of ``shape``) of each of
    ``block``'s edges, compacted (see :func:`compact`): for an identity view, whose grid is
    the parameter's shape, that is an ``arange`` along ``axis``."""
    size = shape[axis]
    if block.offsets is None and block.grid == shape:
        view = [1] * len(shape)
        view[axis] = size
        return torch.arange(size).view(view)
    if isinstance(block.offsets, Affine):
        return affine_axis_position(block.offsets, block.grid, size, stride)
    return (compact(offsets_tensor(block.offsets, block.grid), block.grid) // stride) % size


def affine_axis_position(offsets: Affine, grid: tuple[int, ...], size: int, stride: int) -> torch.Tensor:
    """:func:`axis_position` of affine offsets, built over only the grid axes that move the
    index along the source axis: an axis whose stride is a multiple of ``stride * size`` never
    changes it; and when every other moving axis steps by multiples of ``stride``, axes whose
    steps together (with the base's remainder) stay below ``stride`` never carry into it."""
    moving = [a for a, (s, g) in enumerate(zip(offsets.strides, grid)) if g > 1 and s % (stride * size)]
    small = [a for a in moving if 0 < offsets.strides[a] < stride]
    reach = offsets.base % stride + sum(offsets.strides[a] * (grid[a] - 1) for a in small)
    clean = reach < stride and all(offsets.strides[a] % stride == 0 for a in moving if a not in small)
    kept = [s if a in moving and not (clean and a in small) else 0 for a, s in enumerate(offsets.strides)]
    base = offsets.base - offsets.base % stride if clean else offsets.base
    return (Affine(base, tuple(kept)).tensor(grid) // stride) % size


def _side_function(position: torch.Tensor, nodes: torch.Tensor, size: int) -> torch.Tensor | None:
    """:func:`_index_function` of the (position, node) pairs of a block's edges, both given
    compacted. Only the *set* of pairs matters, so the full grid (38.6M edges for GPT-2's
    token embedding) is never materialised: an axis along which only one of the two varies
    is narrowed to one entry if the other merely repeats along it, and if ``nodes`` varies
    where the position does not, ``nodes`` is no function of it (``None``, as
    :func:`_index_function` would find)."""
    for a in range(nodes.dim()):
        if position.shape[a] == 1 and nodes.shape[a] > 1:
            first = nodes.narrow(a, 0, 1)
            if not torch.equal(nodes, first.expand_as(nodes)):
                return None
            nodes = first
        elif nodes.shape[a] == 1 and position.shape[a] > 1:
            first = position.narrow(a, 0, 1)
            if torch.equal(position, first.expand_as(position)):
                position = first
    shape = torch.broadcast_shapes(position.shape, nodes.shape)
    return _index_function(position.expand(shape).reshape(-1), nodes.expand(shape).reshape(-1), size)


def side_relation(position: torch.Tensor, nodes: torch.Tensor,
                   size: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The ``(index, node)`` pairs a use's side gives along one parameter axis, when they tie
    the use soundly: one node per index (:func:`_side_function`), or one index per node -- an
    entry broadcast to several nodes (``repeat_interleave``, an expanded table), whose nodes
    then all hang off that entry's tie node, so every use moves the entry's copies together.
    ``None`` when neither holds or a single node or index takes everything."""
    found = _side_function(position, nodes, size)
    if found is not None:
        present = found >= 0
        return torch.nonzero(present).reshape(-1), found[present]
    for a in range(nodes.dim()):  # never wider than ``nodes``: no grid is materialised
        if nodes.shape[a] == 1 and position.shape[a] > 1:
            first = position.narrow(a, 0, 1)
            if not torch.equal(position, first.expand_as(position)):
                return None  # one node meets several indices
            position = first
    index, node = torch.unique(torch.stack([position.expand(nodes.shape).reshape(-1), nodes.reshape(-1)]), dim=1)
    if not distinct(node) or torch.unique(index).numel() < 2:
        return None
    return index, node


def _index_function(index: torch.Tensor, nodes: torch.Tensor, size: int) -> torch.Tensor | None:
    """``node_of[i]`` if ``nodes`` is a function of ``index`` that is not constant (-1 where
    an index does not occur); else ``None``."""
    low, high = _extremes(index, nodes, size)
    present = high >= 0
    if not bool((low[present] == high[present]).all()):
        return None
    if int(present.sum()) > 1 and torch.unique(high[present]).numel() == 1:
        return None
    return torch.where(present, high, torch.full_like(high, -1))


def _extremes(keys: torch.Tensor, values: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The least and greatest of the (non-negative) ``values`` at each key ``0..size-1``
    (``iinfo.max`` and -1 where a key does not occur): ``values`` is a function of ``keys``
    where the two agree."""
    low = torch.full((size,), torch.iinfo(torch.long).max).scatter_reduce(0, keys, values, "amin")
    high = torch.full((size,), -1).scatter_reduce(0, keys, values, "amax")
    return low, high
