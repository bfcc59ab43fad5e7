"""Embedding tables.

A lookup with token ids that come from the model's input (``nn.Embedding``, ONNX ``Gather``
on an initializer) is a linear layer from a one-hot vocabulary: one ``token`` node per
vocabulary entry, pinned at its index, and one edge per table entry ``E[v, d]`` into one new
node per embedding dimension. Each integer model input has one pinned ``input`` node, with a
``copy`` edge to every token node of the lookups it feeds, so two tables read by two id
inputs are told apart. A lookup with *constant* indices (learned positional
embeddings indexed by ``arange``) never reaches this rule: the frontend turns it into a view
of the table, which then meets the activations as a parameter operand. An output head tied
to the table (``lm_head.weight = wte.weight``) uses the same parameter twice, so the two
uses are tied like any shared parameter (vocabulary index with vocabulary index, dimension
with dimension). ``nn.EmbeddingBag`` is the same lookup whose dimension nodes are marked with
its reduction over the bag (``sum_pool``, ``avg_pool``, ``max_pool``).

A parameter a model reads whole, as a tensor, with no activation (DeBERTa's relative-position
embeddings normalised and projected by the attention's own q/k layers, learned query tokens)
is the same lookup with every row read (``param_value``): one pinned ``token`` node per row
(every index along the axes other than the neuron axis the consuming op reads), one node per
entry of that axis, one ``embedding`` edge per parameter entry.
"""

from __future__ import annotations

from typing import Any

import torch

from gmn_compiler.rules import LoweringContext, Op, ParamRef, Registrar, Unsupported, hookimpl, layout as L



def lower_embedding(ctx: LoweringContext, op: Op) -> None:
    """inputs ``[weight [V, D], indices]``."""
    weight = op.inputs[0]
    if not isinstance(weight, ParamRef) or weight.tensor.dim() != 2:
        raise ctx.error("embedding lookup needs a 2-D parameter table")
    vocab, dims = weight.shape
    tokens = ctx.add_nodes(vocab, "token", depth=0)
    ctx.pin(tokens, torch.arange(vocab))
    out = ctx.add_nodes(dims, "neuron", depth=1)
    ctx.add_edges((vocab, dims), tokens.view(vocab, 1), out.view(1, dims), "embedding", param=weight)
    for source in ctx.integer_sources(op.inputs[1]):  # which id input the lookup reads
        ctx.add_edges((vocab,), torch.tensor([source]), tokens, "copy")
    ctx.declare_symmetry(out, "embedding dimensions")
    ctx.set_layout(op.output, L.for_axis(out, len(op.output.shape), -1))


def lower_param_value(ctx: LoweringContext, op: Op) -> None:
    """inputs ``[table]`` (a :class:`ParamRef`); attrs ``axis``: the axis of the table that
    carries neurons (the neuron axis of the op that reads it); the output is the table."""
    table = op.inputs[0]
    if not isinstance(table, ParamRef) or table.transform or table.tensor.dim() == 0:
        raise ctx.error("a parameter read as a tensor must be stored as it is used (no transform)")
    ndim = table.tensor.dim()
    axis = op.attrs["axis"] % ndim
    rows_first = table.apply(lambda t: t.movedim(axis, -1).reshape(-1, t.shape[axis]))
    rows, dims = rows_first.shape
    tokens = ctx.add_nodes(rows, "token", depth=0)
    ctx.pin(tokens, torch.arange(rows))
    out = ctx.add_nodes(dims, "neuron", depth=1)
    ctx.add_edges((rows, dims), tokens.view(rows, 1), out.view(1, dims), "embedding", param=rows_first)
    ctx.declare_symmetry(out, "dimensions of a parameter read as a tensor")
    ctx.set_layout(op.output, L.for_axis(out, ndim, axis))


_BAG_MODES = {0: "sum_pool", 1: "avg_pool", 2: "max_pool"}


def lower_embedding_bag(ctx: LoweringContext, op: Op) -> None:
    """``nn.EmbeddingBag``: a lookup (as :func:`lower_embedding`) reduced over each bag; the
    reduction (sum, mean, max) marks the embedding-dimension nodes. inputs ``[weight,
    indices]``; attrs ``mode`` (0 sum, 1 mean, 2 max)."""
    lower_embedding(ctx, Op("embedding", op.inputs[:2], [op.outputs[0]], {}, op.location, op.target))
    out = ctx.require_layout(op.outputs[0]).nodes()
    ctx.set_activation(out, _BAG_MODES[int(op.attrs["mode"])])
    for extra in op.outputs[1:]:  # offset2bag, bag sizes, max indices: integers
        ctx.set_layout(extra, None)


def _embedding_bag(weight: Any, indices: Any, offsets: Any = None, scale_grad_by_freq: bool = False,
                   mode: int = 0, sparse: bool = False, per_sample_weights: Any = None,
                   include_last_offset: bool = False, padding_idx: int | None = None) -> tuple[list[Any], dict[str, Any]]:
    if per_sample_weights is not None or (padding_idx is not None and padding_idx >= 0):
        raise Unsupported("EmbeddingBag with per_sample_weights or padding_idx")
    return [weight, indices], {"mode": mode}


def _embedding(weight: Any, indices: Any, padding_idx: int = -1, scale_grad_by_freq: bool = False,
               sparse: bool = False) -> tuple[list[Any], dict[str, Any]]:
    return [weight, indices], {"padding_idx": padding_idx}


@hookimpl
def gmn_register(registry: Registrar) -> None:
    registry.add_rule("embedding", lower_embedding, inputs=("weight", "indices"), attributes=("padding_idx",))
    registry.map_aten("aten.embedding.default", "embedding", _embedding)
    registry.add_rule("param_value", lower_param_value, inputs=("table",), attributes=("axis",))
    registry.add_rule("embedding_bag", lower_embedding_bag, inputs=("weight", "indices"), attributes=("mode",))
    for overload in ("default", "padding_idx"):
        registry.map_aten(f"aten.embedding_bag.{overload}", "embedding_bag", _embedding_bag)
    registry.map_aten("aten._embedding_bag.default", "embedding_bag", _embedding_bag)
