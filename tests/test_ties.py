"""Copies of a parameter's entries (gmn_compiler/ties.py): tied where the graph can tell the
copies apart, refused where it cannot -- each case was a false symmetry before."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gmn_compiler as gc
from gmn_compiler import ties
from gmn_compiler.offsets import Affine
from oracles import assert_isomorphic, assert_not_isomorphic, assert_oracles


class PairScale(nn.Module):
    """One entry of ``v`` scales (or shifts) two adjacent hidden units -- ``repeat_interleave``
    written as expand + reshape, as per-head parameters broadcast over a head's channels are."""

    def __init__(self, shift: bool = False):
        super().__init__()
        self.shift = shift
        self.inp, self.v, self.out = nn.Linear(3, 8), nn.Parameter(torch.randn(4)), nn.Linear(8, 2)

    def forward(self, x):
        pairs = self.v[:, None].expand(4, 2).reshape(8)
        h = self.inp(x) + pairs if self.shift else self.inp(x) * pairs
        return self.out(torch.relu(h))


@pytest.mark.parametrize("shift", [False, True])
def test_an_entry_broadcast_to_several_units_in_one_use_is_tied(shift):
    """A single use that repeats entries: the units an entry reaches hang off that entry's tie
    node, so an automorphism moves them together (before, nothing tied them and a rotation of
    the hidden units moved one copy of v[c] to another entry's place)."""
    torch.manual_seed(0)
    model, x = PairScale(shift).eval(), torch.randn(2, 3)
    pg = assert_oracles(model, (x,), trials=8)
    tie = gc.schema.code(gc.schema.NODE_ROLES, "tie")
    assert int((pg.data.x[:, 0] == tie).sum()) == 4  # one per entry of v


