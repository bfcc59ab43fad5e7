"""ParameterGraph: schema, decompile contract, save/load with plain torch and PyG."""

from __future__ import annotations

import torch
from torch import nn
from torch_geometric.data import Batch, Data

import gmn_compiler as gc
import pytest
from oracles import assert_oracles, assert_round_trip


def _mlp():
    return nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2))


def test_mlp_counts_follow_architecture():
    pg = assert_round_trip(_mlp(), (torch.randn(2, 3),))
    d = pg.data
    assert d.edge_index.shape[1] == 3 * 5 + 5 + 5 * 2 + 2  # one edge per parameter
    assert d.num_nodes == 3 + 5 + 2 + 2  # inputs, hidden, outputs, two bias nodes
    roles = d.x[:, gc.schema.node_column("role")].long()
    assert int((roles == gc.schema.code(gc.schema.NODE_ROLES, "input")).sum()) == 3
    positions = d.x[:, gc.schema.node_column("position")]
    assert int((positions >= 0).sum()) == 3 + 2  # inputs and outputs are pinned


def test_edge_carries_its_weight_semantically():
    model = _mlp()
    pg = gc.compile(model, (torch.randn(2, 3),))
    d = pg.data
    names = [p.name for p in pg.params]
    w = model[0].weight.detach()
    for e in range(d.edge_index.shape[1]):
        if names[int(d.edge_param[e])] == "0.weight":
            o, i = divmod(int(d.edge_offset[e]), 3)
            assert float(d.edge_attr[e, 0]) == float(w[o, i])
            src = int(d.edge_index[0, e])
            assert int(d.x[src, gc.schema.node_column("position")]) == i  # input node i


def test_edited_values_change_exactly_one_weight():
    model = _mlp()
    pg = gc.compile(model, (torch.randn(2, 3),))
    values = pg.data.edge_attr[:, 0].clone()
    values[7] += 1.0
    state = pg.to_state_dict(values)
    changed = [k for k, v in state.items() if not torch.equal(v, model.state_dict()[k])]
    assert changed == [pg.params[int(pg.data.edge_param[7])].name]


def test_wrong_shape_is_rejected():
    pg = gc.compile(_mlp(), (torch.randn(2, 3),))
    with pytest.raises(gc.DecompileError):
        pg.to_state_dict(torch.zeros(3))


def test_save_load_and_pyg(tmp_path):
    model = _mlp()
    pg = gc.compile(model, (torch.randn(2, 3),))
    path = tmp_path / "g.safetensors"
    pg.save(path)
    loaded = gc.load(path)
    data = Data(x=loaded.data.x, edge_index=loaded.data.edge_index, edge_attr=loaded.data.edge_attr,
                num_nodes=loaded.data.num_nodes)
    batch = Batch.from_data_list([data, data])
    assert batch.num_nodes == 2 * pg.data.num_nodes
    assert torch.equal(loaded.data.edge_attr, pg.data.edge_attr)
    state = loaded.to_state_dict(loaded.data.edge_attr[:, 0])
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert [p.name for p in loaded.params] == [p.name for p in pg.params]


def test_load_rejects_other_files(tmp_path):
    path = tmp_path / "x.pt"
    torch.save({"a": torch.zeros(2)}, path)  # a torch.save file: read weights-only, then refused
    with pytest.raises(gc.CompileError, match="not a gmn-compiler graph"):
        gc.load(path)
    path.write_bytes(b"garbage")
    with pytest.raises(gc.CompileError, match="not a readable graph file"):
        gc.load(path)


def test_provenance_survives_pyg_batching():
    pg = gc.compile(_mlp(), (torch.randn(2, 3),))
    batch = Batch.from_data_list([pg.data, pg.data])
    e = pg.data.edge_index.shape[1]
    assert torch.equal(batch.edge_param[e:], pg.data.edge_param)  # not shifted
    assert torch.equal(batch.edge_offset[e:], pg.data.edge_offset)


