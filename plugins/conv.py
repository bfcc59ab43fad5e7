"""Convolutions: 1-D/2-D/3-D, any stride, padding, dilation, groups (depthwise included),
and transposed convolutions.

A convolution creates one node per output channel and one edge per kernel entry
``W[o, i, k...]`` from input channel node to output channel node, with the kernel position in
the ``kernel0..2`` columns. With groups, edges exist only inside a group, so the graph's
automorphisms are the true ones: channels permuted within a group, whole groups permuted.
Stride, padding, dilation and output padding decide which inputs each weight meets: a
convolution whose window is not the plain one (stride 1, dilation 1, no padding) gets one
``signature`` node with ``signature`` edges into its output channels carrying a code of them,
so parallel branches that differ only there (ASPP's dilations) are told apart.
"""

from __future__ import annotations

from typing import Any

import torch

from gmn_compiler.rules import LoweringContext, Op, ParamRef, Registrar, hookimpl, layout as L

# what a normalizer returns: the kind's canonical inputs and attrs
_Normalized = tuple[list[Any], dict[str, Any]]



def lower_conv(ctx: LoweringContext, op: Op) -> None:
    """inputs ``[x, weight, bias | None]``; attrs ``groups``, ``transposed``.

    Where an axis before the channels carries neurons too (MViT-v2 pools each head's queries
    with one depthwise conv: the heads folded into the batch axis), each index of that axis
    gets its own copy of the convolution with the same weights (the builder ties the uses);
    the copies' input channels, and their output channels, are tied one to one: the shared
    weights let every copy move only as the others do."""
    x, weight, bias = op.inputs[0], op.inputs[1], op.inputs[2]
    if not isinstance(weight, ParamRef):
        raise ctx.error("convolution weight must be a parameter")
    if bias is not None and not isinstance(bias, ParamRef):
        raise ctx.error("convolution bias must be a parameter")
    spatial_dims = weight.tensor.dim() - 2
    if spatial_dims > 3:
        raise ctx.error(f"{spatial_dims}-D convolution: at most 3 kernel dimensions are encoded")
    ndim = len(x.shape)
    channel_axis = ndim - spatial_dims - 1
    layout = ctx.require_layout(x, constant_axis=channel_axis)
    aligned = L.align(layout, ndim)
    batch_axes = [a for a in aligned.neuron_axes() if a < channel_axis]
    if batch_axes and aligned.pos is None and all(aligned.ids.shape[a] == 1 for a in range(channel_axis + 1, ndim)):
        rows = aligned.ids.movedim(channel_axis, -1).reshape(-1, aligned.ids.shape[channel_axis])
        outs = [_conv_once(ctx, op, row, None, declare=n == 0) for n, row in enumerate(rows)]
        for row, out in zip(rows[1:], outs[1:]):  # shared weights: every copy permuted alike
            ctx.tie_units(rows[0], row)
            ctx.tie_units(outs[0], out)
        batch = tuple(aligned.ids.shape[:channel_axis])
        ids = torch.stack(outs).view(batch + (outs[0].numel(),) + (1,) * spatial_dims)
        ctx.set_layout(op.output, L.Layout(ids))
        return
    try:
        ids, pos = L.axis_entries(layout, x.shape, channel_axis)
    except ValueError as exc:
        raise ctx.error(f"convolution input {x}: {exc}") from None
    out_ids = _conv_once(ctx, op, ids, pos, declare=True)
    ctx.set_layout(op.output, L.for_axis(out_ids, len(op.output.shape), channel_axis))


def _conv_once(ctx: LoweringContext, op: Op, ids: torch.Tensor, pos: torch.Tensor | None, declare: bool) -> torch.Tensor:
    """The output channel nodes of the convolution ``op`` reading input channel nodes ``ids``
    (at positions ``pos``); declares their symmetry when ``declare``."""
    weight, bias = op.inputs[1], op.inputs[2]
    groups = int(op.attrs.get("groups", 1))
    transposed = bool(op.attrs.get("transposed", False))
    spatial_dims = weight.tensor.dim() - 2
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
    depth = ctx.depth_of(ids) + 1
    out_ids = ctx.add_nodes(c_out, "neuron", depth)
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
    ctx.add_edges(grid, src, dst, etype, param=weight, kernel=kernel, spatial=spatial)
    ctx.attach_weight_norm_gain(weight, out_ids, 1 if transposed else 0, depth)
    if bias is not None:
        bias_node = ctx.add_nodes(1, "bias", depth)
        ctx.add_edges((c_out,), bias_node, out_ids, etype + "_bias", param=bias)
    window = _window(op.attrs, kernel_shape)
    if window is not None:
        sig_node = ctx.add_nodes(1, "signature", depth)
        ctx.add_edges((c_out,), sig_node, out_ids, "signature",
                          value=L.signature_code(("conv", transposed) + window))
    if groups > 1 and groups == c_in == c_out and not transposed and torch.unique(ids).numel() == c_in:
        # depthwise: output channel c reads input channel c alone, so the two move together
        # under any permutation of the input's channels (MobileNet's expanded channels keep
        # their symmetry through it)
        ctx.tie_units(ids, out_ids)
    else:
        if declare:  # copies after the first are tied to it
            ctx.declare_symmetry(out_ids, "output channels of conv" + (f" (within {groups} groups)" if groups > 1 else ""),
                                 groups=groups)
        if groups > 1:  # input channels only move within their group
            ctx.refine_symmetry(ids, groups, f"grouped conv at {op.location}", permute_groups=False)
    return out_ids


