"""Moving channels to space and back: ``pixel_shuffle`` / ONNX ``DepthToSpace`` (sub-pixel
convolution upsampling: ESPCN, Real-ESRGAN) and ``pixel_unshuffle`` / ONNX ``SpaceToDepth``
(YOLOv5's Focus).

``depth_to_space`` with block ``r`` makes output channel ``c`` from ``r * r`` input channels, one
per sub-pixel offset ``(i, j)``: each output channel gets a node of its own, fed by one
structural edge ``rearrange`` per (input channel, offset) whose kernel columns hold the offset,
so the graph says exactly which channel lands where; the channel orders (torch's and ONNX's
``CRD``: ``c * r * r + i * r + j``; ONNX's ``DCR``: ``(i * r + j) * C + c``) compile to the same
graph when they compute the same function. The input channels can no longer move one by one
(each has its offset), so declarations over them are withdrawn; each group of ``r * r`` moves as
a whole with its output channel, which is declared over the output nodes, linked to their
sources as heads are to their members (the declaration holds only while nothing cuts those
groups).

``space_to_depth`` needs no nodes of its own: its output channels are the input channels' nodes
at merged positions (see :func:`lower_space_to_depth`).
"""

from __future__ import annotations

from typing import Any

import torch

from gmn_compiler.rules import LoweringContext, Op, Registrar, Unsupported, hookimpl, layout as L

_Normalized = tuple[list[Any], dict[str, Any]]


def _channel_nodes(ctx: LoweringContext, op: Op) -> torch.Tensor | None:
    """The node of each channel of the 4-D input (``None``: no neurons); refuses inputs whose
    other axes carry neurons."""
    x = op.inputs[0]
    if len(x.shape) != 4:
        raise ctx.error(f"{op.kind} of a {len(x.shape)}-D value: only [N, C, H, W] is supported")
    layout = ctx.layout(x)
    if layout is None:
        return None
    try:
        ids, pos = L.axis_entries(L.align(layout, 4), tuple(x.shape), 1)
    except ValueError as exc:
        raise ctx.error(f"{op.kind}: {exc}") from None
    if pos is not None:
        raise ctx.error(f"{op.kind} of channels that merge positions (a flattened map) is not supported")
    return ids


def _source_index(c: torch.Tensor, i: torch.Tensor, j: torch.Tensor, r: int, channels: int, order: str) -> torch.Tensor:
    """Index of the input channel that lands in output channel ``c`` (of ``channels``) at offset ``(i, j)``."""
    return c * r * r + i * r + j if order == "CRD" else (i * r + j) * channels + c


def lower_depth_to_space(ctx: LoweringContext, op: Op) -> None:
    """attrs ``block`` (r), ``order`` (``CRD`` or ``DCR``)."""
    src = _channel_nodes(ctx, op)
    if src is None:
        ctx.set_layout(op.output, None)
        return
    r, out_channels = op.attrs["block"], op.output.shape[1]
    c, i, j = torch.meshgrid(torch.arange(out_channels), torch.arange(r), torch.arange(r), indexing="ij")
    sources = src[_source_index(c, i, j, r, out_channels, op.attrs["order"])].reshape(-1)
    out = ctx.add_nodes(out_channels, "neuron", ctx.depth_of(src) + 1)
    heads = out[c.reshape(-1)]
    ctx.add_edges((sources.numel(),), sources, heads, "rearrange", kernel=(i.reshape(-1), j.reshape(-1)))
    whole = _one_free_declaration(ctx, sources)
    ctx.withdraw_symmetries(sources)
    if whole:  # the sources were freely permutable: groups of r * r move whole with their output
        ctx.declare_symmetry(out, f"output channels of depth_to_space (block {r}), each with its "
                                  f"{r * r} source channels", groups=out_channels, permute_groups=True)
        ctx.link_to_heads(heads, sources)
    ctx.set_layout(op.output, L.Layout(out.view(1, -1, 1, 1)))


def _one_free_declaration(ctx: LoweringContext, sources: torch.Tensor) -> bool:
    """Whether ``sources`` are distinct and exactly the units of one declaration that lets them
    all move freely (one block): only then may their groups move whole."""
    roots = ctx.root_nodes(sources)
    if torch.unique(roots).numel() != roots.numel():
        return False
    over = [s for s in ctx.symmetries if not s.get("withdrawn") and bool(torch.isin(s["nodes"], roots).any())]
    return (len(over) == 1 and over[0]["groups"] == 1
            and set(over[0]["nodes"].tolist()) == set(roots.tolist()))


def lower_space_to_depth(ctx: LoweringContext, op: Op) -> None:
    """attrs ``block`` (r), ``order`` (``CRD``: torch's ``pixel_unshuffle``; ``DCR``: ONNX).

    The layout goes through the reshape, transpose and reshape that define the op (as ONNX
    writes it out, and as torch's exporter emits ``pixel_unshuffle``): each output channel is
    its input channel's node at one offset (a merged position), exactly as after those three
    ops, so both spellings compile to one graph."""
    x = op.inputs[0]
    if len(x.shape) != 4:
        raise ctx.error(f"space_to_depth of a {len(x.shape)}-D value: only [N, C, H, W] is supported")
    layout = ctx.layout(x)
    if layout is None:
        ctx.set_layout(op.output, None)
        return
    n, c, h, w = x.shape
    r = op.attrs["block"]
    split = (n, c, h // r, r, w // r, r)
    dims = [0, 1, 3, 5, 2, 4] if op.attrs["order"] == "CRD" else [0, 3, 5, 1, 2, 4]
    moved = L.permute_view(L.reshape(layout, tuple(x.shape), split), dims, split)
    if moved.sig:  # the offsets move ahead of the positions: a different view, copied as a transpose's is
        moved = ctx.copy_view(x, moved)
    ctx.set_layout(op.output, L.reshape(moved, tuple(split[d] for d in dims), tuple(op.output.shape)))


# ------------------------------------------------------------------ signatures
def _torch(name: str) -> Any:
    def normalize(x: Any, factor: int) -> _Normalized:
        return [x], {"block": int(factor), "order": "CRD"}
    return normalize


def _onnx_depth_to_space(x: Any, *, blocksize: int, mode: str = "DCR", **rest: Any) -> _Normalized:
    if mode not in ("DCR", "CRD"):
        raise Unsupported(f"DepthToSpace with mode {mode!r}")
    return [x], {"block": int(blocksize), "order": mode}


def _onnx_space_to_depth(x: Any, *, blocksize: int, **rest: Any) -> _Normalized:
    return [x], {"block": int(blocksize), "order": "DCR"}


@hookimpl
def gmn_register(registry: Registrar) -> None:
    registry.add_edge_type("rearrange")
    registry.add_rule("depth_to_space", lower_depth_to_space, inputs=("x",), attributes=("block", "order"))
    registry.add_rule("space_to_depth", lower_space_to_depth, inputs=("x",), attributes=("block", "order"))
    registry.map_aten("aten.pixel_shuffle.default", "depth_to_space", _torch("pixel_shuffle"))
    registry.map_aten("aten.pixel_unshuffle.default", "space_to_depth", _torch("pixel_unshuffle"))
    registry.map_onnx("DepthToSpace", "depth_to_space", _onnx_depth_to_space)
    registry.map_onnx("SpaceToDepth", "space_to_depth", _onnx_space_to_depth)
