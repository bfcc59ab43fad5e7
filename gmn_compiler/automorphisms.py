"""Random automorphisms of a labelled digraph by individualization–refinement.

VF2 on a shuffled copy gets lost on parameter graphs of attention layers (many equivalent
nodes, directed head structure): most random orders never finish. Here, as in nauty or
bliss, two colourings of the same graph are refined in lock-step with a shared palette (1-WL
with edge labels and directions, vectorised with torch); while some colour class has several nodes, one node of it
is individualized on the source side against a random equally coloured node on the image
side. A discrete pair of colourings is a bijection, accepted only after every edge is
checked, so whatever is returned is an automorphism; a dead end backtracks.
"""

from __future__ import annotations

import sys
import time

import networkx as nx
import torch


_MIX = (0x9E3779B97F4A7C15 - (1 << 64), 0xBF58476D1CE4E5B9 - (1 << 64), 0x94D049BB133111EB - (1 << 64))


def _hash(x: torch.Tensor) -> torch.Tensor:
    """A splitmix64-style mix of int64 keys (wrapping arithmetic). Collisions only merge
    colour classes, which costs search time, never correctness: every returned mapping is
    checked edge by edge."""
    x = x * _MIX[0]
    x = (x ^ (x >> 30)) * _MIX[1]
    x = (x ^ (x >> 27)) * _MIX[2]
    return x ^ (x >> 31)


class _Labelled:
    """Integer tensors of a digraph whose nodes and edges carry hashable labels ``f``."""

    def __init__(self, g: nx.DiGraph):
        self.nodes = list(g.nodes)
        self.index = {n: i for i, n in enumerate(self.nodes)}
        edge_labels: dict = {}
        src, dst, lab = [], [], []
        for u, v, data in g.edges(data=True):
            src.append(self.index[u])
            dst.append(self.index[v])
            lab.append(edge_labels.setdefault(data["f"], len(edge_labels)))
        self.src = torch.tensor(src, dtype=torch.long)
        self.dst = torch.tensor(dst, dtype=torch.long)
        self.label = torch.tensor(lab, dtype=torch.long)
        node_labels: dict = {}
        self.base = torch.tensor([node_labels.setdefault(g.nodes[n]["f"], len(node_labels))
                                  for n in self.nodes], dtype=torch.long)
        self.n = len(self.nodes)
        self.edge_keys = torch.sort(self._keys(torch.arange(self.n))).values

    def _keys(self, mapping: torch.Tensor) -> torch.Tensor:
        """One int64 key per edge after relabelling nodes by ``mapping``."""
        labels = int(self.label.max()) + 1 if self.label.numel() else 1
        return (mapping[self.src] * self.n + mapping[self.dst]) * labels + self.label


class _Search:
    """Two colourings (source side ``p``, image side ``q``) refined in lock-step: a colour is
    a dense rank of (previous colour, hashed multiset of (edge label, neighbour colour) over
    out-edges, same over in-edges), ranked jointly over both sides so colours compare."""

    def __init__(self, graph: _Labelled, rng: torch.Generator, deadline: float):
        self.g = graph
        self.rng = rng
        self.deadline = deadline

    def step(self, p: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        g, n = self.g, self.g.n
        signatures = []
        for colors in (p, q):
            out = torch.zeros(n, dtype=torch.long).index_add_(
                0, g.src, _hash(g.label * (2 * n + 7) + colors[g.dst]))
            inc = torch.zeros(n, dtype=torch.long).index_add_(
                0, g.dst, _hash(g.label * (2 * n + 7) + colors[g.src] + (1 << 40)))
            signatures.append(_hash(_hash(colors) ^ out) ^ _hash(inc + 1))
        uniq, ranks = torch.unique(torch.cat(signatures), return_inverse=True)
        return ranks[:n], ranks[n:], uniq.numel()

    def refine(self, p: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Refine both colourings to stability; ``None`` if they stop being equivalent."""
        classes = int(torch.unique(p).numel())
        while True:
            p, q, count = self.step(p, q)
            if not torch.equal(torch.bincount(p, minlength=count), torch.bincount(q, minlength=count)):
                return None
            if count == classes:
                return p, q
            classes = count

    @staticmethod
    def individualize(p: torch.Tensor, q: torch.Tensor, u: int, w: int):
        color = int(max(p.max(), q.max())) + 1
        p, q = p.clone(), q.clone()
        p[u], q[w] = color, color
        return p, q

    def search(self, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor | None:
        if time.monotonic() > self.deadline:
            raise TimeoutError
        counts = torch.bincount(p)
        open_colors = torch.nonzero(counts > 1).view(-1)
        if open_colors.numel() == 0:
            image = torch.empty_like(q)
            image[q] = torch.arange(q.numel())
            mapping = image[p]
            return mapping if self.is_automorphism(mapping) else None
        sizes = counts[open_colors]
        color = int(open_colors[torch.argmin(sizes)])  # smallest open cell (first colour on ties)
        u = int(torch.nonzero(p == color)[0])
        candidates = torch.nonzero(q == color).view(-1)
        for i in torch.randperm(candidates.numel(), generator=self.rng).tolist():
            refined = self.refine(*self.individualize(p, q, u, int(candidates[i])))
            if refined is not None:
                found = self.search(*refined)
                if found is not None:
                    return found
        return None

    def is_automorphism(self, mapping: torch.Tensor) -> bool:
        g = self.g
        if not torch.equal(g.base[mapping], g.base):
            return False
        return torch.equal(torch.sort(g._keys(mapping)).values, g.edge_keys)


def random_automorphism(g: nx.DiGraph, rng: torch.Generator, *, constraint: dict | None = None,
                        timeout: float | None = 30.0) -> dict | None:
    """A random automorphism of ``g`` (nodes and edges labelled by attribute ``f``) as
    ``{node: image}``; with ``constraint`` (``{node: required image}``) one extending it.
    ``None`` if there is none, or none was found within ``timeout`` seconds."""
    graph = _Labelled(g)
    deadline = time.monotonic() + (timeout if timeout else float("inf"))
    search = _Search(graph, rng, deadline)
    p, q = graph.base.clone(), graph.base.clone()
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
    return {graph.nodes[i]: graph.nodes[j] for i, j in enumerate(mapping.tolist())}
