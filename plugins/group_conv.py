"""Group-equivariant layers with parameter sharing: the C4 reference layers of
:mod:`gmn_models.group_layers` (lifting conv, group conv, group max-pooling).

Such a layer's filter is ``sum_k theta_k B_k`` over a fixed basis; only ``theta`` is free. The
graph therefore has **one edge per free parameter**, never one per expanded filter entry,
and decompiling writes ``theta``:

- a C4 feature map (``4 * C`` channels, channel ``4c + r`` = field ``c`` at rotation ``r``)
  has one node per *field*; its four rotation entries are positions ``r`` of that node
  (a layout with ``pos``), so an automorphism moves a field's four channels together — the
  true symmetry (permuting fields), never a rotation index on its own (that would be a
  rotation of the input, not a symmetry of the weights);
- ``C4LiftingConv``: edge ``theta[o, i, u, v]`` from input channel ``i`` to field ``o``,
  type ``gconv_lift``, kernel position ``(u, v)`` in ``kernel0, kernel1``;
- ``C4GroupConv``: edge ``theta[o, i, s, u, v]`` from field ``i`` to field ``o``, type
  ``gconv``, the basis element ``(s, u, v)`` (relative rotation, kernel position) in
  ``kernel0..2``;
- biases (one per field) through a ``bias`` node, types ``gconv_lift_bias`` / ``gconv_bias``;
  every layer has a ``signature`` node whose edges carry a code of its group and window
  (padding, stride), so layers differing only there are told apart;
- ``C4MaxPool``: one new node per field, marked ``group_max_pool``, fed by a ``pool`` edge.

The edge types and the activation are registered through the open vocabulary, exactly as a
third-party plugin registers its names. The layers are leaf modules (the filter expansion
inside is not traced), so this rule family exists for the torch frontend only: an ONNX
export holds the expanded filter (or the ops computing it), not the layer.
"""

from __future__ import annotations

from collections.abc import Hashable

import torch

from gmn_compiler.rules import LoweringContext, Op, ParamRef, Registrar, Value, hookimpl, layout as L, signature_code

ROTATIONS = 4
_LAYERS = "gmn_models.group_layers."


def _param(op: Op, name: str) -> ParamRef | None:
    ref: ParamRef | None = op.attrs["params"].get(name)
    return ref


def _weight(ctx: LoweringContext, op: Op) -> ParamRef:
    ref = _param(op, "weight")
    if ref is None:
        raise ctx.error(f"{op.attrs['module_type']} has no weight parameter")
    return ref


def _window(op: Op) -> tuple[tuple[Hashable, ...], ...]:
    """The constant arguments of the convolution inside the layer (stride, padding, ...)."""
    return tuple(args for target, args in op.attrs.get("inner", ()) if "convolution" in target or "conv2d" in target)


def _single_input(ctx: LoweringContext, op: Op) -> Value:
    values = op.inputs
    if len(values) != 1:
        raise ctx.error(f"{op.attrs['module_type']} called with {len(values)} activation inputs; expected one")
    value: Value = values[0]  # a leaf module's inputs are its activation operands
    return value


def _fields(ctx: LoweringContext, x: Value) -> torch.Tensor:
    """The field nodes of a C4 feature map ``x`` (``[B, 4C, H, W]``): its channel entries must
    be ``C`` nodes seen at positions ``0..3`` each, in order; else the layer is refused."""
    try:
        ids, pos = L.axis_entries(ctx.require_layout(x), x.shape, 1)
    except ValueError as exc:
        raise ctx.error(f"C4 layer input {x}: {exc}") from None
    if pos is None or ids.numel() % ROTATIONS:
        raise ctx.error(f"C4 layer input {x} is not a C4 feature map (its channels are not fields of "
                        f"{ROTATIONS} rotations made by a C4 layer)")
    ids, pos = ids.view(-1, ROTATIONS), pos.view(-1, ROTATIONS)
    if not bool((ids == ids[:, :1]).all()) or not bool((pos == torch.arange(ROTATIONS)).all()):
        raise ctx.error(f"C4 layer input {x}: its channels are rearranged rotation entries of fields; "
                        "only whole fields in rotation order are supported")
    return ids[:, 0]


