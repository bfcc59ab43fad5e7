"""Group-equivariant layers with parameter sharing (issue 15, item 5): the C4 and D4 reference
layers. One edge per free parameter, decompiling writes theta, every oracle, and the network
stays invariant (rotations; for D4 also reflections) after an edit of the graph."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gmn_compiler as gc
from gmn_compiler import canonical, layout, schema
from gmn_compiler.errors import LoweringError
from gmn_compiler.testing import assert_oracles
from gmn_models.group_layers import (C4, D4, C4GroupConv, C4LiftingConv, C4MaxPool, D4GroupConv, D4LiftingConv,
                                     D4MaxPool, Group, rotate_fields, transform_fields)
from gmn_models.model import GMN

X = (torch.randn(1, 2, 7, 7, dtype=torch.float64),)


def c4_net(padding: int = 1, stride: int = 1) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(C4LiftingConv(2, 3, 3, padding=padding, stride=stride), nn.ReLU(),
                         C4GroupConv(3, 4, 3, padding=padding, stride=stride), nn.ReLU(), C4MaxPool(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)).double()


def d4_net(padding: int = 1, stride: int = 1) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(D4LiftingConv(2, 3, 3, padding=padding, stride=stride), nn.ReLU(),
                         D4GroupConv(3, 4, 3, padding=padding, stride=stride), nn.ReLU(), D4MaxPool(),
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


# ---------------------------------------------------------------- stride (C4), D4


def test_layers_differing_only_in_stride_give_different_graphs():
    a, b = gc.compile(c4_net(stride=1), X), gc.compile(c4_net(stride=2), X)
    assert a.data.num_nodes == b.data.num_nodes and a.data.edge_index.shape == b.data.edge_index.shape
    assert not canonical.isomorphic(a, b)


def _edited(make, pg) -> nn.Module:
    """``make()`` with the graph's parameter edges replaced by random values, decompiled."""
    values = pg.data.edge_attr[:, 0].clone()
    is_param = pg.data.edge_param >= 0
    values[is_param] = torch.randn(int(is_param.sum()), generator=torch.Generator().manual_seed(1), dtype=values.dtype)
    edited = make()
    edited.load_state_dict(pg.to_state_dict(values), strict=False)
    return edited


def test_the_groups_cayley_tables():
    """Element indices agree (C4 is D4's first four elements), the tables are groups, and
    ``act`` is a homomorphism; a set that is not closed is refused."""
    assert D4.order == 8 and C4.order == 4
    assert D4.elements[:4] == C4.elements and [row[:4] for row in D4.table[:4]] == list(C4.table)
    probe = torch.randn(2, 5, 5)
    for group in (C4, D4):
        n = group.order
        for g in range(n):
            assert group.table[g][group.inverse[g]] == 0
            for h in range(n):
                assert torch.equal(group.act(group.table[g][h], probe), group.act(g, group.act(h, probe)))
                for k in range(n):
                    assert group.table[group.table[g][h]][k] == group.table[g][group.table[h][k]]
    with pytest.raises(ValueError, match="closed"):
        Group("not closed", ((0, 0), (0, 1)))


def test_d4_one_edge_per_free_parameter_and_fields_as_nodes():
    net = d4_net()
    pg = gc.compile(net, X)
    assert _edges_of(pg, "gconv_lift") == net[0].weight.numel() == 3 * 2 * 3 * 3
    assert _edges_of(pg, "gconv") == net[2].weight.numel() == 4 * 3 * 8 * 3 * 3
    assert _edges_of(pg, "gconv_bias") == 4 and _edges_of(pg, "gconv_lift_bias") == 3
    neuron = pg.vocabulary.code("node_roles", "neuron")
    assert int((pg.data.x[:, schema.node_column("role")] == neuron).sum()) == 3 + 4 + 4 + 4 + 2
    kernel = pg.data.edge_attr[:, schema.edge_column("kernel0")]
    gconv = pg.data.edge_attr[:, schema.edge_column("type")] == pg.vocabulary.code("edge_types", "gconv")
    assert sorted(torch.unique(kernel[gconv]).tolist()) == list(range(8))
    state = pg.to_state_dict(pg.data.edge_attr[:, 0])
    assert all(torch.equal(state[name], p) for name, p in net.named_parameters())


