"""Exact symmetry computations on parameter graphs with BLISS (python-igraph).

The *structure* of a parameter graph is everything except the values of parameter edges:
node feature rows, edge feature rows, and the values of structural (non-parameter) edges,
which are constants of the computation (DESIGN §4, "faithful by construction"). Parallel
edges ``u -> v`` are folded into one labelled pair whose label is the sorted multiset of
their rows; BLISS colours vertices only, so a labelled pair becomes a middle vertex
``u -> m -> v`` coloured by its label -- unless every pair between the colours of ``u`` and
``v`` has that one label (in every graph compared), where the node colours imply it and a
plain edge ``u -> v`` is exact (automorphisms preserve node colours). On parameter graphs
that is nearly every pair: a 15,852-node CNN graph went from 419,062 BLISS vertices to
15,852 and its automorphism group from 16.5 s to 0.7 s.

Everything here is exact (no sampling, no time-out):

- :func:`automorphism_generators`: generators of the structure's automorphism group. Every
  automorphism is a product of them, so if each generator preserves the model's function
  (at generic weights), every automorphism does.
- :func:`extend_to_automorphism`: whether a given partial node mapping extends to an
  automorphism, and one such automorphism (a proof either way).
- :func:`isomorphic`: whether two graphs are isomorphic *including* parameter values, the
  question behind the swap test.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch

from .declarations import UnitClasses
from .graph import ParameterGraph


@dataclass
class _Coloured:
    """A BLISS-ready digraph: ``n`` original vertices, then one middle vertex per labelled
    node pair whose label the two node colours do not imply (other pairs are plain edges);
    ``colour`` per vertex."""

    n: int
    edges: list[tuple[int, int]]
    colour: list[int]

    def igraph(self):
        import igraph

        return igraph.Graph(n=len(self.colour), edges=self.edges, directed=True)


def edge_rows(pg: ParameterGraph, with_values: bool = False) -> torch.Tensor:
    """Per edge, the row that structure compares: features, plus the value where it is a
    constant (structural edges, and edges carrying a lifted constant rather than a weight)
    or where ``with_values``."""
    d = pg.data
    attr = d.edge_attr.double()
    # one flag per parameter table entry; structural edges (edge_param -1) read the last one
    constant = torch.tensor([p.kind == "constant" for p in pg.params] + [True], dtype=torch.bool)
    keep_value = torch.ones_like(attr[:, 0], dtype=torch.bool) if with_values else constant[d.edge_param]
    value = torch.where(keep_value, attr[:, 0], torch.full_like(attr[:, 0], float("nan")))
    # NaN never equals NaN in unique(); use a sentinel flag column instead.
    flag = keep_value.double()
    return torch.cat([flag[:, None], torch.nan_to_num(value, nan=0.0)[:, None], attr[:, 1:]], dim=1)


def edge_feature_ids(pg: ParameterGraph) -> torch.Tensor:
    """Per edge, an id of its :func:`edge_rows` row (equal rows, equal ids), computed once per
    graph and kept on it (the structure of a compiled graph does not change)."""
    cached = pg._structure_cache.get("edge_feature_ids")
    if cached is None or cached.numel() != pg.num_edges:
        _, cached = torch.unique(edge_rows(pg), dim=0, return_inverse=True)
        pg._structure_cache["edge_feature_ids"] = cached
    return cached


def _palette(rows: list[torch.Tensor]) -> list[torch.Tensor]:
    """Integer ids of rows, shared across the given tensors (same row -> same id)."""
    sizes = [r.shape[0] for r in rows]
    _, ids = torch.unique(torch.cat(rows), dim=0, return_inverse=True)
    return list(torch.split(ids, sizes))


def _coloured(pgs: list[ParameterGraph], with_values: bool) -> list[_Coloured]:
    """Coloured digraphs of ``pgs`` with one palette, so colours compare across graphs."""
    node_ids = _palette([pg.data.x.double() for pg in pgs])
    edge_ids = _palette([edge_rows(pg, with_values) for pg in pgs])
    pair_labels: list[dict[tuple[int, int], tuple[int, ...]]] = []
    for pg, eid in zip(pgs, edge_ids):
        labels: dict[tuple[int, int], list[int]] = {}
        for (u, v), f in zip(pg.data.edge_index.t().tolist(), eid.tolist()):
            labels.setdefault((u, v), []).append(f)
        pair_labels.append({k: tuple(sorted(fs)) for k, fs in labels.items()})
    label_code: dict[tuple[int, ...], int] = {}
    for labels in pair_labels:
        for lab in sorted(set(labels.values())):
            label_code.setdefault(lab, len(label_code))
    node_colours = int(max((int(i.max()) for i in node_ids if i.numel()), default=-1)) + 1
    # Where every labelled pair between two node colours carries the same label (in all the
    # graphs), the colours imply the label: a plain edge keeps every automorphism and
    # isomorphism exact, and the BLISS graph shrinks from nodes + pairs to nodes + the rest.
    node_colour = [nid.tolist() for nid in node_ids]
    seen: dict[tuple[int, int], set[int]] = {}
    for colours, labels in zip(node_colour, pair_labels):
        for (u, v), lab in labels.items():
            seen.setdefault((colours[u], colours[v]), set()).add(label_code[lab])
    implied = {key for key, labs in seen.items() if len(labs) == 1}
    out = []
    for pg, colours, labels in zip(pgs, node_colour, pair_labels):
        n = int(pg.data.num_nodes)
        colour = list(colours)
        edges = []
        for (u, v), lab in sorted(labels.items()):
            if u != v and (colours[u], colours[v]) in implied:
                edges.append((u, v))
                continue
            m = len(colour)
            edges += [(u, m), (m, v)]
            colour.append(node_colours + label_code[lab])
        out.append(_Coloured(n, edges, colour))
    return out


def automorphism_generators(pg: ParameterGraph) -> list[torch.Tensor]:
    """Generators of the automorphism group of ``pg``'s structure, each a node permutation
    ``perm`` (node ``i`` maps to ``perm[i]``); identities are left out."""
    (c,) = _coloured([pg], with_values=False)
    gens = c.igraph().automorphism_group(color=c.colour)
    out = []
    for g in gens:
        perm = torch.tensor(g[: c.n], dtype=torch.long)
        if not torch.equal(perm, torch.arange(c.n)):
            out.append(perm)
    return out


def transposition_witnesses(pg: ParameterGraph, symmetries: list[torch.Tensor]) -> list[list[list[tuple[torch.Tensor, int, int]]]]:
    """Proofs, from one BLISS call, that declared symmetries are in the automorphism group.

    ``symmetries[i]`` is a ``[blocks, size]`` grid of node ids. BLISS computes generators of
    the automorphisms that keep every block (of every symmetry) in place as a set; a generator
    that moves exactly two units ``a``, ``b`` of symmetry ``i`` (exchanging them, every other
    unit of ``i`` fixed) is an automorphism extending the transposition ``(a b)``. Returns,
    per symmetry and block, such ``(automorphism, a, b)`` triples forming a spanning tree of
    the units they join: when a block's triples join all of its units, the transpositions
    generate the block's whole symmetric group (proved). Blocks left unjoined need another
    proof (:class:`Extender`)."""
    (c,) = _coloured([pg], with_values=False)
    colour = list(c.colour)
    top = max(colour) + 1
    for blocks in symmetries:
        for block in blocks.tolist():
            for u in block:
                colour[u] = top
            top += 1
    n = c.n
    flat = torch.cat([b.reshape(-1) for b in symmetries]) if symmetries else torch.empty(0, dtype=torch.long)
    owner = torch.cat([torch.full((b.numel(),), i) for i, b in enumerate(symmetries)]) if symmetries else flat
    joined = UnitClasses()
    block_of = {u: (i, k) for i, b in enumerate(symmetries) for k, block in enumerate(b.tolist()) for u in block}
    out: list[list[list[tuple[torch.Tensor, int, int]]]] = [[[] for _ in range(b.shape[0])] for b in symmetries]
    for gen in c.igraph().automorphism_group(color=colour):
        perm = torch.tensor(gen[:n], dtype=torch.long)
        moved = perm[flat] != flat
        if not bool(moved.any()):
            continue
        counts = torch.bincount(owner[moved], minlength=len(symmetries))
        for i in torch.nonzero(counts == 2).view(-1).tolist():
            a, b = flat[moved & (owner == i)].tolist()
            if int(perm[a]) == b and int(perm[b]) == a and joined.find(a) != joined.find(b):
                joined.union(a, b)
                sym, block = block_of[a]
                out[sym][block].append((perm, a, b))
    return out


def extend_to_automorphism(pg: ParameterGraph, partial: dict[int, int]) -> torch.Tensor | None:
    """An automorphism of ``pg``'s structure mapping each ``u`` of ``partial`` to
    ``partial[u]`` (as a node permutation), or ``None`` when none exists (proved)."""
    return Extender(pg).extend(partial)


class Extender:
    """:func:`extend_to_automorphism` for many partial mappings of one graph: the coloured
    BLISS graph is built once."""

    def __init__(self, pg: ParameterGraph):
        (self._c,) = _coloured([pg], with_values=False)
        self._g = self._c.igraph()

    def extend(self, partial: dict[int, int]) -> torch.Tensor | None:
        """See :func:`extend_to_automorphism`."""
        c = self._c
        if sorted(partial) != sorted(partial.values()):
            raise ValueError("the partial mapping must be a permutation of its own nodes")
        top = max(c.colour) + 1
        colour1, colour2 = list(c.colour), list(c.colour)
        for k, (u, v) in enumerate(sorted(partial.items())):
            if c.colour[u] != c.colour[v]:
                return None
            colour1[u] = top + k
            colour2[v] = top + k
        same, mapping, _ = self._g.isomorphic_bliss(self._g, return_mapping_12=True, color1=colour1,
                                                    color2=colour2)
        if not same:
            return None
        return torch.tensor(mapping[: c.n], dtype=torch.long)

    def swap(self, fixed: Iterable[int], a: list[int], b: list[int]) -> torch.Tensor | None:
        """An automorphism exchanging ``a[k]`` with ``b[k]`` for every ``k`` and fixing every
        other node of ``fixed`` (see :meth:`extend`)."""
        partial = {u: u for u in fixed}
        for u, v in zip(a, b):
            partial[u], partial[v] = v, u
        return self.extend(partial)


def isomorphic(a: ParameterGraph, b: ParameterGraph, *, with_values: bool = True) -> bool:
    """Whether ``a`` and ``b`` are isomorphic, comparing every feature and (by default) every
    edge value exactly."""
    if int(a.data.num_nodes) != int(b.data.num_nodes) or a.data.edge_index.shape != b.data.edge_index.shape:
        return False
    ca, cb = _coloured([a, b], with_values)
    if sorted(ca.colour) != sorted(cb.colour) or len(ca.edges) != len(cb.edges):
        return False
    return bool(ca.igraph().isomorphic_bliss(cb.igraph(), color1=ca.colour, color2=cb.colour))
