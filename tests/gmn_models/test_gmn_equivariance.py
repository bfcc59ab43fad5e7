"""Permutation symmetry of the GMN in float64: relabelling nodes and reordering edges leaves
graph outputs unchanged and permutes edge outputs (and edits) the same way — for single graphs,
for batches of different architectures, and for a batch whose nodes of different graphs are
interleaved. The last tests check that the model does tell apart what it should, so that these
tests can fail."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch_geometric.data import Batch, Data

import gmn_compiler as gc
from gmn_compiler import schema
from gmn_models.model import GMN, EditGMN
from gmn_models.encoders import GraphStatistics

TOL = 1e-10
EDGE_KEYS = ("edge_attr", "edge_param", "edge_offset")


class ResidualMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp, self.f1, self.f2 = nn.Linear(3, 5), nn.Linear(5, 5), nn.Linear(5, 5)
        self.out = nn.Linear(5, 2)
        self.ln = nn.LayerNorm(5)

    def forward(self, x):
        h = torch.relu(self.inp(x))
        h = h + self.f2(torch.nn.functional.gelu(self.f1(self.ln(h))))
        return self.out(h)


@pytest.fixture(scope="module")
def graphs() -> list[Data]:
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 4), nn.Tanh(), nn.Linear(4, 2))
    cnn = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 3, 3),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2)).eval()
    with torch.no_grad():
        cnn[1].running_mean.normal_(), cnn[1].weight.normal_()
    return [gc.compile(mlp, (torch.randn(1, 3),)).data, gc.compile(cnn, (torch.randn(1, 2, 6, 6),)).data,
            gc.compile(ResidualMLP(), (torch.randn(1, 3),)).data]


def model() -> GMN:
    torch.manual_seed(1)
    return GMN(hidden=16, num_blocks=3, graph_out=3, edge_out=2).double()


def relabel(d: Data, gen: torch.Generator) -> tuple[Data, torch.Tensor, torch.Tensor]:
    """``d`` with nodes relabelled by a random permutation and edges shuffled; returns the new
    graph, ``order`` (new node i == old node order[i]) and ``edge_perm`` (new edge i == old edge
    edge_perm[i])."""
    n, e = d.num_nodes, d.edge_index.shape[1]
    order = torch.randperm(n, generator=gen)  # new node i is old node order[i]
    new_id = torch.empty_like(order)
    new_id[order] = torch.arange(n)
    edge_perm = torch.randperm(e, generator=gen)
    out = Data(x=d.x[order], edge_index=new_id[d.edge_index][:, edge_perm], num_nodes=n,
               **{k: getattr(d, k)[edge_perm] for k in EDGE_KEYS})
    return out, order, edge_perm


def interleaved(graphs: list[Data], gen: torch.Generator) -> tuple[Batch, torch.Tensor]:
    """The batch of ``graphs`` with all its nodes relabelled at once (nodes of different graphs
    interleaved, the batch vector following them) and all edges shuffled; returns it and
    ``edge_perm`` (new edge i == old edge edge_perm[i])."""
    batch = Batch.from_data_list(graphs)
    p, order, edge_perm = relabel(batch, gen)
    mixed = Batch.from_data_list(graphs)  # same num_graphs bookkeeping, tensors replaced below
    for k in ("x", "edge_index") + EDGE_KEYS:
        setattr(mixed, k, getattr(p, k))
    mixed.batch = batch.batch[order]
    return mixed, edge_perm


def test_relabelling_does_something(graphs):
    d, _, _ = relabel(graphs[1], torch.Generator().manual_seed(0))
    assert not torch.equal(d.x, graphs[1].x) and not torch.equal(d.edge_index, graphs[1].edge_index)


@pytest.mark.parametrize("which", [0, 1, 2])
def test_single_graph_invariant_and_edge_equivariant(graphs, which):
    d, net, gen = graphs[which], model(), torch.Generator().manual_seed(which)
    g0, e0 = net(d), net.edge_outputs(d)
    for _ in range(2):
        p, _, edge_perm = relabel(d, gen)
        torch.testing.assert_close(net(p), g0, atol=TOL, rtol=0)
        torch.testing.assert_close(net.edge_outputs(p), e0[edge_perm], atol=TOL, rtol=0)


def test_batch_of_different_architectures(graphs):
    net, gen = model(), torch.Generator().manual_seed(7)
    batch = Batch.from_data_list(graphs)
    g0, e0 = net.graph_and_edge_outputs(batch)
    offsets = torch.tensor([0] + [d.edge_index.shape[1] for d in graphs]).cumsum(0)
    graph_order = [2, 0, 1]
    relabelled, edge_perms = [], []
    for i in graph_order:
        p, _, perm = relabel(graphs[i], gen)
        relabelled.append(p)
        edge_perms.append(perm + offsets[i])
    g1, e1 = net.graph_and_edge_outputs(Batch.from_data_list(relabelled))
    torch.testing.assert_close(g1, g0[graph_order], atol=TOL, rtol=0)
    torch.testing.assert_close(e1, e0[torch.cat(edge_perms)], atol=TOL, rtol=0)


def test_batch_with_interleaved_nodes_of_different_graphs(graphs):
    """Relabel the nodes of the whole batch at once (graphs' nodes interleaved) and shuffle all
    edges; the batch vector follows the nodes."""
    net, gen = model(), torch.Generator().manual_seed(11)
    batch = Batch.from_data_list(graphs)
    g0, e0 = net.graph_and_edge_outputs(batch)
    mixed, edge_perm = interleaved(graphs, gen)
    assert not bool((mixed.batch[1:] >= mixed.batch[:-1]).all())  # really interleaved
    g1, e1 = net.graph_and_edge_outputs(mixed)
    torch.testing.assert_close(g1, g0, atol=TOL, rtol=0)
    torch.testing.assert_close(e1, e0[edge_perm], atol=TOL, rtol=0)


def test_edit_is_equivariant(graphs):
    torch.manual_seed(2)
    edit = EditGMN(hidden=16, num_blocks=2, gamma_init=0.2).double()
    gen = torch.Generator().manual_seed(5)
    for d in graphs:
        p, _, edge_perm = relabel(d, gen)
        torch.testing.assert_close(edit(p), edit(d)[edge_perm], atol=TOL, rtol=0)


# ------------------------------------------------- the model tells apart what it should


def _differs(a: torch.Tensor, b: torch.Tensor, at_least: float = 1e-7) -> bool:
    return float((a - b).detach().abs().max()) > at_least


def _with(d: Data, **changes) -> Data:
    out = d.clone()
    for k, v in changes.items():
        setattr(out, k, v)
    return out


def test_one_parameter_value_changes_the_outputs(graphs):
    d, net = graphs[1], model()
    ea = d.edge_attr.clone()
    i = int(torch.nonzero(d.edge_param >= 0)[10])
    ea[i, schema.edge_column("value")] += 0.3
    changed = _with(d, edge_attr=ea)
    assert _differs(net(changed), net(d))
    e0, e1 = net.edge_outputs(d), net.edge_outputs(changed)
    assert _differs(e1[i], e0[i])


def test_activation_kernel_position_and_direction_change_the_outputs(graphs):
    d, net = graphs[1], model()
    g0 = net(d)
    x = d.x.clone()
    hidden = int(torch.nonzero(x[:, schema.node_column("activation")] > 0)[0])
    x[hidden, schema.node_column("activation")] = schema.code(schema.ACTIVATIONS, "gelu")
    assert _differs(net(_with(d, x=x)), g0)
    ea = d.edge_attr.clone()
    conv = int(torch.nonzero(ea[:, schema.edge_column("kernel0")] == 0)[0])
    ea[conv, schema.edge_column("kernel0")] = 1
    assert _differs(net(_with(d, edge_attr=ea)), g0)
    x = d.x.clone()
    x[0, schema.node_column("position")], x[1, schema.node_column("position")] = 1, 0  # swap two inputs
    assert _differs(net(_with(d, x=x)), g0)
    assert _differs(net(_with(d, edge_index=d.edge_index.flip(0))), g0)


def test_values_moved_to_other_edges_change_the_outputs(graphs):
    """Shuffling edge features without their endpoints (what a broken relabelling would do) is
    seen, so the equivariance tests above are not vacuous."""
    d, net = graphs[0], model()
    perm = torch.randperm(d.edge_index.shape[1], generator=torch.Generator().manual_seed(3))
    wrong = _with(d, **{k: getattr(d, k)[perm] for k in EDGE_KEYS})
    assert _differs(net(wrong), net(d))


def test_graphs_in_a_batch_do_not_leak_into_each_other(graphs):
    net = model()
    g0 = net(Batch.from_data_list(graphs))
    ea = graphs[0].edge_attr.clone()
    ea[:, schema.edge_column("value")] *= 2
    g1 = net(Batch.from_data_list([_with(graphs[0], edge_attr=ea)] + graphs[1:]))
    assert _differs(g1[0], g0[0])
    torch.testing.assert_close(g1[1:], g0[1:], atol=TOL, rtol=0)


def test_graph_statistics_readout_is_invariant_and_reads_values(graphs):
    """``graph_stats=True``: the extra readout input is invariant (single graphs and a batch with
    interleaved nodes) and changes when one parameter value changes."""
    torch.manual_seed(3)
    net = GMN(hidden=16, num_blocks=2, graph_out=2, graph_stats=True, value_transform="symlog").double()
    gen = torch.Generator().manual_seed(13)
    for d in graphs:
        p, _, _ = relabel(d, gen)
        torch.testing.assert_close(net(p), net(d), atol=TOL, rtol=0)
    mixed, _ = interleaved(graphs, gen)
    torch.testing.assert_close(net(mixed), net(Batch.from_data_list(graphs)), atol=TOL, rtol=0)
    # the statistics alone see a value change (no message passing needed)
    stats = GMN(hidden=16, num_blocks=0, graph_out=1, graph_stats=True).graph_stats
    d = graphs[1]
    ea = d.edge_attr.clone()
    ea[int(torch.nonzero(d.edge_param >= 0)[3]), 0] += 0.5
    one = torch.zeros(d.num_nodes, dtype=torch.long)
    before = stats(d.x, d.edge_attr, one, one[d.edge_index[0]], 1)
    after = stats(d.x, ea, one, one[d.edge_index[0]], 1)
    assert before.shape == (1, stats.out_dim) and _differs(before, after)


def test_graph_statistics_without_counts_do_not_grow_with_size(graphs):
    """``counts=False``: a graph and two disjoint copies of it read as one graph have the same
    summary (only moments and presence flags are left); with counts they differ."""
    d = graphs[1]
    twice = Batch.from_data_list([d, d])
    one_graph = torch.zeros(twice.num_nodes, dtype=torch.long)
    single = torch.zeros(d.num_nodes, dtype=torch.long)
    for counts, same in ((False, True), (True, False)):
        stats = GraphStatistics("symlog", counts=counts)
        a = stats(d.x, d.edge_attr, single, single[d.edge_index[0]], 1)
        b = stats(twice.x, twice.edge_attr, one_graph, one_graph[twice.edge_index[0]], 1)
        assert a.shape == (1, stats.out_dim)
        if same:
            torch.testing.assert_close(a, b, atol=1e-6, rtol=0)  # std: sqrt of a float64 difference
        else:
            assert _differs(a, b)
