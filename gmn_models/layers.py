"""Message-passing block of the graph metanetwork (graph-network form, edge and node updates).

One block maps node states ``x`` ``[N, d]`` and edge states ``e`` ``[E, d]`` to new ones::

    e' = e + MLP_e([LN(x)[src], LN(x)[dst], LN0(e)])
    x' = x + MLP_x([LN(x), LN(sum_{u->v} e'_{uv}), LN(sum_{v->w} e'_{vw})])

The node update hears its incoming edges (forward messages, along ``edge_index``) and its
outgoing edges (backward messages, along the reversed edges) through separate weight columns,
so direction is never lost. ``LN0`` is a LayerNorm without affine part (the linear layer after
it makes one redundant). Pre-norm is applied per part (``[LN(a), LN(b), LN(c)]`` rather than
``LN([a, b, c])``), which is what makes the performance levers possible:

- the first layer of ``MLP_e`` is split as ``A LN(x)[src] + B LN(x)[dst] + C LN(e)``, with
  ``A LN(x)`` and ``B LN(x)`` computed once per node and only then gathered onto the edges
  (``index_select``), so no ``[E, 3d]`` concatenation is ever built;
- sums use ``index_add_`` (whose backward is an ``index_select``, and vice versa);
- the edge half (edge MLP, residual, both sums) runs as one autograd function that keeps
  ``LN0(e)`` and the pre-activation for the backward pass (not ``e``, nor ``act(h)``, which is
  recomputed), and writes its internal temporaries into reused scratch buffers (``out=``):
  three fresh ``[E, d]`` tensors forward and one backward, against about eighteen with plain
  autograd. Fresh CPU memory this size costs a page fault per 4 KiB on first touch, about as
  much as an ``[E, d] x [d, d]`` matmul, so this pays in time as well as in peak memory.

Every operation is per node, per edge, or a sum over edges, so the block is equivariant to node
relabelling and edge reordering.
"""

from __future__ import annotations

import threading

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

__all__ = ["NONLINEARITIES", "GMNBlock", "edge_update", "release_scratch"]

NONLINEARITIES = {"silu": F.silu, "gelu": F.gelu, "relu": F.relu}
"""Nonlinearities a block can use, by name."""


def _act_into(activation: str, h: Tensor, out: Tensor) -> Tensor:
    if activation == "silu":
        return torch._C._nn.silu(h, out=out)
    if activation == "gelu":
        return torch._C._nn.gelu(h, out=out)
    return torch.clamp_min(h, 0, out=out)


def _act_backward_into(activation: str, grad: Tensor, h: Tensor, out: Tensor) -> Tensor:
    """Gradient through ``act`` at ``h``, written to ``out`` (which may be ``grad``)."""
    if activation == "silu":
        return torch.ops.aten.silu_backward.grad_input(grad, h, grad_input=out)
    if activation == "gelu":
        return torch.ops.aten.gelu_backward.grad_input(grad, h, grad_input=out)
    return torch.ops.aten.threshold_backward.grad_input(grad, h, 0, grad_input=out)


class _Scratch(threading.local):
    """Per-thread scratch buffers, one per slot, grown to the largest size asked for.

    Fresh CPU memory of this size is served by ``mmap`` and paid for with a page fault per
    4 KiB page on first touch, which costs about as much as a ``[E, d] x [d, d]`` matmul; the
    fused edge update therefore keeps its purely internal temporaries (never returned, never
    saved for backward) here. :func:`release_scratch` frees them."""

    def __init__(self) -> None:
        self.buffers: dict[int, Tensor] = {}


_SCRATCH = _Scratch()


def _scratch(slot: int, like: Tensor) -> Tensor:
    """An uninitialised tensor shaped and typed like ``like``, reused across calls (CPU only)."""
    if like.device.type != "cpu":
        return torch.empty_like(like)
    n, buf = like.numel(), _SCRATCH.buffers.get(slot)
    if buf is None or buf.numel() < n or buf.dtype != like.dtype:
        buf = _SCRATCH.buffers[slot] = torch.empty(n, dtype=like.dtype)
    return buf[:n].view(like.shape)


