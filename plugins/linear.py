"""Linear layers: ``nn.Linear``, ``F.linear``, ``x @ W`` / ``W @ x`` with a parameter, addmm,
``bmm`` with a parameter of batch size 1 (as ``einsum`` is traced).

A linear layer creates one node per output feature and one edge per weight ``W[o, i]`` from
the node of input entry ``i`` to output node ``o``; the bias becomes one bias node per layer
with an edge to every output node. If the contracted axis merges free positions (a conv
feature map flattened C×H×W), each entry's position goes into the edge's ``spatial`` column.
"""

from __future__ import annotations

from typing import Any

import torch

from gmn_compiler.rules import LoweringContext, Op, ParamRef, Registrar, Unsupported, Value, hookimpl, layout as L

# what a normalizer returns: the kind's canonical inputs and attrs
_Normalized = tuple[list[Any], dict[str, Any]]



def lower_linear(ctx: LoweringContext, op: Op) -> None:
    """inputs ``[x, weight [out, in], bias [out] | None]``; attrs ``axis`` (contracted axis of
    ``x``, default -1; the output has ``out`` entries on that axis)."""
    x, weight = op.inputs[0], op.inputs[1]
    bias = op.inputs[2] if len(op.inputs) > 2 else None
    if not isinstance(weight, ParamRef) or weight.tensor.dim() != 2:
        raise ctx.error("linear needs a 2-D parameter as its weight")
    if bias is not None and not isinstance(bias, ParamRef):
        raise ctx.error("linear bias must be a parameter")
    axis = op.attrs.get("axis", -1)
    layout = ctx.require_layout(x, constant_axis=axis)
    if any(a != axis % len(x.shape) for a in L.align(layout, len(x.shape)).neuron_axes()):
        _lower_copies(ctx, op, layout, weight, bias, axis % len(x.shape))
        return
    try:
        ids, pos = L.axis_entries(layout, x.shape, axis)
    except ValueError as exc:
        raise ctx.error(f"cannot contract axis {axis} of {x}: {exc}") from None
    out_features, in_features = weight.shape
    depth = ctx.depth_of(ids) + 1
    out_ids = ctx.add_nodes(out_features, "neuron", depth)
    ctx.add_edges((out_features, in_features), ids.view(1, in_features),
                      out_ids.view(out_features, 1), "linear", param=weight,
                      spatial=None if pos is None else pos.view(1, in_features))
    ctx.attach_weight_norm_gain(weight, out_ids, 0, depth)
    if bias is not None:
        bias_node = ctx.add_nodes(1, "bias", depth)
        ctx.add_edges((out_features,), bias_node, out_ids, "linear_bias",
                          param=bias.apply(lambda t: t.reshape(out_features)))
    ctx.declare_symmetry(out_ids, "hidden units of linear")
    ctx.set_layout(op.output, L.for_axis(out_ids, len(op.output.shape), axis))


