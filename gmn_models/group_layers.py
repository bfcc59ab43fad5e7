"""Reference group-equivariant layers for C4 (rotations by 90 degrees) and D4 (those rotations
and the reflections of the square), written with parameter sharing.

Each layer stores only its *free* parameters ``theta`` and expands them into an ordinary
convolution filter in ``forward`` (the filter is ``sum_k theta_k B_k`` over a fixed basis:
here the ``B_k`` are transformed one-hot kernels, permuted along the group axis). The compiler
lowers each layer as one op (``gmn_plugins.group_conv``) with one edge per free parameter, so
decompiling writes ``theta`` and any edited graph decompiles into a network that is still
equivariant.

A :class:`Group` lists its elements as ``(reflect, turns)`` pairs: element ``g`` acts on the
last two (spatial) axes of a tensor as ``act_g = rot90^turns o flip^reflect`` (``flip`` mirrors
the last axis, ``rot90`` is ``torch.rot90(., 1, dims=(-2, -1))``). Its Cayley table is computed
from these actions, so the layers and the table cannot disagree. :data:`C4` has the four
rotations, :data:`D4` the same four followed by the four reflections (so element ``r < 4``
means the same in both).

Feature maps of a group's layers have ``|G| * C`` channels: channel ``|G| * c + g`` is field
``c`` at group element ``g``.

- :class:`GroupLiftingConv` (plain image -> fields): ``out[(o, g)] = conv(x, act_g(theta[o]))``,
  ``theta`` ``[C_out, C_in, k, k]``;
- :class:`GroupConv` (fields -> fields): filter block ``(o, g), (i, h)`` is
  ``act_g(theta[o, i, g^-1 h])``, ``theta`` ``[C_out, C_in, |G|, k, k]``: the spatial kernel
  transformed by ``g`` and the group axis permuted by the regular representation;
- :class:`GroupMaxPool` (fields -> plain channels): the maximum over each field's group axis,
  invariant to the group's permutation of it; after a global spatial pooling the network is
  invariant.

Transforming the input image by ``act_u`` transforms every feature map as
:func:`transform_fields` does: each field transformed in space and its group axis permuted,
``new[h] = old[u^-1 h]``. ``C4LiftingConv``, ``C4GroupConv``, ``C4MaxPool`` and the ``D4``
classes are these layers for :data:`C4` and :data:`D4`.

Kernels must be odd and padding symmetric for the spatial transformations to commute with the
convolution exactly; with a stride ``s`` the input size must also satisfy
``(H + 2 * padding - k) % s == 0`` (the sampled grid is then symmetric about the centre).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

ROTATIONS = 4

_PROBE = torch.arange(9.0).view(3, 3)  # no symmetry of the square maps it to itself


@dataclass(frozen=True)
class Group:
    """A finite group of symmetries of the square pixel grid (see the module docstring).

    ``elements[g] = (reflect, turns)``: ``act(g, x)`` flips the last axis of ``x`` if
    ``reflect``, then rotates the last two axes by ``turns`` quarter turns. Element 0 must be
    the identity; the set must be closed under composition (checked)."""

    name: str
    elements: tuple[tuple[int, int], ...]
    table: tuple[tuple[int, ...], ...] = field(init=False, repr=False)
    """``table[g][h]``: the index of ``g h`` (``act(g h) = act(g) o act(h)``)."""
    inverse: tuple[int, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        images = [self.act(g, _PROBE) for g in range(self.order)]
        if not torch.equal(images[0], _PROBE):
            raise ValueError(f"group {self.name}: element 0 must be the identity")

        def index(t: torch.Tensor) -> int:
            found = [k for k, image in enumerate(images) if torch.equal(image, t)]
            if len(found) != 1:
                raise ValueError(f"group {self.name}: elements are not distinct, or not closed under composition")
            return found[0]

        table = tuple(tuple(index(self.act(g, images[h])) for h in range(self.order)) for g in range(self.order))
        object.__setattr__(self, "table", table)
        object.__setattr__(self, "inverse", tuple(row.index(0) for row in table))

    @property
    def order(self) -> int:
        return len(self.elements)

    def act(self, g: int, x: torch.Tensor) -> torch.Tensor:
        """Element ``g`` applied to the last two (spatial) axes of ``x``."""
        reflect, turns = self.elements[g]
        if reflect:
            x = torch.flip(x, dims=(-1,))
        return torch.rot90(x, turns, dims=(-2, -1))

    def relative(self, g: int) -> tuple[int, ...]:
        """``g^-1 h`` for every ``h``: the group axis of a filter seen from output element ``g``."""
        return self.table[self.inverse[g]]


C4 = Group("C4", tuple((0, r) for r in range(4)))
D4 = Group("D4", tuple((m, r) for m in range(2) for r in range(4)))


def _check_kernel(kernel_size: int) -> None:
    if kernel_size % 2 != 1:
        raise ValueError(f"kernel_size must be odd (got {kernel_size}): an even kernel has no centre "
                         "to rotate about, so the layer would not be equivariant")


class _GroupConv(nn.Module):
    """What both group convolutions share: the free parameters ``theta`` (``weight``, of
    ``theta_shape``) and one bias per output field, expanded into an ordinary convolution by
    the subclass's :meth:`filter`."""

    def __init__(self, group: Group, theta_shape: tuple[int, ...], kernel_size: int, padding: int, stride: int,
                 bias: bool):
        super().__init__()
        _check_kernel(kernel_size)
        self.group = group
        self.padding = padding
        self.stride = stride
        self.weight = nn.Parameter(torch.empty(theta_shape))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.bias = nn.Parameter(torch.zeros(theta_shape[0])) if bias else None

    def filter(self) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.repeat_interleave(self.group.order)
        return F.conv2d(x, self.filter(), bias, stride=self.stride, padding=self.padding)


