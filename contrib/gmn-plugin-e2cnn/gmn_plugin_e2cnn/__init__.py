"""gmn-compiler plugin for e2cnn's steerable convolution ``R2Conv``.

An ``R2Conv`` stores free parameters ``weights`` (``theta``, one vector) and expands them into
a filter over a fixed steerable basis: ``filter = sum_k theta_k B_k``; ``bias`` (one entry per
trivial component of the output fields) is spread over channels by the fixed ``bias_expansion``.
The graph has **one edge per free parameter**, so decompiling writes ``theta`` and any edit
gives an equivariant layer again:

- every *field* of the input and output field types is one node; its channels are positions
  ``0..size-1`` of that node (so automorphisms move whole fields, never a channel of a field
  on its own);
- weight ``theta_k`` is an edge ``in field -> out field`` of type ``e2cnn_r2conv`` whose
  ``kernel0`` is the id of its basis element within the layer (the pair of representation
  types and the element's index in that pair's basis: parameters of different pairs never
  share an id); bias entry ``j`` is an edge ``bias node -> out field`` (``e2cnn_r2conv_bias``);
- a ``signature`` node carries a code of the layer's window (stride, padding, dilation) and of
  the content of its basis buffers (the sampled basis depends on kernel size, rings, sigma,
  frequency cutoff): layers that differ only there are told apart;
- fields of the same representation type in the output are declared interchangeable (the
  completeness oracle checks it).

Eval mode: ``R2Conv.eval()`` caches the expanded ``filter``; the rule reads ``weights`` and
ignores the cache, so the graph is that of the free parameters. After writing edited weights
back, call ``model.train(); model.eval()`` to rebuild the cache (the oracles do).

Only the torch frontend, compiling an ``nn.Module`` (the field types are read off the module
object): an exported program or an ONNX file holds no field types and is refused clearly.
"""

from __future__ import annotations

from typing import Any

import torch

from gmn_compiler.rules import LoweringContext, Op, ParamRef, Registrar, Value, hookimpl, layout as L, signature_code

R2CONV = "e2cnn.nn.modules.r2_conv.r2convolution.R2Conv"
CACHES = ("filter", "expanded_bias")  # derived in eval mode, not free parameters


def r2conv_attrs(module: Any) -> dict:
    """Plain data read off an ``R2Conv``: field sizes of both types and, per free parameter,
    its input field, output field and basis-element id; the output field of each bias entry."""
    expansion = module.basisexpansion
    info = list(expansion.get_basis_info())
    if len(info) != module.weights.numel():
        raise ValueError(f"R2Conv basis info lists {len(info)} elements for {module.weights.numel()} weights")
    keys: dict[tuple, int] = {}
    basis = []
    starts = {pair: start for pair, (start, _) in expansion._weights_ranges.items()}
    dims = {pair: expansion._weights_ranges[pair][1] - start for pair, start in starts.items()}
    for k, d in enumerate(info):
        pair = (d["in_repr"], d["out_repr"])
        block = getattr(expansion, f"block_expansion_{pair}").dimension()
        if not starts[pair] <= k < starts[pair] + dims[pair]:
            raise ValueError(f"R2Conv weight {k} lies outside the range of its representation pair {pair}")
        basis.append(keys.setdefault((pair, (k - starts[pair]) % block), len(keys)))
    out_sizes = tuple(r.size for r in module.out_type.representations)
    bias_out, bias_problem = _bias_fields(module, out_sizes)
    return {
        "in_sizes": tuple(r.size for r in module.in_type.representations),
        "out_sizes": out_sizes,
        "out_reprs": tuple(r.name for r in module.out_type.representations),
        "weight_in": torch.tensor([d["in_field_position"] for d in info], dtype=torch.long),
        "weight_out": torch.tensor([d["out_field_position"] for d in info], dtype=torch.long),
        "weight_basis": torch.tensor(basis, dtype=torch.long),
        "bias_out": torch.tensor(bias_out, dtype=torch.long),
        "bias_problem": bias_problem,
    }


def _bias_fields(module: Any, out_sizes: tuple[int, ...]) -> tuple[list[int], str | None]:
    """The output field of each bias entry, read off ``bias_expansion`` (channels x entries),
    and None; or ``([], reason)`` when an entry reaches channels of several fields (then
    permuting fields would not be a symmetry: not e2cnn's own expansion)."""
    if module.bias is None:
        return [], None
    field_of_channel = torch.repeat_interleave(torch.arange(len(out_sizes)), torch.tensor(out_sizes))
    fields = []
    for j in range(module.bias.numel()):
        touched = torch.unique(field_of_channel[module.bias_expansion[:, j] != 0])
        if touched.numel() != 1:
            return [], (f"bias entry {j} is spread over {touched.numel()} output fields by bias_expansion "
                        "(e2cnn puts each entry inside one field)")
        fields.append(int(touched[0]))
    return fields, None


