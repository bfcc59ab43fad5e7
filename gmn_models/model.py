"""Graph metanetwork (GMN) over compiled parameter graphs, after Lim et al. (ICLR 2024).

Contract (other modules code against it):

- ``GMN(hidden=64, num_blocks=4, graph_out=1, edge_out=0, dropout=0.0, ...)``;
- ``GMN.forward(batch) -> Tensor [num_graphs, graph_out]``: graph readout (mean-pooled edge
  states and mean-pooled node states, concatenated, through an MLP). ``batch`` is a PyG
  ``Batch`` or a single ``Data`` without a ``batch`` attribute (then ``num_graphs == 1``);
- ``GMN.edge_outputs(batch) -> Tensor [E, edge_out]``: per-edge readout, edges in
  ``batch.edge_index`` order;
- ``EditGMN.forward(batch) -> Tensor [E]``: new edge values ``theta + gamma * delta``;
  structural edges (``edge_param < 0``) keep their value exactly.

Graph outputs are invariant, edge outputs equivariant, under any relabelling of the nodes and any
reordering of the edges (tests/gmn_models/test_gmn_equivariance.py).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch_geometric.data import Data

from gmn_compiler import schema

from .encoders import EdgeEncoder, GraphStatistics, NodeEncoder
from .layers import NONLINEARITIES, GMNBlock

__all__ = ["GMN", "EditGMN", "graph_assignment", "mean_pool"]

_VALUE = schema.EDGE_COLUMNS.index("value")


def graph_assignment(batch: Data) -> tuple[Tensor, int]:
    """``(node_graph [N] long, num_graphs)``: the graph of every node; all zeros and 1 for a
    single ``Data`` without a ``batch`` attribute."""
    node_graph = getattr(batch, "batch", None)
    if node_graph is None:
        return torch.zeros(batch.num_nodes, dtype=torch.long, device=batch.edge_index.device), 1
    num_graphs = getattr(batch, "num_graphs", None)
    if num_graphs is None:
        num_graphs = int(node_graph.max()) + 1 if node_graph.numel() else 0
    return node_graph, int(num_graphs)


def mean_pool(values: Tensor, group: Tensor, num_groups: int) -> Tensor:
    """Mean of ``values [M, d]`` per group (``group [M]`` long) -> ``[num_groups, d]``; an empty
    group gives zeros."""
    total = values.new_zeros(num_groups, values.shape[1]).index_add_(0, group, values)
    count = torch.bincount(group, minlength=num_groups).clamp_(min=1).to(values.dtype)
    return total / count.unsqueeze(1)


_ACTIVATIONS = {"silu": nn.SiLU, "gelu": nn.GELU, "relu": nn.ReLU}


def _mlp(d_in: int, d_hidden: int, d_out: int, activation: str) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_hidden), _ACTIVATIONS[activation](), nn.Linear(d_hidden, d_out))


class GMN(nn.Module):
    """Encoders -> ``num_blocks`` :class:`GMNBlock` -> final LayerNorms -> readouts.

    ``hidden``: width of node and edge states; ``graph_out``: size of the graph readout (0: no
    graph head, ``forward`` raises); ``edge_out``: size of the edge readout (0: no edge head,
    ``edge_outputs`` raises); ``dropout``: inside the block MLPs; ``activation``: one of
    ``"silu"``, ``"gelu"``, ``"relu"``; ``value_freqs`` / ``value_scale`` / ``seed``: the fixed
    random Fourier features of the parameter value (frequencies ``~ N(0, value_scale^2)``, drawn
    from a generator seeded with ``seed``); ``value_transform``: ``"raw"`` or ``"symlog"``
    (``sign(v) log1p(|v|)`` before the Fourier features, see :mod:`gmn_models.encoders`); ``fused``: blocks run their edge half as one
    autograd function (same values and gradients, less memory and time; no double backward:
    set False for higher-order gradients); ``graph_stats``: the graph readout also reads
    :class:`gmn_models.encoders.GraphStatistics` (counts per node role and edge type, moments of
    the values per edge type) through ``Linear -> activation``; ``stats_counts=False`` leaves
    the counts out of them (see ``GraphStatistics(counts=...)``); ``vocabulary``: the names
    behind the categorical codes the model reads (one embedding row per name plus "unknown").
    Inputs must carry codes of this vocabulary: map a graph compiled with another one by name
    first (``ParameterGraph.translated(model.vocabulary)`` or :func:`to_vocabulary`); names the
    model lacks then read the "unknown" row.
    """

    def __init__(self, hidden: int = 64, num_blocks: int = 4, graph_out: int = 1, edge_out: int = 0,
                 dropout: float = 0.0, *, activation: str = "silu", value_freqs: int = 32,
                 value_scale: float = 3.0, seed: int = 0, fused: bool = True,
                 value_transform: str = "raw", graph_stats: bool = False,
                 stats_counts: bool = True, vocabulary: schema.Vocabulary = schema.BUILTIN):
        super().__init__()
        if activation not in NONLINEARITIES:
            raise ValueError(f"unknown activation {activation!r}; choose from {sorted(NONLINEARITIES)}")
        self.hidden, self.graph_out, self.edge_out = hidden, graph_out, edge_out
        self.vocabulary = vocabulary
        self.node_encoder = NodeEncoder(hidden, vocabulary=vocabulary)
        self.edge_encoder = EdgeEncoder(hidden, value_freqs=value_freqs, value_scale=value_scale, seed=seed,
                                        value_transform=value_transform, vocabulary=vocabulary)
        self.blocks = nn.ModuleList(GMNBlock(hidden, dropout, activation, fused)
                                    for _ in range(num_blocks))
        self.final_norm_x = nn.LayerNorm(hidden)
        self.final_norm_e = nn.LayerNorm(hidden)
        self.graph_stats = GraphStatistics(value_transform, counts=stats_counts, vocabulary=vocabulary) if graph_stats else None
        self.stats_encoder = (nn.Sequential(nn.Linear(self.graph_stats.out_dim, hidden), _ACTIVATIONS[activation]())
                              if graph_stats else None)
        readout_in = (3 if graph_stats else 2) * hidden
        self.graph_head = _mlp(readout_in, hidden, graph_out, activation) if graph_out > 0 else None
        self.edge_head = _mlp(hidden, hidden, edge_out, activation) if edge_out > 0 else None

    def embed(self, batch: Data) -> tuple[Tensor, Tensor]:
        """Final node states ``[N, hidden]`` and edge states ``[E, hidden]`` (after the final
        LayerNorms), in ``batch``'s node and edge order."""
        edge_index = batch.edge_index
        x = self.node_encoder(batch.x, edge_index)
        e = self.edge_encoder(batch.edge_attr)
        for block in self.blocks:
            x, e = block(x, e, edge_index)
        return self.final_norm_x(x), self.final_norm_e(e)

    def _graph_readout(self, batch: Data, x: Tensor, e: Tensor) -> Tensor:
        if self.graph_head is None:
            raise RuntimeError("this GMN has graph_out=0: it has no graph readout")
        node_graph, num_graphs = graph_assignment(batch)
        edge_graph = node_graph.index_select(0, batch.edge_index[0])
        parts = [mean_pool(e, edge_graph, num_graphs), mean_pool(x, node_graph, num_graphs)]
        if self.graph_stats is not None:
            stats = self.graph_stats(batch.x, batch.edge_attr, node_graph, edge_graph, num_graphs)
            parts.append(self.stats_encoder(stats.to(e.dtype)))
        return self.graph_head(torch.cat(parts, dim=-1))

    def _edge_readout(self, e: Tensor) -> Tensor:
        if self.edge_head is None:
            raise RuntimeError("this GMN has edge_out=0: it has no edge readout")
        return self.edge_head(e)

    def forward(self, batch: Data) -> Tensor:
        """Graph readout ``[num_graphs, graph_out]`` of a ``Batch`` (or ``[1, graph_out]`` of a
        single ``Data``)."""
        x, e = self.embed(batch)
        return self._graph_readout(batch, x, e)

    def edge_outputs(self, batch: Data) -> Tensor:
        """Edge readout ``[E, edge_out]``, one row per edge of ``batch.edge_index``."""
        _, e = self.embed(batch)
        return self._edge_readout(e)

    def graph_and_edge_outputs(self, batch: Data) -> tuple[Tensor, Tensor]:
        """Both readouts from one pass: ``([num_graphs, graph_out], [E, edge_out])``."""
        x, e = self.embed(batch)
        return self._graph_readout(batch, x, e), self._edge_readout(e)


