"""Dense float features for stock PyG models: schema columns -> one-hot and sinusoidal blocks.

A compiled graph stores categorical codes and small integers in ``x`` / ``edge_attr`` (see
:mod:`gmn_compiler.schema`). Stock message-passing layers (``GINEConv``, ``GATv2Conv``,
``TransformerConv``, ``PNAConv``, ``GPSConv``, ...) expect real-valued features whose
magnitude means something. :class:`DenseFeatures` rewrites the columns into such features:

.. code-block:: python

    transform = DenseFeatures()
    graphs = [transform(gc.compile(m, inputs).data) for m in models]
    loader = torch_geometric.loader.DataLoader(graphs, batch_size=8)
    conv = torch_geometric.nn.GINEConv(mlp, edge_dim=transform.edge_dim)

Every output row is a function of its own node's or edge's schema row only, so the transform
commutes with any relabelling of nodes and reordering of edges, and it works the same on a
single graph and on a ``Batch``.
"""

from __future__ import annotations

import math

import copy

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.data import Data
from torch_geometric.transforms import BaseTransform

from . import schema

__all__ = ["DenseFeatures", "VALUE_TRANSFORMS"]

VALUE_TRANSFORMS: tuple[str, ...] = ("raw", "symlog")
"""``raw``: the value itself; ``symlog``: ``sign(v) * log1p(|v|)`` (keeps e.g. batch-norm
running variances in range while staying ~``v`` near 0)."""

_INT_EDGE_COLUMNS: tuple[str, ...] = ("kernel0", "kernel1", "kernel2", "spatial")


def one_hot_codes(codes: Tensor, size: int) -> Tensor:
    """Float32 ``[n, size + 1]`` one-hot of vocabulary codes (any dtype); a code outside
    ``[0, size)`` -- -1, too large, or from a vocabulary this one lacks -- sets the last
    ("unknown") slot."""
    c = codes.long()
    c = torch.where((c < 0) | (c >= size), torch.full_like(c, size), c)
    return F.one_hot(c, size + 1).to(torch.float32)


def sinusoids(values: Tensor, freqs: Tensor, flag: bool) -> Tensor:
    """Float32 ``[n, 2 * len(freqs) (+ 1)]``: ``sin(w_k v)`` for each frequency, then
    ``cos(w_k v)``, all zero where ``v < 0`` ("not applicable"); with ``flag``, a last column
    that is 1.0 exactly where ``v < 0``."""
    v = values.to(torch.float64)  # float64 angles: exact for large integer positions
    none = v < 0
    angle = v.clamp(min=0).unsqueeze(-1) * freqs.to(torch.float64)
    keep = (~none).unsqueeze(-1).to(torch.float64)
    blocks = [torch.sin(angle) * keep, torch.cos(angle) * keep]
    if flag:
        blocks.append(none.unsqueeze(-1).to(torch.float64))
    return torch.cat(blocks, dim=-1).to(torch.float32)


SIGNATURE_IDS = 1 << 20  # signature identifiers are 1 .. 2**20 (0: none), layout.signature_id


def signature_features(ids: Tensor, num_freqs: int = 8) -> Tensor:
    """Float32 ``[n, 2 * num_freqs + 1]`` of the node column ``signature``: ``sin`` / ``cos``
    of ``2 pi 2^e id / 2^20`` for ``num_freqs`` exponents ``e`` spread evenly over [0, 19]
    (zero where ``id == 0``, "none"), then a flag that is 1.0 exactly where there is none.
    The identifier names a set of hyper-parameters, it is no magnitude: the features only
    need to tell identifiers apart (equal identifiers, equal features), which the fastest
    frequency (half a turn per identifier) does for neighbours and the slowest for far ones."""
    exponents = torch.linspace(0, 19, num_freqs, dtype=torch.float64)
    freqs = 2 * math.pi * 2.0 ** exponents / SIGNATURE_IDS
    v = ids.to(torch.float64)
    values = torch.where(v > 0, v, torch.full_like(v, -1.0))
    return sinusoids(values, freqs, flag=True)


def symlog(values: Tensor) -> Tensor:
    """``sign(v) * log1p(|v|)``, elementwise."""
    return torch.sign(values) * torch.log1p(values.abs())