def _input_fields(ctx: LoweringContext, x: Value, sizes: tuple[int, ...]) -> torch.Tensor:
    """One node per input field: a field's channels must be one node at positions 0..size-1
    (or a single channel with no position); else the layer is refused."""
    try:
        ids, pos = L.axis_entries(ctx.require_layout(x), x.shape, 1)
    except ValueError as exc:
        raise ctx.error(f"R2Conv input {x}: {exc}") from None
    try:
        return L.fields(ids, pos, sizes)
    except ValueError as exc:
        raise ctx.error(f"R2Conv input {x} does not match its field type (field sizes {list(sizes)}): {exc}; "
                        "only fields made by an R2Conv, or single-channel fields, are supported") from None


def _basis_signature(op: Op) -> tuple:
    """The layer's window (constant arguments of its conv call) and its basis buffers' content."""
    window = tuple(args for target, args in op.attrs.get("inner", ()) if "conv" in target)
    buffers = tuple(sorted((name, L.content_digest(ref.tensor)) for name, ref in op.attrs["params"].items()
                           if ref.kind == "buffer" and name not in CACHES))
    return ("e2cnn.R2Conv",) + window + buffers


def lower_r2conv(ctx: LoweringContext, op: Op) -> None:
    """An ``R2Conv`` call (see the module docstring)."""
    attrs = op.attrs.get("module_attrs")
    if attrs is None:
        raise ctx.error("R2Conv needs its field types, which only the module object has: compile the "
                        "nn.Module itself (not an exported program)")
    if len(op.inputs) != 1:
        raise ctx.error(f"R2Conv called with {len(op.inputs)} activation inputs; expected one")
    weights: ParamRef | None = op.attrs["params"].get("weights")
    bias: ParamRef | None = op.attrs["params"].get("bias")
    if weights is None:
        raise ctx.error("R2Conv has no 'weights' parameter")
    if attrs["bias_problem"]:
        raise ctx.error(f"R2Conv: {attrs['bias_problem']}; this rule encodes e2cnn's own bias expansion only")
    fields_in = _input_fields(ctx, op.inputs[0], attrs["in_sizes"])
    out_sizes = attrs["out_sizes"]
    depth = ctx.depth_of(fields_in) + 1
    out = ctx.add_nodes(len(out_sizes), "neuron", depth)
    count = weights.tensor.numel()
    ctx.add_edges((count,), fields_in[attrs["weight_in"]], out[attrs["weight_out"]], "e2cnn_r2conv",
                  param=weights, kernel=(attrs["weight_basis"],))
    if bias is not None:
        ctx.add_edges((bias.tensor.numel(),), ctx.add_nodes(1, "bias", depth), out[attrs["bias_out"]],
                      "e2cnn_r2conv_bias", param=bias)
    signature = ctx.add_nodes(1, "signature", depth)
    ctx.add_edges((len(out_sizes),), signature, out, "signature", value=signature_code(_basis_signature(op)))
    for name in sorted(set(attrs["out_reprs"])):
        same = torch.tensor([f for f, r in enumerate(attrs["out_reprs"]) if r == name], dtype=torch.long)
        if same.numel() > 1:
            ctx.declare_symmetry(out[same], f"{name} fields of R2Conv")
    channel_field = torch.repeat_interleave(torch.arange(len(out_sizes)), torch.tensor(out_sizes))
    channel_pos = torch.cat([torch.arange(s) for s in out_sizes])
    shape = [1] * len(op.output.shape)
    shape[1] = int(channel_field.numel())
    ctx.set_layout(op.output, L.Layout(out[channel_field].view(shape), channel_pos.view(shape)))


@hookimpl
def gmn_register(registry: Registrar) -> None:
    registry.add_edge_type("e2cnn_r2conv")
    registry.add_edge_type("e2cnn_r2conv_bias")
    registry.add_leaf_module(R2CONV, "e2cnn_r2conv", lower_r2conv, module_attrs=r2conv_attrs,
                             inputs=("x",), attributes=(), input_axis=1)
