"""plugins/structural.py: split, chunk, unbind; flatten, reshape, view, permute, transpose,
squeeze/unsqueeze, select/slice over free axes, expand; dropout and identity (cat and stack:
test_concat.py).

Structural ops only move entries, so they must move the node ids exactly as they move data:
the oracles hold, and permutations written by hand through the rearrangement give isomorphic
graphs while permutations that ignore it do not.
"""

from __future__ import annotations


import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gmn_compiler as gc
from oracles import (assert_isomorphic, assert_not_isomorphic, assert_not_symmetry, assert_oracles,
                     assert_round_trip, assert_symmetry, export_onnx, functions_differ, permute_cols, permute_rows)

S = gc.schema
SPATIAL = S.edge_column("spatial")


# ------------------------------------------------------------------ split / chunk / unbind
class SplitUnequal(nn.Module):
    """split into widths 2 and 4, each part feeding its own layer."""

    def __init__(self):
        super().__init__()
        self.l1, self.u, self.v = nn.Linear(4, 6), nn.Linear(2, 2), nn.Linear(4, 2)

    def forward(self, x):
        a, b = torch.split(self.l1(x), [2, 4], dim=-1)
        return self.u(torch.relu(a)) * self.v(torch.tanh(b))


class Glu(nn.Module):
    """chunk (or unbind) into two equal halves: relu(a) * b."""

    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.l1, self.out = nn.Linear(4, 6), nn.Linear(3, 2)

    def forward(self, x):
        h = self.l1(x)
        a, b = h.chunk(2, dim=-1) if self.how == "chunk" else h.view(-1, 2, 3).unbind(1)
        return self.out(torch.relu(a) * b)


SPLITS = {"split": SplitUnequal, "chunk": lambda: Glu("chunk"), "unbind": lambda: Glu("unbind")}


@pytest.mark.parametrize("how", sorted(SPLITS))
def test_split_oracles(how):
    """Only within-part permutations of l1's units are symmetries; the declared symmetry of
    l1 must not claim more."""
    model = SPLITS[how]().eval()
    assert_oracles(model, (torch.randn(3, 4),), trials=3)


@pytest.mark.parametrize("how", sorted(SPLITS))
def test_split_is_sound_and_keeps_parts_apart(how):
    model = SPLITS[how]().eval()
    inputs = (torch.randn(3, 4),)
    pg = assert_round_trip(model, inputs)
    gc.check_symmetry(model, inputs, trials=4, graph=pg, completeness=False)
    if how == "split":
        p = torch.tensor([1, 0, 5, 2, 4, 3])  # within [0, 2) and within [2, 6)
        assert_symmetry(model, pg, inputs, lambda m: (permute_rows(m.l1, p), permute_cols(m.u, torch.tensor([1, 0])),
                                                         permute_cols(m.v, torch.tensor([3, 0, 2, 1]))))
        assert_not_symmetry(model, pg, inputs, lambda m: permute_rows(m.l1, torch.tensor([2, 1, 0, 3, 4, 5])))
    else:
        q = torch.tensor([2, 0, 1])  # the same permutation of both halves keeps the pairing
        assert_symmetry(model, pg, inputs, lambda m: (permute_rows(m.l1, torch.cat([q, q + 3])), permute_cols(m.out, q)))
        # permuting one half alone breaks the pairing a[i] * b[i]
        assert_not_symmetry(model, pg, inputs, lambda m: permute_rows(m.l1, torch.cat([q, torch.arange(3, 6)])))
        # swapping the halves swaps the roles of relu(a) and b
        assert_not_symmetry(model, pg, inputs, lambda m: permute_rows(m.l1, torch.tensor([3, 4, 5, 0, 1, 2])))


# ------------------------------------------------------------------ reshape family
class ChannelShuffle(nn.Module):
    """l1 -> view(B, 2, 3) -> transpose -> reshape(B, 6) -> l2 (ShuffleNet's shuffle)."""

    def __init__(self):
        super().__init__()
        self.l1, self.l2 = nn.Linear(4, 6), nn.Linear(6, 2)

    def forward(self, x):
        h = torch.relu(self.l1(x))
        return self.l2(h.view(-1, 2, 3).transpose(1, 2).reshape(-1, 6))


