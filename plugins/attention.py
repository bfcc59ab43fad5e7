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

from collections.abc import Hashable
from typing import Any

import torch

from gmn_compiler.rules import LoweringContext, Op, ParamRef, Registrar, Value, hookimpl, layout as L



def _operand_ids(ctx: LoweringContext, value: Value, ndim: int) -> torch.Tensor:
    """The operand's node ids aligned to ``ndim`` (positions merged into a batch axis, as
    ``q.view(B * H, N, dh)`` makes them, are dropped: heads are told apart by their nodes)."""
    return L.align(ctx.require_layout(value), ndim).ids


def contract_neurons(ctx: LoweringContext, a_ids: torch.Tensor, b_ids: torch.Tensor,
                     sig: tuple[Hashable, ...] | None = None) -> torch.Tensor:
    """``a @ b`` where the contracted axis (a: -1, b: -2) carries neurons in both and the
    other matrix axes are free. One head node per distinct pair of (a row, b row) over the
    batch positions. Returns the result's id tensor (batch shape + (1, 1)). ``sig``: what
    else decides the attention (causal flag, scale, a constant mask); the ``contract`` edges
    carry its code, so two attentions over the same keys that differ only there stay apart."""
    if a_ids.shape[-2] != 1 or b_ids.shape[-1] != 1:
        raise ctx.error("contracting two activations whose row/column axes also carry "
                        "neurons is not supported")
    a_k, b_k = a_ids[..., 0, :], b_ids[..., :, 0]
    # torch.broadcast_shapes is unannotated
    batch = torch.broadcast_shapes(a_k.shape[:-1], b_k.shape[:-1])  # type: ignore[no-untyped-call, unused-ignore]
    k = max(a_k.shape[-1], b_k.shape[-1])
    rows = torch.cat([a_k.expand(batch + (k,)).reshape(-1, k), b_k.expand(batch + (k,)).reshape(-1, k)], 1)
    pairs, inverse = torch.unique(rows, dim=0, return_inverse=True)
    q, kk = pairs[:, :k], pairs[:, k:]
    heads = ctx.add_nodes(pairs.shape[0], "head", ctx.depth_of(pairs.reshape(-1)) + 1)
    grid = (pairs.shape[0], k)
    ctx.add_edges(grid, q, kk, "contract", value=L.signature_code(sig) if sig else 1.0)
    ctx.add_edges(grid, heads.view(-1, 1), q, "head_member")
    ctx.add_edges(grid, heads.view(-1, 1), kk, "head_member")
    _declare_head_symmetries(ctx, heads, q, kk)
    return heads[inverse].view(tuple(batch) + (1, 1))