def _per_axis(value: Any, n: int, default: int) -> tuple[int, ...]:
    value = default if value is None or (isinstance(value, (list, tuple)) and not value) else value
    value = list(value) if isinstance(value, (list, tuple)) else [value]
    return tuple(int(v) for v in (value * n if len(value) == 1 else value))


def _window(attrs: dict[str, Any], kernel: tuple[int, ...]) -> tuple[tuple[int, ...] | str, ...] | None:
    """``(stride, pads (begin..., end...), dilation, output_padding)`` in one form for torch
    (``stride``, ``padding`` incl. "same"/"valid", ``dilation``) and ONNX (``strides``,
    ``pads``, ``dilations``, ``auto_pad``); None for the plain window."""
    n = len(kernel)
    stride = _per_axis(attrs.get("stride", attrs.get("strides")), n, 1)
    dilation = _per_axis(attrs.get("dilation", attrs.get("dilations")), n, 1)
    padding = attrs.get("padding", attrs.get("pads"))
    auto = attrs.get("auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else str(auto)
    extra: tuple[str, ...] = ()
    if padding == "same" or (auto in ("SAME_UPPER", "SAME_LOWER") and set(stride) == {1}):
        total = [d * (k - 1) for d, k in zip(dilation, kernel)]
        lower = auto == "SAME_LOWER"
        begin = tuple((t + 1) // 2 if lower else t // 2 for t in total)
        pads = begin + tuple(t - b for t, b in zip(total, begin))
    elif padding == "valid" or auto == "VALID":
        pads = (0,) * (2 * n)
    else:
        pads = _per_axis(padding, n, 0)
        pads = pads + pads if len(pads) == n else pads
        if auto not in ("NOTSET", "None"):
            extra = (auto,)
    out_pad = _per_axis(attrs.get("output_padding"), n, 0)
    if set(stride) == {1} and set(dilation) == {1} and set(pads) == {0} and set(out_pad) == {0} and not extra:
        return None
    return (stride, pads, dilation, out_pad) + extra


def _conv(x: Any, weight: Any, bias: Any = None, stride: int | list[int] = 1, padding: int | list[int] | str = 0,
          dilation: int | list[int] = 1, groups: int = 1) -> _Normalized:
    return [x, weight, bias], {"stride": stride, "padding": padding, "dilation": dilation,
                               "groups": groups, "transposed": False}


def _convolution(x: Any, weight: Any, bias: Any, stride: list[int], padding: list[int], dilation: list[int],
                 transposed: bool, output_padding: list[int], groups: int, *rest: Any) -> _Normalized:
    return [x, weight, bias], {"stride": stride, "padding": padding, "dilation": dilation,
                               "groups": groups, "transposed": bool(transposed),
                               "output_padding": output_padding}


def _conv_transpose(x: Any, weight: Any, bias: Any = None, stride: int | list[int] = 1, padding: int | list[int] = 0,
                    output_padding: int | list[int] = 0, groups: int = 1, dilation: int | list[int] = 1) -> _Normalized:
    return [x, weight, bias], {"stride": stride, "padding": padding, "dilation": dilation,
                               "groups": groups, "transposed": True, "output_padding": output_padding}


def _onnx_conv(x: Any, weight: Any, bias: Any = None, group: int = 1, **attrs: Any) -> _Normalized:
    return [x, weight, bias], {"groups": group, "transposed": False, **attrs}


def _onnx_conv_transpose(x: Any, weight: Any, bias: Any = None, group: int = 1, **attrs: Any) -> _Normalized:
    return [x, weight, bias], {"groups": group, "transposed": True, **attrs}


@hookimpl
def gmn_register(registry: Registrar) -> None:
    # attributes stay open: ONNX Conv passes its own (pads, strides, auto_pad...) through
    registry.add_rule("conv", lower_conv, inputs=("x", "weight", "bias"), input_axis=1, weight_norm=True)
    for d in (1, 2, 3):
        registry.map_aten(f"aten.conv{d}d.default", "conv", _conv)
        registry.map_aten(f"aten.conv{d}d.padding", "conv", _conv)
        registry.map_aten(f"aten.conv_transpose{d}d.input", "conv", _conv_transpose)
    registry.map_aten("aten.convolution.default", "conv", _convolution)
    registry.map_aten("aten.conv_transpose1d.default", "conv", _conv_transpose)
    registry.map_onnx("Conv", "conv", _onnx_conv)
    registry.map_onnx("ConvTranspose", "conv", _onnx_conv_transpose)