class GroupLiftingConv(_GroupConv):
    """Image ``[B, C_in, H, W]`` -> fields ``[B, |G| * C_out, H', W']`` (see the module docstring)."""

    def __init__(self, group: Group, in_channels: int, out_channels: int, kernel_size: int, padding: int = 0,
                 stride: int = 1, bias: bool = True):
        super().__init__(group, (out_channels, in_channels, kernel_size, kernel_size), kernel_size, padding,
                         stride, bias)

    def filter(self) -> torch.Tensor:
        """The expanded filter ``[|G| * C_out, C_in, k, k]``: block ``(o, g)`` is ``act_g(theta[o])``."""
        w = torch.stack([self.group.act(g, self.weight) for g in range(self.group.order)], dim=1)
        return w.reshape(-1, *self.weight.shape[1:])


class GroupConv(_GroupConv):
    """Fields ``[B, |G| * C_in, H, W]`` -> fields ``[B, |G| * C_out, H', W']``."""

    def __init__(self, group: Group, in_channels: int, out_channels: int, kernel_size: int, padding: int = 0,
                 stride: int = 1, bias: bool = True):
        super().__init__(group, (out_channels, in_channels, group.order, kernel_size, kernel_size), kernel_size,
                         padding, stride, bias)

    def filter(self) -> torch.Tensor:
        """The expanded filter ``[|G| * C_out, |G| * C_in, k, k]``: block ``(o, g), (i, h)`` is
        ``act_g(theta[o, i, g^-1 h])`` (the group axis gathered by selects, so tracing sees no
        index tensor)."""
        c_out, c_in, n, k, _ = self.weight.shape
        blocks = []
        for g in range(n):
            permuted = torch.stack([self.weight[:, :, s] for s in self.group.relative(g)], dim=2)
            blocks.append(self.group.act(g, permuted))
        return torch.stack(blocks, dim=1).reshape(c_out * n, c_in * n, k, k)


class GroupMaxPool(nn.Module):
    """Fields ``[B, |G| * C, H, W]`` -> ``[B, C, H, W]``: the maximum over each field's group axis."""

    def __init__(self, group: Group):
        super().__init__()
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(1, (-1, self.group.order)).amax(dim=2)


class C4LiftingConv(GroupLiftingConv):
    """:class:`GroupLiftingConv` for :data:`C4`: ``out[4c + r] = conv(x, rot^r(theta[c]))``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int = 0, stride: int = 1,
                 bias: bool = True):
        super().__init__(C4, in_channels, out_channels, kernel_size, padding, stride, bias)


class C4GroupConv(GroupConv):
    """:class:`GroupConv` for :data:`C4`: block ``(o, r), (i, s)`` is ``rot^r(theta[o, i, (s - r) mod 4])``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int = 0, stride: int = 1,
                 bias: bool = True):
        super().__init__(C4, in_channels, out_channels, kernel_size, padding, stride, bias)


class C4MaxPool(GroupMaxPool):
    """Fields ``[B, 4 * C, H, W]`` -> ``[B, C, H, W]``: the maximum over each field's rotations."""

    def __init__(self) -> None:
        super().__init__(C4)


class D4LiftingConv(GroupLiftingConv):
    """:class:`GroupLiftingConv` for :data:`D4`: 8 channels per output field."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int = 0, stride: int = 1,
                 bias: bool = True):
        super().__init__(D4, in_channels, out_channels, kernel_size, padding, stride, bias)


class D4GroupConv(GroupConv):
    """:class:`GroupConv` for :data:`D4`: ``theta`` ``[C_out, C_in, 8, k, k]``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int = 0, stride: int = 1,
                 bias: bool = True):
        super().__init__(D4, in_channels, out_channels, kernel_size, padding, stride, bias)


class D4MaxPool(GroupMaxPool):
    """Fields ``[B, 8 * C, H, W]`` -> ``[B, C, H, W]``: the maximum over each field's 8 elements."""

    def __init__(self) -> None:
        super().__init__(D4)


def transform_fields(x: torch.Tensor, group: Group, g: int) -> torch.Tensor:
    """What transforming the input by element ``g`` does to a feature map of ``group``'s
    layers: every field transformed in space by ``act_g`` and its group axis permuted,
    ``new[h] = old[g^-1 h]`` (for checking equivariance)."""
    fields = x.unflatten(1, (-1, group.order))
    permuted = torch.stack([fields[:, :, s] for s in group.relative(g)], dim=2)
    return group.act(g, permuted).flatten(1, 2)


def rotate_fields(x: torch.Tensor) -> torch.Tensor:
    """What rotating the input by 90 degrees does to a C4 feature map: every field rotated in
    space and its rotation index shifted by one (for checking equivariance)."""
    return transform_fields(x, C4, 1)