def release_scratch() -> None:
    """Free this thread's scratch buffers of the fused edge update (they are re-created on use)."""
    _SCRATCH.buffers.clear()


class _EdgeUpdate(torch.autograd.Function):
    """Fused edge update and aggregation; see :func:`edge_update`.

    ``LN0`` has no affine part (``C`` follows it). Forward allocates ``xhat = LN0(e)`` and
    the pre-activation ``h`` (both kept for backward, instead of ``e``) and the result ``e'``;
    backward allocates only the returned gradient of ``e``; everything else goes through
    scratch buffers. ``act(h)`` is recomputed in backward.
    """

    @staticmethod
    def forward(ctx, e, ps, pd, w_in, w_out, b_out, src, dst, eps, activation):
        d, num_nodes = e.shape[1], ps.shape[0]
        xhat, _, rstd = torch.native_layer_norm(e, (d,), None, None, eps)
        h = ps.index_select(0, src)
        h.addmm_(xhat, w_in.t())
        buf = _scratch(0, h)
        h.add_(torch.index_select(pd, 0, dst, out=buf))
        e_new = torch.addmm(e, _act_into(activation, h, buf), w_out.t()).add_(b_out)
        agg_fwd = e_new.new_zeros(num_nodes, d).index_add_(0, dst, e_new)
        agg_bwd = e_new.new_zeros(num_nodes, d).index_add_(0, src, e_new)
        ctx.save_for_backward(xhat, h, rstd, w_in, w_out, src, dst)
        ctx.activation, ctx.num_nodes = activation, num_nodes
        return e_new, agg_fwd, agg_bwd

    @staticmethod
    @once_differentiable
    def backward(ctx, g_e, g_fwd, g_bwd):
        xhat, h, rstd, w_in, w_out, src, dst = ctx.saved_tensors
        need = ctx.needs_input_grad
        d = xhat.shape[1]
        # total gradient of e': direct, and through the sums onto dst (fwd) and src (bwd)
        g = torch.index_select(g_fwd, 0, dst, out=_scratch(0, xhat))
        buf = torch.index_select(g_bwd, 0, src, out=_scratch(1, xhat))
        g.add_(buf).add_(g_e)
        # e' = e + act(h) W_out^T + b_out
        act = _act_into(ctx.activation, h, buf)
        grad_w_out = g.t().mm(act) if need[4] else None
        grad_b_out = g.sum(0) if need[5] else None
        grad_h = _act_backward_into(ctx.activation, torch.mm(g, w_out, out=buf), h, buf)
        # h = ps[src] + pd[dst] + xhat W_in^T
        grad_ps = grad_h.new_zeros(ctx.num_nodes, d).index_add_(0, src, grad_h) if need[1] else None
        grad_pd = grad_h.new_zeros(ctx.num_nodes, d).index_add_(0, dst, grad_h) if need[2] else None
        grad_w_in = grad_h.t().mm(xhat) if need[3] else None
        grad_e = None
        if need[0]:  # xhat = (e - mean) * rstd: the kernel's formula at mean 0, rstd 1, times rstd
            grad_xhat = torch.mm(grad_h, w_in, out=_scratch(2, xhat))
            zeros, ones = rstd.new_zeros(rstd.shape), rstd.new_ones(rstd.shape)
            grad_e = torch.ops.aten.native_layer_norm_backward(
                grad_xhat, xhat, [d], zeros, ones, None, None, [True, False, False])[0]
            grad_e.mul_(rstd).add_(g)  # and the residual path
        return grad_e, grad_ps, grad_pd, grad_w_in, grad_w_out, grad_b_out, None, None, None, None


