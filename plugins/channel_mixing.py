"""Products of two activations whose outer axes carry neurons: cross-covariance attention
(XCiT, EdgeNeXt, DaViT's channel attention, CoaT's factorised attention).

Token attention multiplies q and k over their neuron axis (the head dims) and mixes tokens;
cross-covariance attention does the transpose: ``q @ k^T`` over the *tokens* (a free axis)
gives one score per pair (query dim ``i``, key dim ``j``) of a head, and ``attn @ v`` mixes the
value *dims* ``j`` into output dim ``i``. Two matmul shapes, lowered here for
:func:`gmn_plugins.attention.lower_contract`:

- :func:`outer_over_free_axis` (``a [.., i, t] @ b [.., t, j]``, ``t`` free, ``i`` and ``j``
  neurons): one node per distinct (row node, column node) pair, fed by an ``outer_row`` edge
  from the row node and an ``outer_col`` edge from the column node. The result has neurons on
  both matrix axes (a softmax over one of them is an activation with its axis in the signature;
  the edges say which nodes share a row).
- :func:`mix_over_neuron_axis` (``a [.., i, j] @ b [.., j, n]``, ``i`` and ``j`` neurons, ``n``
  free): one node per product ``a_ij * b_j`` (``mix_weight`` edge from ``a_ij``, ``mix_value``
  from ``b_j``), summed into one output node per row (``mix_sum`` edges).

Declarations over the operands' nodes are withdrawn (a symmetry left undeclared is never wrong;
the oracles find the ones that hold: query dims moving with the output dims, key dims with the
value dims, heads).
"""

from __future__ import annotations

import torch

from gmn_compiler.rules import LoweringContext

EDGE_TYPES = ("outer_row", "outer_col", "mix_weight", "mix_value", "mix_sum")


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
