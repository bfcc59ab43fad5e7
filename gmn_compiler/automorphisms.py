"""Random automorphisms of a labelled digraph by individualization–refinement.

VF2 on a shuffled copy gets lost on parameter graphs of attention layers (many equivalent
nodes, directed head structure): most random orders never finish. Here, as in nauty or
bliss, two colourings of the same graph are refined in lock-step with a shared palette (1-WL
with edge labels and directions); while some colour class has several nodes, one node of it
is individualized on the source side against a random equally coloured node on the image
side. A discrete pair of colourings is a bijection, accepted only after every edge is
checked, so whatever is returned is an automorphism; a dead end backtracks.
"""

from __future__ import annotations

import sys
import time

import networkx as nx
import torch


class _Labelled:
    """Integer adjacency of a digraph whose nodes and edges carry hashable labels ``f``."""

    def __init__(self, g: nx.DiGraph):
        self.nodes = list(g.nodes)
        index = {n: i for i, n in enumerate(self.nodes)}
        edge_labels: dict = {}
        self.out: list[list[tuple[int, int]]] = [[] for _ in self.nodes]
        self.inc: list[list[tuple[int, int]]] = [[] for _ in self.nodes]
        self.edges: dict[tuple[int, int], int] = {}
        for u, v, data in g.edges(data=True):
            label = edge_labels.setdefault(data["f"], len(edge_labels))
            self.out[index[u]].append((label, index[v]))
            self.inc[index[v]].append((label, index[u]))
            self.edges[(index[u], index[v])] = label
        node_labels: dict = {}
        self.base = [node_labels.setdefault(g.nodes[n]["f"], len(node_labels)) for n in self.nodes]
        self.index = index


class _Search:
    def __init__(self, graph: _Labelled, rng: torch.Generator, deadline: float):
        self.g = graph
        self.rng = rng
        self.deadline = deadline
        self.palette: dict = {}

    def step(self, colors: list[int]) -> list[int]:
        g, palette = self.g, self.palette
        new = []
        for n, c in enumerate(colors):
            signature = (c, tuple(sorted((l, colors[m]) for l, m in g.out[n])),
                         tuple(sorted((l, colors[m]) for l, m in g.inc[n])))
            new.append(palette.setdefault(signature, len(palette)))
        return new

    def refine(self, p: list[int], q: list[int]) -> tuple[list[int], list[int]] | None:
        """Refine both colourings to stability; ``None`` if they stop being equivalent."""
        classes = len(set(p))
        while True:
            p, q = self.step(p), self.step(q)
            if sorted(p) != sorted(q):
                return None
            count = len(set(p))
            if count == classes:
                return p, q
            classes = count

    def individualize(self, p: list[int], q: list[int], u: int, w: int):
        fresh = ("individualized", len(self.palette))
        color = self.palette.setdefault(fresh, len(self.palette))
        p, q = list(p), list(q)
        p[u], q[w] = color, color
        return p, q

    def search(self, p: list[int], q: list[int]) -> list[int] | None:
        if time.monotonic() > self.deadline:
            raise TimeoutError
        cells: dict[int, list[int]] = {}
        for n, c in enumerate(p):
            cells.setdefault(c, []).append(n)
        open_cells = [members for members in cells.values() if len(members) > 1]
        if not open_cells:
            image = {c: n for n, c in enumerate(q)}
            mapping = [image[c] for c in p]
            return mapping if self.is_automorphism(mapping) else None
        cell = min(open_cells, key=lambda members: (len(members), members[0]))
        u = cell[0]
        candidates = [n for n, c in enumerate(q) if c == p[u]]
        for i in torch.randperm(len(candidates), generator=self.rng).tolist():
            refined = self.refine(*self.individualize(p, q, u, candidates[i]))
            if refined is not None:
                found = self.search(*refined)
                if found is not None:
                    return found
        return None

    def is_automorphism(self, mapping: list[int]) -> bool:
        g = self.g
        if any(g.base[n] != g.base[m] for n, m in enumerate(mapping)):
            return False
        return all(g.edges.get((mapping[u], mapping[v])) == label for (u, v), label in g.edges.items())


def random_automorphism(g: nx.DiGraph, rng: torch.Generator, *, constraint: dict | None = None,
                        timeout: float | None = 30.0) -> dict | None:
    """A random automorphism of ``g`` (nodes and edges labelled by attribute ``f``) as
    ``{node: image}``; with ``constraint`` (``{node: required image}``) one extending it.
    ``None`` if there is none, or none was found within ``timeout`` seconds."""
    graph = _Labelled(g)
    deadline = time.monotonic() + (timeout if timeout else float("inf"))
    search = _Search(graph, rng, deadline)
    p = list(graph.base)
    q = list(graph.base)
    for node, image in (constraint or {}).items():
        p, q = search.individualize(p, q, graph.index[node], graph.index[image])
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 4 * len(graph.nodes) + 1000))
    try:
        refined = search.refine(p, q)
        mapping = None if refined is None else search.search(*refined)
    except TimeoutError:
        return None
    finally:
        sys.setrecursionlimit(limit)
    if mapping is None:
        return None
    return {graph.nodes[i]: graph.nodes[j] for i, j in enumerate(mapping)}
