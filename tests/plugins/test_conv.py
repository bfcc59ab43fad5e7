"""plugins/conv.py: 1-D/2-D/3-D convolutions (stride, padding, dilation, groups, depthwise)
and transposed convolutions.

Oracles on every configuration; channel permutations written by hand in the weights give
isomorphic graphs; controls that are not symmetries (two kernel taps swapped, a channel moved
across groups) give different functions and non-isomorphic graphs.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import gmn_compiler as gc
from gmn_compiler.testing import randomized
from oracles import (assert_isomorphic, assert_not_isomorphic, assert_oracles, assert_round_trip,
                     assert_same_function, functions_differ, permute_cols, permute_rows,
                     permuted_copy)

S = gc.schema
ETYPE = S.edge_column("type")
KERNEL = [S.edge_column(f"kernel{d}") for d in range(3)]
CONV_EDGE = S.code(S.EDGE_TYPES, "conv")
CONVT_EDGE = S.code(S.EDGE_TYPES, "conv_transpose")

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


class TwoConvs(nn.Module):
    """conv(c_in -> 5, config) -> tanh -> 1x1 conv(5 -> 2)."""

    def __init__(self, dims: int, c_in: int = 2, **config):
        super().__init__()
        self.a = _CONV[dims](c_in, 5, **config)
        self.b = _CONV[dims](5, 2, 1)

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)))


CONFIGS = {
    "1d": (1, dict(kernel_size=3), (2, 2, 9)),
    "1d-stride-dilation-padding": (1, dict(kernel_size=3, stride=2, dilation=2, padding=2), (2, 2, 11)),
    "2d": (2, dict(kernel_size=3), (2, 2, 5, 5)),
    "2d-rect-stride-padding": (2, dict(kernel_size=(2, 3), stride=(2, 1), padding=(1, 0)), (2, 2, 6, 5)),
    "2d-dilation": (2, dict(kernel_size=2, dilation=2), (1, 2, 6, 6)),
    "2d-same-padding": (2, dict(kernel_size=3, padding="same"), (1, 2, 4, 4)),
    "2d-no-bias": (2, dict(kernel_size=2, bias=False), (1, 2, 4, 4)),
    "3d": (3, dict(kernel_size=(2, 3, 2), padding=1), (1, 2, 3, 3, 3)),
    "3d-stride": (3, dict(kernel_size=2, stride=2), (1, 2, 4, 4, 4)),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_conv_configurations(name):
    dims, config, shape = CONFIGS[name]
    model = TwoConvs(dims, **config).eval()
    inputs = (torch.randn(*shape),)
    pg = assert_oracles(model, inputs, trials=3)
    d = pg.data
    assert int((d.edge_param >= 0).sum()) == sum(p.numel() for p in model.parameters())
    # a window other than the plain one (stride 1, dilation 1, no padding) gets a signature
    # node per conv, with one edge into each output channel
    plain = all(config.get(k, v) in (v, (v,) * dims, [v] * dims) for k, v in
                (("stride", 1), ("dilation", 1), ("padding", 0)))
    signature = int((d.edge_attr[:, 1] == S.code(S.EDGE_TYPES, "signature")).sum())
    assert signature == (0 if plain else model.a.out_channels)  # b is a plain 1x1 conv
    assert d.edge_index.shape[1] == int((d.edge_param >= 0).sum()) + signature

    # every weight edge of the first conv records its kernel position; unused columns are -1
    names = [p.name for p in pg.params]
    sel = d.edge_param == names.index("a.weight")
    kshape = tuple(model.a.weight.shape[2:])
    flat = d.edge_offset[sel] % math.prod(kshape)
    for k in range(3):
        column = d.edge_attr[sel, KERNEL[k]].long()
        if k < dims:
            assert torch.equal(column, (flat // math.prod(kshape[k + 1:])) % kshape[k])
        else:
            assert bool((column == -1).all())
    assert bool((d.edge_attr[sel, ETYPE] == CONV_EDGE).all())

    p = torch.tensor([2, 4, 0, 1, 3])
    permuted = permuted_copy(model, lambda m: (permute_rows(m.a, p), permute_cols(m.b, p)))
    assert_same_function(model, permuted, inputs)
    assert_isomorphic(pg, gc.compile(permuted, inputs))

    # control: flip the kernel of one output channel along its last spatial axis
    def flip_taps(m):
        m.a.weight[1] = m.a.weight[1].flip(-1)
    flipped = permuted_copy(model, flip_taps)
    assert functions_differ(model, flipped, inputs)
    assert_not_isomorphic(pg, gc.compile(flipped, inputs))


def test_swapping_input_channels_is_not_a_symmetry():
    model = TwoConvs(2, c_in=3, kernel_size=3).eval()
    inputs = (torch.randn(1, 3, 5, 5),)
    pg = gc.compile(model, inputs)
    swapped = permuted_copy(model, lambda m: permute_cols(m.a, torch.tensor([1, 0, 2])))
    assert functions_differ(model, swapped, inputs)
    assert_not_isomorphic(pg, gc.compile(swapped, inputs))


class GroupedFirst(nn.Module):
    """Grouped conv reading the (pinned) input: 4 -> 6 channels in 2 groups."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(4, 6, 3, groups=2)
        self.b = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def test_grouped_conv_edges_stay_inside_groups():
    model = GroupedFirst().eval()
    inputs = (torch.randn(1, 4, 5, 5),)
    pg = assert_oracles(model, inputs, trials=3)
    d = pg.data
    names = [p.name for p in pg.params]
    sel = d.edge_param == names.index("a.weight")
    assert int(sel.sum()) == model.a.weight.numel()  # 6 * 2 * 3 * 3: only within-group pairs
    pos = d.x[:, S.node_column("position")].long()
    in_channel = pos[d.edge_index[0, sel]]  # input nodes are pinned to their channel
    out_channel = d.edge_offset[sel] // (2 * 9)
    assert torch.equal(in_channel // 2, out_channel // 3)


def test_grouped_conv_channel_permutations():
    model = GroupedFirst().eval()
    inputs = (torch.randn(1, 4, 5, 5),)
    pg = gc.compile(model, inputs)
    within = torch.tensor([2, 0, 1, 4, 5, 3])
    permuted = permuted_copy(model, lambda m: (permute_rows(m.a, within), permute_cols(m.b, within)))
    assert_same_function(model, permuted, inputs)
    assert_isomorphic(pg, gc.compile(permuted, inputs))
    across = torch.tensor([3, 1, 2, 0, 4, 5])  # channel 0 (group 0) <-> channel 3 (group 1)
    crossed = permuted_copy(model, lambda m: (permute_rows(m.a, across), permute_cols(m.b, across)))
    assert functions_differ(model, crossed, inputs)
    assert_not_isomorphic(pg, gc.compile(crossed, inputs))


class GroupedAfterConv(nn.Module):
    """conv(3 -> 4) -> relu -> grouped conv(4 -> 4, groups=2) -> relu -> 1x1 conv(4 -> 2)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.g = nn.Conv2d(4, 4, 3, groups=2)
        self.b = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.b(torch.relu(self.g(torch.relu(self.a(x)))))


def test_grouped_conv_after_conv_oracles():
    """The channels of ``a`` may only move within a group of ``g`` or as whole groups; the
    completeness oracle must not be asked to find an arbitrary permutation of them."""
    model = GroupedAfterConv().eval()
    assert_oracles(model, (torch.randn(1, 3, 5, 5),), trials=3)


def test_grouped_conv_after_conv_is_sound():
    model = GroupedAfterConv().eval()
    inputs = (torch.randn(1, 3, 5, 5),)
    pg = assert_round_trip(model, inputs)
    gc.check_symmetry(model, inputs, trials=4, graph=pg, completeness=False)


def test_grouped_conv_after_conv_hand_permutations():
    model = GroupedAfterConv().eval()
    inputs = (torch.randn(1, 3, 5, 5),)
    pg = gc.compile(model, inputs)

    def within(m):  # swap the two channels of group 0 of a's output (= g's input)
        p = torch.tensor([1, 0, 2, 3])
        permute_rows(m.a, p)
        m.g.weight[0:2] = m.g.weight[0:2][:, torch.tensor([1, 0])]
    permuted = permuted_copy(model, within)
    assert_same_function(model, permuted, inputs)
    assert_isomorphic(pg, gc.compile(permuted, inputs))

    def whole_groups(m):  # swap the groups: a's channels, g's output blocks, b's columns
        p = torch.tensor([2, 3, 0, 1])
        permute_rows(m.a, p)
        permute_rows(m.g, p)
        permute_cols(m.b, p)
    permuted = permuted_copy(model, whole_groups)
    assert_same_function(model, permuted, inputs)
    assert_isomorphic(pg, gc.compile(permuted, inputs))

    def across(m):  # a's channel 0 <-> 2 only: crosses g's groups
        permute_rows(m.a, torch.tensor([2, 1, 0, 3]))
    crossed = permuted_copy(model, across)
    assert functions_differ(model, crossed, inputs)
    assert_not_isomorphic(pg, gc.compile(crossed, inputs))


class Depthwise(nn.Module):
    def __init__(self):
        super().__init__()
        self.pw1 = nn.Conv2d(3, 4, 1)
        self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.pw2 = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.pw2(torch.relu(self.dw(torch.relu(self.pw1(x)))))


def test_depthwise_conv():
    model = Depthwise().eval()
    inputs = (torch.randn(1, 3, 4, 4),)
    pg = assert_oracles(model, inputs, trials=3)
    names = [p.name for p in pg.params]
    d = pg.data
    sel = d.edge_param == names.index("dw.weight")
    # depthwise: one channel in, one channel out per edge, each channel its own group
    assert int(sel.sum()) == 4 * 9
    src, dst = d.edge_index[0, sel], d.edge_index[1, sel]
    for c in range(4):
        assert torch.unique(src[d.edge_offset[sel] // 9 == c]).numel() == 1
    assert torch.unique(torch.stack([src, dst]), dim=1).shape[1] == 4

    p = torch.tensor([3, 2, 0, 1])
    permuted = permuted_copy(model, lambda m: (permute_rows(m.pw1, p), permute_rows(m.dw, p),
                                               permute_cols(m.pw2, p)))
    assert_same_function(model, permuted, inputs)
    assert_isomorphic(pg, gc.compile(permuted, inputs))
    only_dw = permuted_copy(model, lambda m: permute_rows(m.dw, p))
    assert functions_differ(model, only_dw, inputs)
    assert_not_isomorphic(pg, gc.compile(only_dw, inputs))


def test_depthwise_conv_keeps_the_symmetry_of_the_channels_it_reads():
    """A depthwise conv pairs output channel c with input channel c: the expanded channels
    of an inverted residual (pointwise -> depthwise -> pointwise) stay declared through it,
    and the completeness oracle proves their symmetry (it was withdrawn before: the depthwise
    conv cut them into groups of one that could not move)."""
    model = Depthwise().eval()
    inputs = (torch.randn(1, 3, 4, 4),)
    report = gc.check_symmetry(model, inputs, trials=3)
    assert any(what.startswith("output channels of conv at pw1") for what in report.symmetries_checked)
    assert not any("dw" in what.split(" at ")[1] for what in report.symmetries_checked if " at " in what)
    # on a model input the depthwise channels are tied to fixed positions: nothing is declared
    # over them, and the oracle (soundness and completeness) passes
    on_input = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1, groups=3), nn.ReLU(), nn.Conv2d(3, 2, 1)).eval()
    assert gc.check_symmetry(on_input, (torch.randn(1, 3, 5, 5),), trials=3).symmetries_checked == []


class GhostResidual(nn.Module):
    """GhostNet's ghost module on a residual stream: half the channels from a 1x1 conv, the
    other half a depthwise conv of that half, concatenated and added to the stream. Stream
    channel c and c + 2 are tied (through the depthwise conv): only the four pairs move."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 1)
        self.primary = nn.Conv2d(4, 2, 1)
        self.cheap = nn.Conv2d(2, 2, 3, padding=1, groups=2)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        p = self.primary(h)
        return self.head(h + torch.cat([p, self.cheap(p)], 1))


def test_declaration_over_units_tied_to_each_other_moves_them_together():
    """The stem's declaration used to hold its 4 channels freely permutable although channel
    c and c + 2 are the same unit twice: the completeness oracle proved swapping 0 and 1 was
    no automorphism. Now one channel per tied pair is declared, and the pairs move."""
    model = GhostResidual().eval()
    inputs = (torch.randn(1, 3, 4, 4),)
    pg = assert_oracles(model, inputs, trials=3)
    report = gc.check_symmetry(model, inputs, trials=3, graph=pg)
    stem = [what for what in report.symmetries_checked if what.startswith("output channels of conv at stem")]
    assert stem, report.symmetries_checked
    pairs = torch.tensor([1, 0])
    both = torch.tensor([1, 0, 3, 2])
    permuted = permuted_copy(model, lambda m: (permute_rows(m.stem, both), permute_cols(m.primary, both),
                                               permute_rows(m.primary, pairs), permute_rows(m.cheap, pairs),
                                               permute_cols(m.head, both)))
    assert_same_function(model, permuted, inputs)
    assert_isomorphic(pg, gc.compile(permuted, inputs))


class Transposed2d(nn.Module):
    """Transposed conv with groups reading the input, then a 1x1 conv."""

    def __init__(self):
        super().__init__()
        self.t = nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2)
        self.b = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        return self.b(torch.relu(self.t(x)))