def test_float64_model_round_trips_exactly():
    model = _mlp().double()
    pg = assert_round_trip(model, (torch.randn(2, 3, dtype=torch.float64),))
    assert pg.data.edge_attr.dtype == torch.float64


class Shared(nn.Module):
    """One submodule called twice in sequence."""

    def __init__(self):
        super().__init__()
        self.inp, self.shared, self.out = nn.Linear(3, 5), nn.Linear(5, 5), nn.Linear(5, 2)

    def forward(self, x):
        h = torch.relu(self.shared(torch.relu(self.inp(x))))
        return self.out(torch.tanh(self.shared(h)))


def test_shared_submodule_is_tied():
    model = Shared()
    pg = assert_oracles(model, (torch.randn(2, 3),), trials=6)
    tie = gc.schema.code(gc.schema.NODE_ROLES, "tie")
    # one tie node per index of each axis: weight rows, weight columns, bias entries
    assert int((pg.data.x[:, 0] == tie).sum()) == 5 + 5 + 5


def test_untied_shared_parameter_is_caught(monkeypatch):
    """Without ties, an automorphism moves the two copies of shared.weight apart."""
    from gmn_compiler import builder

    monkeypatch.setattr(builder.GraphBuilder, "tie_shared_params", lambda self: [])
    with pytest.raises(gc.SymmetryError, match="shared parameter"):
        gc.check_symmetry(Shared().eval(), (torch.randn(2, 3),), trials=6, completeness=False)


class BroadcastTable(nn.Module):
    """A learned sin/cos table split in halves, each entry broadcast to two adjacent units
    (``repeat_interleave`` by expand + reshape, as GPT-J's rotary embedding), and used by
    ``layers`` layers: every use broadcasts an entry to several nodes."""

    def __init__(self, layers: int = 2):
        super().__init__()
        self.table = nn.Parameter(torch.randn(1, 5, 8))
        self.lin = nn.ModuleList([nn.Linear(8, 8) for _ in range(layers)])
        self.out = nn.Linear(8, 2)

    def forward(self, x):
        pairs = lambda t: t[..., None].expand(*t.shape, 2).reshape(*t.shape[:-1], t.shape[-1] * 2)
        sin, cos = (pairs(t) for t in torch.split(self.table, 4, dim=-1))
        h = x
        for lin in self.lin:
            q = lin(h)
            rotated = torch.stack((-q[..., 1::2], q[..., ::2]), dim=-1).flatten(-2)
            h = q * cos + rotated * sin
        return self.out(h)


@pytest.mark.parametrize("layers", [2, 3])
def test_a_shared_parameter_broadcast_to_several_nodes_is_tied(layers):
    """Each table entry's tie node reaches every node the entry is broadcast to, in every use;
    without that (ties only where one index meets one node) an automorphism moved the uses'
    copies of the table apart: a false symmetry."""
    torch.manual_seed(0)
    model, x = BroadcastTable(layers).eval(), torch.randn(1, 5, 8)
    assert_oracles(model, (x,), trials=8)


def test_disagreeing_copies_are_rejected():
    pg = gc.compile(Shared(), (torch.randn(2, 3),))
    values = pg.data.edge_attr[:, 0].clone()
    names = [p.name for p in pg.params]
    first = next(e for e in range(values.numel()) if pg.data.edge_param[e] >= 0
                 and names[int(pg.data.edge_param[e])] == "shared.weight")
    values[first] += 1
    with pytest.raises(gc.DecompileError, match="shared.weight"):
        pg.to_state_dict(values)


def test_saved_file_gets_ordinary_permissions(tmp_path):
    import os
    import stat

    pg = gc.compile(_mlp(), (torch.randn(2, 3),))
    old = os.umask(0o022)
    try:
        pg.save(tmp_path / "g.pt")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "g.pt").st_mode) == 0o644
