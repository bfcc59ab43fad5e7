"""A model's weight-permutation symmetries as data, and weight matching between two models.

:func:`permutation_spec` turns the symmetries a compiled graph declares (and the oracles check)
into a :class:`PermutationSpec`: one :class:`UnitGroup` per independent symmetry — units split
into blocks, freely permutable within a block and, where ``permute_blocks``, whole blocks
exchangeable (attention heads, GroupNorm groups; a grouped convolution's channel groups only
within) — and, per parameter, which axis each group permutes. What moves with a unit (its
activation copies, the residual stream it is tied to, the key dimension paired with a query
dimension) is not guessed from op names: it is read off automorphisms of the graph computed
exactly with BLISS (:class:`gmn_compiler.canonical.Extender`). Unit ``(b, 0)``'s *role*
nodes are the nodes every transposition of it with another unit of its block moves; unit
``(b, k)``'s are their images under that transposition; a block's nodes that move only with
whole blocks (a head's value dimensions) are its *block roles*. Every node permutation the spec
builds is checked to be an automorphism of the graph before it is used.

:func:`weight_matching` aligns model B onto model A (Ainsworth et al., "Git Re-Basin", weight
matching) on the graph: for one group at a time, the similarity of A's unit ``i`` and B's unit
``j`` sums ``a * b`` over the edges of their role nodes to nodes the group does not move
(edges between two moved nodes are left out: the linear assignment would not be exact),
blocks are matched after the units inside each pair of blocks, with scipy's
``linear_sum_assignment``, until a whole pass changes nothing. B's permuted edge values
decompile into weights that compute B's function (the permutation is an automorphism).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import layout as L
from .canonical import Extender
from .errors import SymmetryError
from .graph import ParameterGraph


@dataclass
class UnitGroup:
    """One declared symmetry. ``units[b, k, r]`` is role ``r``'s node of unit ``k`` of block
    ``b``; ``block_units[b, q]`` role ``q``'s node of block ``b`` (nodes that move only with
    whole blocks; none unless ``permute_blocks``)."""

    what: str
    units: torch.Tensor
    block_units: torch.Tensor
    permute_blocks: bool

    @property
    def blocks(self) -> int:
        return self.units.shape[0]

    @property
    def block_size(self) -> int:
        return self.units.shape[1]

    def moved_nodes(self) -> torch.Tensor:
        return torch.cat([self.units.reshape(-1), self.block_units.reshape(-1)])

    def node_permutation(self, num_nodes: int, block_perm: torch.Tensor | None = None,
                         unit_perms: torch.Tensor | None = None) -> torch.Tensor:
        """The node permutation (``perm[n]`` = image of node ``n``) that sends block ``b`` to
        ``block_perm[b]`` and, inside it, unit ``k`` to ``unit_perms[b, k]`` (identities
        where not given)."""
        blocks, size = self.blocks, self.block_size
        block_perm = torch.arange(blocks) if block_perm is None else block_perm
        unit_perms = torch.arange(size).expand(blocks, size) if unit_perms is None else unit_perms
        if not self.permute_blocks and not torch.equal(block_perm, torch.arange(blocks)):
            raise ValueError(f"{self.what}: whole blocks cannot move")
        perm = torch.arange(num_nodes)
        target_block = block_perm[:, None].expand(blocks, size)
        perm[self.units] = self.units[target_block, unit_perms]
        if self.block_units.numel():
            perm[self.block_units] = self.block_units[block_perm]
        return perm


@dataclass
class PermutationSpec:
    """The weight-permutation symmetries of one compiled model (see the module docstring)."""

    graph: ParameterGraph
    groups: list[UnitGroup]

    def axes(self) -> dict[str, list[list[tuple[int, torch.Tensor]]]]:
        """Per parameter name, per axis: ``(group index, unit)`` for each group whose units
        that axis indexes, ``unit`` a long tensor broadcasting to the parameter's shape giving
        the flat unit index (``block * block_size + k``) of the node the axis reads at each
        entry, ``-1`` where that node is not one of the group's. A plain layer's axis gives
        a 1-D index; a grouped convolution's input axis gives one that depends on the output
        axis too (each group of outputs reads its own input channels), listed under the
        last axis it depends on; a depthwise convolution's input channel under axis 0."""
        d = self.graph.data
        out: dict[str, list[list[tuple[int, torch.Tensor]]]] = {}
        for g, group in enumerate(self.groups):
            unit_of = torch.full((self.graph.num_nodes,), -1, dtype=torch.long)
            flat = torch.arange(group.blocks * group.block_size).view(group.blocks, group.block_size, 1)
            unit_of[group.units] = flat.expand_as(group.units)
            for p, info in enumerate(self.graph.params):
                on = d.edge_param == p
                if not bool(on.any()):
                    continue
                offsets = d.edge_offset[on]
                for side in (d.edge_index[0, on], d.edge_index[1, on]):
                    unit = unit_of[side]
                    if not bool((unit >= 0).any()):
                        continue
                    full = torch.full((max(1, _numel(info.shape)),), -1, dtype=torch.long)
                    full[offsets] = unit
                    full = full.view(info.shape)
                    # the last axis the node depends on walks it (a grouped conv's input axis
                    # inside the output group the first axis picks)
                    axes = [axis for axis in range(len(info.shape)) if _depends_on(full, axis)]
                    if axes:
                        out.setdefault(info.name, [[] for _ in info.shape])[axes[-1]].append((g, _compact(full)))
        return out


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def _depends_on(t: torch.Tensor, axis: int) -> bool:
    return t.shape[axis] > 1 and not L.same_along(t, axis)


