"""Convolutions: 1-D/2-D/3-D, any stride, padding, dilation, groups (depthwise included),
and transposed convolutions.

A convolution creates one node per output channel and one edge per kernel entry
``W[o, i, k...]`` from input channel node to output channel node, with the kernel position in
the ``kernel0..2`` columns. With groups, edges exist only inside a group, so the graph's
automorphisms are the true ones: channels permuted within a group, whole groups permuted.
Stride, padding and dilation do not change the symmetry and are not encoded as features.
"""

from __future__ import annotations

import torch

from gmn_compiler import layout as L
from gmn_compiler.ir import ParamRef
from gmn_compiler.registry import hookimpl


def lower_conv(ctx, op) -> None:
    """inputs ``[x, weight, bias | None]``; attrs ``groups``, ``transposed``."""
    x, weight, bias = op.inputs[0], op.inputs[1], op.inputs[2]
    if not isinstance(weight, ParamRef):
        raise ctx.error("convolution weight must be a parameter")
    groups = int(op.attrs.get("groups", 1))
    transposed = bool(op.attrs.get("transposed", False))
    spatial_dims = weight.tensor.dim() - 2
    if spatial_dims > 3:
        raise ctx.error(f"{spatial_dims}-D convolution: at most 3 kernel dimensions are encoded")
    channel_axis = len(x.shape) - spatial_dims - 1
    try:
        ids, pos = L.axis_entries(ctx.require_layout(x), x.shape, channel_axis)
    except ValueError as exc:
        raise ctx.error(f"convolution input {x}: {exc}") from None
    kernel_shape = tuple(weight.shape[2:])
    # Index tensors stay broadcastable ([1, in] / [out, 1]); only a grouped convolution
    # needs a full [out, in] index (each output channel reads its own group's inputs).
    if transposed:
        c_in, out_per_group = weight.shape[:2]
        c_out = out_per_group * groups
        src_index = torch.arange(c_in).view(c_in, 1)
        dst_index = torch.arange(out_per_group).view(1, out_per_group)
        if groups > 1:
            dst_index = dst_index + (torch.arange(c_in) // (c_in // groups)).view(c_in, 1) * out_per_group
    else:
        c_out, in_per_group = weight.shape[:2]
        c_in = in_per_group * groups
        src_index = torch.arange(in_per_group).view(1, in_per_group)
        if groups > 1:
            src_index = src_index + (torch.arange(c_out) // (c_out // groups)).view(c_out, 1) * in_per_group
        dst_index = torch.arange(c_out).view(c_out, 1)
    if ids.numel() != c_in:
        raise ctx.error(f"input has {ids.numel()} channels, weight expects {c_in}")
    builder = ctx.builder
    depth = builder.depth_of(ids) + 1
    out_ids = builder.add_nodes(c_out, "neuron", depth)
    grid = tuple(weight.shape)
    tail = (1,) * spatial_dims
    kernel = tuple(
        torch.arange(k).view((1, 1) + tuple(k if j == d else 1 for j in range(spatial_dims)))
        for d, k in enumerate(kernel_shape)
    )
    src = ids[src_index].view(src_index.shape + tail)
    dst = out_ids[dst_index].view(dst_index.shape + tail)
    spatial = None if pos is None else pos[src_index].view(src_index.shape + tail)
    etype = "conv_transpose" if transposed else "conv"
    builder.add_edges(grid, src, dst, etype, param=weight, kernel=kernel, spatial=spatial)
    if bias is not None:
        if not isinstance(bias, ParamRef):
            raise ctx.error("convolution bias must be a parameter")
        bias_node = builder.add_nodes(1, "bias", depth)
        builder.add_edges((c_out,), bias_node, out_ids, etype + "_bias", param=bias)
    ctx.declare_symmetry(out_ids, "output channels of conv" + (f" (within {groups} groups)" if groups > 1 else ""),
                         groups=groups)
    if groups > 1:  # input channels only move within their group
        ctx.refine_symmetry(ids, groups, f"grouped conv at {op.location}", permute_groups=False)
    ctx.set_layout(op.output, L.for_axis(out_ids, len(op.output.shape), channel_axis))


def _conv(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    return [x, weight, bias], {"stride": stride, "padding": padding, "dilation": dilation,
                               "groups": groups, "transposed": False}


def _convolution(x, weight, bias, stride, padding, dilation, transposed, output_padding, groups, *rest):
    return [x, weight, bias], {"stride": stride, "padding": padding, "dilation": dilation,
                               "groups": groups, "transposed": bool(transposed),
                               "output_padding": output_padding}


def _conv_transpose(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    return [x, weight, bias], {"stride": stride, "padding": padding, "dilation": dilation,
                               "groups": groups, "transposed": True, "output_padding": output_padding}


def _onnx_conv(x, weight, bias=None, group=1, **attrs):
    return [x, weight, bias], {"groups": group, "transposed": False, **attrs}


def _onnx_conv_transpose(x, weight, bias=None, group=1, **attrs):
    return [x, weight, bias], {"groups": group, "transposed": True, **attrs}


@hookimpl
def gmn_register(registry) -> None:
    registry.add_rule("conv", lower_conv)
    for d in (1, 2, 3):
        registry.map_aten(f"aten.conv{d}d.default", "conv", _conv)
        registry.map_aten(f"aten.conv{d}d.padding", "conv", _conv)
        registry.map_aten(f"aten.conv_transpose{d}d.input", "conv", _conv_transpose)
    registry.map_aten("aten.convolution.default", "conv", _convolution)
    registry.map_aten("aten.conv_transpose1d.default", "conv", _conv_transpose)
    registry.map_onnx("Conv", "conv", _onnx_conv)
    registry.map_onnx("ConvTranspose", "conv", _onnx_conv_transpose)
