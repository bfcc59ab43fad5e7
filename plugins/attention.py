"""Contractions between two activations: ``q @ k.T``, ``attn @ v``, and
``scaled_dot_product_attention`` (DESIGN §3).

- **Contracting a neuron axis** (``q @ k.transpose(-2, -1)``: the head dims): entry ``j`` of
  the left operand meets entry ``j`` of the right one, so each such pair gets a directed
  ``contract`` edge (q → k, so the two roles stay distinct). The result varies only along
  the batch axes that carry neurons — the heads: one ``head`` node per head, with
  ``head_member`` edges to that head's q and k nodes, so an automorphism can move a whole
  head but never one dimension across heads. Without a head axis there is one head node.
- **Contracting a free axis** (``attn @ v``: the tokens): the result lives on the right
  operand's neurons (v's dims); every head node gets ``head_member`` edges to the output
  nodes of its head.
- ``scaled_dot_product_attention`` is both steps with a softmax between; grouped-query
  attention (fewer K/V heads) maps query head ``h`` to K/V head ``h // (H / H_kv)``.

The graph's automorphisms are then: permute heads (with their K/V head when shared), permute
q/k dims inside a head jointly, permute v dims inside a head.
"""

from __future__ import annotations

import math

import torch

from gmn_compiler import layout as L
from gmn_compiler.ir import Value
from gmn_compiler.registry import hookimpl


def _operand_ids(ctx, value: Value, ndim: int) -> torch.Tensor:
    layout = ctx.require_layout(value)
    if layout.pos is not None:
        raise ctx.error(f"{value} merges free positions into its neurons; cannot contract it")
    return L.align(layout, ndim).ids


def contract_neurons(ctx, a_ids: torch.Tensor, b_ids: torch.Tensor) -> torch.Tensor:
    """``a @ b`` where the contracted axis (a: -1, b: -2) carries neurons in both and the
    other matrix axes are free. Returns the id tensor of the result (head nodes)."""
    if a_ids.shape[-2] != 1 or b_ids.shape[-1] != 1:
        raise ctx.error("contracting two activations whose row/column axes also carry "
                        "neurons is not supported")
    a_k, b_k = a_ids[..., 0, :], b_ids[..., :, 0]
    batch = torch.broadcast_shapes(a_k.shape[:-1], b_k.shape[:-1])
    k = max(a_k.shape[-1], b_k.shape[-1])
    a_k, b_k = a_k.expand(batch + (k,)), b_k.expand(batch + (k,))
    builder = ctx.builder
    depth = builder.depth_of(torch.cat([a_k.reshape(-1), b_k.reshape(-1)])) + 1
    heads = builder.add_nodes(math.prod(batch), "head", depth).view(batch)
    grid = tuple(batch) + (k,)
    builder.add_edges(grid, a_k, b_k, "contract")
    builder.add_edges(grid, heads.unsqueeze(-1), a_k, "head_member")
    builder.add_edges(grid, heads.unsqueeze(-1), b_k, "head_member")
    _declare_head_symmetries(ctx, heads, a_k, b_k)
    return heads.reshape(tuple(batch) + (1, 1))


def _declare_head_symmetries(ctx, heads: torch.Tensor, a_k: torch.Tensor, b_k: torch.Tensor) -> None:
    """The q and k nodes are no longer freely permutable (a projection's "hidden units"
    claim is withdrawn); what holds instead: permute whole heads, and q/k dims inside a head
    (the extension moves k with q)."""
    ctx.withdraw_symmetries(a_k)
    ctx.withdraw_symmetries(b_k)
    if heads.numel() > 1:
        ctx.declare_symmetry(heads.reshape(-1), "attention heads")
    q = a_k.reshape(heads.numel(), -1)
    if torch.unique(q).numel() == q.numel() and q.shape[1] > 1:
        ctx.declare_symmetry(q.reshape(-1), "query/key dims within each head", groups=heads.numel())