class DenseFeatures(BaseTransform):
    """Replace a compiled graph's schema columns by dense float32 features.

    Args:
        vocabulary: the vocabulary the graphs' categorical codes are in (a graph compiled with
            plugin names carries it as ``ParameterGraph.vocabulary``; translate other graphs
            first with :meth:`schema.Vocabulary.translate_columns`). Codes outside it go to an
            extra "unknown" slot of each one-hot block.
        num_freqs: ``F``, the number of sinusoid frequencies per integer column. They are
            geometric, ``w_k = max_value ** (-k / (F - 1))``, from 1 down to ``1 / max_value``.
        max_value: the integer scale of the slowest frequency (values up to it stay on less
            than one radian of it, so they remain distinguishable).
        value_transforms: which transforms of the edge value become columns, in this order
            (a non-empty subset of :data:`VALUE_TRANSFORMS`).
        keep_schema: keep the input columns as ``schema_x`` / ``schema_edge_attr`` (needed to
            decompile edited values, or to map codes back to names).

    Output (``R, A, T`` = vocabulary sizes of node roles, activations, edge types; ``S`` =
    ``2 * F``): ``x`` float32 ``[N, node_dim]`` =

    - ``role``: one-hot ``[R + 1]`` (last slot: unknown);
    - ``activation``: one-hot ``[A + 1]`` (last slot: unknown);
    - ``depth``: ``[S]`` sin then cos of the depth;
    - ``position``: ``[S + 1]`` sin, cos (zero where -1), then a 0/1 flag "position is -1";
    - ``signature``: ``[S + 1]`` :func:`signature_features` (the flag: "no signature");

    ``edge_attr`` float32 ``[E, edge_dim]`` =

    - ``value``: ``[len(value_transforms)]`` the edge value under each transform;
    - ``type``: one-hot ``[T + 1]`` (last slot: unknown);
    - ``kernel0``, ``kernel1``, ``kernel2``, ``spatial``: ``[S + 1]`` each, like ``position``.

    :attr:`node_blocks` / :attr:`edge_blocks` give each block's column slice. Every other
    attribute (``edge_index``, ``edge_param``, ``edge_offset``, ``num_nodes``, ...) is kept
    as is. The input is never modified: the result is a shallow copy with new ``x`` /
    ``edge_attr``. ValueError if ``x`` / ``edge_attr`` do not have the schema's widths (e.g. a
    graph transformed twice).
    """

    def __init__(self, vocabulary: schema.Vocabulary = schema.BUILTIN, num_freqs: int = 8,
                 max_value: int = 4096, value_transforms: tuple[str, ...] = VALUE_TRANSFORMS,
                 keep_schema: bool = True) -> None:
        if num_freqs < 1 or max_value < 1:
            raise ValueError("num_freqs and max_value must be at least 1")
        value_transforms = tuple(value_transforms)
        bad = [t for t in value_transforms if t not in VALUE_TRANSFORMS]
        if not value_transforms or bad or len(set(value_transforms)) != len(value_transforms):
            raise ValueError(f"value_transforms must be a non-empty subset of {VALUE_TRANSFORMS}, "
                             f"got {value_transforms!r}")
        self.vocabulary = vocabulary
        self.num_freqs, self.max_value = num_freqs, max_value
        self.value_transforms = value_transforms
        self.keep_schema = keep_schema
        exponents = torch.arange(num_freqs, dtype=torch.float64) / max(num_freqs - 1, 1)
        self.freqs = float(max_value) ** (-exponents)

    def _slices(self, blocks: list[tuple[str, int]]) -> dict[str, slice]:
        out, start = {}, 0
        for name, width in blocks:
            out[name] = slice(start, start + width)
            start += width
        return out

    @property
    def node_blocks(self) -> dict[str, slice]:
        """Node block name -> its columns in the output ``x`` (in column order)."""
        s = 2 * self.num_freqs
        return self._slices([("role", self.vocabulary.size("node_roles") + 1),
                            ("activation", self.vocabulary.size("activations") + 1),
                            ("depth", s), ("position", s + 1), ("signature", s + 1)])

    @property
    def edge_blocks(self) -> dict[str, slice]:
        """Edge block name -> its columns in the output ``edge_attr`` (in column order)."""
        s = 2 * self.num_freqs
        return self._slices([("value", len(self.value_transforms)),
                            ("type", self.vocabulary.size("edge_types") + 1)]
                           + [(name, s + 1) for name in _INT_EDGE_COLUMNS])

    @property
    def node_dim(self) -> int:
        """Width of the output ``x``."""
        return list(self.node_blocks.values())[-1].stop

    @property
    def edge_dim(self) -> int:
        """Width of the output ``edge_attr``."""
        return list(self.edge_blocks.values())[-1].stop

    def node_features(self, x: Tensor) -> Tensor:
        """Schema node columns ``[N, len(NODE_COLUMNS)]`` -> float32 ``[N, node_dim]``."""
        _check_width(x, schema.NODE_COLUMNS, "x")
        col = schema.node_column
        return torch.cat([
            one_hot_codes(x[:, col("role")], self.vocabulary.size("node_roles")),
            one_hot_codes(x[:, col("activation")], self.vocabulary.size("activations")),
            sinusoids(x[:, col("depth")], self.freqs, flag=False),
            sinusoids(x[:, col("position")], self.freqs, flag=True),
            signature_features(x[:, col("signature")], self.num_freqs),
        ], dim=1)

    def edge_features(self, edge_attr: Tensor) -> Tensor:
        """Schema edge columns ``[E, len(EDGE_COLUMNS)]`` -> float32 ``[E, edge_dim]``."""
        _check_width(edge_attr, schema.EDGE_COLUMNS, "edge_attr")
        col = schema.edge_column
        value = edge_attr[:, col("value")].to(torch.float32)
        per_transform = {"raw": value, "symlog": symlog(value)}
        blocks = [torch.stack([per_transform[t] for t in self.value_transforms], dim=1),
                  one_hot_codes(edge_attr[:, col("type")], self.vocabulary.size("edge_types"))]
        blocks += [sinusoids(edge_attr[:, col(name)], self.freqs, flag=True) for name in _INT_EDGE_COLUMNS]
        return torch.cat(blocks, dim=1)

    def forward(self, data: Data) -> Data:
        """A shallow copy of ``data`` with dense ``x`` / ``edge_attr`` (see the class docstring)."""
        out = copy.copy(data)
        x, edge_attr = data.x, data.edge_attr
        out.x = self.node_features(x)
        out.edge_attr = self.edge_features(edge_attr)
        if self.keep_schema:
            out.schema_x, out.schema_edge_attr = x, edge_attr
        return out

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(node_dim={self.node_dim}, edge_dim={self.edge_dim}, "
                f"num_freqs={self.num_freqs}, max_value={self.max_value}, "
                f"value_transforms={self.value_transforms}, keep_schema={self.keep_schema})")


def _check_width(t: Tensor, columns: tuple[str, ...], name: str) -> None:
    if t is None or t.dim() != 2 or t.shape[1] != len(columns):
        shape = None if t is None else tuple(t.shape)
        raise ValueError(f"{name} must have the {len(columns)} schema columns {columns}, got shape "
                         f"{shape} (already transformed?)")
