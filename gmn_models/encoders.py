"""Input encoders of the graph metanetwork: schema columns of a compiled graph -> hidden vectors.

Everything here is driven by :mod:`gmn_compiler.schema`: the column positions and the vocabulary
sizes are read from it, so a schema that appends entries only changes table sizes. The input is a
plain PyG ``Data`` / ``Batch`` (``x``, ``edge_index``, ``edge_attr``, ``num_nodes``); nothing of
the compiler's internals is used.

Encodings
---------
- categorical codes (node role, activation, edge type) -> ``nn.Embedding`` with one extra
  "unknown" slot that receives codes outside the vocabulary (negative or too large);
- small integers (kernel indices) -> ``nn.Embedding`` over ``-1 .. max`` (slot 0 is "none"),
  larger values clamped to ``max``;
- unbounded integers (depth, position, spatial) -> fixed sinusoids of the value clamped to
  ``max_value`` plus a "none" flag for -1, followed by a learned ``Linear``;
- the parameter value -> fixed Gaussian random Fourier features ``sin/cos(2 pi B u)`` plus ``u``,
  followed by a learned ``Linear`` (shared with the spatial sinusoids), where ``u = v`` (``"raw"``)
  or ``u = sign(v) log(1 + |v|)`` (``"symlog"``: a bijection that is ``~v`` near 0 and keeps
  large values such as batch-norm running variances in range).

Every encoding is a function of one node's or one edge's own columns (and, for nodes, its in/out
degree), so encoders commute with any relabelling of nodes and reordering of edges.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gmn_compiler import schema
from gmn_compiler.transforms import signature_features

__all__ = [
    "CategoricalEmbedding",
    "EdgeEncoder",
    "FourierFeatures",
    "GraphStatistics",
    "NodeEncoder",
    "SinusoidalInt",
    "SmallIntEmbedding",
]


class CategoricalEmbedding(nn.Module):
    """Embedding of vocabulary codes stored as float; codes outside ``[0, len(vocabulary))``
    map to a shared "unknown" slot (index ``len(vocabulary)``), so a newer schema never
    crashes an older model. Input ``[...]`` float/long -> output ``[..., dim]``."""

    def __init__(self, vocabulary: tuple[str, ...], dim: int):
        super().__init__()
        self.size = len(vocabulary)
        self.embedding = nn.Embedding(self.size + 1, dim)

    def index(self, codes: Tensor) -> Tensor:
        """The table row of each code (long, same shape)."""
        c = codes.long()
        return torch.where((c < 0) | (c >= self.size), torch.full_like(c, self.size), c)

    def forward(self, codes: Tensor) -> Tensor:
        return self.embedding(self.index(codes))


class SmallIntEmbedding(nn.Module):
    """Embedding of a small integer column where -1 means "none": slot 0 is "none", value ``v``
    uses slot ``min(v, max_value) + 1``. Input ``[...]`` -> output ``[..., dim]``."""

    def __init__(self, max_value: int, dim: int):
        super().__init__()
        self.max_value = max_value
        self.embedding = nn.Embedding(max_value + 2, dim)

    def index(self, values: Tensor) -> Tensor:
        """The table row of each value (long, same shape)."""
        return values.long().clamp(-1, self.max_value) + 1

    def forward(self, values: Tensor) -> Tensor:
        return self.embedding(self.index(values))


class SinusoidalInt(nn.Module):
    """Fixed sinusoidal features of a non-negative integer column, -1 (any negative) = "none".

    Output ``[..., 2 * num_freqs + 1]``: ``sin(w_k v), cos(w_k v)`` for ``v`` clamped to
    ``[0, max_value]`` with angular frequencies ``w_k`` geometric from 1 down to
    ``1 / max_value``, zeros where the value is "none", and a last column flagging "none".
    No parameters; the frequencies are a buffer (so ``.double()`` converts them)."""

    def __init__(self, num_freqs: int = 8, max_value: int = 4096):
        super().__init__()
        self.max_value = max_value
        exponents = torch.arange(num_freqs, dtype=torch.float32) / max(num_freqs - 1, 1)
        self.register_buffer("freqs", float(max_value) ** (-exponents), persistent=False)

    @property
    def out_dim(self) -> int:
        return 2 * self.freqs.numel() + 1

    def forward(self, values: Tensor) -> Tensor:
        v = values.to(self.freqs.dtype)
        none = v < 0
        angle = v.clamp(0, self.max_value).unsqueeze(-1) * self.freqs
        keep = (~none).unsqueeze(-1).to(v.dtype)
        return torch.cat([torch.sin(angle) * keep, torch.cos(angle) * keep,
                          none.unsqueeze(-1).to(v.dtype)], dim=-1)


VALUE_TRANSFORMS = ("raw", "symlog")


class FourierFeatures(nn.Module):
    """Random Fourier features of a real value: ``[sin(2 pi B u), cos(2 pi B u), u]`` with fixed
    Gaussian frequencies ``B ~ N(0, scale^2)`` (``num_freqs`` of them, drawn from a private
    generator seeded with ``seed``, stored as a persistent buffer so that they travel with the
    state dict) and ``u = v`` (``transform="raw"``) or ``sign(v) log1p(|v|)`` (``"symlog"``).
    No learned parameters. Input ``[E]`` -> output ``[E, 2 * num_freqs + 1]``."""

    def __init__(self, num_freqs: int = 32, scale: float = 3.0, seed: int = 0, transform: str = "raw"):
        super().__init__()
        if transform not in VALUE_TRANSFORMS:
            raise ValueError(f"unknown value transform {transform!r}; choose from {VALUE_TRANSFORMS}")
        self.transform = transform
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("freqs", torch.randn(num_freqs, generator=gen) * scale * 2 * math.pi)

    @property
    def out_dim(self) -> int:
        return 2 * self.freqs.numel() + 1

    def forward(self, values: Tensor) -> Tensor:
        v = values.to(self.freqs.dtype)
        if self.transform == "symlog":
            v = torch.sign(v) * torch.log1p(v.abs())
        angle = v.unsqueeze(-1) * self.freqs
        return torch.cat([torch.sin(angle), torch.cos(angle), v.unsqueeze(-1)], dim=-1)


def _col(columns: tuple[str, ...], name: str) -> int:
    return columns.index(name)


class NodeEncoder(nn.Module):
    """Node features ``data.x`` ``[N, len(schema.NODE_COLUMNS)]`` -> ``[N, dim]``.

    ``embed(role) + embed(activation) + Linear([sin(depth), sin(position), signature features,
    log1p(in/out degree)])``. The signature (an identifier of a function's unusual
    hyper-parameters, 0 for none) enters through
    :func:`gmn_compiler.transforms.signature_features`: equal identifiers, equal features. The degrees come from ``edge_index`` (they
    are invariant under relabelling and tell the model how many edges a node sums over)."""

    def __init__(self, dim: int, int_freqs: int = 8, max_depth: int = 1024, max_position: int = 65536,
                 vocabulary: schema.Vocabulary = schema.BUILTIN):
        super().__init__()
        cols = schema.NODE_COLUMNS
        self.c_role, self.c_depth = _col(cols, "role"), _col(cols, "depth")
        self.c_pos, self.c_act = _col(cols, "position"), _col(cols, "activation")
        self.c_sig = _col(cols, "signature")
        self.role = CategoricalEmbedding(vocabulary.node_roles, dim)
        self.activation = CategoricalEmbedding(vocabulary.activations, dim)
        self.depth = SinusoidalInt(int_freqs, max_depth)
        self.position = SinusoidalInt(int_freqs, max_position)
        self.int_freqs = int_freqs
        sig_dim = 1 + 2 * int_freqs
        self.linear = nn.Linear(self.depth.out_dim + self.position.out_dim + sig_dim + 2, dim)

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        """``x`` ``[N, F_node]`` float, ``edge_index`` ``[2, E]`` long -> ``[N, dim]``."""
        n = x.shape[0]
        dtype = self.linear.weight.dtype
        ones = torch.ones(edge_index.shape[1], dtype=dtype, device=x.device)
        deg_in = torch.zeros(n, dtype=dtype, device=x.device).index_add_(0, edge_index[1], ones)
        deg_out = torch.zeros(n, dtype=dtype, device=x.device).index_add_(0, edge_index[0], ones)
        ints = torch.cat([self.depth(x[:, self.c_depth]), self.position(x[:, self.c_pos]),
                          signature_features(x[:, self.c_sig], self.int_freqs).to(dtype),
                          torch.log1p(deg_in).unsqueeze(-1), torch.log1p(deg_out).unsqueeze(-1)], dim=-1)
        return (self.role(x[:, self.c_role]) + self.activation(x[:, self.c_act])
                + self.linear(ints.to(dtype)))


class EdgeEncoder(nn.Module):
    """Edge features ``data.edge_attr`` ``[E, len(schema.EDGE_COLUMNS)]`` -> ``[E, dim]``.

    ``Linear([FourierFeatures(value, value_transform), sin(spatial)]) + embed(type) + sum_k embed_k(kernel_k)``.
    The four lookups run as one ``embedding_bag`` sum over the concatenated tables, and the
    linear part is added into its output in place, so the encoder allocates one ``[E, dim]``
    tensor (plus the ``[E, 2 * value_freqs + 2 * int_freqs + 2]`` features)."""

    def __init__(self, dim: int, value_freqs: int = 32, value_scale: float = 3.0, seed: int = 0,
                 max_kernel: int = 31, int_freqs: int = 8, max_spatial: int = 65536,
                 value_transform: str = "raw", vocabulary: schema.Vocabulary = schema.BUILTIN):
        super().__init__()
        cols = schema.EDGE_COLUMNS
        self.c_value, self.c_type = _col(cols, "value"), _col(cols, "type")
        self.c_kernel = [_col(cols, name) for name in cols if name.startswith("kernel")]
        self.c_spatial = _col(cols, "spatial")
        self.value = FourierFeatures(value_freqs, value_scale, seed, value_transform)
        self.spatial = SinusoidalInt(int_freqs, max_spatial)
        self.linear = nn.Linear(self.value.out_dim + self.spatial.out_dim, dim)
        self.edge_type = CategoricalEmbedding(vocabulary.edge_types, dim)
        self.kernel = nn.ModuleList(SmallIntEmbedding(max_kernel, dim) for _ in self.c_kernel)

    def forward(self, edge_attr: Tensor) -> Tensor:
        """``edge_attr`` ``[E, F_edge]`` float -> ``[E, dim]``."""
        tables = [self.edge_type.embedding] + [k.embedding for k in self.kernel]
        rows = [self.edge_type.index(edge_attr[:, self.c_type])]
        rows += [k.index(edge_attr[:, c]) for c, k in zip(self.c_kernel, self.kernel)]
        offset = 0
        for i, table in enumerate(tables):  # rows into the concatenation of the tables
            rows[i] = rows[i] + offset
            offset += table.num_embeddings
        weight = torch.cat([t.weight for t in tables])
        h = F.embedding_bag(torch.stack(rows, dim=1), weight, mode="sum")
        feats = torch.cat([self.value(edge_attr[:, self.c_value]),
                           self.spatial(edge_attr[:, self.c_spatial])], dim=1)
        # in place: the embedding_bag sum's backward does not need its output
        return h.addmm_(feats.to(h.dtype), self.linear.weight.t()).add_(self.linear.bias)


class GraphStatistics(nn.Module):
    """Fixed invariant summary of each graph of a batch -> ``[num_graphs, out_dim]``.

    Per graph: ``log1p`` of its node and edge counts, ``log1p`` of the node count per role, and
    per edge type (plus the "unknown" slot) ``log1p(count)`` and the mean, standard deviation
    and mean absolute value of the edge values ``u`` (``value_transform`` applied, as in
    :class:`FourierFeatures`); zeros for a type the graph lacks. These are the per-tensor-kind
    weight statistics a StatNN-style model reads, computed from the graph alone: each is a sum
    over a graph's nodes or edges, so the summary is invariant to node relabelling and edge
    reordering. No parameters. ``counts=False`` leaves out every count (the summary then does
    not grow with a network's width): per edge type it keeps a 0/1 "present" flag instead of
    ``log1p(count)`` and drops the node, edge and role counts."""

    def __init__(self, value_transform: str = "raw", counts: bool = True,
                 vocabulary: schema.Vocabulary = schema.BUILTIN):
        super().__init__()
        if value_transform not in VALUE_TRANSFORMS:
            raise ValueError(f"unknown value transform {value_transform!r}; choose from {VALUE_TRANSFORMS}")
        self.transform = value_transform
        self.counts = counts
        self.role = CategoricalEmbedding(vocabulary.node_roles, 1)  # only its index() is used
        self.edge_type = CategoricalEmbedding(vocabulary.edge_types, 1)
        self.c_role = _col(schema.NODE_COLUMNS, "role")
        self.c_value, self.c_type = _col(schema.EDGE_COLUMNS, "value"), _col(schema.EDGE_COLUMNS, "type")

    @property
    def out_dim(self) -> int:
        per_type = 4 * (self.edge_type.size + 1)
        return per_type + (2 + self.role.size + 1 if self.counts else 0)

    def forward(self, x: Tensor, edge_attr: Tensor, node_graph: Tensor, edge_graph: Tensor,
                num_graphs: int) -> Tensor:
        """``x [N, F_node]``, ``edge_attr [E, F_edge]``, the graph of each node and edge (long)
        -> ``[num_graphs, out_dim]`` float64 (sums in float64, so that their order barely matters)."""
        roles, types = self.role.size + 1, self.edge_type.size + 1
        n_nodes = torch.bincount(node_graph, minlength=num_graphs).double()
        n_edges = torch.bincount(edge_graph, minlength=num_graphs).double()
        role_key = node_graph * roles + self.role.index(x[:, self.c_role])
        role_count = torch.bincount(role_key, minlength=num_graphs * roles).double().view(num_graphs, roles)
        u = edge_attr[:, self.c_value].double()
        if self.transform == "symlog":
            u = torch.sign(u) * torch.log1p(u.abs())
        key = edge_graph * types + self.edge_type.index(edge_attr[:, self.c_type])
        sums = u.new_zeros(num_graphs * types, 4).index_add_(
            0, key, torch.stack([torch.ones_like(u), u, u * u, u.abs()], dim=1))
        count = sums[:, 0:1]
        moments = sums[:, 1:] / count.clamp(min=1.0)
        std = (moments[:, 1:2] - moments[:, 0:1] ** 2).clamp(min=0.0).sqrt()
        size = torch.log1p(count) if self.counts else (count > 0).double()
        per_type = torch.cat([size, moments[:, 0:1], std, moments[:, 2:3]], dim=1)
        if not self.counts:
            return per_type.view(num_graphs, 4 * types)
        return torch.cat([torch.log1p(n_nodes).unsqueeze(1), torch.log1p(n_edges).unsqueeze(1),
                          torch.log1p(role_count), per_type.view(num_graphs, 4 * types)], dim=1)
