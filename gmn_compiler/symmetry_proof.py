"""Soundness and completeness from a few exact group computations, so the oracles scale.

Checking every generator of a graph's automorphism group ``A`` through the model costs one
model run per generator, and BLISS returns tens of thousands of them for a model of ~50k
nodes (one per permutable unit). The declared symmetries let a handful of automorphisms and
four group orders (BLISS counts them exactly, without listing generators) stand for all of
``A``:

- ``S``: the nodes of the declarations, one declaration per set of tied units (a residual
  stream declared once per layer counts once), split into their blocks; ``u_j`` is the unit
  at position ``j`` of its block.
- ``A_B``: automorphisms that map every block of ``S`` onto itself; ``A_P``: automorphisms
  that map each ``u_j`` to a unit at position ``j`` of some block (they may exchange whole
  blocks: GroupNorm groups, heads, or symmetries no rule declared); ``A_S``: automorphisms
  fixing every node of ``S``. ``A_B ∩ A_P = A_S``, so ``|A_B A_P| = |A_B| |A_P| / |A_S|``.
- Witnesses: per orbit of blocks under ``A_P``, an automorphism ``t`` exchanging ``u_1`` and
  ``u_2`` of one block and fixing every other node of ``S``; one automorphism ``c`` turning
  every block one step round (``u_j -> u_{j+1}``); BLISS's generators of ``A_P``.

Let ``F`` be the group the witnesses generate. Conjugating ``t`` by ``A_P`` and by powers of
``c`` gives, for every block, automorphisms acting on ``S`` as each adjacent transposition of
that block alone, so ``F`` acts on ``S`` as every block-wise permutation; ``A_S ⊆ A_P ⊆ F``;
hence ``A_B ⊆ F``. If ``|A| |A_S| = |A_B| |A_P|`` then ``A = A_B A_P ⊆ F``: when every
witness preserves the model's function, every automorphism does (soundness, with one model
run per witness instead of per generator). The same witnesses prove declarations present
(completeness): conjugating the transpositions along ``c`` and ``A_P`` joins a declaration's
units, and ``A_P``'s action on its blocks gives whole-block swaps. Whatever this cannot show
is left to the per-transposition BLISS checks of :mod:`gmn_compiler.symmetry`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .canonical import Extender
from .declarations import UnitClasses
from .graph import ParameterGraph

_MAX_ORBIT_PAIRS = 64  # beyond len(nodes) * this, the transposition closure stops (slow path)


@dataclass
class Witnesses:
    """Automorphisms standing for the whole group (see the module docstring)."""

    blocks: list[list[int]]
    transpositions: list[torch.Tensor]  # one per orbit of blocks of two or more units
    cycle: torch.Tensor | None  # every block one step round; None when no block has two units
    block_maps: list[torch.Tensor]  # generators of A_P
    extender: Extender
    colourings: dict[str, list[int]]  # the refined colourings of A_B, A_P, A_S
    orders: dict[str, int] = field(default_factory=dict)  # filled by `sound`

    @property
    def generators(self) -> list[tuple[torch.Tensor, str]]:
        out = [(t, f"the transposition witness #{k}") for k, t in enumerate(self.transpositions)]
        if self.cycle is not None:
            out.append((self.cycle, "the automorphism turning every declared block one step round"))
        out += [(g, f"block-permuting generator #{k}") for k, g in enumerate(self.block_maps)]
        return out

    @property
    def sound(self) -> bool:
        """``|A| |A_S| = |A_B| |A_P|`` (four exact BLISS counts): the witnesses generate every
        automorphism."""
        if not self.orders:
            self.orders = {"A": self.extender.count(),
                           **{name: self.extender.count(c) for name, c in self.colourings.items()}}
        o = self.orders
        return o["A"] * o["A_S"] == o["A_B"] * o["A_P"]


def find_witnesses(pg: ParameterGraph, symmetries: list[dict]) -> Witnesses | None:
    """The witnesses for ``symmetries`` (declarations not pinned by the model's inputs and
    outputs), or ``None`` when they do not exist in this form (a declaration whose units cannot
    move while other declarations' units stay fixed): the caller checks the slow way."""
    blocks = _independent_blocks(symmetries)
    if not blocks:
        return None
    ext = Extender.of(pg)
    block_of = {u: b for b, block in enumerate(blocks) for u in block}
    colourings = {
        "A_B": ext.refined({u: ("block", b) for u, b in block_of.items()}),
        "A_P": ext.refined({u: ("position", j) for block in blocks for j, u in enumerate(block)}),
        "A_S": ext.refined({u: ("node", u) for u in block_of}),
    }
    block_maps = ext.generators(colourings["A_P"])
    fixed = {u: u for u in block_of}
    transpositions = []
    for b in _orbit_representatives(blocks, block_maps):
        partial = dict(fixed)
        partial[blocks[b][0]], partial[blocks[b][1]] = blocks[b][1], blocks[b][0]
        t = ext.extend(partial)
        if t is None:
            return None
        transpositions.append(t)
    cycle = None
    if any(len(block) > 1 for block in blocks):
        partial = {u: block[(j + 1) % len(block)] for block in blocks for j, u in enumerate(block)}
        cycle = ext.extend(partial)
        if cycle is None:
            return None
    return Witnesses(blocks, transpositions, cycle, block_maps, ext, colourings)


def _independent_blocks(symmetries: list[dict]) -> list[list[int]]:
    """The blocks of the declarations, keeping one declaration per set of tied units (units
    sharing a root): the first over any root; later ones over roots already taken are left
    out (:func:`proved_parts` checks them with the same witnesses)."""
    taken: set[int] = set()
    blocks: list[list[int]] = []
    for sym in symmetries:
        roots = set(sym["roots"].tolist())
        if len(roots) != sym["nodes"].numel() or not taken.isdisjoint(roots):
            continue
        taken |= roots
        blocks += sym["nodes"].view(sym["groups"], -1).tolist()
    return blocks


def _block_images(g: torch.Tensor, blocks: list[list[int]]) -> list[int | None]:
    """Per block, the block ``g`` maps all of its units into (None: units sent to several
    blocks, or outside them)."""
    block_of = {u: b for b, block in enumerate(blocks) for u in block}
    images = g.tolist()
    out: list[int | None] = []
    for block in blocks:
        targets = {block_of.get(images[u]) for u in block}
        out.append(targets.pop() if len(targets) == 1 else None)
    return out


def _orbit_representatives(blocks: list[list[int]], block_maps: list[torch.Tensor]) -> list[int]:
    """One block of two or more units per orbit of blocks under the generators of ``A_P``
    that map blocks onto blocks."""
    joined = UnitClasses()
    for g in block_maps:
        for b, image in enumerate(_block_images(g, blocks)):
            if image is not None:
                joined.union(b, image)
    seen, reps = set(), []
    for b, block in enumerate(blocks):
        root = joined.find(b)
        if len(block) > 1 and root not in seen:
            seen.add(root)
            reps.append(b)
    return reps


def proved_parts(w: Witnesses, sym: dict) -> tuple[list[bool], bool]:
    """What the witnesses prove of declaration ``sym``: per block, whether every permutation
    of its units (the declaration's other units fixed) is an automorphism; and whether whole
    adjacent blocks can be exchanged (always ``False`` unless ``sym['permute_groups']``)."""
    grid = sym["nodes"].view(sym["groups"], -1)
    nodes = grid.reshape(-1)
    node_set = set(nodes.tolist())
    conjugators = [g for g in ([w.cycle] if w.cycle is not None else []) + w.block_maps
                   if set(g[nodes].tolist()) == node_set]
    joined = UnitClasses()
    pairs = set()
    queue = []
    for t in w.transpositions:
        moved = nodes[t[nodes] != nodes].tolist()
        if len(moved) == 2 and int(t[moved[0]]) == moved[1]:
            queue.append((min(moved), max(moved)))
    limit = _MAX_ORBIT_PAIRS * len(node_set)
    while queue and len(pairs) < limit:
        pair = queue.pop()
        if pair in pairs:
            continue
        pairs.add(pair)
        joined.union(*pair)
        for g in conjugators:  # g t g^-1 acts on these units as the transposition of the images
            a, b = int(g[pair[0]]), int(g[pair[1]])
            queue.append((min(a, b), max(a, b)))
    rows = grid.tolist()
    complete = [len({joined.find(u) for u in row}) == 1 for row in rows]
    swaps = bool(sym.get("permute_groups")) and all(complete) and _swaps_generated(rows, conjugators)
    return complete, swaps


def _swaps_generated(rows: list[list[int]], conjugators: list[torch.Tensor]) -> bool:
    """Whether the block permutations the conjugators induce generate every exchange of
    adjacent blocks (with every block's units freely permutable, that realises each swap)."""
    from sympy.combinatorics import Permutation, PermutationGroup

    if len(rows) < 2:
        return True
    images = []
    for g in conjugators:
        image = _block_images(g, rows)
        if None not in image:
            images.append(Permutation(image))
    if not images:
        return False
    group = PermutationGroup(images)
    return all(group.contains(Permutation(b, b + 1, size=len(rows))) for b in range(len(rows) - 1))