def _compact(t: torch.Tensor) -> torch.Tensor:
    """``t`` narrowed to one entry along every axis where it only repeats."""
    for axis in range(t.dim()):
        if t.shape[axis] > 1 and L.same_along(t, axis):
            t = t.narrow(axis, 0, 1)
    return t.contiguous()


def permutation_spec(source, example_inputs: tuple | None = None, **options) -> PermutationSpec:
    """The :class:`PermutationSpec` of a model: ``source`` is a compiled
    :class:`ParameterGraph`, or anything :func:`gmn_compiler.compile` takes (compiled here with
    ``example_inputs`` and ``options``). Symmetries tied to model inputs or outputs are left
    out, as the oracles leave them out. Raises :class:`SymmetryError` when a declared symmetry
    is not an automorphism of the graph (a compiler bug)."""
    from .api import compile as compile_model
    from .symmetry import pinned_by_structure

    pg = source if isinstance(source, ParameterGraph) else compile_model(source, example_inputs, **options)
    pinned = pinned_by_structure(pg)
    declared = [s for s in pg.symmetries if not bool(pinned[s["nodes"]].any())]
    fixed = torch.unique(torch.cat([s["nodes"] for s in declared])) if declared else torch.empty(0, dtype=torch.long)
    base = set(fixed.tolist())
    extender = Extender.of(pg)
    groups = []
    for sym, tied in _tied_clusters(declared):
        # the declarations tied to this one (the same units seen again after a residual add)
        # move with it: they are its units' role nodes, not fixed
        free_base = base - tied
        ids = sym["nodes"].view(sym["groups"], -1)
        permute_blocks = bool(sym.get("permute_groups"))
        # declarations inside each of this one's blocks (a head's query/key and value dims)
        # move with its blocks, position by position
        nested = [h["nodes"].view(h["groups"], -1) for h in declared
                  if permute_blocks and h is not sym and h["groups"] == sym["groups"] > 1
                  and not h.get("permute_groups")]
        groups.append(_unit_group(pg, extender, free_base, ids, nested, permute_blocks, sym["what"]))
    spec = PermutationSpec(pg, groups)
    for group in groups:  # every permutation we build must be an automorphism
        size, blocks = group.block_size, group.blocks
        if size > 1:
            cycle = torch.roll(torch.arange(size), 1).expand(blocks, size)
            _check_automorphism(pg, group.node_permutation(pg.num_nodes, unit_perms=cycle), group.what)
        if group.permute_blocks and blocks > 1:
            _check_automorphism(pg, group.node_permutation(pg.num_nodes, torch.roll(torch.arange(blocks), 1)),
                                group.what)
    return spec


def _tied_clusters(declared: list[dict]) -> list[tuple[dict, set[int]]]:
    """One ``(declaration, nodes of the declarations tied to it)`` per cluster of
    declarations whose units share a root (``sym["roots"]``, set by the compiler: units tied
    one to one, e.g. by a residual add); the first of each cluster stands for it."""
    clusters: list[tuple[dict, set[int], set[int]]] = []
    for sym in declared:
        roots = set(sym.get("roots", sym["nodes"]).tolist())
        for first, tied, seen in clusters:
            if roots & seen:
                tied.update(u for u in sym["nodes"].tolist() if u not in first["nodes"].tolist())
                seen.update(roots)
                break
        else:
            clusters.append((sym, set(), roots))
    return [(first, tied) for first, tied, _ in clusters]


def _swap(extender: Extender, fixed: set[int], a: list[int], b: list[int], what: str) -> torch.Tensor:
    """The automorphism exchanging ``a[k]`` with ``b[k]`` and fixing the rest of ``fixed``."""
    perm = extender.swap(fixed, a, b)
    if perm is None:
        raise SymmetryError(f"permutation spec: {what} is declared but is no automorphism of the graph")
    return perm