def test_reshape_transpose_moves_ids_like_data():
    model = ChannelShuffle().eval()
    inputs = (torch.randn(3, 4),)
    pg = assert_oracles(model, inputs, trials=3)
    s = torch.arange(6).view(2, 3).t().reshape(6)  # y = h[s]
    p = torch.tensor([4, 0, 5, 1, 3, 2])
    q = torch.argsort(s)[p[s]]  # columns of l2 follow h's permutation through the shuffle
    assert_symmetry(model, pg, inputs, lambda m: (permute_rows(m.l1, p), permute_cols(m.l2, q)))
    # the same permutation ignoring the shuffle is not a symmetry
    assert_not_symmetry(model, pg, inputs, lambda m: (permute_rows(m.l1, p), permute_cols(m.l2, p)))


class SequenceTranspose(nn.Module):
    """conv1d [B, C, L] -> transpose -> linear over channels -> permute back -> conv1d."""

    def __init__(self):
        super().__init__()
        self.c1, self.lin, self.c2 = nn.Conv1d(2, 4, 3), nn.Linear(4, 3), nn.Conv1d(3, 2, 1)

    def forward(self, x):
        h = torch.relu(self.c1(x)).transpose(1, 2)  # [B, L, 4]
        return self.c2(torch.tanh(self.lin(h)).permute(0, 2, 1))


def test_transpose_and_permute_of_channels():
    model = SequenceTranspose().eval()
    inputs = (torch.randn(2, 2, 7),)
    pg = assert_oracles(model, inputs, trials=3)
    assert pg.data.edge_index.shape[1] == sum(p.numel() for p in model.parameters())
    p, q = torch.tensor([3, 1, 0, 2]), torch.tensor([2, 0, 1])
    assert_symmetry(model, pg, inputs, lambda m: (permute_rows(m.c1, p), permute_cols(m.lin, p), permute_rows(m.lin, q),
                                                     permute_cols(m.c2, q)))


class Unsqueezed(nn.Module):
    """linear [B, 5] -> unsqueeze(-1) -> 1x1 conv1d -> squeeze(-1) -> unflatten -> flatten."""

    def __init__(self):
        super().__init__()
        self.l1, self.c, self.l2 = nn.Linear(4, 5), nn.Conv1d(5, 6, 1), nn.Linear(6, 2)

    def forward(self, x):
        h = self.c(torch.relu(self.l1(x)).unsqueeze(-1)).squeeze(-1)
        return self.l2(torch.tanh(h).unflatten(1, (2, 3)).flatten(1))


def test_squeeze_unsqueeze_unflatten_flatten():
    model = Unsqueezed().eval()
    inputs = (torch.randn(3, 4),)
    pg = assert_oracles(model, inputs, trials=3)
    assert pg.data.edge_index.shape[1] == sum(p.numel() for p in model.parameters())
    p = torch.tensor([3, 0, 4, 1, 2])
    q = torch.tensor([5, 2, 0, 1, 4, 3])
    assert_symmetry(model, pg, inputs, lambda m: (permute_rows(m.l1, p), permute_cols(m.c, p), permute_rows(m.c, q), permute_cols(m.l2, q)))


class ConvView(nn.Module):
    def __init__(self):
        super().__init__()
        self.c, self.l = nn.Conv2d(2, 3, 2), nn.Linear(3 * 2 * 2, 2)

    def forward(self, x):
        h = torch.tanh(self.c(x))
        return self.l(h.view(h.shape[0], -1))


def test_view_of_a_feature_map_records_positions():
    model = ConvView().eval()
    inputs = (torch.randn(2, 2, 3, 3),)
    pg = assert_oracles(model, inputs, trials=3)
    d = pg.data
    names = [p.name for p in pg.params]
    sel = d.edge_param == names.index("l.weight")
    assert torch.equal(d.edge_attr[sel, SPATIAL].long(), d.edge_offset[sel] % 4)
    p = torch.tensor([2, 0, 1])
    cols = (p.view(3, 1) * 4 + torch.arange(4)).reshape(-1)
    assert_symmetry(model, pg, inputs, lambda m: (permute_rows(m.c, p), permute_cols(m.l, cols)))
    # moving one spatial position of the flattened map is not a symmetry
    assert_not_symmetry(model, pg, inputs, lambda m: permute_cols(m.l, torch.tensor([1, 0] + list(range(2, 12)))))