class EditGMN(nn.Module):
    """Parameter editing ``theta' = theta + gamma * delta`` (paper §5.3, INR editing).

    ``delta [E]`` is the edge readout of a :class:`GMN` (``edge_out=1``, no graph head), zeroed
    on structural edges (``edge_param < 0``) and, with ``average_copies``, averaged over the
    edges that carry the same parameter entry (same graph, ``edge_param``, ``edge_offset``) so
    that :meth:`gmn_compiler.ParameterGraph.to_state_dict` accepts the result for shared or
    broadcast parameters. ``gamma`` is a learnable scalar initialised to ``gamma_init``.
    Other keyword arguments go to :class:`GMN`.
    """

    def __init__(self, hidden: int = 64, num_blocks: int = 4, dropout: float = 0.0, *,
                 gamma_init: float = 1e-3, average_copies: bool = True, **gmn_kwargs):
        super().__init__()
        self.gmn = GMN(hidden, num_blocks, graph_out=0, edge_out=1, dropout=dropout, **gmn_kwargs)
        self.gamma = nn.Parameter(torch.tensor(float(gamma_init)))
        self.average_copies = average_copies

    def delta(self, batch: Data) -> Tensor:
        """The edit direction ``[E]`` before scaling by ``gamma``; exactly 0 on structural edges."""
        edge_param = getattr(batch, "edge_param", None)
        if edge_param is None:
            raise ValueError("EditGMN needs `edge_param` on the graph (structural edges have -1)")
        raw = self.gmn.edge_outputs(batch)[:, 0]
        is_param = edge_param >= 0
        delta = torch.where(is_param, raw, torch.zeros_like(raw))
        if self.average_copies:
            delta = _average_copies(batch, delta, is_param)
        return delta

    def forward(self, batch: Data) -> Tensor:
        """New edge values ``[E]``: ``edge_attr[:, value] + gamma * delta``; structural edges
        keep their value."""
        values = batch.edge_attr[:, _VALUE].to(self.gamma.dtype)
        return values + self.gamma * self.delta(batch)


