"""Schema v2: the compact form (edge blocks), graph files (safetensors) and v1 conversion."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

import gmn_compiler as gc
from gmn_compiler.offsets import Affine, affine_of
from gmn_compiler.builder import GraphBuilder
from gmn_compiler.ir import ParamRef

DATA = Path(__file__).parent / "data"


class TokenModel(nn.Module):
    """Embedding, a positional table longer than the input (partly represented), a conv, a
    linear layer used twice (tied) and a head: every kind of block the builder stores."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.pos = nn.Parameter(torch.randn(6, 4))
        self.conv = nn.Conv1d(4, 3, 2)
        self.lin = nn.Linear(3, 10)
        self.shared = nn.Linear(3, 3)

    def forward(self, ids):
        h = self.emb(ids) + self.pos[: ids.shape[1]]
        h = torch.relu(self.conv(h.transpose(1, 2))).transpose(1, 2)
        h = self.shared(torch.tanh(self.shared(h)))
        return self.lin(h)


IDS = torch.tensor([[1, 2, 3, 4]])
COLUMNS = ("x", "edge_index", "edge_attr", "edge_param", "edge_offset")


def _v1_model() -> TokenModel:
    model = TokenModel().eval()
    model.load_state_dict(load_file(str(DATA / "graph_v1_state.safetensors")))
    return model


def _same_graph(a, b) -> None:
    for column in COLUMNS:
        assert torch.equal(getattr(a.data, column), getattr(b.data, column)), column
    assert int(a.data.num_nodes) == int(b.data.num_nodes)


def test_v1_file_loads_converted_edge_for_edge():
    """A file written by schema v1 gives the graph the v2 compiler builds, column for column,
    and decompiles to the model it was compiled from."""
    model = _v1_model()
    old = gc.load(DATA / "graph_v1.pt")
    _same_graph(old, gc.compile(model, (IDS,)))
    state = old.to_state_dict(old.edge_values())
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_v1_file_converts_to_a_v2_file(tmp_path):
    old = gc.load(DATA / "graph_v1.pt")
    old.save(tmp_path / "g.safetensors")
    _same_graph(gc.load(tmp_path / "g.safetensors"), old)


def test_saved_file_is_plain_safetensors_with_the_weights_in_their_own_layout(tmp_path):
    model = TokenModel().eval()
    pg = gc.compile(model, (IDS,))
    path = tmp_path / "g.safetensors"
    pg.save(path)
    tensors = load_file(str(path))  # the safetensors library alone reads it
    with safe_open(str(path), framework="pt") as handle:
        meta = json.loads(handle.metadata()["graph"])
    assert meta["schema"]["version"] == gc.schema.SCHEMA_VERSION == 2
    state = model.state_dict()
    for i, row in enumerate(meta["params"]):
        assert torch.equal(tensors[f"param.{i}"], state[row["name"]]), row["name"]
    assert tensors["nodes"].dtype == torch.int32
    loaded = gc.load(path)
    _same_graph(loaded, pg)
    assert [p.name for p in loaded.params] == [p.name for p in pg.params]


def test_file_costs_little_more_than_the_weights(tmp_path):
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    pg = gc.compile(model, (torch.randn(2, 64),))
    pg.save(tmp_path / "g.safetensors")
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    assert os.path.getsize(tmp_path / "g.safetensors") <= 1.3 * weights
    # schema v1's per-edge columns cost 56 bytes per edge, 14x these float32 weights
    assert pg.num_edges * 56 > 13 * weights


def test_compile_does_not_build_the_per_edge_columns():
    pg = gc.compile(TokenModel().eval(), (IDS,))
    assert pg._data is None  # nothing asked for them yet
    values = pg.edge_values()
    assert pg._data is None
    assert torch.equal(values, pg.data.edge_attr[:, 0])


def test_to_dict_round_trips_through_torch_save_weights_only(tmp_path):
    pg = gc.compile(TokenModel().eval(), (IDS,))
    torch.save(pg.to_dict(), tmp_path / "g.pt")
    _same_graph(gc.load(tmp_path / "g.pt"), pg)
    _same_graph(gc.ParameterGraph.from_dict(torch.load(tmp_path / "g.pt", weights_only=True)), pg)


def _rewrite(path: Path, out: Path, edit) -> None:
    tensors = load_file(str(path))
    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata())
    meta = json.loads(metadata["graph"])
    edit(tensors, meta)
    save_file(tensors, str(out), metadata={**metadata, "graph": json.dumps(meta)})


@pytest.mark.parametrize("edit, message", [
    (lambda t, m: t.__setitem__("block.0.src", t["block.0.src"] + 1000), "src has values outside"),
    (lambda t, m: t.pop("param.0"), "'param.0' is missing"),
    (lambda t, m: m["blocks"][2].__setitem__("offsets", {"base": 90, "strides": [0, 4, 1]}),
     "affine offsets outside"),
    (lambda t, m: m["blocks"][0].__setitem__("grid", [3, 3]), "does not broadcast"),
    (lambda t, m: m["schema"].__setitem__("version", 7), "schema v7"),
    (lambda t, m: m["params"][0].__setitem__("dtype", "os.system"), "unknown dtype"),
])
def test_inconsistent_files_are_refused_in_one_line(tmp_path, edit, message):
    good = tmp_path / "good.safetensors"
    gc.compile(TokenModel().eval(), (IDS,)).save(good)
    bad = tmp_path / "bad.safetensors"
    _rewrite(good, bad, edit)
    with pytest.raises(gc.CompileError, match=message) as info:
        gc.load(bad)
    assert "\n" not in str(info.value) and str(bad) in str(info.value)


