"""Group-equivariant layers with parameter sharing: the C4 and D4 reference layers of
:mod:`gmn_models.group_layers` (lifting conv, group conv, group max-pooling).

Such a layer's filter is ``sum_k theta_k B_k`` over a fixed basis; only ``theta`` is free. The
graph therefore has **one edge per free parameter**, never one per expanded filter entry,
and decompiling writes ``theta``:

- a feature map of a group ``G`` (C4: 4 rotations; D4: those and 4 reflections;
  ``|G| * C`` channels, channel ``|G| c + g`` = field ``c`` at group element ``g``) has one
  node per *field*; its ``|G|`` entries are positions ``g`` of that node (a layout with
  ``pos``), so an automorphism moves a field's channels together — the true symmetry
  (permuting fields), never a group element on its own (that would be a rotation or
  reflection of the input, not a symmetry of the weights);
- lifting convs: edge ``theta[o, i, u, v]`` from input channel ``i`` to field ``o``, type
  ``gconv_lift``, kernel position ``(u, v)`` in ``kernel0, kernel1``;
- group convs: edge ``theta[o, i, s, u, v]`` from field ``i`` to field ``o``, type ``gconv``,
  the basis element ``(s, u, v)`` (relative group element, kernel position) in ``kernel0..2``.
  Element indices agree across groups: C4's rotations are D4's elements 0..3, the
  reflections 4..7;
- biases (one per field) through a ``bias`` node, types ``gconv_lift_bias`` / ``gconv_bias``;
  every layer has a ``signature`` node whose edges carry a code of its group and window
  (padding, stride), so layers differing only there (or a C4 and a D4 layer) are told apart;
- group max-pooling: one new node per field, marked ``group_max_pool``, fed by a ``pool`` edge.

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
GROUPS = {"C4": ROTATIONS, "D4": 2 * ROTATIONS}
"""The groups whose layers this plugin lowers, with their orders (entries per field)."""
_MODULES = "gmn_models.group_layers."
_LAYERS = ("lifting_conv", "group_conv", "max_pool")
_GROUP_OF_KIND = {f"{group.lower()}_{layer}": group for group in GROUPS for layer in _LAYERS}


def _group(op: Op) -> tuple[str, int]:
    """The group (name, order) of a layer op, from its kind (``d4_group_conv`` -> D4, 8)."""
    name = _GROUP_OF_KIND[op.kind]
    return name, GROUPS[name]


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


def _fields(ctx: LoweringContext, op: Op, x: Value) -> torch.Tensor:
    """The field nodes of a feature map ``x`` (``[B, |G| C, H, W]``) of the op's group: its
    channel entries must be ``C`` nodes seen at positions ``0..|G|-1`` each, in order; else the
    layer is refused."""
    name, order = _group(op)
    try:
        ids, pos = L.axis_entries(ctx.require_layout(x), x.shape, 1)
    except ValueError as exc:
        raise ctx.error(f"{name} layer input {x}: {exc}") from None
    try:
        return L.fields(ids, pos, (order,) * (ids.numel() // order))
    except ValueError as exc:
        raise ctx.error(f"{name} layer input {x} is not a {name} feature map (whole fields of {order} "
                        f"group elements in order, made by a {name} layer): {exc}") from None


def _emit(ctx: LoweringContext, op: Op, src: torch.Tensor, weight: ParamRef, etype: str,
          kernel: tuple[torch.Tensor, ...], what: str) -> None:
    """Output fields, the weight's edges, bias and signature; the output layout."""
    name, order = _group(op)
    c_out = weight.shape[0]
    depth = ctx.depth_of(src) + 1
    out = ctx.add_nodes(c_out, "neuron", depth)
    view = (c_out,) + (1,) * (weight.tensor.dim() - 1)
    ctx.add_edges(tuple(weight.shape), src, out.view(view), etype, param=weight, kernel=kernel)
    bias = _param(op, "bias")
    if bias is not None:
        ctx.add_edges((c_out,), ctx.add_nodes(1, "bias", depth), out, etype + "_bias", param=bias)
    signature = ctx.add_nodes(1, "signature", depth)
    ctx.add_edges((c_out,), signature, out, "signature", value=signature_code((name, etype) + _window(op)))
    ctx.declare_symmetry(out, f"fields of {name} {what}")
    shape = [1] * len(op.output.shape)
    shape[1] = c_out * order
    ctx.set_layout(op.output, L.Layout(out.repeat_interleave(order).view(shape),
                                       torch.arange(order).repeat(c_out).view(shape)))


def _kernel_index(weight: ParamRef, dims: range) -> tuple[torch.Tensor, ...]:
    ndim = weight.tensor.dim()
    index = []
    for d in dims:
        view = [1] * ndim
        view[d] = weight.shape[d]
        index.append(torch.arange(weight.shape[d]).view(view))
    return tuple(index)


def lower_lift(ctx: LoweringContext, op: Op) -> None:
    """A lifting conv: ``theta [C_out, C_in, k, k]``, input a plain image."""
    x, weight = _single_input(ctx, op), _weight(ctx, op)
    name = _group(op)[0]
    try:
        ids, pos = L.axis_entries(ctx.require_layout(x), x.shape, 1)
    except ValueError as exc:
        raise ctx.error(f"{name} lifting conv input {x}: {exc}") from None
    if pos is not None:
        raise ctx.error(f"{name} lifting conv input {x} merges free positions into its channels; expected "
                        "an image with one node per channel")
    if ids.numel() != weight.shape[1]:
        raise ctx.error(f"input has {ids.numel()} channels, weight expects {weight.shape[1]}")
    _emit(ctx, op, ids.view(1, -1, 1, 1), weight, "gconv_lift", _kernel_index(weight, range(2, 4)), "lifting conv")


def lower_group_conv(ctx: LoweringContext, op: Op) -> None:
    """A group conv: ``theta [C_out, C_in, |G|, k, k]``, input a feature map of the same group."""
    x, weight = _single_input(ctx, op), _weight(ctx, op)
    name, order = _group(op)
    fields = _fields(ctx, op, x)
    if fields.numel() != weight.shape[1] or weight.shape[2] != order:
        raise ctx.error(f"input has {fields.numel()} fields, weight {list(weight.shape)} expects "
                        f"{weight.shape[1]} fields of {order} {name} elements")
    _emit(ctx, op, fields.view(1, -1, 1, 1, 1), weight, "gconv", _kernel_index(weight, range(2, 5)), "group conv")


def lower_group_pool(ctx: LoweringContext, op: Op) -> None:
    """Group max-pooling: one new node per field (the maximum is symmetric in the group elements)."""
    fields = _fields(ctx, op, _single_input(ctx, op))
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
    for group in GROUPS:
        kind = group.lower()
        # leaf ops carry only the generic attributes (params, inner calls)
        registry.add_leaf_module(f"{_MODULES}{group}LiftingConv", f"{kind}_lifting_conv", lower_lift,
                                 inputs=("x",), attributes=(), input_axis=1)
        registry.add_leaf_module(f"{_MODULES}{group}GroupConv", f"{kind}_group_conv", lower_group_conv,
                                 inputs=("x",), attributes=(), input_axis=1)
        registry.add_leaf_module(f"{_MODULES}{group}MaxPool", f"{kind}_max_pool", lower_group_pool,
                                 inputs=("x",), attributes=())
