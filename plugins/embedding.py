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
with dimension).
"""

from __future__ import annotations

from typing import Any

import torch

from gmn_compiler.rules import LoweringContext, Op, ParamRef, Registrar, hookimpl, layout as L



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


def _embedding(weight: Any, indices: Any, padding_idx: int = -1, scale_grad_by_freq: bool = False,
               sparse: bool = False) -> tuple[list[Any], dict[str, Any]]:
    return [weight, indices], {"padding_idx": padding_idx}


@hookimpl
def gmn_register(registry: Registrar) -> None:
    registry.add_rule("embedding", lower_embedding, inputs=("weight", "indices"), attributes=("padding_idx",))
    registry.map_aten("aten.embedding.default", "embedding", _embedding)