class ClassToken(nn.Module):
    """tokens [B, N, 4] -> linear -> h[:, 0] (select) and h[:, 1:].mean(1) (slice) -> linear."""

    def __init__(self):
        super().__init__()
        self.l1, self.l2 = nn.Linear(4, 5), nn.Linear(5, 2)

    def forward(self, x):
        h = torch.relu(self.l1(x))
        return self.l2(h[:, 0] * h[:, 1:].mean(1))


def test_select_and_slice_over_tokens():
    model = ClassToken().eval()
    inputs = (torch.randn(2, 4, 4),)
    pg = assert_oracles(model, inputs, trials=3)
    p = torch.tensor([3, 0, 4, 1, 2])
    assert_symmetry(model, pg, inputs, lambda m: (permute_rows(m.l1, p), permute_cols(m.l2, p)))


class Centered(nn.Module):
    """h - mean over tokens, broadcast back with expand."""

    def __init__(self):
        super().__init__()
        self.l1, self.l2 = nn.Linear(4, 5), nn.Linear(5, 2)

    def forward(self, x):
        h = self.l1(x)
        return self.l2(h - h.mean(1, keepdim=True).expand(-1, x.shape[1], -1))


def test_expand():
    model = Centered().eval()
    inputs = (torch.randn(2, 3, 4),)
    pg = assert_oracles(model, inputs, trials=3)
    p = torch.tensor([3, 0, 4, 1, 2])
    assert_symmetry(model, pg, inputs, lambda m: (permute_rows(m.l1, p), permute_cols(m.l2, p)))


# ------------------------------------------------------------------ identities
class WithIdentities(nn.Module):
    def __init__(self, extras: bool, cast: bool = False):
        super().__init__()
        self.l1, self.l2 = nn.Linear(4, 5), nn.Linear(5, 2)
        self.mid = nn.Sequential(nn.Dropout(0.5), nn.Identity(), nn.Dropout1d(0.2)) if extras else nn.Identity()
        self.cast = cast

    def forward(self, x):
        h = self.mid(torch.relu(self.l1(x))).clone().contiguous()
        if self.cast:
            h = h.float().to(torch.float32)
        return self.l2(h)


def test_dropout_and_identity_leave_the_graph_unchanged():
    with_extras = WithIdentities(True).eval()
    plain = WithIdentities(False).eval()
    plain.load_state_dict(with_extras.state_dict())
    inputs = (torch.randn(3, 4),)
    pg = assert_oracles(with_extras, inputs, trials=3)
    assert pg.data.num_nodes == 4 + 5 + 2 + 2
    assert_isomorphic(pg, gc.compile(plain, inputs))


def test_dtype_casts_leave_the_graph_unchanged():
    """``h.float()`` / ``h.to(torch.float32)`` export as ``aten.to.dtype`` preceded by an
    ``aten._assert_tensor_metadata`` check that has no output."""
    cast = WithIdentities(False, cast=True).eval()
    plain = WithIdentities(False).eval()
    plain.load_state_dict(cast.state_dict())
    inputs = (torch.randn(3, 4),)
    pg = assert_oracles(cast, inputs, trials=3)
    assert_isomorphic(pg, gc.compile(plain, inputs))


class Flipped(nn.Module):
    """Per-token MLP on [B, T, 3]: ``flip`` over the features between the layers (a
    relabelling of the hidden units) or over the tokens (a view the graph records);
    ``reversed_columns`` writes the feature flip into l2's weight instead."""

    def __init__(self, where: str):
        super().__init__()
        self.where = where
        self.l1, self.l2 = nn.Linear(3, 5), nn.Linear(5, 2)

    def forward(self, x):
        h = torch.relu(self.l1(x))
        if self.where == "features":
            h = h.flip(-1)
        elif self.where == "tokens":
            h = h.flip(1)
        return self.l2(h).mean(1)