def test_transposed_conv2d_with_groups():
    model = Transposed2d().eval()
    inputs = (torch.randn(1, 4, 3, 3),)
    pg = assert_oracles(model, inputs, trials=3)
    d = pg.data
    names = [p.name for p in pg.params]
    sel = d.edge_param == names.index("t.weight")
    assert int(sel.sum()) == model.t.weight.numel()
    assert bool((d.edge_attr[sel, ETYPE] == CONVT_EDGE).all())
    # weight [c_in, out_per_group, k, k]: input channel i feeds output channels of its group
    pos = d.x[:, S.node_column("position")].long()
    in_channel = pos[d.edge_index[0, sel]]
    assert torch.equal(in_channel, d.edge_offset[sel] // (3 * 9))
    assert int((d.edge_param >= 0).sum()) == sum(p.numel() for p in model.parameters())

    q = torch.tensor([2, 0, 1])  # the same within-group permutation in both groups
    p = torch.cat([q, q + 3])

    def within(m):
        m.t.weight.copy_(m.t.weight[:, q])
        m.t.bias.copy_(m.t.bias[p])
        permute_cols(m.b, p)
    permuted = permuted_copy(model, within)
    assert_same_function(model, permuted, inputs)
    assert_isomorphic(pg, gc.compile(permuted, inputs))

    def across(m):  # output channel 0 (group 0) <-> 3 (group 1)
        a = torch.tensor([3, 1, 2, 0, 4, 5])
        m.t.bias.copy_(m.t.bias[a])
        permute_cols(m.b, a)
        w = m.t.weight.clone()
        m.t.weight[0:2, 0], m.t.weight[2:4, 0] = w[2:4, 0], w[0:2, 0]
    crossed = permuted_copy(model, across)
    assert functions_differ(model, crossed, inputs)
    assert_not_isomorphic(pg, gc.compile(crossed, inputs))


class Decoder(nn.Module):
    """conv -> relu -> transposed conv (stride 2) -> relu -> 1x1 conv."""

    def __init__(self, dims: int = 2):
        super().__init__()
        conv = {1: nn.Conv1d, 2: nn.Conv2d}[dims]
        convt = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d}[dims]
        self.a = conv(2, 4, 3)
        self.t = convt(4, 3, 3, stride=2)
        self.b = conv(3, 2, 1)

    def forward(self, x):
        return self.b(torch.relu(self.t(torch.relu(self.a(x)))))


