"""A fuzz program being drawn (:class:`Draft`) and the rejection of a step that does not fit
(:class:`Reject`): the primitives that the grammar (:mod:`gmn_compiler.fuzz_grammar`), its
single-path blocks (:mod:`gmn_compiler.fuzz_blocks`) and its families
(:mod:`gmn_compiler.fuzz_families`) build on. Every step is run on example tensors as it is
drawn, so a drawn program always builds and runs.
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
