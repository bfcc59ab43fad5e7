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
from typing import Any, Callable

import torch

from .fuzz_program import Program, Step, apply_op, pruned

B = 2  # batch size of every program
MAX_NUMEL = 160  # largest activation per example (elements, batch excluded)
MAX_STEPS = 10  # steps before the head
_SAME = object()


class Reject(Exception):
    """A drawn step does not fit; the block is rolled back."""


class Draft:
    """A program being drawn: its steps and, per activation, an example value and the axis
    that carries its features (``None``: no feature axis)."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.inputs: list[dict[str, Any]] = []
        self.steps: list[Step] = []
        self.env: dict[str, torch.Tensor] = {}
        self.feat: dict[str, int | None] = {}
        self.families: list[str] = []
        self.count = 0
        self.max_steps = MAX_STEPS

    # -- drawing helpers
    def chance(self, p: float) -> bool:
        return self.rng.random() < p

    def pick(self, options):
        options = list(options)
        if not options:
            raise Reject("nothing to choose from")
        return options[self.rng.randrange(len(options))]

    def width(self) -> int:
        return self.rng.randint(2, 5)

    def shape(self, h: str) -> tuple[int, ...]:
        return tuple(self.env[h].shape)

    def rank(self, h: str) -> int:
        return self.env[h].dim()

    def kind(self, h: str) -> str:
        r, f = self.rank(h), self.feat[h]
        return {(3, 2): "tokens", (3, 1): "seq", (4, 1): "image", (2, 1): "vec"}.get((r, f), "other")

    def free_axes(self, h: str, min_size: int = 2) -> list[int]:
        """Non-batch axes other than the feature axis, of at least ``min_size`` entries."""
        return [a for a in range(1, self.rank(h)) if a != self.feat[h] and self.shape(h)[a] >= min_size]

    # -- building
    def input(self, name: str, shape: list[int], feat: int | None, dtype: str = "float", vocab: int = 0) -> str:
        spec = {"name": name, "shape": shape, "dtype": dtype}
        if dtype == "long":
            spec["vocab"] = vocab
            self.env[name] = torch.randint(0, vocab, tuple(shape))
        else:
            self.env[name] = torch.randn(tuple(shape))
        self.inputs.append(spec)
        self.feat[name] = feat
        return name

    def add(self, op: str, ins: list[str], feat: Any = _SAME, **args) -> str:
        """Append ``op(*ins, **args)``; its output's feature axis is ``feat`` (default: that
        of ``ins[0]`` when the rank is unchanged). Raises :class:`Reject` if it does not fit.
        For ops with several outputs use :meth:`add_multi`."""
        outs = self.add_multi(op, ins, feat, **args)
        if len(outs) != 1:
            raise Reject("several outputs")
        return outs[0]

    def add_multi(self, op: str, ins: list[str], feat: Any = _SAME, **args) -> list[str]:
        if len(self.steps) >= self.max_steps:
            raise Reject("too many steps")
        try:
            with torch.no_grad():
                _, outs = apply_op(op, args, [self.env[n] for n in ins])
        except Exception as exc:  # an invalid shape or argument: draw something else
            raise Reject(str(exc)) from exc
        for t in outs:
            if not t.is_floating_point() or t.dim() < 1 or t.shape[0] != B or 0 in t.shape \
                    or t.numel() > B * MAX_NUMEL or not bool(torch.isfinite(t).all()):
                raise Reject(f"bad output {tuple(t.shape)}")
        names = []
        for t in outs:
            self.count += 1
            name = f"h{self.count}"
            self.env[name] = t
            f = self.feat[ins[0]] if feat is _SAME else feat
            if feat is _SAME and t.dim() != self.rank(ins[0]):
                f = None
            self.feat[name] = None if f is None else f % t.dim()
            names.append(name)
        self.steps.append(Step(op, list(ins), names, args))
        return names

    def attempt(self, block: Callable[["Draft", str], str], h: str) -> str | None:
        """Run ``block`` on ``h``; roll back and return ``None`` if it rejects."""
        saved = (len(self.steps), len(self.inputs), dict(self.env), dict(self.feat), self.count)
        try:
            return block(self, h)
        except Reject:
            n, n_in, self.env, self.feat, self.count = saved
            del self.steps[n:]
            del self.inputs[n_in:]
            return None

    def program(self, outputs: list[str]) -> Program:
        """The program, without steps whose outputs are never used."""
        return pruned(Program(self.inputs, self.steps, outputs, sorted(set(self.families))))

    # -- common sub-steps
    def to_features_last(self, h: str) -> str:
        """``h`` with its feature axis moved last (a transpose), if it is not already."""
        f, r = self.feat[h], self.rank(h)
        if f is None:
            raise Reject("no feature axis")
        return h if f == r - 1 else self.add("transpose", [h], feat=r - 1, a=f, b=r - 1)

    def to_channels(self, h: str) -> str:
        """``h`` as ``[B, C, ...]`` (feature axis 1): tokens are transposed."""
        if self.feat[h] == 1 and self.rank(h) in (3, 4):
            return h
        if self.kind(h) == "tokens":
            return self.add("transpose", [h], feat=1, a=1, b=2)
        raise Reject("not a channel layout")

    def linear(self, h: str, out: int | None = None) -> str:
        """A parametric map to ``out`` features along the feature axis: a linear (features
        last) or a 1x1 conv (channels first)."""
        out = out or self.width()
        if self.feat[h] == 1 and self.rank(h) in (3, 4):
            return self.add("conv", [h], out=out, k=1, bias=self.chance(0.7))
        if self.feat[h] is None or self.feat[h] != self.rank(h) - 1:
            raise Reject("no features last")
        return self.add("linear", [h], out=out, bias=self.chance(0.7))

    def merge(self, a: str, b: str) -> str:
        """Sum or concatenate two branches (flattened first when their shapes differ in more
        than one axis)."""
        sa, sb = self.shape(a), self.shape(b)
        if sa == sb:
            how = self.rng.random()
            if how < 0.6:
                return self.add("add", [a, b])
            free = [i for i in range(1, len(sa)) if i != self.feat[a]]
            return self.add("cat", [a, b], axis=self.pick(free) if how < 0.7 and free else self.feat[a] or 1)
        diff = [i for i in range(len(sa)) if len(sa) == len(sb) and sa[i] != sb[i]]
        if len(diff) == 1 and self.feat[a] == self.feat[b] and self.chance(0.5):
            return self.add("cat", [a, b], axis=diff[0])
        fa = self.add("flatten", [a], feat=1, start=1, end=-1)
        fb = self.add("flatten", [b], feat=1, start=1, end=-1)
        return self.add("cat", [fa, fb], feat=1, axis=1)


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
    from .fuzz_families import FAMILIES

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