def _declare_head_symmetries(ctx: LoweringContext, heads: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> None:
    """The q and k nodes are no longer freely permutable (a projection's "hidden units"
    claim is withdrawn). What holds instead: heads move with their K/V head (whole K/V
    groups when query heads share one), and key dims inside a K/V head move freely (the
    extension moves the query dims of every head reading it)."""
    ctx.withdraw_symmetries(q)
    ctx.withdraw_symmetries(k)
    kv_rows, group = torch.unique(k, dim=0, return_inverse=True)
    n_kv = kv_rows.shape[0]
    sizes = torch.bincount(group, minlength=n_kv)
    if heads.numel() > 1 and bool((sizes == sizes[0]).all()) and _same_fixed_positions(ctx, q, k):
        order = torch.argsort(group, stable=True)
        ctx.declare_symmetry(heads[order], "attention heads (with their K/V head)",
                             groups=n_kv, permute_groups=n_kv > 1)
    if torch.unique(kv_rows).numel() == kv_rows.numel() and kv_rows.shape[1] > 1 and not ctx.anchored(q):
        ctx.declare_symmetry(kv_rows.reshape(-1), "query/key dims within each head", groups=n_kv)


def _same_fixed_positions(ctx: LoweringContext, q: torch.Tensor, k: torch.Tensor) -> bool:
    """Whether every head's q dims, and every head's k dims, hold the same multiset of fixed
    positions, and of what anchors them upstream (``ctx.anchor_keys``): a rotary table fixes dim
    p of every head alike, and a norm's per-dim table is shared by all heads: heads may still
    swap; a constant added along all of the key units tells each head's dims apart, also after
    the keys are normalised: they may not."""
    position = ctx.builder.node_column("position")
    for rows in (q, k, ctx.root_nodes(q), ctx.root_nodes(k)):  # a pinned node, or what it copies
        labels = position[rows].sort(dim=1).values
        if not bool((labels == labels[:1]).all()):
            return False
    for rows in (q, k):  # anchored upstream (a constant added, then normalised): compare what anchors them
        if ctx.anchored(rows):
            keys = ctx.anchor_keys(rows)
            per_head = [sorted(map(repr, keys[h * rows.shape[1]:(h + 1) * rows.shape[1]])) for h in range(rows.shape[0])]
            if "'unknown'" in per_head[0] or any(head != per_head[0] for head in per_head):
                return False
    return True


def weighted_sum(ctx: LoweringContext, weights: torch.Tensor | None, v: Value, v_ids: torch.Tensor, out_ndim: int) -> L.Layout:
    """``weights @ v`` contracting a free axis (tokens): the result lives on v's neurons,
    and each weight node (head) gets membership edges to the output nodes of its slice.
    Where one v node is read by several heads (grouped-query attention), each head gets
    fresh output nodes, fed by ``copy`` edges, since different heads give different sums."""
    if v_ids.shape[-2] != 1:
        raise ctx.error("contracting an axis of v that carries neurons is not supported")
    ctx.withdraw_symmetries(v_ids)
    if weights is None:
        layout = ctx.own(v)
        assert layout is not None  # v has a layout: v_ids were read from it
        return L.align(layout, out_ndim)
    if weights.shape[-1] != 1 or weights.shape[-2] != 1:
        raise ctx.error("attention weights with neurons on their token axes are not supported")
    w, o = ctx.root_nodes(weights[..., 0, 0]), v_ids[..., 0, :]  # the head nodes themselves
    grid = tuple(torch.broadcast_shapes(  # type: ignore[no-untyped-call, unused-ignore]
        w.shape, o.shape[:-1])) + (o.shape[-1],)
    pairs = torch.stack([w.unsqueeze(-1).expand(grid).reshape(-1), o.expand(grid).reshape(-1)], 1)
    uniq, inverse = torch.unique(pairs, dim=0, return_inverse=True)
    heads, sources = uniq[:, 0], uniq[:, 1]
    if torch.unique(sources).numel() == sources.numel():  # every v node meets one head: reuse
        layout = ctx.own(v)
        assert layout is not None  # as above
        own = L.align(layout, out_ndim)
        mapping = torch.full((int(v_ids.max()) + 1,), -1, dtype=torch.long)
        mapping[v_ids.expand(own.ids.shape).reshape(-1)] = own.ids.reshape(-1)
        targets = mapping[sources]
        ctx.add_edges((uniq.shape[0],), heads, targets, "head_member")
        _declare_value_dims(ctx, heads, targets)
        return own
    fresh = ctx.add_nodes(uniq.shape[0], "neuron", ctx.depth_of(sources) + 1)
    ctx.add_edges((uniq.shape[0],), sources, fresh, "copy")
    ctx.add_edges((uniq.shape[0],), heads, fresh, "head_member")
    _declare_shared_value_dims(ctx, heads, sources)
    return L.compress(fresh[inverse].view(grid).unsqueeze(-2), None)


def _declare_shared_value_dims(ctx: LoweringContext, heads: torch.Tensor, sources: torch.Tensor) -> None:
    """K/V heads shared by several query heads: the value dims move inside each K/V head
    (grouped by the set of query heads reading them), and every reader follows."""
    readers: dict[int, list[int]] = {}
    for h, s in zip(heads.tolist(), sources.tolist()):
        readers.setdefault(s, []).append(h)
    groups: dict[tuple[int, ...], list[int]] = {}
    for s, hs in readers.items():
        groups.setdefault(tuple(sorted(hs)), []).append(s)
    sizes = {len(members) for members in groups.values()}
    if len(sizes) == 1 and sizes.pop() > 1:
        nodes = torch.tensor([s for members in groups.values() for s in members])
        ctx.declare_symmetry(nodes, "value dims within each K/V head", groups=len(groups))


def _declare_value_dims(ctx: LoweringContext, heads: torch.Tensor, nodes: torch.Tensor) -> None:
    """Value dims move freely inside each head (``nodes`` sorted by head)."""
    ctx.link_to_heads(heads, nodes)
    counts = torch.bincount(torch.unique(heads, return_inverse=True)[1])
    if counts.numel() and bool((counts == counts[0]).all()) and int(counts[0]) > 1:
        ctx.declare_symmetry(nodes[torch.argsort(heads, stable=True)], "value dims within each head",
                             groups=counts.numel())


def lower_contract(ctx: LoweringContext, op: Op) -> None:
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
    if a_ids is not None and a_ids.shape[-2] > 1 and b_ids.shape[-1] > 1 and a_ids.shape[-1] == 1 and b_ids.shape[-2] == 1:
        ctx.set_layout(op.output, L.compress(outer_over_free_axis(ctx, a_ids, b_ids), None))  # q @ k^T over tokens
    elif a_ids is not None and a_ids.shape[-2] > 1 and a_ids.shape[-1] > 1 and b_ids.shape[-2] > 1 and b_ids.shape[-1] == 1:
        ctx.set_layout(op.output, L.compress(mix_over_neuron_axis(ctx, a_ids, b_ids), None))  # attn @ v over dims
    elif a_ids is not None and a_ids.shape[-2] == 1 and a_ids.shape[-1] > 1 and b_ids.shape[-2] > 1 and b_ids.shape[-1] > 1:
        # q @ (k^T v) (CoaT's factorised attention): the transpose of the case above
        mixed = mix_over_neuron_axis(ctx, b_ids.transpose(-1, -2), a_ids.transpose(-1, -2))
        ctx.set_layout(op.output, L.compress(mixed.transpose(-1, -2), None))
    elif a_ids is not None and a_ids.shape[-1] > 1 and b_ids.shape[-2] > 1:
        ctx.set_layout(op.output, L.compress(contract_neurons(ctx, a_ids, b_ids), None))
    elif (a_ids is None or a_ids.shape[-1] == 1) and b_ids.shape[-2] == 1:
        ctx.set_layout(op.output, weighted_sum(ctx, a_ids, b, b_ids, ndim))
    else:
        raise ctx.error("contraction of a neuron axis with a free axis is not supported")


# ------------------------------------------------------------------ channel attention
# Products of two activations whose outer axes carry neurons: cross-covariance attention
# (XCiT, EdgeNeXt, DaViT's channel attention, CoaT's factorised attention).
#
# Token attention multiplies q and k over their neuron axis (the head dims) and mixes tokens;
# cross-covariance attention does the transpose: ``q @ k^T`` over the *tokens* (a free axis)
# gives one score per pair (query dim ``i``, key dim ``j``) of a head, and ``attn @ v`` mixes the
# value *dims* ``j`` into output dim ``i``. Two matmul shapes (and the transpose of the second,
# ``q @ (k^T v)``), dispatched by :func:`lower_contract`:
#
# - :func:`outer_over_free_axis` (``a [.., i, t] @ b [.., t, j]``, ``t`` free, ``i`` and ``j``
#   neurons): one node per distinct (row node, column node) pair, fed by an ``outer_row`` edge
#   from the row node and an ``outer_col`` edge from the column node. The result has neurons on
#   both matrix axes (a softmax over one of them is an activation with its axis in the signature;
#   the edges say which nodes share a row).
# - :func:`mix_over_neuron_axis` (``a [.., i, j] @ b [.., j, n]``, ``i`` and ``j`` neurons, ``n``
#   free): one node per product ``a_ij * b_j`` (``mix_weight`` edge from ``a_ij``, ``mix_value``
#   from ``b_j``), summed into one output node per row (``mix_sum`` edges).
#
# Declarations over the operands' nodes are withdrawn (a symmetry left undeclared is never wrong;
# the oracles find the ones that hold: query dims moving with the output dims, key dims with the
# value dims, heads).

CHANNEL_MIXING_EDGES = ("outer_row", "outer_col", "mix_weight", "mix_value", "mix_sum")


def _batch(a: torch.Tensor, b: torch.Tensor) -> tuple[int, ...]:
    return tuple(torch.broadcast_shapes(a.shape[:-2], b.shape[:-2]))  # type: ignore[no-untyped-call, unused-ignore]


def outer_over_free_axis(ctx: LoweringContext, a_ids: torch.Tensor, b_ids: torch.Tensor) -> torch.Tensor:
    """``a @ b`` contracting a free axis, neurons on ``a``'s rows and ``b``'s columns: the
    result's ids (batch + (rows, columns))."""
    batch = _batch(a_ids, b_ids)
    rows, cols = a_ids.shape[-2], b_ids.shape[-1]
    row_ids = a_ids[..., :, :1].expand(batch + (rows, cols))
    col_ids = b_ids[..., :1, :].expand(batch + (rows, cols))
    pairs, inverse = torch.unique(torch.stack([row_ids.reshape(-1), col_ids.reshape(-1)], 1), dim=0,
                                  return_inverse=True)
    nodes = ctx.add_nodes(pairs.shape[0], "neuron", ctx.depth_of(pairs.reshape(-1)) + 1)
    ctx.add_edges((pairs.shape[0],), pairs[:, 0], nodes, "outer_row")
    ctx.add_edges((pairs.shape[0],), pairs[:, 1], nodes, "outer_col")
    ctx.withdraw_symmetries(pairs.reshape(-1))
    return nodes[inverse].view(batch + (rows, cols))


def mix_over_neuron_axis(ctx: LoweringContext, a_ids: torch.Tensor, b_ids: torch.Tensor) -> torch.Tensor:
    """``a @ b`` contracting an axis that carries neurons in both, with neurons on ``a``'s rows
    too and ``b``'s columns free: the result's ids (batch + (rows, 1))."""
    if a_ids.shape[-1] != b_ids.shape[-2]:
        raise ctx.error("mixing over a neuron axis of different sizes")
    batch = _batch(a_ids, b_ids)
    rows, inner = a_ids.shape[-2], a_ids.shape[-1]
    weights = a_ids.expand(batch + (rows, inner))
    values = b_ids[..., :, 0].unsqueeze(-2).expand(batch + (rows, inner))
    # one output node per distinct row of (weight nodes, value nodes)
    row_keys = torch.cat([weights, values], -1).reshape(-1, 2 * inner)
    uniq_rows, row_of = torch.unique(row_keys, dim=0, return_inverse=True)
    products, _ = torch.unique(torch.stack([uniq_rows[:, :inner].reshape(-1), uniq_rows[:, inner:].reshape(-1)], 1),
                               dim=0, return_inverse=True)
    depth = ctx.depth_of(products.reshape(-1)) + 1
    product_nodes = ctx.add_nodes(products.shape[0], "neuron", depth)
    ctx.add_edges((products.shape[0],), products[:, 0], product_nodes, "mix_weight")
    ctx.add_edges((products.shape[0],), products[:, 1], product_nodes, "mix_value")
    out = ctx.add_nodes(uniq_rows.shape[0], "neuron", depth + 1)
    n = int(torch.cat([products.reshape(-1), uniq_rows.reshape(-1)]).max()) + 1
    index = {int(k): p for p, k in enumerate((products[:, 0] * n + products[:, 1]).tolist())}
    members = torch.tensor([index[int(w) * n + int(v)] for w, v in
                            zip(uniq_rows[:, :inner].reshape(-1).tolist(), uniq_rows[:, inner:].reshape(-1).tolist())])
    ctx.add_edges((members.numel(),), product_nodes[members], out.repeat_interleave(inner), "mix_sum")
    ctx.withdraw_symmetries(products.reshape(-1))
    return out[row_of].view(batch + (rows, 1))


def lower_sdpa(ctx: LoweringContext, op: Op) -> None:
    """inputs ``[q, k, v, attn_mask]``; attrs ``enable_gqa``. The result lives on v's nodes."""
    q, k, v = op.inputs[:3]
    ndim = len(q.shape)
    q_ids, k_ids, v_ids = (_operand_ids(ctx, t, ndim) for t in (q, k, v))
    heads_q, heads_kv = q.shape[-3] if ndim >= 3 else 1, k.shape[-3] if ndim >= 3 else 1
    if heads_q != heads_kv:  # grouped-query attention: query head h reads K/V head h // group
        index = torch.arange(heads_q) // (heads_q // heads_kv)
        k_ids = k_ids.index_select(-3, index) if k_ids.shape[-3] > 1 else k_ids
        v_ids = v_ids.index_select(-3, index) if v_ids.shape[-3] > 1 else v_ids
    scale = op.attrs.get("scale") or q.shape[-1] ** -0.5
    mask = op.inputs[3]
    if isinstance(mask, ParamRef) and mask.kind == "constant":  # a folded ONNX constant
        mask = mask.tensor
    if op.attrs.get("is_causal"):
        mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool).tril()
    # scale to 6 significant digits: an exporter's sqrt(scale) on q and on k, multiplied
    # back, is an ulp away from torch's
    sig = ("sdpa", float(f"{scale:.6g}"), _mask_signature(mask))
    scores = contract_neurons(ctx, q_ids, k_ids.transpose(-1, -2), sig=sig)
    _apply_mask(ctx, mask, scores, op.output.shape)
    ctx.set_activation(torch.unique(scores), "softmax")
    out = weighted_sum(ctx, scores, v, v_ids, ndim)
    ctx.set_layout(op.output, L.compress(out.ids, None))
    for extra in op.outputs[1:]:
        ctx.set_layout(extra, None)


