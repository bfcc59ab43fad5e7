"""Encoders of the graph metanetwork: schema-driven sizes, "none" and unknown slots, clamping,
locality (a row's encoding depends on that row only) and sensitivity to every column."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gmn_compiler as gc
from gmn_compiler import schema
from gmn_models.encoders import (
    CategoricalEmbedding,
    EdgeEncoder,
    FourierFeatures,
    NodeEncoder,
    SinusoidalInt,
    SmallIntEmbedding,
)


@pytest.fixture(scope="module")
def cnn_graph():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
    return gc.compile(model, (torch.randn(1, 2, 5, 5),)).data


def test_vocabulary_sizes_and_columns_come_from_the_schema():
    node, edge = NodeEncoder(8), EdgeEncoder(8)
    assert node.role.embedding.num_embeddings == len(schema.NODE_ROLES) + 1
    assert node.activation.embedding.num_embeddings == len(schema.ACTIVATIONS) + 1
    assert edge.edge_type.embedding.num_embeddings == len(schema.EDGE_TYPES) + 1
    assert (node.c_role, node.c_depth, node.c_pos, node.c_act) == tuple(
        schema.node_column(c) for c in ("role", "depth", "position", "activation"))
    assert edge.c_value == schema.edge_column("value") and edge.c_type == schema.edge_column("type")
    assert edge.c_kernel == [schema.edge_column(f"kernel{i}") for i in range(3)]
    assert edge.c_spatial == schema.edge_column("spatial")


def test_categorical_unknown_codes_share_one_slot_distinct_from_known_codes():
    emb = CategoricalEmbedding(schema.EDGE_TYPES, 6)
    n = len(schema.EDGE_TYPES)
    out = emb(torch.tensor([0.0, float(n - 1), float(n), 999.0, -1.0]))
    assert torch.equal(out[2], out[3]) and torch.equal(out[2], out[4])
    assert not torch.equal(out[0], out[2]) and not torch.equal(out[1], out[2])


def test_small_int_embedding_has_a_none_slot_and_clamps():
    emb = SmallIntEmbedding(max_value=4, dim=6)
    out = emb(torch.tensor([-1.0, 0.0, 4.0, 5.0, 1e6]))
    assert not torch.equal(out[0], out[1])  # -1 ("none") is not 0
    assert torch.equal(out[2], out[3]) and torch.equal(out[2], out[4])  # clamped to max


def test_sinusoidal_int_distinguishes_integers_flags_none_and_clamps():
    enc = SinusoidalInt(num_freqs=8, max_value=4096)
    v = torch.arange(0, 4097, dtype=torch.float64)
    f = enc.double()(v)
    assert f.shape == (4097, enc.out_dim) and f.dtype == torch.float64
    assert float((f[1:] - f[:-1]).norm(dim=1).min()) > 1e-4  # neighbours differ
    assert float(torch.cdist(f[::97], f[::97]).add(torch.eye(43, dtype=f.dtype)).min()) > 1e-3
    none = enc(torch.tensor([-1.0]))[0]
    assert none[-1] == 1 and bool((none[:-1] == 0).all())
    assert bool((f[:, -1] == 0).all())
    big = enc.float()(torch.tensor([4096.0, 1e9]))
    assert torch.equal(big[0], big[1]) and bool(torch.isfinite(big).all())


def test_fourier_value_features_are_a_fixed_seeded_buffer_with_the_raw_value():
    a, b, c = FourierFeatures(16, seed=0), FourierFeatures(16, seed=0), FourierFeatures(16, seed=1)
    assert "freqs" in dict(a.named_buffers()) and not list(a.parameters())
    assert "freqs" in a.state_dict()
    assert torch.equal(a.freqs, b.freqs) and not torch.equal(a.freqs, c.freqs)
    v = torch.tensor([-0.3, 0.0, 0.01, 2.5, 100.0])
    feats = a(v)
    assert feats.shape == (5, a.out_dim) == (5, 33) and torch.equal(feats[:, -1], v)
    assert float(torch.cdist(feats, feats).add(torch.eye(5)).min()) > 1e-3


def test_symlog_value_features_are_bounded_and_keep_values_apart():
    raw, symlog = FourierFeatures(16, seed=0), FourierFeatures(16, seed=0, transform="symlog")
    v = torch.tensor([-1e4, -0.3, 0.0, 0.01, 2.5, 1e4], dtype=torch.float64)
    u = symlog.double()(v)[:, -1]
    assert torch.allclose(u, torch.sign(v) * torch.log1p(v.abs())) and u.abs().max() < 10
    assert torch.allclose(torch.sign(u) * torch.expm1(u.abs()), v)  # a bijection: nothing lost
    assert float(torch.cdist(symlog(v.float()), symlog(v.float())).add(torch.eye(6)).min()) > 1e-3
    assert torch.equal(raw(v.float())[:, -1], v.float())
    with pytest.raises(ValueError, match="value transform"):
        FourierFeatures(16, transform="log")


def test_edge_encoder_equals_the_sum_of_its_parts(cnn_graph):
    """The fused encoder (one embedding_bag, one in-place addmm) computes
    Linear([rff(value), sin(spatial)]) + type + kernel embeddings, with gradients to all."""
    enc = EdgeEncoder(6).double()
    ea = cnn_graph.edge_attr
    out = enc(ea)
    lin = enc.linear(torch.cat([enc.value(ea[:, 0]), enc.spatial(ea[:, 5])], dim=1))
    parts = lin + enc.edge_type(ea[:, 1]) + sum(k(ea[:, 2 + i]) for i, k in enumerate(enc.kernel))
    torch.testing.assert_close(out, parts, atol=1e-12, rtol=0)
    out.square().sum().backward()
    assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in enc.parameters())


def test_node_encoding_tells_signatures_apart():
    """The node column ``signature`` (an identifier of a function's unusual hyper-parameters)
    reaches the encoding: different identifiers, different encodings; equal ones, equal."""
    enc = NodeEncoder(8).double()
    x = torch.tensor([[1.0, 1.0, -1.0, 1.0, s] for s in (0.0, 5.0, 912_345.0, 5.0)])
    with torch.no_grad():
        h = enc(x, torch.zeros(2, 0, dtype=torch.long))
    assert torch.equal(h[1], h[3])
    assert all(float((h[i] - h[j]).abs().max()) > 1e-6 for i, j in [(0, 1), (0, 2), (1, 2)])


def test_encoders_shapes_dtype_and_out_of_range_inputs(cnn_graph):
    d = cnn_graph
    node, edge = NodeEncoder(12).double(), EdgeEncoder(12).double()
    hx, he = node(d.x, d.edge_index), edge(d.edge_attr)
    assert hx.shape == (d.num_nodes, 12) and he.shape == (d.edge_index.shape[1], 12)
    assert hx.dtype == he.dtype == torch.float64
    x = d.x.clone()
    x[:, 0], x[:, 1], x[:, 2], x[:, 3], x[:, 4] = 1e4, 1e7, 1e9, 77, 2 ** 20
    ea = d.edge_attr.clone()
    ea[:, 1], ea[:, 2:5], ea[:, 5] = 1e3, 1e4, 1e9
    assert bool(torch.isfinite(node(x, d.edge_index)).all()) and bool(torch.isfinite(edge(ea)).all())


@pytest.mark.parametrize("column", schema.NODE_COLUMNS)
def test_node_encoding_is_local_and_sees_every_column(cnn_graph, column):
    d = cnn_graph
    enc = NodeEncoder(12).double()
    base = enc(d.x, d.edge_index)
    x = d.x.clone()
    c = schema.node_column(column)
    x[3, c] = x[3, c] + 1
    out = enc(x, d.edge_index)
    changed = (out - base).abs().amax(dim=1) > 1e-9
    assert changed.tolist() == [i == 3 for i in range(d.num_nodes)]


@pytest.mark.parametrize("column", schema.EDGE_COLUMNS)
def test_edge_encoding_is_local_and_sees_every_column(cnn_graph, column):
    d = cnn_graph
    enc = EdgeEncoder(12).double()
    base = enc(d.edge_attr)
    ea = d.edge_attr.clone()
    c = schema.edge_column(column)
    ea[5, c] = ea[5, c] + 1
    out = enc(ea)
    changed = (out - base).abs().amax(dim=1) > 1e-9
    assert changed.tolist() == [i == 5 for i in range(ea.shape[0])]


def test_node_encoding_sees_in_and_out_degree():
    enc = NodeEncoder(8).double()
    x = torch.tensor([[1.0, 1.0, -1.0, 0.0, 0.0]] * 4)  # four identical neurons
    edge_index = torch.tensor([[0, 0, 1], [2, 3, 2]])  # out-degrees 2, 1; in-degrees 2, 1
    with torch.no_grad():
        h = enc(x, edge_index)
    assert float((h[0] - h[1]).abs().max()) > 1e-6 and float((h[2] - h[3]).abs().max()) > 1e-6
    assert float((h[0] - h[2]).abs().max()) > 1e-6  # out-degree 2 vs in-degree 2