def _lower_copies(ctx: LoweringContext, op: Op, layout: L.Layout, weight: ParamRef, bias: ParamRef | None,
                  axis: int) -> None:
    """A linear layer applied along ``axis`` while other axes carry neurons: MLP-Mixer's token
    mixing (``x.transpose(1, 2)`` through a linear over the tokens, the channels kept) and the
    linear after it. Each index ``n`` of the other neuron axes gets its own copy of the layer
    with the same weights: ``out[n, o] = sum_i W[o, i] x[n, i]``, reading ``x[n]``'s node at
    each position ``i`` of a free axis (``spatial`` = ``i``) or its node ``i`` of a neuron
    axis. The copies share the parameter (the builder ties their uses), and their hidden
    units are tied one to one: hidden unit ``o`` moves in every copy alike."""
    ndim = len(op.inputs[0].shape)
    if layout.pos is not None:
        raise ctx.error("a linear layer along one axis of a value whose other axes carry merged "
                        "positions is not supported")
    ids = L.align(layout, ndim).ids.movedim(axis, -1)
    batch = tuple(ids.shape[:-1])
    rows = ids.reshape(-1, ids.shape[-1])
    out_features, in_features = weight.shape
    free = rows.shape[1] == 1 and in_features > 1
    spatial = torch.arange(in_features).view(1, in_features) if free else None
    depth = ctx.depth_of(rows) + 1
    out_ids = ctx.add_nodes(rows.shape[0] * out_features, "neuron", depth).view(rows.shape[0], out_features)
    biases = None
    if bias is not None:
        biases = (ctx.add_nodes(1, "bias", depth), bias.apply(lambda t: t.reshape(out_features)))
    for n, row in enumerate(rows):
        ctx.add_edges((out_features, in_features), row.view(1, -1), out_ids[n].view(out_features, 1), "linear",
                      param=weight, spatial=spatial)
        ctx.attach_weight_norm_gain(weight, out_ids[n], 0, depth)
        if biases is not None:
            ctx.add_edges((out_features,), biases[0], out_ids[n], "linear_bias", param=biases[1])
        if n:
            ctx.tie_units(out_ids[0], out_ids[n])
    ctx.declare_symmetry(out_ids[0], "hidden units of linear (one copy per index of the other neuron axes)")
    ctx.set_layout(op.output, L.Layout(out_ids.view(batch + (out_features,)).movedim(-1, axis)))


def _linear(x: Any, weight: Any, bias: Any = None) -> _Normalized:
    return [x, weight, bias], {}


def _matmul(a: Any, b: Any) -> _Normalized:
    if isinstance(b, ParamRef) and isinstance(a, Value) and b.tensor.dim() == 2:
        return [a, b.apply(lambda t: t.t()), None], {}
    if isinstance(a, ParamRef) and isinstance(b, Value) and a.tensor.dim() == 2:
        return [b, a, None], {"axis": -2 if len(b.shape) >= 2 else -1}
    if isinstance(b, ParamRef) and isinstance(a, Value) and b.tensor.dim() == 3 == len(a.shape) and b.shape[0] > 1:
        return [a, b, None], {"batched_weight": True}  # one weight per batch index
    return [a, b], {"between_activations": True}


def _bmm(a: Any, b: Any) -> _Normalized:
    """``bmm`` with a parameter whose batch axis has one entry (einsum traces ``x @ W`` so)
    is a linear layer; between activations, a contraction."""
    a, b = (t.apply(lambda v: v[0]) if isinstance(t, ParamRef) and t.tensor.dim() == 3 and t.shape[0] == 1
            else t for t in (a, b))
    return _matmul(a, b)


def _addmm(bias: Any, a: Any, b: Any, beta: float = 1, alpha: float = 1) -> _Normalized:
    if beta != 1 or alpha != 1:
        raise Unsupported("addmm with alpha/beta")
    inputs, attrs = _matmul(a, b)
    if len(inputs) == 3:
        inputs[2] = bias
    return inputs, attrs


def lower_matmul(ctx: LoweringContext, op: Op) -> None:
    """With a parameter: a linear layer. Between two activations: a contraction, lowered by
    the rule registered for kind ``contract`` (built-in: plugins/attention.py)."""
    inputs = op.inputs
    if op.attrs.get("batched_weight"):
        _lower_batched_weight(ctx, op)
        return
    if len(inputs) == 3 and isinstance(inputs[1], ParamRef):
        lower_linear(ctx, op)
        return
    weights = [(side, v) for side, v in zip(("left", "right"), inputs[:2]) if isinstance(v, ParamRef)]
    if weights:  # e.g. an exporter's folded weight tables
        side, weight = weights[0]
        raise ctx.error(f"matmul with a weight that is not a linear layer's (a {len(weight.shape)}-D weight on "
                        f"the {side}) is not supported; write a plugin rule for it")
    ctx.lower_as("contract", op)