@pytest.mark.parametrize("dims,shape", [(2, (1, 2, 5, 5)), (1, (2, 2, 7))], ids=["2d", "1d"])
def test_transposed_conv_after_conv(dims, shape):
    model = Decoder(dims).eval()
    inputs = (torch.randn(*shape),)
    pg = assert_oracles(model, inputs, trials=3)
    assert int((pg.data.edge_param >= 0).sum()) == sum(p.numel() for p in model.parameters())

    p = torch.tensor([1, 3, 0, 2])  # a's channels = rows (dim 0) of t's weight
    q = torch.tensor([2, 0, 1])  # t's output channels = dim 1 of its weight
    def both(m):
        permute_rows(m.a, p)
        m.t.weight.copy_(m.t.weight[p][:, q])
        m.t.bias.copy_(m.t.bias[q])
        permute_cols(m.b, q)
    permuted = permuted_copy(model, both)
    assert_same_function(model, permuted, inputs)
    assert_isomorphic(pg, gc.compile(permuted, inputs))

    def taps(m):  # flip the kernel of one (input, output) pair of the transposed conv
        m.t.weight[0, 0] = m.t.weight[0, 0].flip(-1)
    flipped = permuted_copy(model, taps)
    assert functions_differ(model, flipped, inputs)
    assert_not_isomorphic(pg, gc.compile(flipped, inputs))


