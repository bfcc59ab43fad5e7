"""Weight matching (Ainsworth et al., "Git Re-Basin"): permute model B's weights onto model A's
with the exact symmetries of their compiled graph (:mod:`gmn_compiler.permutations`).

For one :class:`~gmn_compiler.permutations.UnitGroup` at a time, the similarity of A's unit
``i`` and B's unit ``j`` is the sum of ``a * b`` over corresponding edges of their role nodes
to nodes the group does not move (same role, same other endpoint, same direction, same edge
features); within each pair of blocks the units are matched with
``scipy.optimize.linear_sum_assignment``, then whole blocks (where they may move) on the sums
of those matchings. A group's permutation is applied only when it raises the total
similarity, so passes over the groups end; they stop when a pass changes nothing. Edges
between two nodes the group moves (recurrent weights) are left out of its similarity, the
usual linearisation of weight matching.
"""

from __future__ import annotations

import torch

from .canonical import edge_feature_ids, edge_rows
from .errors import CompileError
from .graph import ParameterGraph
from .permutations import PermutationSpec, UnitGroup, permutation_spec, permute_values


def same_structure(a: ParameterGraph, b: ParameterGraph) -> bool:
    """Whether ``a`` and ``b`` are the same graph up to parameter values (same nodes, same
    edges in the same order, same features): two models of one architecture."""
    da, db = a.data, b.data
    return (da.num_nodes == db.num_nodes and torch.equal(da.x, db.x)
            and torch.equal(da.edge_index, db.edge_index) and torch.equal(edge_rows(a), edge_rows(b))
            and [(p.name, tuple(p.shape)) for p in a.params] == [(p.name, tuple(p.shape)) for p in b.params])


def weight_matching(a: ParameterGraph, b: ParameterGraph, *, spec: PermutationSpec | None = None,
                    max_passes: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """``(values, perm)``: B's edge values moved along the node automorphism ``perm`` that
    weight matching found to bring B close to A (``b.to_state_dict(values)`` are B's weights,
    aligned). ``a`` and ``b`` must compile the same architecture (:func:`same_structure`),
    else :class:`CompileError`."""
    if not same_structure(a, b):
        raise CompileError("weight matching: the two models do not have the same architecture "
                           "(their parameter graphs differ beyond parameter values)")
    spec = spec or permutation_spec(a)
    va, vb = a.edge_values().double(), b.edge_values().double()
    total = torch.arange(a.num_nodes)
    for _ in range(max_passes):
        changed = False
        for group in spec.groups:
            perm = _best_permutation(a, group, va, vb)
            if perm is not None:
                vb = permute_values(a, perm, vb)
                total = perm[total]
                changed = True
        if not changed:
            break
    values = permute_values(a, total, b.edge_values())  # in B's own dtype, bit-exact entries
    return values, total


def _best_permutation(pg: ParameterGraph, group: UnitGroup, va: torch.Tensor, vb: torch.Tensor) -> torch.Tensor | None:
    """The node permutation of ``group`` that maximises the similarity of B (values ``vb``)
    to A (``va``), or ``None`` when it would not raise it."""
    from scipy.optimize import linear_sum_assignment

    blocks, size = group.blocks, group.block_size
    unit_a, unit_b = _profiles(pg, group.units.reshape(blocks * size, -1), group, va, vb)
    block_a, block_b = _profiles(pg, group.block_units, group, va, vb)
    unit_a, unit_b = unit_a.view(blocks, size, -1), unit_b.view(blocks, size, -1)
    score = torch.zeros(blocks, blocks, dtype=torch.float64)
    inside = {}
    pairs = [(i, j) for i in range(blocks) for j in range(blocks)] if group.permute_blocks else [(i, i) for i in range(blocks)]
    for i, j in pairs:
        sim = unit_a[i] @ unit_b[j].T
        rows, cols = linear_sum_assignment(sim.numpy(), maximize=True)
        inside[i, j] = torch.as_tensor(cols)
        score[i, j] = sim[rows, cols].sum() + block_a[i] @ block_b[j]
    current = sum(float((unit_a[i] * unit_b[i]).sum() + block_a[i] @ block_b[i]) for i in range(blocks))
    match = torch.arange(blocks)
    if group.permute_blocks:
        _, cols = linear_sum_assignment(score.numpy(), maximize=True)
        match = torch.as_tensor(cols)
    best = float(sum(score[i, int(match[i])] for i in range(blocks)))
    if best <= current * (1 + 1e-12) + 1e-12:
        return None
    # A's block i takes B's block match[i], and A's unit k there takes B's unit inside[i, j][k]:
    # B's node of (block j, unit inside[k]) moves to (block i, unit k)
    block_perm = torch.empty(blocks, dtype=torch.long)
    unit_perms = torch.empty(blocks, size, dtype=torch.long)
    for i in range(blocks):
        j = int(match[i])
        block_perm[j] = i
        unit_perms[j, inside[i, j]] = torch.arange(size)
    return group.node_permutation(pg.num_nodes, block_perm, unit_perms)


def _profiles(pg: ParameterGraph, role_nodes: torch.Tensor, group: UnitGroup, va: torch.Tensor,
              vb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[rows, K]`` for A and B: row ``m`` holds, per key (role, other endpoint, direction,
    edge features), the summed value of the edges joining ``role_nodes[m, role]`` to a node
    ``group`` does not move."""
    rows, roles = role_nodes.shape
    if rows * roles == 0:
        return torch.zeros(rows, 0, dtype=torch.float64), torch.zeros(rows, 0, dtype=torch.float64)
    n = pg.num_nodes
    row_of = torch.full((n,), -1, dtype=torch.long)
    role_of = torch.full((n,), -1, dtype=torch.long)
    row_of[role_nodes] = torch.arange(rows)[:, None].expand(rows, roles)
    role_of[role_nodes] = torch.arange(roles)[None, :].expand(rows, roles)
    moved = torch.zeros(n, dtype=torch.bool)
    moved[group.moved_nodes()] = True
    fid = edge_feature_ids(pg)
    src, dst = pg.data.edge_index
    picked, row, key = [], [], []
    for side, (mine, other) in enumerate(((src, dst), (dst, src))):
        take = (row_of[mine] >= 0) & ~moved[other]
        picked.append(torch.nonzero(take).view(-1))
        row.append(row_of[mine[take]])
        key.append(torch.stack([role_of[mine[take]], other[take], torch.full_like(other[take], side), fid[take]], 1))
    edges, row = torch.cat(picked), torch.cat(row)
    keys, column = torch.unique(torch.cat(key), dim=0, return_inverse=True)
    out = []
    for values in (va, vb):
        m = torch.zeros(rows, keys.shape[0], dtype=torch.float64)
        m.index_put_((row, column), values[edges], accumulate=True)
        out.append(m)
    return out[0], out[1]