def test_other_files_are_refused(tmp_path):
    other = tmp_path / "other.safetensors"
    save_file({"a": torch.zeros(2)}, str(other))
    with pytest.raises(gc.CompileError, match="not a gmn-compiler graph"):
        gc.load(other)
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"\xff" * 64)
    with pytest.raises(gc.CompileError, match="not a readable graph file"):
        gc.load(garbage)


@pytest.mark.parametrize("view", [
    lambda t: t, lambda t: t.t(), lambda t: t[1:, ::2], lambda t: t.flip(0),
    lambda t: t[:, :1].expand(4, 3), lambda t: t.reshape(2, 2, 6)[:, 1],
])
def test_layout_views_have_affine_offsets(view):
    offsets = view(torch.arange(24).view(4, 6))
    grid = tuple(offsets.shape)
    found = affine_of(offsets, grid)
    assert found is not None
    assert torch.equal(found.tensor(grid).expand(grid), offsets)
    assert found.injective(grid) == (torch.unique(offsets).numel() == offsets.numel())


def test_gathered_offsets_are_not_affine():
    assert affine_of(torch.tensor([0, 2, 1]), (3,)) is None
    assert affine_of(torch.tensor([[0, 1], [2, 4]]), (2, 2)) is None
    assert not Affine(0, (1, 1)).injective((2, 2))


def test_values_that_are_not_the_parameter_are_a_rule_bug():
    weight = torch.randn(3, 2)
    builder = GraphBuilder({"w": weight})
    a, b = builder.add_nodes(2, "neuron", 0), builder.add_nodes(3, "neuron", 1)
    builder.add_edges((3, 2), a.view(1, 2), b.view(3, 1), "linear", param=ParamRef("w", weight.t().t()))
    builder.finalize()  # a view: fine
    builder.add_edges((3, 2), a.view(1, 2), b.view(3, 1), "linear", param=ParamRef("w", 2 * weight))
    with pytest.raises(gc.LoweringError, match="not its entries"):
        builder.finalize()


def test_axis_positions_of_affine_offsets_match_the_materialised_offsets():
    """The tie step reads, for a layout view, the source index along each axis from the
    affine offsets without materialising them; it must agree with the offsets themselves."""
    from gmn_compiler.ties import affine_axis_position

    gen = torch.Generator().manual_seed(0)
    for _ in range(400):
        shape = tuple(int(s) for s in torch.randint(1, 5, (int(torch.randint(1, 4, (1,), generator=gen)),),
                                                    generator=gen))
        source = torch.arange(int(torch.tensor(shape).prod())).view(shape)
        view = source
        for _ in range(3):  # random transposes, slices, strided slices, expands and flattens
            pick = int(torch.randint(0, 5, (1,), generator=gen))
            if pick == 0 and view.dim() > 1:
                view = view.transpose(0, -1)
            elif pick == 1 and view.shape[0] > 1:
                view = view[int(torch.randint(0, view.shape[0] - 1, (1,), generator=gen)):]
            elif pick == 2:
                view = view.unsqueeze(0).expand(2, *view.shape)
            elif pick == 3:
                view = view[..., 1::2] if view.shape[-1] > 2 else view
            elif view.dim() > 1:
                view = view.reshape(-1, *view.shape[2:])
        grid = tuple(view.shape)
        offsets = affine_of(view, grid)
        if offsets is None:  # a flatten of a transposed view is no layout view
            continue
        for axis in range(len(shape)):
            stride = int(torch.tensor(shape[axis + 1:]).prod()) if axis + 1 < len(shape) else 1
            found = affine_axis_position(offsets, grid, shape[axis], stride).expand(grid)
            assert torch.equal(found, (view // stride) % shape[axis]), (shape, grid, offsets, axis)


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_write_into_is_load_state_dict_in_place():
    torch.manual_seed(0)
    model = TokenModel().eval()
    pg = gc.compile(model, (IDS,))
    edited = pg.edge_values() * 1.25
    expected = TokenModel().eval()
    expected.load_state_dict(model.state_dict())
    expected.load_state_dict(pg.to_state_dict(edited), strict=False)
    pointers = {k: v.data_ptr() for k, v in model.state_dict().items()}
    pg.write_into(model, edited)
    assert {k: v.data_ptr() for k, v in model.state_dict().items()} == pointers  # in place
    for name, tensor in expected.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
    with torch.no_grad():
        assert torch.equal(model(IDS), expected(IDS))


def test_write_into_refuses_before_writing_anything():
    torch.manual_seed(0)
    model = TokenModel().eval()
    pg = gc.compile(model, (IDS,))
    before = _state(model)
    values = pg.edge_values().clone()
    shared = pg.data.edge_param == [p.name for p in pg.params].index("shared.weight")
    values[torch.nonzero(shared)[0]] += 1  # one copy of the shared layer's weight disagrees
    values[pg.data.edge_param == 0] += 1  # and the embedding (written earlier) is edited
    with pytest.raises(gc.DecompileError, match="shared.weight"):
        pg.write_into(model, values)
    other = nn.Sequential(nn.Linear(4, 3))
    with pytest.raises(gc.DecompileError, match="no tensor to write"):
        pg.write_into(other, pg.edge_values())
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
