"""Reference C4-equivariant layers (rotations by 90 degrees), written with parameter sharing.

Each layer stores only its *free* parameters ``theta`` and expands them into an ordinary
convolution filter in ``forward`` (the filter is ``sum_k theta_k B_k`` over a fixed basis:
here the ``B_k`` are rotations and cyclic shifts of one-hot kernels). The compiler lowers each
layer as one op (``gmn_plugins.group_conv``) with one edge per free parameter, so decompiling
writes ``theta`` and any edited graph decompiles into a network that is still equivariant.

Feature maps of the C4 layers have ``4 * C`` channels: channel ``4 * c + r`` is field ``c``
at rotation ``r``. With ``rot`` = ``torch.rot90(., 1, dims=(-2, -1))``:

- :class:`C4LiftingConv` (plain image -> fields): ``out[4c + r] = conv(x, rot^r(theta[c]))``,
  ``theta`` ``[C_out, C_in, k, k]``; ``out(rot x)`` is ``rot`` of ``out(x)`` with the rotation
  index shifted by one.
- :class:`C4GroupConv` (fields -> fields): filter block ``(o, r), (i, s)`` is
  ``rot^r(theta[o, i, (s - r) mod 4])``, ``theta`` ``[C_out, C_in, 4, k, k]``.
- :class:`C4MaxPool` (fields -> plain channels): the maximum over the four rotations of each
  field, invariant to the shift; after a global spatial pooling the network is invariant.

Kernels must be odd and padding symmetric for the spatial rotation to commute with the
convolution exactly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

ROTATIONS = 4


def _check_kernel(kernel_size: int) -> None:
    if kernel_size % 2 != 1:
        raise ValueError(f"kernel_size must be odd (got {kernel_size}): an even kernel has no centre "
                         "to rotate about, so the layer would not be equivariant")


class _C4Conv(nn.Module):
    """What both C4 convolutions share: the free parameters ``theta`` (``weight``, of
    ``theta_shape``) and one bias per output field, expanded into an ordinary convolution by
    the subclass's :meth:`filter`."""

    def __init__(self, theta_shape: tuple[int, ...], kernel_size: int, padding: int, bias: bool):
        super().__init__()
        _check_kernel(kernel_size)
        self.padding = padding
        self.weight = nn.Parameter(torch.empty(theta_shape))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.bias = nn.Parameter(torch.zeros(theta_shape[0])) if bias else None

    def filter(self) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.repeat_interleave(ROTATIONS)
        return F.conv2d(x, self.filter(), bias, padding=self.padding)


class C4LiftingConv(_C4Conv):
    """Image ``[B, C_in, H, W]`` -> fields ``[B, 4 * C_out, H', W']`` (see the module docstring)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int = 0,
                 bias: bool = True):
        super().__init__((out_channels, in_channels, kernel_size, kernel_size), kernel_size, padding, bias)

    def filter(self) -> torch.Tensor:
        """The expanded filter ``[4 * C_out, C_in, k, k]``."""
        w = torch.stack([torch.rot90(self.weight, r, dims=(2, 3)) for r in range(ROTATIONS)], dim=1)
        return w.reshape(-1, *self.weight.shape[1:])


class C4GroupConv(_C4Conv):
    """Fields ``[B, 4 * C_in, H, W]`` -> fields ``[B, 4 * C_out, H', W']``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int = 0,
                 bias: bool = True):
        super().__init__((out_channels, in_channels, ROTATIONS, kernel_size, kernel_size), kernel_size, padding, bias)

    def filter(self) -> torch.Tensor:
        """The expanded filter ``[4 * C_out, 4 * C_in, k, k]``: block ``(o, r), (i, s)`` is
        ``rot^r(theta[o, i, (s - r) mod 4])`` (``torch.roll`` by ``r`` along the rotation axis
        gives entry ``s`` the value at ``s - r``)."""
        c_out, c_in, _, k, _ = self.weight.shape
        w = torch.stack([torch.rot90(torch.roll(self.weight, r, dims=2), r, dims=(3, 4))
                         for r in range(ROTATIONS)], dim=1)
        return w.reshape(c_out * ROTATIONS, c_in * ROTATIONS, k, k)


class C4MaxPool(nn.Module):
    """Fields ``[B, 4 * C, H, W]`` -> ``[B, C, H, W]``: the maximum over each field's rotations."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(1, (-1, ROTATIONS)).amax(dim=2)


def rotate_fields(x: torch.Tensor) -> torch.Tensor:
    """What rotating the input by 90 degrees does to a C4 feature map: every field rotated in
    space and its rotation index shifted by one (for checking equivariance)."""
    return torch.rot90(x, 1, dims=(-2, -1)).unflatten(1, (-1, ROTATIONS)).roll(1, dims=2).flatten(1, 2)