def to_vocabulary(data: Data, source: schema.Vocabulary, target: schema.Vocabulary) -> Data:
    """``data`` (codes of ``source``) with its categorical codes mapped into ``target`` by
    name; names ``target`` lacks become -1, which a model reads as "unknown". ``data`` itself
    when the two vocabularies are equal, else a copy."""
    return source.translate(data, target)


def _average_copies(batch: Data, delta: Tensor, is_param: Tensor) -> Tensor:
    """Replace each parameter edge's delta by the mean over the edges that carry the same
    parameter entry of the same graph; structural edges stay as they are."""
    idx = torch.nonzero(is_param).squeeze(1)
    if idx.numel() == 0:
        return delta
    node_graph, _ = graph_assignment(batch)
    graph = node_graph.index_select(0, batch.edge_index[0, idx])
    param, offset = batch.edge_param[idx], batch.edge_offset[idx]
    span_o, span_p = int(offset.max()) + 1, int(param.max()) + 1
    if int(graph.max()) + 1 <= (2 ** 62) // (span_o * span_p):
        key = (graph * span_p + param) * span_o + offset
        _, inverse = torch.unique(key, return_inverse=True)
    else:  # keys would overflow int64
        _, inverse = torch.unique(torch.stack([graph, param, offset]), dim=1, return_inverse=True)
    groups = int(inverse.max()) + 1
    if groups == idx.numel():  # every entry carried by one edge: nothing to average
        return delta
    sub = delta.index_select(0, idx)
    mean = sub.new_zeros(groups).index_add_(0, inverse, sub)
    mean = mean / torch.bincount(inverse, minlength=groups).to(sub.dtype)
    return delta.index_copy(0, idx, mean.index_select(0, inverse))