@pytest.mark.parametrize("where", ["features", "tokens"])
def test_flip_relabels_and_passes_the_oracles(where):
    torch.manual_seed(0)
    model, inputs = Flipped(where).eval(), (torch.randn(2, 4, 3),)
    pg = assert_oracles(model, inputs)
    plain = Flipped("none").eval()
    plain.load_state_dict(model.state_dict())
    if where == "features":  # the same function as l2 reading its columns in reverse
        with torch.no_grad():
            plain.l2.weight.copy_(plain.l2.weight.flip(1))
    torch.testing.assert_close(model(*inputs), plain(*inputs))
    if where == "features":
        assert_isomorphic(pg, gc.compile(plain, inputs))
    else:  # a view along a free axis is recorded: the mean after it hides it here, not in general
        assert_not_isomorphic(pg, gc.compile(plain, inputs))


class FusedMultiQuery(nn.Module):
    """Falcon's multi-query layout: one fused projection holds the query heads, then one key
    and one value head, read back with list indices (``aten.index.Tensor``) or with slices."""

    def __init__(self, spelling: str, heads: int = 2, dim: int = 3):
        super().__init__()
        self.spelling, self.heads, self.dim = spelling, heads, dim
        self.qkv, self.out = nn.Linear(4, (heads + 2) * dim), nn.Linear(heads * dim, 2)

    def forward(self, x):
        b, t, _ = x.shape
        fused = self.qkv(x).view(b, t, self.heads + 2, self.dim)
        q = fused[:, :, :-2]
        if self.spelling == "index":
            k, v = fused[:, :, [-2]], fused[:, :, [-1]]
        elif self.spelling == "index swapped":
            k, v = fused[:, :, [-1]], fused[:, :, [-2]]
        else:
            k, v = fused[:, :, -2:-1], fused[:, :, -1:]
        q, k, v = (z.transpose(1, 2) for z in (q, k, v))
        h = torch.softmax(q @ k.transpose(-1, -2), -1) @ v
        return self.out(h.transpose(1, 2).reshape(b, t, self.heads * self.dim))


def test_constant_list_indices_on_an_activation_are_a_selection():
    torch.manual_seed(0)
    indexed, sliced = FusedMultiQuery("index").eval(), FusedMultiQuery("slice").eval()
    sliced.load_state_dict(indexed.state_dict())
    x = torch.randn(2, 5, 4)
    assert_isomorphic(gc.compile(indexed, (x,)), gc.compile(sliced, (x,)))
    assert_oracles(indexed, (x,), trials=4)
    swapped = FusedMultiQuery("index swapped").eval()  # which rows the indices select matters
    swapped.load_state_dict(indexed.state_dict())
    assert_not_isomorphic(gc.compile(indexed, (x,)), gc.compile(swapped, (x,)))


class TwoIndexTensors(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 6)

    def forward(self, x):
        return self.a(x).view(-1, 2, 3)[:, [0, 1], [2, 0]]


def test_advanced_indexing_with_several_index_tensors_is_refused():
    with pytest.raises(gc.CompileError, match="several index tensors"):
        gc.compile(TwoIndexTensors().eval(), (torch.randn(2, 4),))


class IndexedAttentionBias(nn.Module):
    """LeViT's attention biases: a learned (heads, offsets) table read through a constant 2-D
    index of position offsets, ``ab[:, idxs]`` (``aten.index.Tensor``), added to the scores."""

    def __init__(self, tokens: int = 4, heads: int = 2, dim: int = 3, mirrored: bool = False):
        super().__init__()
        self.heads, self.dim = heads, dim
        self.qkv, self.out = nn.Linear(5, 3 * heads * dim), nn.Linear(heads * dim, 2)
        pos = torch.arange(tokens)
        offsets = (pos[:, None] - pos[None, :]).abs()
        self.biases = nn.Parameter(torch.randn(heads, tokens))
        self.register_buffer("idxs", offsets.T.contiguous() if mirrored else offsets, persistent=False)
        if mirrored:  # an asymmetric index: which offset each score reads
            self.idxs[0, 1] = 3

    def forward(self, x):
        b, t, _ = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, self.dim).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) + self.biases[:, self.idxs]
        h = torch.softmax(scores, -1) @ v
        return self.out(h.transpose(1, 2).reshape(b, t, self.heads * self.dim))