def edge_update(block: GMNBlock, xn: Tensor, e: Tensor, src: Tensor, dst: Tensor,
                fused: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """The edge half of ``block`` on normalised node states ``xn [N, d]`` and edge states
    ``e [E, d]``: returns ``(e' [E, d], agg_fwd [N, d], agg_bwd [N, d])`` where
    ``e' = e + W_out act(A xn[src] + B xn[dst] + C LN(e) + b_in) + b_out``, ``agg_fwd[v]`` sums
    ``e'`` over the edges into ``v`` and ``agg_bwd[u]`` over the edges out of ``u``.

    ``fused`` runs it as one autograd function (same values and gradients, fewer and smaller
    temporaries; once differentiable); otherwise as plain autograd ops.
    """
    ps = F.linear(xn, block.edge_src.weight, block.edge_in.bias)  # per node, bias folded in
    pd = F.linear(xn, block.edge_dst.weight)
    if fused and torch.is_grad_enabled() and not (block.dropout > 0.0 and block.training):
        return _EdgeUpdate.apply(e, ps, pd, block.edge_in.weight, block.edge_out.weight, block.edge_out.bias,
                                 src, dst, block.norm_e.eps, block.activation)
    h = F.linear(block.norm_e(e), block.edge_in.weight)
    h = h + ps.index_select(0, src) + pd.index_select(0, dst)
    e = e + block.edge_out(block._drop(NONLINEARITIES[block.activation](h)))
    agg_fwd = e.new_zeros(xn.shape[0], e.shape[1]).index_add_(0, dst, e)
    agg_bwd = e.new_zeros(xn.shape[0], e.shape[1]).index_add_(0, src, e)
    return e, agg_fwd, agg_bwd


class GMNBlock(nn.Module):
    """One pre-norm residual graph-network block with edge and node updates.

    Parameters: ``dim`` the width of node and edge states; ``dropout`` applied to the hidden
    activations of both MLPs (training only); ``activation`` a key of :data:`NONLINEARITIES`;
    ``fused`` run the edge half as one autograd function (:func:`edge_update`; same values and
    gradients, no double backward; plain autograd is used anyway under dropout). The edge MLP is
    ``dim -> dim -> dim`` on the (virtual) concatenation of three ``dim``-wide parts; the node
    MLP is ``3 dim -> dim -> dim``.
    """

    def __init__(self, dim: int, dropout: float = 0.0, activation: str = "silu", fused: bool = True):
        super().__init__()
        if activation not in NONLINEARITIES:
            raise ValueError(f"unknown activation {activation!r}; choose from {sorted(NONLINEARITIES)}")
        self.dim, self.dropout, self.activation, self.fused = dim, float(dropout), activation, fused
        self.norm_x = nn.LayerNorm(dim)
        self.norm_e = nn.LayerNorm(dim, elementwise_affine=False)  # C follows: an affine would be redundant
        self.norm_fwd = nn.LayerNorm(dim)
        self.norm_bwd = nn.LayerNorm(dim)
        # edge MLP, first layer split by input part: W [x_src, x_dst, e] = A x_src + B x_dst + C e
        self.edge_src = nn.Linear(dim, dim, bias=False)  # A
        self.edge_dst = nn.Linear(dim, dim, bias=False)  # B
        self.edge_in = nn.Linear(dim, dim)  # C (+ the layer's bias)
        self.edge_out = nn.Linear(dim, dim)
        # node MLP on [x, agg_fwd, agg_bwd]
        self.node_in = nn.Linear(3 * dim, dim)
        self.node_out = nn.Linear(dim, dim)

    def _drop(self, h: Tensor) -> Tensor:
        return F.dropout(h, self.dropout, self.training) if self.dropout > 0.0 else h

    def forward(self, x: Tensor, e: Tensor, edge_index: Tensor) -> tuple[Tensor, Tensor]:
        """``x`` ``[N, dim]``, ``e`` ``[E, dim]``, ``edge_index`` long ``[2, E]`` (row 0 source)
        -> ``(x', e')`` with the same shapes."""
        xn = self.norm_x(x)
        e, agg_fwd, agg_bwd = edge_update(self, xn, e, edge_index[0], edge_index[1], self.fused)
        u = torch.cat([xn, self.norm_fwd(agg_fwd), self.norm_bwd(agg_bwd)], dim=-1)
        x = x + self.node_out(self._drop(NONLINEARITIES[self.activation](self.node_in(u))))
        return x, e