class PerUnitScale(nn.Module):
    """PairScale's function with eight independent scales (or v's entries tiled instead of
    paired: ``layout="tile"``, the same model up to a permutation of the hidden units)."""

    def __init__(self, pairs: PairScale, layout: str = "free"):
        super().__init__()
        self.inp, self.out, self.layout = copy.deepcopy(pairs.inp), copy.deepcopy(pairs.out), layout
        v = pairs.v.detach()
        self.v = nn.Parameter(v if layout == "tile" else v.repeat_interleave(2))
        if layout == "tile":  # unit c + 4 r here is unit 2 c + r there
            order = torch.tensor([2 * (j % 4) + j // 4 for j in range(8)])
            with torch.no_grad():
                self.inp.weight.copy_(self.inp.weight[order])
                self.inp.bias.copy_(self.inp.bias[order])
                self.out.weight.copy_(self.out.weight[:, order])

    def forward(self, x):
        scale = self.v[None, :].expand(2, 4).reshape(8) if self.layout == "tile" else self.v
        return self.out(torch.relu(self.inp(x) * scale))


def test_sharing_an_entry_is_in_the_graph_and_its_layout_up_to_permutation_is_not():
    """Same function and values: four entries each scaling two units differ from eight
    independent scales (the ties say which units share an entry); pairing (0, 1), (2, 3), ...
    or tiling (0, 4), (1, 5), ... is the same parameterisation up to renaming the hidden units."""
    torch.manual_seed(0)
    pairs, x = PairScale().eval(), torch.randn(2, 3)
    free, tile = PerUnitScale(pairs).eval(), PerUnitScale(pairs, "tile").eval()
    assert torch.allclose(pairs(x), free(x)) and torch.allclose(pairs(x), tile(x))
    assert_not_isomorphic(gc.compile(pairs, (x,)), gc.compile(free, (x,)))
    assert_isomorphic(gc.compile(pairs, (x,)), gc.compile(tile, (x,)))
    assert_oracles(tile, (x,), trials=8)


class Circulant(nn.Module):
    """A weight matrix gathered from a vector through a constant index table,
    ``W[i, j] = w[(i - j) % n]``; with ``scale`` the vector is also used elementwise."""

    def __init__(self, scale: bool = False, n: int = 4):
        super().__init__()
        self.scale = scale
        self.inp, self.w, self.out = nn.Linear(3, n), nn.Parameter(torch.randn(n)), nn.Linear(n, 2)
        i = torch.arange(n)
        self.register_buffer("index", (i[:, None] - i[None, :]) % n, persistent=False)

    def forward(self, x):
        h = torch.relu(self.inp(x))
        if self.scale:
            h = h * self.w
        return self.out(torch.relu(F.linear(h, self.w[self.index])))


@pytest.mark.parametrize("scale", [False, True])
def test_a_weight_gathered_through_an_index_table_is_refused(scale):
    """Every unit meets every entry of w, so no tie can say which entry an edge holds; the
    graph had automorphisms that gave w's copies different values. Refused in one line."""
    model, x = Circulant(scale).eval(), torch.randn(2, 3)
    with pytest.raises(gc.LoweringError, match=r"parameter 'w' .* axis 0 the graph cannot tell") as err:
        gc.compile(model, (x,))
    assert "\n" not in str(err.value)


class ColumnAsBias(nn.Module):
    """Column 0 of a layer's weight also added as a bias: permuting the units that feed the
    layer would make another column the bias, so unit 0 is pinned."""

    def __init__(self):
        super().__init__()
        self.inp, self.w, self.out = nn.Linear(3, 4), nn.Parameter(torch.randn(4, 4)), nn.Linear(4, 2)

    def forward(self, x):
        h = torch.relu(self.inp(x))
        return self.out(torch.relu(F.linear(h, self.w) + self.w[:, 0]))


def test_units_tied_one_to_one_across_uses_narrow_the_declarations():
    """The graph was right (column 0's unit tied to the bias use) but the Linear declared all
    four input units freely permutable, so the completeness oracle reported a missing
    symmetry; units meeting an index one to one in several uses now count as one unit."""
    torch.manual_seed(0)
    pg = assert_oracles(ColumnAsBias().eval(), (torch.randn(2, 3),), trials=8)
    w = [p.name for p in pg.params].index("w")
    first = (pg.data.edge_param == w) & (pg.data.edge_offset == 0) & (pg.data.edge_attr[:, 1] == 0)
    unit0 = int(pg.data.edge_index[0, first][0])  # the unit that feeds column 0
    assert all(unit0 not in s["nodes"].tolist() for s in pg.symmetries)


def test_copies_are_checked_in_a_strided_column_of_edge_attr():
    """``to_state_dict(pg.data.edge_attr[:, 0])`` passes a strided column: the copies of w's
    column 0 were read at the wrong entries (a false DecompileError on unedited values, and a
    real disagreement could pass). Unedited: w comes back; one copy edited: refused."""
    torch.manual_seed(0)
    model = ColumnAsBias().eval()
    pg = gc.compile(model, (torch.randn(2, 3),))
    assert torch.equal(pg.to_state_dict(pg.data.edge_attr[:, 0])["w"], model.w.detach())
    w = [p.name for p in pg.params].index("w")
    bias_copy = (pg.data.edge_param == w) & (pg.data.edge_offset == 4) & (pg.data.edge_attr[:, 1] != 0)
    assert int(bias_copy.sum()) == 1
    edited = pg.data.edge_attr.clone()
    edited[bias_copy, 0] += 1.0
    with pytest.raises(gc.DecompileError, match="copies of parameter 'w' disagree"):
        pg.to_state_dict(edited[:, 0])


def _use(grid, src, dst, offsets=None, kernel=(), spatial=None):
    return SimpleNamespace(grid=grid, src=torch.as_tensor(src), dst=torch.as_tensor(dst),
                           offsets=offsets, kernel=kernel, spatial=spatial)


def test_uses_that_disagree_on_how_entries_are_told_apart_are_refused():
    """A (3, 2) parameter read whole by two blocks: one tells axis 1 apart by its target nodes,
    the other only by a kernel feature. Permuting the first block's nodes would move its copies
    and not the other's, so the plan is refused; with both told apart by nodes it ties."""
    by_nodes = _use((3, 2), torch.arange(3).view(3, 1), torch.arange(3, 5).view(1, 2))
    by_feature = _use((3, 2), torch.arange(5, 8).view(3, 1), torch.tensor([[8]]), kernel=(torch.arange(2).view(1, 2),))
    with pytest.raises(gc.LoweringError, match="axis 1 one use tells entries apart by nodes"):
        ties.plan_ties("p", (3, 2), [by_nodes, by_feature])
    other = _use((3, 2), torch.arange(5, 8).view(3, 1), torch.arange(8, 10).view(1, 2))
    plan = ties.plan_ties("p", (3, 2), [by_nodes, other])
    assert [axis for axis, _ in plan] == [0, 1]


def test_features_alone_tell_entries_apart_without_ties():
    """Two uses that both tell axis 1 apart by a kernel feature need no tie along it."""
    uses = [_use((3, 2), torch.arange(3).view(3, 1) + 3 * k, torch.tensor([[9 + k]]),
                 kernel=(torch.arange(2).view(1, 2),)) for k in range(2)]
    assert [axis for axis, _ in ties.plan_ties("p", (3, 2), uses)] == [0]


@pytest.mark.parametrize("offsets, grid, repeats", [
    (None, (3, 4), False),
    (Affine(0, (4, 1)), (3, 4), False),
    (Affine(0, (1, 4)), (4, 3), False),     # a transposed view
    (Affine(0, (1, 0)), (4, 3), True),      # broadcast along an axis
    (Affine(0, (1, 1)), (3, 3), True),      # diagonals overlap
    (torch.tensor([[0, 1], [1, 0]]), (2, 2), True),
    (torch.tensor([[0, 1], [2, 3]]), (2, 2), False),
    (torch.tensor([[0], [1]]), (2, 2), True),          # compact: repeated along axis 1
])
def test_repeated_entries_are_found(offsets, grid, repeats):
    assert ties.repeats_entries(offsets, grid) is repeats


@pytest.mark.parametrize("shift", [False, True])
def test_onnx_file_of_an_entry_broadcast_to_units_gives_the_torch_graph(shift, tmp_path):
    """TorchScript-exported ONNX keeps ``v`` and its Expand/Reshape: the same tied graph, and
    its automorphisms hold when run by onnxruntime. (The dynamo exporter's optimizer folds the
    broadcast into a new 8-entry initializer: eight independent weights, soundly untied.)"""
    from test_onnx_default_export import export_default

    torch.manual_seed(0)
    model, x = PairScale(shift).eval(), torch.randn(2, 3)
    path = tmp_path / "m.onnx"
    export_default(model, x, path, dynamo=False)
    pg = gc.compile(str(path))
    assert_isomorphic(gc.compile(model, (x,)), pg)
    gc.check_symmetry(str(path), trials=6, graph=pg)


def test_onnx_file_of_a_weight_gathered_through_an_index_table_is_refused(tmp_path):
    """The TorchScript exporter keeps w and the Gather: refused as from torch. (The dynamo
    exporter's optimizer folds w[index] into a 4 x 4 initializer: sixteen independent weights,
    whose graph is sound for that file -- checked here by running its automorphisms.)"""
    from test_onnx_default_export import export_default

    model, x = Circulant().eval(), torch.randn(2, 3)
    path, folded = tmp_path / "m.onnx", tmp_path / "folded.onnx"
    export_default(model, x, path, dynamo=False)
    with pytest.raises(gc.LoweringError, match=r"parameter '.*w' .* axis 0 the graph cannot tell"):
        gc.compile(str(path))
    export_default(model, x, folded)
    pg = gc.compile(str(folded))
    assert "w" not in [p.name for p in pg.params]
    gc.check_symmetry(str(folded), trials=6, graph=pg)