def test_a_table_read_through_a_two_dimensional_constant_index_is_a_view():
    torch.manual_seed(0)
    model, x = IndexedAttentionBias().eval(), torch.randn(2, 4, 5)
    pg = assert_oracles(model, (x,), trials=4)
    # every table entry is an edge per score position reading it: 2 heads x 4 x 4 reads
    biases = [p.name for p in pg.params].index("biases")
    assert int((pg.data.edge_param == biases).sum()) == 2 * 4 * 4
    other = IndexedAttentionBias(mirrored=True).eval()
    other.load_state_dict(model.state_dict())
    assert functions_differ(model, other, (x,))
    assert_not_isomorphic(pg, gc.compile(other, (x,)))


class TwoDimensionalIndexOnTokens(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 3), nn.Linear(3, 2)
        self.register_buffer("idx", torch.tensor([[0, 2], [1, 1]]), persistent=False)

    def forward(self, x):
        return self.b(torch.relu(self.a(x))[:, self.idx])


def test_a_two_dimensional_constant_index_on_an_activation_selects_and_reshapes():
    torch.manual_seed(0)
    model, x = TwoDimensionalIndexOnTokens().eval(), torch.randn(2, 3, 4)
    assert model(x).shape == (2, 2, 2, 2)
    assert_oracles(model, (x,), trials=4)


# ------------------------------------------------------------------ repeat (ONNX Tile)
class Repeated(nn.Module):
    """``repeat`` over tokens (DeBERTa-v2 repeats its position keys over the batch) or over
    hidden units (each unit read twice by the next layer, by different weights)."""

    def __init__(self, axis: int):
        super().__init__()
        self.l1, self.l2 = nn.Linear(4, 5), nn.Linear(10 if axis == 2 else 5, 2)
        self.counts = [1, 1, 1]
        self.counts[axis] = 2

    def forward(self, x):
        return self.l2(torch.tanh(self.l1(x)).repeat(*self.counts))


@pytest.mark.parametrize("axis", [1, 2], ids=["tokens", "hidden_units"])
@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_onnx_tile_is_the_torch_repeat(axis, dynamo, tmp_path):
    torch.manual_seed(0)
    model, x = Repeated(axis).eval(), torch.randn(2, 3, 4)
    assert_oracles(model, (x,), trials=3)
    path = tmp_path / "tile.onnx"
    export_onnx(model, x, path, dynamo=dynamo)
    pg = gc.compile(str(path))
    assert_isomorphic(pg, gc.compile(model, (x,)))
    gc.check_symmetry(str(path), {"x": x.numpy()}, trials=3)


def test_onnx_tile_along_two_axes_is_the_torch_repeat(tmp_path):
    class TwoAxes(Repeated):
        def forward(self, x):
            return self.l2(torch.tanh(self.l1(x)).repeat(1, 2, 2)[..., :5])

    torch.manual_seed(0)
    model, x = TwoAxes(1).eval(), torch.randn(2, 3, 4)
    path = tmp_path / "tile.onnx"
    export_onnx(model, x, path)
    assert_isomorphic(gc.compile(str(path)), assert_oracles(model, (x,), trials=3))
    gc.check_symmetry(str(path), {"x": x.numpy()}, trials=3)