class RawAudio(nn.Module):
    """Wav2Vec2's feature extractor on raw audio ``[batch, samples]``: one conv channel made by
    ``unsqueeze(1)``, so the input has no neuron axis (its samples are positions)."""

    def __init__(self):
        super().__init__()
        self.conv, self.out = nn.Conv1d(1, 4, 5, stride=2), nn.Linear(4, 2)

    def forward(self, audio):
        return self.out(torch.relu(self.conv(audio.unsqueeze(1))).mean(-1))


def test_raw_audio_unsqueezed_into_one_channel_has_no_input_neurons():
    model, audio = RawAudio().eval(), torch.randn(2, 40)
    pg = assert_oracles(model, (audio,), trials=3)
    # the samples are positions: one input node (the conv's single in-channel), not 40
    inputs = pg.data.x[:, 0] == gc.schema.NODE_ROLES.index("input")
    assert int(inputs.sum()) == 1


class FourierPositions(nn.Module):
    """EdgeNeXt's positional encoding: a 1x1 conv over sin/cos features of the pixel grid (a
    constant computed in ``forward``), added to the stream."""

    def __init__(self, temperature: float = 10.0):
        super().__init__()
        self.temperature = temperature
        self.stem, self.proj, self.head = nn.Conv2d(2, 4, 1), nn.Conv2d(6, 4, 1), nn.Linear(4, 2)

    def forward(self, x):
        b, _, h, w = x.shape
        ys = torch.arange(h, dtype=torch.float32).view(1, 1, h, 1).expand(1, 1, h, w)
        xs = torch.arange(w, dtype=torch.float32).view(1, 1, 1, w).expand(1, 1, h, w)
        freq = self.temperature ** torch.arange(3, dtype=torch.float32).view(1, 3, 1, 1) / 3
        features = torch.cat([torch.sin(ys / freq[:, :2]), torch.cos(xs / freq[:, 1:2]), torch.sin(xs * ys / freq[:, 2:]),
                              torch.cos(ys / freq[:, :2])], 1)[:, :6]
        h_ = torch.relu(self.stem(x)) + self.proj(features)
        return self.head(h_.mean((2, 3)))


