"""Making declared symmetries consistent with every later op that constrains the same units.

A rule declares a symmetry when it makes units (the hidden units of a linear layer: freely
permutable). Later ops may tie those units one-to-one to others (a residual add, a gate, an
activation copy) and partition them (a GroupNorm, a grouped conv reading them, another
declaration over the tied units). Units tied one-to-one must move together, so a declaration
holds only as far as every partition of the tied units allows.

:func:`reconcile` runs after lowering: units are grouped into *classes* (union-find over the
one-to-one ties), every declaration and every recorded partition becomes a partition of
classes, and each declaration is narrowed to its meet with every partition it overlaps, until
nothing changes. A meet that is not a set of equal blocks cannot be declared: the declaration
is withdrawn (a symmetry left undeclared is never wrong; a declared one that is missing is).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


class UnitClasses:
    """Union-find over nodes tied one-to-one (copies, elementwise pairs)."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, n: int) -> int:
        self.parent.setdefault(n, n)
        while self.parent[n] != n:
            self.parent[n] = self.parent[self.parent[n]]
            n = self.parent[n]
        return n

    def union(self, u: int, v: int) -> None:
        ru, rv = self.find(u), self.find(v)
        if ru != rv:
            self.parent[ru] = rv

    def tie(self, a: torch.Tensor, b: torch.Tensor) -> None:
        """Nodes ``a[k]`` and ``b[k]`` are the same unit seen twice."""
        for u, v in zip(a.reshape(-1).tolist(), b.reshape(-1).tolist()):
            self.union(u, v)


@dataclass
class Partition:
    """Units (node ids) split into blocks: ``block[k]`` is the block of ``nodes[k]``;
    ``movable``: whole blocks may be exchanged."""

    nodes: list[int]
    block: list[int]
    movable: bool
    what: str = ""


_CONFLICT = object()