def test_onnx_tile_with_repeats_computed_in_the_graph_is_refused_in_one_line(tmp_path):
    """Repeats given with the input are not fixed: the graph would hold for one input only."""
    from onnx import TensorProto, helper
    graph = helper.make_graph([helper.make_node("Tile", ["x", "r"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
                               helper.make_tensor_value_info("r", TensorProto.INT64, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["a", "b"])])
    path = tmp_path / "computed.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    with pytest.raises(gc.CompileError, match="onnx.Tile") as refusal:
        gc.compile(str(path))
    assert len(str(refusal.value).strip().splitlines()) == 1


class Unfolded(nn.Module):
    """ConvBERT's span-based convolution input: ``F.unfold`` over the tokens, which the dynamo
    exporter writes as Pad, a Gather of sliding windows (a 2-D index) and a Gather with the
    one-entry index ``[[0]]`` (a number once read, but it adds two axes where a scalar index
    removes one)."""

    def __init__(self, dilation: int = 1):
        super().__init__()
        self.l1, self.l2 = nn.Linear(4, 6), nn.Linear(18, 2)
        self.dilation = dilation

    def forward(self, x):
        h = self.l1(x).transpose(1, 2).unsqueeze(-1)
        windows = F.unfold(h, kernel_size=[3, 1], dilation=[self.dilation, 1], padding=[self.dilation, 0])
        return self.l2(windows.transpose(1, 2))


def test_onnx_unfold_is_the_torch_graph(tmp_path):
    """The windows gathered are stacked slices, each window offset with units of its own (the
    torch frontend's unfold); the one-entry index keeps its axes."""
    torch.manual_seed(0)
    model, x = Unfolded().eval(), torch.randn(1, 5, 4)
    assert_oracles(model, (x,), trials=3)
    path = tmp_path / "unfold.onnx"
    export_onnx(model, x, path)
    assert [n.op_type for n in onnx.load(str(path)).graph.node].count("Gather") == 2
    assert_isomorphic(gc.compile(str(path)), gc.compile(model, (x,)))
    report = gc.check_symmetry(str(path), {"x": x.numpy()}, trials=3)
    assert [s.split(" at ")[0] for s in report.symmetries_checked] == ["hidden units of linear"]


class RowsWrittenInPlace(nn.Module):
    """``h[:, 1:] = tanh(h[:, 1:])``: every token but the first rewritten in place (MViT-v2
    adds its relative positions to the attention rows after the class token this way), which
    the dynamo exporter writes as a ScatterND into rows of the transposed scores."""

    def __init__(self, start: int = 1):
        super().__init__()
        self.l1, self.l2 = nn.Linear(4, 6), nn.Linear(6, 2)
        self.start = start

    def forward(self, x):
        h = self.l1(x)
        h[:, self.start:] = torch.tanh(h[:, self.start:])
        return self.l2(h)


def test_onnx_scatter_into_a_block_of_rows_is_a_write_into_slices(tmp_path):
    torch.manual_seed(0)
    model, x = RowsWrittenInPlace().eval(), torch.randn(2, 5, 4)
    assert_oracles(model, (x,), trials=3)
    path = tmp_path / "scatter.onnx"
    export_onnx(model, x, path)
    assert "ScatterND" in [n.op_type for n in onnx.load(str(path)).graph.node]
    report = gc.check_symmetry(str(path), {"x": x.numpy()}, trials=3)
    assert [s.split(" at ")[0] for s in report.symmetries_checked] == ["hidden units of linear"]


def test_onnx_scatter_into_rows_that_are_not_a_block_is_refused_in_one_line(tmp_path):
    from onnx import TensorProto, helper, numpy_helper
    """Rows 0 and 2 of ``relu(x)`` overwritten by its rows 0 and 1."""
    nodes = [helper.make_node("Relu", ["x"], ["h"]), helper.make_node("Slice", ["h", "s", "e"], ["u"]),
             helper.make_node("ScatterND", ["h", "rows", "u"], ["y"])]
    rows = numpy_helper.from_array(torch.tensor([[0], [2]]).numpy(), "rows")
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 4])],
                              [rows, numpy_helper.from_array(torch.tensor([0]).numpy(), "s"),
                               numpy_helper.from_array(torch.tensor([2]).numpy(), "e")])
    path = tmp_path / "rows.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    with pytest.raises(gc.CompileError, match="onnx.ScatterND") as refusal:
        gc.compile(str(path))
    assert len(str(refusal.value).strip().splitlines()) == 1


@pytest.mark.parametrize("make", [lambda k: Unfolded(dilation=k), lambda k: RowsWrittenInPlace(start=k)],
                         ids=["unfold_dilation", "rows_written_from"])
def test_onnx_rewrites_keep_what_tells_two_programs_apart(make, tmp_path):
    """Windows 1 or 2 tokens apart, rows rewritten from token 1 or 2: same shapes, same
    weights, different functions -- the graphs from the files must differ."""
    torch.manual_seed(0)
    x, one, two = torch.randn(1, 5, 4), make(1).eval(), make(2).eval()
    two.load_state_dict(one.state_dict())
    assert functions_differ(one, two, (x,))
    export_onnx(one, x, tmp_path / "one.onnx")
    export_onnx(two, x, tmp_path / "two.onnx")
    assert_not_isomorphic(gc.compile(str(tmp_path / "one.onnx")), gc.compile(str(tmp_path / "two.onnx")))