def test_a_conv_over_a_constant_reads_pinned_constant_nodes():
    torch.manual_seed(0)
    model, x = FourierPositions().eval(), torch.randn(2, 2, 3, 3)
    assert_oracles(model, (x,), trials=4)
    report = gc.check_symmetry(model, (x,), trials=2)
    assert any(what.startswith("output channels of conv at stem") for what in report.symmetries_checked)
    # the constant is part of the graph: another temperature, another graph
    other = FourierPositions(temperature=20.0).eval()
    other.load_state_dict(model.state_dict())
    assert functions_differ(model, other, (x,))
    assert_not_isomorphic(gc.compile(model, (x,)), gc.compile(other, (x,)))


class HeadPooling(nn.Module):
    """MViT-v2's pooled attention: each head's queries pooled by one (depthwise or full) conv,
    the heads folded into the batch axis, so the conv runs once per head with shared weights."""

    def __init__(self, depthwise: bool = True, stride: int = 1, heads: int = 2, dim: int = 3):
        super().__init__()
        self.heads, self.dim = heads, dim
        self.q = nn.Conv2d(2, heads * dim, 1)
        self.pool = nn.Conv2d(dim, dim, 3, stride=stride, padding=1, groups=dim if depthwise else 1)
        self.out = nn.Linear(heads * dim, 2)

    def forward(self, x):
        b, _, h, w = x.shape
        q = torch.relu(self.q(x)).reshape(b * self.heads, self.dim, h, w)
        q = self.pool(q)
        q = q.reshape(b, self.heads * self.dim, -1).mean(-1)
        return self.out(q)


@pytest.mark.parametrize("depthwise", [True, False], ids=["depthwise", "full"])
def test_a_conv_over_heads_folded_into_the_batch_runs_once_per_head(depthwise):
    x = (torch.randn(1, 2, 4, 4),)
    model = randomized(HeadPooling(depthwise))
    graph = assert_oracles(model, x)
    uses = [p.name for p in graph.params].index("pool.weight")
    assert int((graph.data.edge_param == uses).sum()) == 2 * model.pool.weight.numel()  # one copy per head
    strided = HeadPooling(depthwise, stride=2)
    strided.load_state_dict(model.state_dict())
    assert_not_isomorphic(graph, gc.compile(strided, x))
