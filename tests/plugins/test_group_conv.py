"""Group-equivariant layers with parameter sharing (issue 15, item 5): the C4 reference layers.
One edge per free parameter, decompiling writes theta, every oracle, and the network stays
rotation invariant after an edit of the graph."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gmn_compiler as gc
from gmn_compiler import canonical, schema
from gmn_compiler.errors import LoweringError
from gmn_compiler.testing import assert_oracles
from gmn_models.group_layers import C4GroupConv, C4LiftingConv, C4MaxPool, rotate_fields
from gmn_models.model import GMN

X = (torch.randn(1, 2, 7, 7, dtype=torch.float64),)


def c4_net(padding: int = 1) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(C4LiftingConv(2, 3, 3, padding=padding), nn.ReLU(),
                         C4GroupConv(3, 4, 3, padding=padding), nn.ReLU(), C4MaxPool(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)).double()


def _edges_of(pg, etype: str) -> int:
    return int((pg.data.edge_attr[:, schema.edge_column("type")] == pg.vocabulary.code("edge_types", etype)).sum())


def test_one_edge_per_free_parameter_and_fields_as_nodes():
    net = c4_net()
    pg = gc.compile(net, X)
    assert _edges_of(pg, "gconv_lift") == net[0].weight.numel() == 3 * 2 * 3 * 3
    assert _edges_of(pg, "gconv") == net[2].weight.numel() == 4 * 3 * 4 * 3 * 3
    assert _edges_of(pg, "gconv_bias") == 4 and _edges_of(pg, "gconv_lift_bias") == 3
    # a field is one node, not four channels: 3 lifted + 4 group-conv fields, 4 group-pooled
    # and 4 spatially pooled channels, 2 outputs
    neuron = pg.vocabulary.code("node_roles", "neuron")
    assert int((pg.data.x[:, schema.node_column("role")] == neuron).sum()) == 3 + 4 + 4 + 4 + 2
    # the basis element (relative rotation s, kernel u, v) of each group-conv edge
    kernel = pg.data.edge_attr[:, [schema.edge_column(f"kernel{k}") for k in range(3)]]
    gconv = pg.data.edge_attr[:, schema.edge_column("type")] == pg.vocabulary.code("edge_types", "gconv")
    assert sorted(torch.unique(kernel[gconv, 0]).tolist()) == [0, 1, 2, 3]


def test_every_oracle():
    assert_oracles(c4_net(), X)


def test_decompiling_writes_theta_and_an_edited_net_stays_invariant():
    net = c4_net()
    pg = gc.compile(net, X)
    values = pg.data.edge_attr[:, 0].clone()
    is_param = pg.data.edge_param >= 0
    values[is_param] = torch.randn(int(is_param.sum()), generator=torch.Generator().manual_seed(1), dtype=values.dtype)
    state = pg.to_state_dict(values)
    assert state["0.weight"].shape == net[0].weight.shape and state["2.weight"].shape == (4, 3, 4, 3, 3)
    edited = c4_net()
    edited.load_state_dict(state, strict=False)
    assert not torch.allclose(edited[2].weight, net[2].weight)
    x = torch.randn(3, 2, 9, 9, dtype=torch.float64)
    turned = torch.rot90(x, 1, dims=(2, 3))
    torch.testing.assert_close(edited(turned), edited(x), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(edited[0](turned), rotate_fields(edited[0](x)), rtol=1e-9, atol=1e-9)


def test_shifting_rotations_inside_a_field_is_not_a_symmetry():
    """Rolling one group-conv filter along its rotation axis changes the function; the graphs
    must differ (a graph over expanded channels could make it an automorphism)."""
    net, rolled = c4_net(), c4_net()
    with torch.no_grad():
        rolled[2].weight[0] = torch.roll(rolled[2].weight[0], 1, dims=1)
    x = torch.randn(2, 2, 7, 7, dtype=torch.float64)
    assert not torch.allclose(net(x), rolled(x))
    assert not canonical.isomorphic(gc.compile(net, X), gc.compile(rolled, X))


def test_layers_differing_only_in_padding_give_different_graphs():
    a, b = gc.compile(c4_net(padding=1), X), gc.compile(c4_net(padding=0), X)
    assert a.data.num_nodes == b.data.num_nodes and a.data.edge_index.shape == b.data.edge_index.shape
    assert not canonical.isomorphic(a, b)


def test_inputs_that_are_not_fields_are_refused():
    plain = nn.Sequential(nn.Conv2d(2, 12, 3), C4GroupConv(3, 4, 3)).double()
    with pytest.raises(LoweringError, match="not a C4 feature map"):
        gc.compile(plain, X)
    with pytest.raises(LoweringError, match="not a C4 feature map"):
        gc.compile(nn.Sequential(nn.Conv2d(2, 8, 3), C4MaxPool()).double(), X)
    with pytest.raises(ValueError, match="must be odd"):
        C4LiftingConv(2, 3, 4)


def test_a_gmn_built_with_the_graph_vocabulary_reads_the_new_edge_types():
    pg = gc.compile(c4_net(), X)
    model = GMN(hidden=8, num_blocks=1, graph_out=1, vocabulary=pg.vocabulary)
    size = model.edge_encoder.edge_type.embedding.num_embeddings - 1  # rows: names + "unknown"
    assert size == len(pg.vocabulary.edge_types) > len(schema.EDGE_TYPES)
    assert pg.vocabulary.code("edge_types", "gconv") < size  # a row of its own, not "unknown"
    assert model(pg.data).shape == (1, 1)


def test_plain_layers_reading_fields_pass_every_oracle():
    """A BatchNorm over the 4C channels (its entries attached to field nodes with the rotation
    as position) and a plain conv reading the fields: permuting fields stays the symmetry."""
    torch.manual_seed(0)
    net = nn.Sequential(C4LiftingConv(2, 3, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU(),
                        C4GroupConv(3, 4, 3, padding=1), nn.Conv2d(16, 3, 1), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten()).double().eval()
    assert_oracles(net, X)