def _mask_signature(mask: torch.Tensor | ParamRef | Value | None) -> tuple[Hashable, ...] | None:
    """The content of a constant attention mask (a causal and an anti-causal mask differ),
    in one form for every spelling: additive (a boolean mask ``m`` is ``0`` where ``m``,
    ``-inf`` elsewhere), leading unit axes dropped."""
    constant = mask if isinstance(mask, torch.Tensor) else getattr(mask, "constant", None)
    if constant is None:
        return None if mask is None else ("mask", type(mask).__name__)
    if constant.dtype == torch.bool:
        constant = torch.zeros(constant.shape).masked_fill(~constant, float("-inf"))
    # softmax ignores what a mask adds to a whole row: rows are shifted to a maximum of 0,
    # so that a mask adding the same to every key (a number, a causal mask over one query)
    # is no mask at all
    constant = constant.to(torch.float64)
    if constant.dim() > 0:
        top = constant.amax(-1, keepdim=True)
        constant = constant - torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    elif bool(torch.isfinite(constant)):
        constant = torch.zeros(())
    if bool((constant == 0).all()):
        return None
    shape = list(constant.shape)
    while shape and shape[0] == 1:
        shape.pop(0)
    return ("mask", tuple(shape), L.content_digest(constant.reshape(shape)))


