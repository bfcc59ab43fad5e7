"""Offsets of a parameter view: which entry of the parameter each entry of the view reads.

An op that only rearranges a parameter (transpose, slice, reshape, expand, select) gives a view
whose offsets into the parameter's flat, row-major entries are an affine function of the
view's index: :class:`Affine` holds that function in two integer lists instead of a tensor of
one int64 per entry (GPT-2's transposed 50257 x 768 LM head would need 309 MB).
:func:`view_through` finds the affine offsets of a layout function's result without running it
on data: on a ``meta`` tensor laid out like the offsets, whose result is a view of it exactly
when the function only rearranges entries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class Affine:
    """Offsets ``base + sum(strides[a] * i[a])`` at grid index ``i``: a layout view's offsets
    into its parameter's flat (row-major) entries, without a tensor."""

    base: int
    strides: tuple[int, ...]

    def _terms(self, grid: tuple[int, ...]):
        """``stride * index`` of each moving axis, shaped to broadcast over ``grid``."""
        for axis, (stride, size) in enumerate(zip(self.strides, grid)):
            if stride and size > 1:
                shape = [1] * len(grid)
                shape[axis] = size
                yield stride * torch.arange(size).view(shape)

    def tensor(self, grid: tuple[int, ...]) -> torch.Tensor:
        """The offsets as a long tensor broadcasting to ``grid`` (compact: size 1 along the
        axes of stride 0)."""
        out = torch.tensor(self.base).view((1,) * len(grid))
        for term in self._terms(grid):
            out = out + term
        return out

    def write(self, out: torch.Tensor) -> None:
        """Write the offsets into ``out`` (a long tensor shaped like the grid) in place,
        one broadcast pass per moving axis, without a temporary of the grid's size."""
        out.fill_(self.base)
        for term in self._terms(tuple(out.shape)):
            out.add_(term)

    def injective(self, grid: tuple[int, ...]) -> bool:
        """True when no two grid indices share an offset."""
        axes = sorted((abs(s), g) for s, g in zip(self.strides, grid) if g > 1)
        reach = 0
        for stride, size in axes:
            if stride <= reach:
                return False
            reach += stride * (size - 1)
        return True


def identity(shape: tuple[int, ...]) -> Affine:
    """The offsets of a tensor of ``shape`` into itself (row-major)."""
    strides = [math.prod(shape[a + 1:]) for a in range(len(shape))]
    return Affine(0, tuple(strides))


def view_through(fn: Callable[[torch.Tensor], list[torch.Tensor]], offsets: Affine,
                 shape: tuple[int, ...]) -> list[tuple[Affine, tuple[int, ...]]] | None:
    """The offsets (and shape) of each tensor ``fn`` returns when given a tensor of ``shape``
    whose offsets are ``offsets``, or None unless every result is a view of its input (then
    the function moved entries only, and the view's strides are its offsets). ``fn`` runs on
    a ``meta`` tensor: no data is touched; a function that cannot run there gives None."""
    if any(s < 0 for s in offsets.strides) or offsets.base < 0:
        return None
    span = offsets.base + sum(s * (g - 1) for s, g in zip(offsets.strides, shape)) + 1
    storage = torch.empty(max(span, 1), device="meta")
    probe = storage.as_strided(shape, offsets.strides, offsets.base)
    try:
        outputs = fn(probe)
    except Exception:  # e.g. indexing with a CPU tensor: not a view; the caller uses a tensor
        return None
    found = []
    for out in outputs:
        if not isinstance(out, torch.Tensor) or out.device.type != "meta" or \
                not torch._C._is_alias_of(out, storage):
            return None
        found.append((Affine(int(out.storage_offset()), tuple(int(s) for s in out.stride())),
                      tuple(out.shape)))
    return found


def affine_of(offsets: torch.Tensor, grid: tuple[int, ...]) -> Affine | None:
    """``offsets`` (broadcastable to ``grid``) as an :class:`Affine`, or None when they are not
    an affine function of the grid index. Checked entry by entry, a slab at a time."""
    t = compact(offsets, grid)
    if t.numel() == 0:
        return None
    base = int(t[(0,) * t.dim()]) if t.dim() else int(t)
    strides = []
    for a in range(t.dim()):
        step = [0] * t.dim()
        if t.shape[a] > 1:
            step[a] = 1
        strides.append(int(t[tuple(step)]) - base if t.shape[a] > 1 else 0)
    candidate = Affine(base, tuple(strides))
    if t.dim() == 0:
        return candidate
    rest = Affine(0, (0,) + candidate.strides[1:]).tensor((1,) + tuple(t.shape[1:]))
    slab = max(1, (1 << 22) // max(1, math.prod(t.shape[1:])))
    for lo in range(0, t.shape[0], slab):
        hi = min(t.shape[0], lo + slab)
        rows = torch.arange(lo, hi).view((-1,) + (1,) * (t.dim() - 1))
        if not torch.equal(t[lo:hi], (base + strides[0] * rows + rest).expand(t[lo:hi].shape)):
            return None
    return candidate


def compact(t: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
    """``t`` (broadcastable to ``grid``) with as many dimensions as ``grid``, narrowed to one
    entry along every axis where it only repeats itself (size 1 or stride 0). Over the grid it
    takes the same values, each the same function of the remaining axes' indices."""
    t = t.reshape((1,) * (len(grid) - t.dim()) + tuple(t.shape))
    for a in range(t.dim()):
        if t.shape[a] > 1 and t.stride(a) == 0:
            t = t.narrow(a, 0, 1)
    return t


Offsets = torch.Tensor | Affine | None
"""A view's offsets: None (the identity), affine, or one int64 per entry."""


def offsets_tensor(offsets: Offsets, grid: tuple[int, ...]) -> torch.Tensor:
    """``offsets`` of a view shaped ``grid`` as a long tensor broadcasting to ``grid``."""
    if offsets is None:
        return torch.arange(math.prod(grid)).view(grid)
    if isinstance(offsets, Affine):
        return offsets.tensor(grid)
    return offsets