def _as_partition(sym: dict) -> Partition:
    nodes = sym["nodes"].tolist()
    size = len(nodes) // sym["groups"]
    return Partition(nodes, [k // size for k in range(len(nodes))], sym.get("permute_groups", False))


def is_fixed(sym: dict) -> bool:
    """Every unit its own block and blocks not movable: no unit may move."""
    return sym.get("fixed", False) or (sym["groups"] == sym["nodes"].numel()
                                        and not sym.get("permute_groups", False))


def _fixed(sym: dict) -> Partition:
    nodes = sym["nodes"].tolist()
    return Partition(nodes, list(range(len(nodes))), False)


class _Roots:
    """``classes.find`` memoised: classes do not change while declarations are reconciled."""

    def __init__(self, classes: UnitClasses) -> None:
        self.classes = classes
        self.memo: dict[int, int] = {}

    def __call__(self, n: int) -> int:
        root = self.memo.get(n)
        if root is None:
            root = self.memo[n] = self.classes.find(n)
        return root


@dataclass
class _Indexed:
    """A partition seen through unit classes: the block of each class (``_CONFLICT`` for a
    class met in two blocks), and whether whole blocks may move."""

    where: dict[int, object]
    movable: bool


def _index(partition: Partition, roots: _Roots) -> _Indexed:
    where: dict[int, object] = {}
    for n, b in zip(partition.nodes, partition.block):
        c = roots(n)
        where[c] = b if where.get(c, b) == b else _CONFLICT
    return _Indexed(where, partition.movable)


def _meet(target: Partition, other: _Indexed, roots: _Roots) -> tuple[list[tuple], bool] | None:
    """Keys of ``target``'s units after meeting ``other`` (None when they share no unit),
    and whether whole blocks may still move."""
    where = other.where
    # a class met in two blocks (units tied through a fixed rearrangement, as rotary pairs
    # are) is told apart from everything: each of its units becomes a block of its own
    induced = [where.get(roots(n), "outside") for n in target.nodes]
    if all(k == "outside" for k in induced):
        return None
    induced = [("conflict", n) if b is _CONFLICT else b for n, b in zip(target.nodes, induced)]
    keys = list(zip(target.block, induced))
    # blocks may move only if the meet keeps one of the two partitions unchanged and the
    # other is a single block, or both agree and both allow it
    target_whole = len(set(target.block)) == 1
    other_whole = len(set(b for b in induced if b != "outside")) == 1 and "outside" not in induced
    same = len(set(keys)) == len(set(target.block)) == len(set(induced))
    movable = ((target_whole and other.movable) or (other_whole and target.movable)
               or (same and target.movable and other.movable))
    return keys, movable and "outside" not in induced


def _apply(sym: dict, keys: list[tuple], movable: bool) -> bool:
    """Narrow ``sym`` to the blocks ``keys`` (reordering its nodes so blocks are consecutive);
    withdraw it when the blocks differ in size. Returns whether it changed."""
    order = sorted(range(len(keys)), key=lambda k: (str(keys[k]), k))
    counts: dict[tuple, int] = {}
    for k in keys:
        counts[k] = counts.get(k, 0) + 1
    groups = len(counts)
    if groups == len(keys) and not movable:
        sym["withdrawn"] = sym["fixed"] = True
        return True
    if len(set(counts.values())) != 1:
        sym["withdrawn"] = True
        return True
    if groups == sym["groups"] and movable == sym.get("permute_groups", False):
        return False
    sym["nodes"] = sym["nodes"][torch.tensor(order)]
    sym["groups"], sym["permute_groups"] = groups, movable
    return True


def _one_node_per_class(sym: dict, roots: _Roots) -> None:
    """A declaration holding one unit twice (stream channels c and c + 2 tied through a ghost
    module's depthwise half) cannot let the two copies move apart: keep one node per class, so
    that the class moves as one unit. Withdrawn when a class spans two blocks, the blocks end
    up of different sizes, or whole blocks move other units' blocks (heads)."""
    nodes = sym["nodes"].tolist()
    size = len(nodes) // sym["groups"]
    first: dict[int, int] = {}
    keep = []
    for k, n in enumerate(nodes):
        c = roots(n)
        if c not in first:
            first[c] = k
            keep.append(k)
        elif first[c] // size != k // size or sym.get("moves"):
            sym["withdrawn"] = True
            return
    if len(keep) == len(nodes):
        return
    per_block = [sum(1 for k in keep if k // size == b) for b in range(sym["groups"])]
    if len(set(per_block)) != 1 or per_block[0] < 2 and not sym.get("permute_groups"):
        sym["withdrawn"] = True
        return
    sym["nodes"] = sym["nodes"][torch.tensor(keep)]


def reconcile(symmetries: list[dict], partitions: list[Partition], classes: UnitClasses) -> None:
    """Narrow every live declaration of ``symmetries`` (in place; withdrawn ones get
    ``"withdrawn": True``) to its meet with every overlapping declaration and partition."""
    roots = _Roots(classes)
    for sym in symmetries:
        if not sym.get("withdrawn"):
            _one_node_per_class(sym, roots)
    fixed_partitions = [_index(p, roots) for p in partitions]
    seen: dict[int, tuple[tuple, _Indexed, set[int]]] = {}

    def indexed(o: dict) -> tuple[_Indexed, set[int]]:
        """``o`` as a partition (fixed units when it fixes them), indexed; recomputed only
        when ``o`` changed since last asked."""
        state = (is_fixed(o), o["groups"], o.get("permute_groups", False), id(o["nodes"]))
        if id(o) not in seen or seen[id(o)][0] != state:
            part = _index(_fixed(o) if is_fixed(o) else _as_partition(o), roots)
            seen[id(o)] = (state, part, set(part.where))
        return seen[id(o)][1], seen[id(o)][2]

    static = [(p, set(p.where)) for p in fixed_partitions]
    for _ in range(16):  # declarations only get finer: this settles in a few rounds
        changed = False
        live = [s for s in symmetries if not s.get("withdrawn")]
        for sym in live:
            # a declaration narrowed to single fixed units still constrains: units tied to
            # them are fixed too (a declaration withdrawn for other reasons may be re-declared
            # finer by a later rule, so it says nothing)
            others = [indexed(o) for o in symmetries
                      if o is not sym and (is_fixed(o) or not o.get("withdrawn"))]
            mine = {roots(n) for n in sym["nodes"].tolist()}
            for other, other_classes in others + static:
                if sym.get("withdrawn"):
                    break
                if mine.isdisjoint(other_classes):
                    continue
                met = _meet(_as_partition(sym), other, roots)
                if met is not None and _apply(sym, *met):
                    changed = True
                    mine = {roots(n) for n in sym["nodes"].tolist()}
        if not changed:
            break
    _check_moved_blocks(symmetries, partitions, roots)


def _check_moved_blocks(symmetries: list[dict], partitions: list[Partition], roots: _Roots) -> None:
    """A declaration whose block swaps move other units' blocks (heads move their value dims,
    ``sym["moves"]``) stops allowing whole-block swaps once a partition or a fixed
    declaration cuts or fixes those blocks."""
    fixed = [_index(_fixed(s), roots) for s in symmetries if is_fixed(s)]
    cutting = [_index(p, roots) for p in partitions] + fixed
    for sym in symmetries:
        if sym.get("withdrawn") or not sym.get("permute_groups"):
            continue
        for link in sym.get("moves", []):
            blocks = len(set(link.block))
            for other in cutting:
                met = _meet(link, other, roots)
                if met is not None and (not met[1] or len(set(met[0])) != blocks):
                    sym["permute_groups"] = False
                    if sym["groups"] == sym["nodes"].numel():
                        sym["withdrawn"] = sym["fixed"] = True
                    break
            if not sym.get("permute_groups"):
                break


def fixed_units(symmetries: list[dict], classes: UnitClasses, derived: set[int]) -> Partition:
    """Nodes tied to units that no declaration lets move (a model input, a reduction over all
    features, a constant's node), not made from other tied nodes (``derived``): each a block
    of its own, so that units tied to them are fixed too (``h * cat([h.sum(1), h.mean(1)])``
    tells h's two units apart). A declaration withdrawn because a later op cut its units (a
    split) still says they may move; the cut is a partition of its own."""
    covered = {n for s in symmetries if not is_fixed(s) for n in s["nodes"].tolist()}
    fixed = sorted(n for n in classes.parent if n not in derived and n not in covered)
    return Partition(fixed, list(range(len(fixed))), False, "units tied to fixed nodes")
