"""Weight normalisation (``torch.nn.utils.parametrizations.weight_norm``): the model stores a
direction ``v`` and a gain ``g`` and computes its weight as ``v * g / ||v||``, the norm over
every axis but ``dim`` (``dim=-1``: over all of ``v``). Weight standardisation (timm's
``ScaledStdConv2d``, NF-Nets) is the same shape of computation: each output unit's weights
centred and scaled to unit variance, times a per-unit gain.

A layer whose weight is normalised keeps ``v`` as its weight edges (what the checkpoint holds;
round trips stay exact), and the gain becomes edges from one auxiliary node, named by the
normalisation axis, to the layer's output units: ``g[o]`` to unit ``o`` for ``dim`` the output
axis, ``g[k]`` to every unit at kernel position ``k`` for a kernel axis (Wav2Vec2's positional
convolution), ``g`` to every unit for the whole-tensor norm. The norm runs over whole output
and input axes, so it commutes with every permutation of them: no symmetry changes. A norm
per input channel would tell input units apart through their edges only: refused.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from . import layout as L
from .ir import ParamRef

if TYPE_CHECKING:
    from .context import LoweringContext


def attach_gain(ctx: "LoweringContext", weight: ParamRef, out_ids: torch.Tensor, out_axis: int, depth: int) -> None:
    """Encode the gain of a weight-normalised ``weight`` (nothing when it is not normalised):
    ``out_ids`` are the layer's output units (along ``out_axis`` of the weight); kernel axes are
    the weight's axes from 2 on."""
    if weight.weight_norm is None:
        return
    g, how = weight.weight_norm
    ndim = weight.tensor.dim()
    if isinstance(how, tuple):  # ("standardise", eps): per output unit, over everything else
        if weight.shape[out_axis] != g.tensor.numel():
            raise ctx.error(f"weight standardisation of {weight.name}: the gain does not match its output units")
        dim, sig = out_axis, ("weight_standardisation", how[1], ndim)
    else:
        dim = -1 if how == -1 else how % ndim
        sig = ("weight_norm", dim, ndim)
    c_out = out_ids.numel()
    kernel_shape = tuple(weight.shape[2:])
    grid: tuple[int, ...]
    kernel: tuple[torch.Tensor, ...]
    if dim == -1:
        grid, gain, kernel = (c_out,), g.apply(lambda t: t.reshape(1).expand(c_out)), ()
    elif dim == out_axis:
        grid, gain, kernel = (c_out,), g.apply(lambda t: t.reshape(c_out)), ()
    elif dim >= 2:
        size = kernel_shape[dim - 2]
        grid = (c_out, size)
        gain = g.apply(lambda t: t.reshape(1, size).expand(grid))
        kernel = tuple(torch.arange(k).view(1, k) if d == dim - 2 else torch.zeros(1, 1, dtype=torch.long)
                       for d, k in enumerate(kernel_shape))
    else:
        raise ctx.error(f"weight normalisation of {weight.name} along its input axis ({dim}) is not supported")
    node = ctx.add_nodes(1, "param_operand", depth)
    # a function the model applies to the gain first (``gain * scale``) is part of the name
    ctx.builder.node_column("signature")[node] = L.signature_id(sig + g.transform)
    gain = ParamRef(gain.name, gain.tensor, gain.offsets, gain.kind)
    dst = out_ids.view((c_out,) + (1,) * (len(grid) - 1))
    ctx.add_edges(grid, node, dst, "param_mul", param=gain, kernel=kernel)
