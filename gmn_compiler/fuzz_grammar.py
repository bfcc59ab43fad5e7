"""The grammar of random fuzz programs (DESIGN §4: "a fuzzer that draws random programs from
the supported ops, including parallel branches that differ in one attribute").

A program starts from model inputs (tokens ``[B, T, F]``, images ``[B, C, H, W]``, sequences
``[B, C, L]`` or vectors ``[B, F]``, sometimes token ids with an embedding), usually a stem
(linear or conv), then a few *blocks*, then usually a head. Each block belongs to one
*family* (:data:`gmn_compiler.fuzz_families.FAMILIES`); a grammar restricted to some families draws only those blocks.
Families named ``pair_*`` build two parallel branches (each with its own parameters) that
apply the same op differing in exactly one attribute, and merge them (sum, or concatenation
along an axis where the shapes allow): where a compiler rule forgets an attribute, the two
branches look alike in the graph and an automorphism swaps their weights — a false symmetry.

Every step is run on example tensors as it is drawn, so a drawn program always builds and
runs; a block that does not fit is rolled back and another is drawn.
"""

from __future__ import annotations

import random

# the primitives live in fuzz_draft (blocks and families import them from there); re-exported
from .fuzz_draft import _SAME, B, MAX_NUMEL, MAX_STEPS, Draft, Reject  # noqa: F401
from .fuzz_families import FAMILIES
from .fuzz_program import Program


# ----------------------------------------------------------------------------- start and end


def start(d: Draft, kind: str) -> str:
    """Model inputs of ``kind`` and a stem (usually)."""
    if kind == "tokens":
        x = d.input("x", [B, d.rng.randint(2, 5), d.rng.randint(2, 5)], feat=2)
    elif kind == "image":
        x = d.input("x", [B, d.rng.randint(1, 3), d.rng.randint(3, 5), d.rng.randint(3, 5)], feat=1)
    elif kind == "seq":
        x = d.input("x", [B, d.rng.randint(1, 4), d.rng.randint(3, 6)], feat=1)
    else:
        x = d.input("x", [B, d.rng.randint(2, 6)], feat=1)
    h = x
    if d.chance(0.9):
        if kind in ("image", "seq") and d.chance(0.5):
            k = d.pick([1, 3])
            h = d.add("conv", [x], out=d.width(), k=k, padding=k // 2, bias=d.chance(0.7))
        else:
            h = d.linear(x)
    return h


def head(d: Draft, h: str) -> str:
    if d.feat[h] is not None and d.chance(0.75):
        d.max_steps += 1
        try:
            return d.linear(h, d.rng.randint(1, 3))
        except Reject:
            pass
    return h


# ----------------------------------------------------------------------------- draw


def draw(seed: int, families: list[str] | tuple[str, ...] | None = None, max_blocks: int = 2,
         require: str | None = None) -> Program:
    """The program of ``seed`` (deterministic), built from blocks of ``families`` (default:
    all of :data:`~gmn_compiler.fuzz_families.FAMILIES`); it contains at least one block of those families, and one of
    ``require`` (a family) when given."""
    names = sorted(set(families if families is not None else FAMILIES) | ({require} if require else set()))
    unknown = [f for f in names if f not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown fuzz families {unknown}; known: {sorted(FAMILIES)}")
    rng = random.Random(f"gmn-fuzz:{seed}")
    for _ in range(50):
        d = Draft(rng)
        first = require or d.pick(names)
        kinds, _ = FAMILIES[first]
        try:
            h = start(d, d.pick(kinds))
        except Reject:
            continue
        planned = [first] + [d.pick(names) for _ in range(d.rng.randint(0, max_blocks - 1))]
        for family in planned:
            for tries in range(4):  # the planned family first, then any that fits
                fam = family if tries == 0 else d.pick(names)
                new = d.attempt(FAMILIES[fam][1], h)
                if new is not None:
                    h = new
                    d.families.append(fam)
                    break
        if require not in d.families if require else not d.families:
            continue
        h = head(d, h)
        return d.program([h])
    raise RuntimeError(f"could not draw a program from families {names} (seed {seed})")