def _apply_mask(ctx: LoweringContext, mask: torch.Tensor | ParamRef | Value | None, scores: torch.Tensor,
                out_shape: tuple[int, ...]) -> None:
    """An ``attn_mask`` tensor: a parameter or buffer is attached to the head nodes like an
    additive operand; a computed constant must be the same for every head (it is then not
    encoded: it does not change the symmetries; T5's cross-attention passes zeros shaped per
    head)."""
    if mask is None or isinstance(mask, torch.Tensor) and mask.dim() < 3:
        return  # a constant [L, S] table (causal): the same for every head
    shape = tuple(out_shape[:-1]) + (mask.shape[-1],)
    if isinstance(mask, ParamRef):
        ref = mask if mask.tensor.is_floating_point() else mask.apply(lambda t: t.float())
        ctx.attach_param(L.Layout(scores), shape, ref, "param_add", "param_operand")
        return
    head_axis = len(mask.shape) - 3
    constant = getattr(mask, "constant", None)
    if head_axis >= 0 and mask.shape[head_axis] > 1 and (
            constant is None or not L.same_along(constant, head_axis)):
        raise ctx.error("an attention mask computed in the model that differs per head is not "
                        "supported; register it as a buffer")


def _sdpa(q: Any, k: Any, v: Any, attn_mask: Any = None, dropout_p: float = 0.0, is_causal: bool = False,
          scale: float | None = None, enable_gqa: bool = False) -> tuple[list[Any], dict[str, Any]]:
    return [q, k, v, attn_mask], {"is_causal": is_causal, "scale": scale, "enable_gqa": enable_gqa}


def lower_isnan(ctx: LoweringContext, op: Op) -> None:
    """``isnan`` of activations: only the guard ``where(isnan(p), 0, p)`` that exporters put
    after an attention softmax is supported, and it is folded into the attention op before
    lowering; anywhere else this raises."""
    raise ctx.error("isnan() of activations is supported only as where(isnan(p), 0, p) after an "
                    "attention softmax; write a plugin rule for this use")


@hookimpl
def gmn_register(registry: Registrar) -> None:
    registry.add_rule("isnan", lower_isnan, inputs=("x",), attributes=(), elementwise=True)
    registry.map_onnx("IsNaN", "isnan", lambda x: ([x], {}))
    registry.map_aten("aten.isnan.default", "isnan", lambda x: ([x], {}))
    for name in CHANNEL_MIXING_EDGES:
        registry.add_edge_type(name)
    registry.add_rule("contract", lower_contract)
    registry.add_rule("sdpa", lower_sdpa, inputs=("q", "k", "v", "attn_mask"),
                      attributes=("is_causal", "scale", "enable_gqa"), attaches_params=True)
    registry.map_aten("aten.scaled_dot_product_attention.default", "sdpa", _sdpa)