def _moved(perm: torch.Tensor) -> torch.Tensor:
    return perm != torch.arange(perm.numel())


def _unit_roles(pg, extender, base, block: list[int], what: str) -> torch.Tensor:
    """``[size, R]``: role nodes of each unit of one block (unit 0's roles, and their images
    under the transposition of unit 0 with unit k)."""
    size = len(block)
    if size == 1:
        return torch.tensor([[block[0]]])
    swaps = [_swap(extender, base, [block[0]], [block[k]], what) for k in range(1, size)]
    roles = _first_side(pg, swaps, [block[0]], [block[1]])
    roles_0 = torch.nonzero(roles).view(-1)
    return torch.stack([roles_0] + [p[roles_0] for p in swaps])


def _first_side(pg: ParameterGraph, swaps: list[torch.Tensor], side0: list[int], side1: list[int]) -> torch.Tensor:
    """Nodes that belong with ``side0``: moved by every one of ``swaps`` (each exchanging
    ``side0`` with another side) when there are two or more; with one swap, which moves
    both sides, the moved nodes nearer (undirected hops) to ``side0`` than to ``side1``."""
    if len(swaps) >= 2:
        return torch.stack([_moved(p) for p in swaps]).all(0)
    perm = swaps[0]
    d0, d1 = _hops(pg, side0), _hops(pg, side1)
    moved = _moved(perm)
    mine = moved & (d0 < d1)
    # a node as near to both sides: keep the one of its 2-cycle that is not already taken
    tied = moved & (d0 == d1) & ~mine[perm] & (torch.arange(perm.numel()) < perm)
    return mine | tied


def _hops(pg: ParameterGraph, start: list[int]) -> torch.Tensor:
    """Undirected hop distance of every node from the nearest of ``start``."""
    src, dst = pg.data.edge_index
    n = pg.num_nodes
    far = n + 1
    dist = torch.full((n,), far, dtype=torch.long)
    frontier = torch.zeros(n, dtype=torch.bool)
    frontier[torch.tensor(start)] = True
    dist[frontier] = 0
    step = 0
    while bool(frontier.any()):
        step += 1
        nxt = torch.zeros(n, dtype=torch.bool)
        nxt[dst[frontier[src]]] = True
        nxt[src[frontier[dst]]] = True
        nxt &= dist == far
        dist[nxt] = step
        frontier = nxt
    return dist


def _unit_group(pg, extender, base, ids: torch.Tensor, nested: list[torch.Tensor], permute_blocks: bool,
                what: str) -> UnitGroup:
    blocks = ids.shape[0]
    block_maps = [torch.arange(pg.num_nodes)]
    if permute_blocks:
        free = base - {u for h in nested for u in h.reshape(-1).tolist()}
        first = [u for grid in (ids, *nested) for u in grid[0].tolist()]
        for b in range(1, blocks):
            other = [u for grid in (ids, *nested) for u in grid[b].tolist()]
            block_maps.append(_swap(extender, free, first, other, what))
    roles_0 = _unit_roles(pg, extender, base, ids[0].tolist(), what)
    if permute_blocks:
        units = torch.stack([m[roles_0] for m in block_maps])
    else:
        per_block = [roles_0] + [_unit_roles(pg, extender, base, ids[b].tolist(), what) for b in range(1, blocks)]
        if len({r.shape for r in per_block}) != 1:
            raise SymmetryError(f"permutation spec: the blocks of {what} have different role counts")
        units = torch.stack(per_block)
    block_units = torch.empty(blocks, 0, dtype=torch.long)
    if permute_blocks and blocks > 1:
        side0 = ids[0].tolist() + [u for h in nested for u in h[0].tolist()]
        side1 = ids[1].tolist() + [u for h in nested for u in h[1].tolist()]
        mine = _first_side(pg, block_maps[1:], side0, side1)
        mine[units.reshape(-1)] = False
        extra = torch.nonzero(mine).view(-1)
        block_units = torch.stack([m[extra] for m in block_maps])
    return UnitGroup(what, units, block_units, permute_blocks)


def permute_values(pg: ParameterGraph, perm: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Edge values after moving every edge along the node automorphism ``perm``
    (deterministic: parallel edges with equal rows keep their order). Raises
    :class:`SymmetryError` if ``perm`` does not map edges to edges."""
    from .symmetry import move_values

    return move_values(pg, perm, None, values)


def _check_automorphism(pg: ParameterGraph, perm: torch.Tensor, what: str) -> None:
    from .symmetry import move_values

    failed = not torch.equal(pg.data.x[perm], pg.data.x)
    try:
        move_values(pg, perm, None)
    except SymmetryError:
        failed = True
    if failed:
        raise SymmetryError(f"permutation spec: the node permutation built for {what} is not an automorphism "
                            "of the graph (its roles could not be told apart)")