def _emit(ctx: LoweringContext, op: Op, src: torch.Tensor, weight: ParamRef, etype: str,
          kernel: tuple[torch.Tensor, ...], what: str) -> None:
    """Output fields, the weight's edges, bias and signature; the output layout."""
    c_out = weight.shape[0]
    depth = ctx.depth_of(src) + 1
    out = ctx.add_nodes(c_out, "neuron", depth)
    view = (c_out,) + (1,) * (weight.tensor.dim() - 1)
    ctx.add_edges(tuple(weight.shape), src, out.view(view), etype, param=weight, kernel=kernel)
    bias = _param(op, "bias")
    if bias is not None:
        ctx.add_edges((c_out,), ctx.add_nodes(1, "bias", depth), out, etype + "_bias", param=bias)
    signature = ctx.add_nodes(1, "signature", depth)
    ctx.add_edges((c_out,), signature, out, "signature", value=signature_code(("C4", etype) + _window(op)))
    ctx.declare_symmetry(out, f"fields of {what}")
    shape = [1] * len(op.output.shape)
    shape[1] = c_out * ROTATIONS
    ctx.set_layout(op.output, L.Layout(out.repeat_interleave(ROTATIONS).view(shape),
                                       torch.arange(ROTATIONS).repeat(c_out).view(shape)))


def _kernel_index(weight: ParamRef, dims: range) -> tuple[torch.Tensor, ...]:
    ndim = weight.tensor.dim()
    index = []
    for d in dims:
        view = [1] * ndim
        view[d] = weight.shape[d]
        index.append(torch.arange(weight.shape[d]).view(view))
    return tuple(index)


def lower_lift(ctx: LoweringContext, op: Op) -> None:
    """``C4LiftingConv``: ``theta [C_out, C_in, k, k]``, input a plain image."""
    x, weight = _single_input(ctx, op), _weight(ctx, op)
    try:
        ids, pos = L.axis_entries(ctx.require_layout(x), x.shape, 1)
    except ValueError as exc:
        raise ctx.error(f"C4 lifting conv input {x}: {exc}") from None
    if pos is not None:
        raise ctx.error(f"C4 lifting conv input {x} merges free positions into its channels; expected "
                        "an image with one node per channel")
    if ids.numel() != weight.shape[1]:
        raise ctx.error(f"input has {ids.numel()} channels, weight expects {weight.shape[1]}")
    _emit(ctx, op, ids.view(1, -1, 1, 1), weight, "gconv_lift", _kernel_index(weight, range(2, 4)),
          "C4 lifting conv")


def lower_group_conv(ctx: LoweringContext, op: Op) -> None:
    """``C4GroupConv``: ``theta [C_out, C_in, 4, k, k]``, input a C4 feature map."""
    x, weight = _single_input(ctx, op), _weight(ctx, op)
    fields = _fields(ctx, x)
    if fields.numel() != weight.shape[1] or weight.shape[2] != ROTATIONS:
        raise ctx.error(f"input has {fields.numel()} fields, weight {list(weight.shape)} expects "
                        f"{weight.shape[1]} fields of {ROTATIONS} rotations")
    _emit(ctx, op, fields.view(1, -1, 1, 1, 1), weight, "gconv", _kernel_index(weight, range(2, 5)),
          "C4 group conv")


def lower_group_pool(ctx: LoweringContext, op: Op) -> None:
    """``C4MaxPool``: one new node per field (the maximum is symmetric in the rotations)."""
    fields = _fields(ctx, _single_input(ctx, op))
    new = ctx.add_nodes(fields.numel(), "neuron", ctx.depth_of(fields) + 1, "group_max_pool")
    ctx.add_edges((fields.numel(),), fields, new, "pool")
    ctx.note_copies(new, fields)
    shape = [1] * len(op.output.shape)
    shape[1] = fields.numel()
    ctx.set_layout(op.output, L.Layout(new.view(shape)))


@hookimpl
def gmn_register(registry: Registrar) -> None:
    for name in ("gconv_lift", "gconv_lift_bias", "gconv", "gconv_bias"):
        registry.add_edge_type(name)
    registry.add_activation("group_max_pool")
    registry.add_leaf_module(_LAYERS + "C4LiftingConv", "c4_lifting_conv", lower_lift)
    registry.add_leaf_module(_LAYERS + "C4GroupConv", "c4_group_conv", lower_group_conv)
    registry.add_leaf_module(_LAYERS + "C4MaxPool", "c4_max_pool", lower_group_pool)