def weighted_sum(ctx, weights: torch.Tensor | None, v: Value, v_ids: torch.Tensor, out_ndim: int) -> L.Layout:
    """``weights @ v`` contracting a free axis (tokens): the result lives on v's neurons,
    and each weight node (head) gets membership edges to the output nodes of its slice.
    Where one v node is read by several heads (grouped-query attention), each head gets
    fresh output nodes, fed by ``copy`` edges, since different heads give different sums."""
    if v_ids.shape[-2] != 1:
        raise ctx.error("contracting an axis of v that carries neurons is not supported")
    ctx.withdraw_symmetries(v_ids)
    if weights is None:
        return L.align(ctx.own(v), out_ndim)
    if weights.shape[-1] != 1 or weights.shape[-2] != 1:
        raise ctx.error("attention weights with neurons on their token axes are not supported")
    w, o = weights[..., 0, 0], v_ids[..., 0, :]
    batch = torch.broadcast_shapes(w.shape, o.shape[:-1])
    grid = tuple(batch) + (o.shape[-1],)
    w_full, o_full = w.unsqueeze(-1).expand(grid), o.expand(grid)
    n = ctx.builder.num_nodes + 1
    uniq, inverse = torch.unique((w_full * n + o_full).reshape(-1), return_inverse=True)
    if uniq.numel() == torch.unique(o_full).numel():  # every v node meets one head: reuse
        own = L.align(ctx.own(v), out_ndim).ids
        ctx.builder.add_edges(grid, w.unsqueeze(-1), own[..., 0, :], "head_member")
        per_head = own[..., 0, :].expand(grid).reshape(-1, grid[-1])
        if torch.unique(per_head).numel() == per_head.numel() and grid[-1] > 1:
            ctx.declare_symmetry(per_head.reshape(-1), "value dims within each head",
                                 groups=per_head.shape[0])
        return L.Layout(own)
    heads, sources = uniq // n, uniq % n
    fresh = ctx.builder.add_nodes(uniq.numel(), "neuron", ctx.builder.depth_of(sources) + 1)
    ctx.builder.add_edges((uniq.numel(),), sources, fresh, "copy")
    ctx.builder.add_edges((uniq.numel(),), heads, fresh, "head_member")
    return L.Layout(fresh[inverse].view(grid).unsqueeze(-2))


def lower_contract(ctx, op) -> None:
    """``matmul``/``bmm`` between two activations (inputs ``[a, b]``)."""
    a, b = op.inputs[0], op.inputs[1]
    if len(a.shape) < 2 or len(b.shape) < 2:
        raise ctx.error("matmul of a 1-D activation with another activation is not supported")
    ndim = len(op.output.shape)
    la, lb = ctx.layout(a), ctx.layout(b)
    if la is None and lb is None:
        ctx.set_layout(op.output, None)
        return
    a_ids = _operand_ids(ctx, a, ndim) if la is not None else None
    b_ids = _operand_ids(ctx, b, ndim)
    if a_ids is not None and a_ids.shape[-1] > 1 and b_ids.shape[-2] > 1:
        ctx.set_layout(op.output, L.compress(contract_neurons(ctx, a_ids, b_ids), None))
    elif (a_ids is None or a_ids.shape[-1] == 1) and b_ids.shape[-2] == 1:
        ctx.set_layout(op.output, weighted_sum(ctx, a_ids, b, b_ids, ndim))
    else:
        raise ctx.error("contraction of a neuron axis with a free axis is not supported")


def lower_sdpa(ctx, op) -> None:
    """inputs ``[q, k, v, attn_mask]``; attrs ``enable_gqa``. The result lives on v's nodes."""
    q, k, v = op.inputs[:3]
    ndim = len(q.shape)
    q_ids, k_ids, v_ids = (_operand_ids(ctx, t, ndim) for t in (q, k, v))
    heads_q, heads_kv = q.shape[-3] if ndim >= 3 else 1, k.shape[-3] if ndim >= 3 else 1
    if heads_q != heads_kv:  # grouped-query attention: query head h reads K/V head h // group
        index = torch.arange(heads_q) // (heads_q // heads_kv)
        k_ids = k_ids.index_select(-3, index) if k_ids.shape[-3] > 1 else k_ids
        v_ids = v_ids.index_select(-3, index) if v_ids.shape[-3] > 1 else v_ids
    scores = contract_neurons(ctx, q_ids, k_ids.transpose(-1, -2))
    ctx.builder.set_activation(scores.reshape(-1), "softmax")
    out = weighted_sum(ctx, scores, v, v_ids, ndim)
    ctx.set_layout(op.output, L.compress(out.ids, None))
    for extra in op.outputs[1:]:
        ctx.set_layout(extra, None)


def _sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    return [q, k, v, attn_mask], {"is_causal": is_causal, "scale": scale, "enable_gqa": enable_gqa}


@hookimpl
def gmn_register(registry) -> None:
    registry.add_rule("contract", lower_contract)
    registry.add_rule("sdpa", lower_sdpa)
    registry.map_aten("aten.scaled_dot_product_attention.default", "sdpa", _sdpa)
    registry.map_aten("aten.bmm.default", "contract")