def test_d4_every_oracle():
    assert_oracles(d4_net(), X)


def test_d4_an_edited_net_stays_invariant_to_rotations_and_reflections():
    net = d4_net()
    edited = _edited(d4_net, gc.compile(net, X))
    assert edited[2].weight.shape == (4, 3, 8, 3, 3) and not torch.allclose(edited[2].weight, net[2].weight)
    x = torch.randn(3, 2, 9, 9, dtype=torch.float64)
    lifted = edited[0](x)
    for g in range(D4.order):
        moved = D4.act(g, x)
        torch.testing.assert_close(edited(moved), edited(x), rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(edited[0](moved), transform_fields(lifted, D4, g), rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(edited[2](transform_fields(lifted, D4, g)), transform_fields(edited[2](lifted), D4, g),
                                   rtol=1e-9, atol=1e-9)
    assert not torch.allclose(edited(x), net(x))


def _reflect_group_axis(net: nn.Module) -> None:
    """Filter 0 of the group conv read with its group axis permuted by a reflection."""
    net[2].weight[0] = net[2].weight[0][:, list(D4.table[4])]


def _reflect_lifting_filter(net: nn.Module) -> None:
    """Lifting filter 0 mirrored in space (the same filter seen through a reflection)."""
    net[0].weight[0] = torch.flip(net[0].weight[0], dims=(-1,))


@pytest.mark.parametrize("reflect", [_reflect_group_axis, _reflect_lifting_filter], ids=["group_axis", "spatial"])
def test_d4_reflecting_inside_a_field_is_not_a_symmetry(reflect):
    """Reflecting one field's filter changes the function; the graphs must differ."""
    net, reflected = d4_net(), d4_net()
    with torch.no_grad():
        reflect(reflected)
    x = torch.randn(2, 2, 7, 7, dtype=torch.float64)
    assert not torch.allclose(net(x), reflected(x))
    assert not canonical.isomorphic(gc.compile(net, X), gc.compile(reflected, X))


@pytest.mark.parametrize("window", [{"padding": 0}, {"stride": 2}], ids=["padding", "stride"])
def test_d4_layers_differing_only_in_padding_or_stride_give_different_graphs(window):
    a, b = gc.compile(d4_net(), X), gc.compile(d4_net(**window), X)
    assert a.data.num_nodes == b.data.num_nodes and a.data.edge_index.shape == b.data.edge_index.shape
    assert not canonical.isomorphic(a, b)


def test_feature_maps_of_the_other_group_are_refused():
    torch.manual_seed(0)
    with pytest.raises(LoweringError, match="not a D4 feature map"):
        gc.compile(nn.Sequential(C4LiftingConv(2, 6, 3), D4GroupConv(3, 4, 3)).double(), X)
    with pytest.raises(LoweringError, match="not a C4 feature map"):
        gc.compile(nn.Sequential(D4LiftingConv(2, 3, 3), C4GroupConv(6, 4, 3)).double(), X)
    with pytest.raises(LoweringError, match="not a D4 feature map"):
        gc.compile(nn.Sequential(nn.Conv2d(2, 16, 3), D4MaxPool()).double(), X)


def test_layout_fields():
    """The shared check behind both group plugins (here and e2cnn's): one node per field,
    positions 0..size-1 in order, single-channel fields may have no position."""
    ids, pos = torch.tensor([5, 5, 7, 9, 9, 9]), torch.tensor([0, 1, 0, 0, 1, 2])
    assert layout.fields(ids, pos, (2, 1, 3)).tolist() == [5, 7, 9]
    assert layout.fields(torch.tensor([4, 2]), None, (1, 1)).tolist() == [4, 2]
    for bad_ids, bad_pos, sizes, field in [(ids, pos, (3, 3), "field 0"),                       # two nodes
                                           (ids, torch.tensor([1, 0, 0, 0, 1, 2]), (2, 1, 3), "field 0"),
                                           (ids, pos, (2, 1, 2, 1), "field 3"),
                                           (torch.tensor([3, 3]), None, (2,), "field 0")]:
        with pytest.raises(ValueError, match=field):
            layout.fields(bad_ids, bad_pos, sizes)
    with pytest.raises(ValueError, match="6 channels"):
        layout.fields(ids, pos, (2, 1))