def _onnx_gemm(a: Any, b: Any, c: Any = None, alpha: float = 1.0, beta: float = 1.0, transA: int = 0,
               transB: int = 0) -> _Normalized:
    if transA or alpha != 1.0 or (c is not None and beta != 1.0) or not isinstance(b, ParamRef):
        raise Unsupported("Gemm with transA, alpha != 1, beta != 1 or an activation as B")
    if c is not None and not isinstance(c, ParamRef):
        raise Unsupported("Gemm with a non-initializer C")
    weight = b if transB else b.apply(lambda t: t.t())
    return [a, weight, c], {}


def _lower_batched_weight(ctx: LoweringContext, op: Op) -> None:
    """``x [G, N, I] @ W [G, I, O]`` with a parameter ``W``: a linear layer per index ``g``.

    Where ``x``'s first axis carries neurons (ConvBERT's grouped linear layer: the groups),
    group ``g``'s output units read group ``g``'s input units only (edges inside each group, as
    a grouped convolution's); input units then move only within their group. Where it is free
    (positions: MViT-v2's decomposed relative positions, a table of vectors per query row), the
    weight is a table that the activation meets entry by entry: it is read as a tensor (kind
    ``param_value``) and contracted like an activation (kind ``contract``)."""
    x, weight = op.inputs[0], op.inputs[1]
    layout = L.align(ctx.require_layout(x), 3)
    groups, inputs, outputs = weight.shape
    ids = layout.ids
    if ids.shape[0] == 1:
        table = ctx.new_value(tuple(weight.shape), weight.tensor.dtype, f"{weight.name}.table")
        ctx.lower_as("param_value", Op("param_value", [weight], [table], {"axis": 1}, op.location, op.target))
        ctx.lower_as("contract", Op("matmul", [x, table], op.outputs, {"between_activations": True},
                                    op.location, op.target))
        return
    if layout.pos is not None or ids.shape[1] > 1 or ids.shape[2] != inputs:
        raise ctx.error("a grouped linear layer needs an input whose group and contracted axes alone carry neurons")
    rows = ids[:, 0, :]
    out_ids = ctx.add_nodes(groups * outputs, "neuron", ctx.depth_of(ids) + 1).view(groups, outputs)
    ctx.add_edges((groups, inputs, outputs), rows.view(groups, inputs, 1), out_ids.view(groups, 1, outputs),
                  "linear", param=weight)
    ctx.declare_symmetry(out_ids.reshape(-1), "hidden units of a grouped linear layer (within each group)",
                         groups=groups)
    ctx.refine_symmetry(rows.reshape(-1), groups, f"grouped linear at {op.location}", permute_groups=False)
    ctx.set_layout(op.output, L.Layout(out_ids.view(groups, 1, outputs)))


def _contracted_axis(op: Op) -> int:
    """The axis of ``x`` a linear layer contracts: its neurons."""
    axis: int = op.attrs.get("axis", -1)
    return axis


@hookimpl
def gmn_register(registry: Registrar) -> None:
    registry.add_rule("linear", lower_linear, inputs=("x", "weight", "bias"), attributes=("axis",),
                      input_axis=_contracted_axis, weight_norm=True)
    registry.add_rule("matmul", lower_matmul, inputs=("a", "b", "bias"), attributes=("axis", "between_activations", "batched_weight"),
                      input_axis=lambda op: _contracted_axis(op) if len(op.inputs) == 3 else None)
    registry.map_aten("aten.linear.default", "linear", _linear)
    for target in ("aten.matmul.default", "aten.mm.default"):
        registry.map_aten(target, "matmul", _matmul)
    registry.map_aten("aten.addmm.default", "matmul", _addmm)
    registry.map_aten("aten.bmm.default", "matmul", _bmm)
    registry.map_onnx("Gemm", "linear", _onnx_gemm)
    registry.map_onnx("MatMul", "matmul", _matmul)
