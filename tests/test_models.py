"""Composite models: every one passes the oracles (round trip, soundness, completeness) and
has at least one weight permutation written by hand that must give an isomorphic graph."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gmn_compiler as gc
from oracles import (assert_not_symmetry, assert_oracles,
                     assert_round_trip, assert_symmetry, permute_cols, permute_norm, permute_rows, randomize_buffers)

S = gc.schema
ROLE = S.node_column("role")
SPATIAL = S.edge_column("spatial")


def _prepared(model):
    return randomize_buffers(model).eval()


# ------------------------------------------------------------------ MLP
def test_mlp():
    model = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 2)).eval()
    inputs = (torch.randn(6, 3),)
    pg = assert_oracles(model, inputs, trials=4)
    d = pg.data
    assert d.edge_index.shape[1] == sum(p.numel() for p in model.parameters())
    assert d.num_nodes == 3 + 5 + 4 + 2 + 3  # inputs, hidden, outputs, one bias node per layer
    assert int((d.x[:, ROLE].long() == S.code(S.NODE_ROLES, "bias")).sum()) == 3
    p, q = torch.tensor([4, 2, 0, 1, 3]), torch.tensor([3, 1, 0, 2])
    assert_symmetry(model, pg, inputs, lambda m: (permute_rows(m[0], p), permute_cols(m[2], p), permute_rows(m[2], q), permute_cols(m[4], q)))
    assert_not_symmetry(model, pg, inputs, lambda m: permute_cols(m[0], torch.tensor([1, 0, 2])))
    assert_not_symmetry(model, pg, inputs, lambda m: permute_rows(m[4], torch.tensor([1, 0])))


# ------------------------------------------------------------------ CNN with batch norm
class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.c2, self.b2 = nn.Conv2d(4, 5, 3, stride=2), nn.BatchNorm2d(5)
        self.fc = nn.Linear(5, 2)

    def forward(self, x):
        h = F.relu(self.b1(self.c1(x)))
        h = F.relu(self.b2(self.c2(h)))
        return self.fc(F.adaptive_avg_pool2d(h, 1).flatten(1))


def test_cnn_with_batch_norm():
    model = _prepared(CNN())
    inputs = (torch.randn(2, 3, 6, 6),)
    pg = assert_oracles(model, inputs, trials=4)
    p, q = torch.tensor([2, 0, 3, 1]), torch.tensor([4, 2, 0, 1, 3])
    assert_symmetry(model, pg, inputs, lambda m: (permute_rows(m.c1, p), permute_norm(m.b1, p), permute_cols(m.c2, p),
                                                     permute_rows(m.c2, q), permute_norm(m.b2, q), permute_cols(m.fc, q)))
    assert_not_symmetry(model, pg, inputs, lambda m: (permute_rows(m.c1, p), permute_cols(m.c2, p)))  # BN left behind


# ------------------------------------------------------------------ ResNet block
class ResBlock(nn.Module):
    """Basic block with a 1x1 projection shortcut (3 -> 4 channels, stride 2)."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(4)
        self.c2, self.b2 = nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.proj, self.bp = nn.Conv2d(3, 4, 1, stride=2, bias=False), nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        h = F.relu(self.b1(self.c1(x)))
        h = F.relu(self.b2(self.c2(h)) + self.bp(self.proj(x)))
        return self.fc(h.mean((2, 3)))


def test_resnet_block_with_projection_shortcut():
    model = _prepared(ResBlock())
    inputs = (torch.randn(2, 3, 6, 6),)
    pg = assert_oracles(model, inputs, trials=4)
    p, q = torch.tensor([1, 3, 0, 2]), torch.tensor([2, 0, 3, 1])

    def inner(m):
        permute_rows(m.c1, p), permute_norm(m.b1, p), permute_cols(m.c2, p)

    def residual(m):  # the residual stream: c2, b2, proj, bp and fc move together
        permute_rows(m.c2, q), permute_norm(m.b2, q), permute_rows(m.proj, q), permute_norm(m.bp, q), permute_cols(m.fc, q)
    assert_symmetry(model, pg, inputs, inner)
    assert_symmetry(model, pg, inputs, residual)
    assert_symmetry(model, pg, inputs, lambda m: (inner(m), residual(m)))
    # the main branch alone, without the shortcut
    assert_not_symmetry(model, pg, inputs, lambda m: (permute_rows(m.c2, q), permute_norm(m.b2, q), permute_cols(m.fc, q)))


# ------------------------------------------------------------------ MobileNet block
class MobileBlock(nn.Module):
    """Inverted residual: 1x1 expand -> BN -> ReLU6 -> 3x3 depthwise -> BN -> ReLU6 -> 1x1
    project -> BN, plus the input."""

    def __init__(self):
        super().__init__()
        self.expand, self.b1 = nn.Conv2d(3, 6, 1, bias=False), nn.BatchNorm2d(6)
        self.dw, self.b2 = nn.Conv2d(6, 6, 3, padding=1, groups=6, bias=False), nn.BatchNorm2d(6)
        self.project, self.b3 = nn.Conv2d(6, 3, 1, bias=False), nn.BatchNorm2d(3)
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        h = F.relu6(self.b1(self.expand(x)))
        h = F.relu6(self.b2(self.dw(h)))
        h = x + self.b3(self.project(h))
        return self.fc(F.adaptive_avg_pool2d(h, 1).flatten(1))


def test_mobilenet_block():
    """The projection's channels are added to the (pinned) input, so they are pinned too; the
    expanded channels are free."""
    assert_oracles(_prepared(MobileBlock()), (torch.randn(2, 3, 5, 5),), trials=4)


def test_mobilenet_block_soundness_and_permutations():
    model = _prepared(MobileBlock())
    inputs = (torch.randn(2, 3, 5, 5),)
    pg = assert_round_trip(model, inputs)
    gc.check_symmetry(model, inputs, trials=4, graph=pg, completeness=False)
    p = torch.tensor([5, 2, 0, 4, 1, 3])
    assert_symmetry(model, pg, inputs, lambda m: (permute_rows(m.expand, p), permute_norm(m.b1, p), permute_rows(m.dw, p),
                                                     permute_norm(m.b2, p), permute_cols(m.project, p)))
    # the depthwise filters must follow their channels
    assert_not_symmetry(model, pg, inputs, lambda m: (permute_rows(m.expand, p), permute_norm(m.b1, p), permute_norm(m.b2, p),
                                                      permute_cols(m.project, p)))
    # the projection's output channels are tied to the input channels by the residual
    q = torch.tensor([1, 0, 2])
    assert_not_symmetry(model, pg, inputs, lambda m: (permute_rows(m.project, q), permute_norm(m.b3, q), permute_cols(m.fc, q)))


# ------------------------------------------------------------------ GroupNorm net
class GroupNormNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.g1 = nn.Conv2d(2, 4, 3), nn.GroupNorm(2, 4)
        self.c2, self.g2 = nn.Conv2d(4, 6, 1), nn.GroupNorm(3, 6)
        self.fc = nn.Linear(6, 2)

    def forward(self, x):
        h = F.silu(self.g1(self.c1(x)))
        h = F.silu(self.g2(self.c2(h)))
        return self.fc(h.mean((2, 3)))


def test_group_norm_net():
    model = _prepared(GroupNormNet())
    inputs = (torch.randn(2, 2, 5, 5),)
    pg = assert_oracles(model, inputs, trials=4)
    assert int((pg.data.x[:, ROLE].long() == S.code(S.NODE_ROLES, "group")).sum()) == 2 + 3

    def apply(p, q):
        return lambda m: (permute_rows(m.c1, p), permute_norm(m.g1, p), permute_cols(m.c2, p), permute_rows(m.c2, q), permute_norm(m.g2, q),
                          permute_cols(m.fc, q))
    assert_symmetry(model, pg, inputs, apply(torch.tensor([1, 0, 3, 2]), torch.tensor([1, 0, 2, 3, 5, 4])))
    assert_symmetry(model, pg, inputs, apply(torch.tensor([2, 3, 0, 1]), torch.tensor([4, 5, 0, 1, 2, 3])))
    assert_not_symmetry(model, pg, inputs, apply(torch.tensor([0, 2, 1, 3]), torch.arange(6)))


# ------------------------------------------------------------------ conv -> flatten -> linear
class ConvFlatten(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(2, 3, 3)  # 5x6 -> 3x4 = 12 positions
        self.fc = nn.Linear(3 * 12, 2)

    def forward(self, x):
        return self.fc(torch.flatten(torch.relu(self.c(x)), 1))


def test_conv_flatten_linear_records_spatial_positions():
    model = ConvFlatten().eval()
    inputs = (torch.randn(3, 2, 5, 6),)
    pg = assert_oracles(model, inputs, trials=4)
    d = pg.data
    names = [p.name for p in pg.params]
    sel = d.edge_param == names.index("fc.weight")
    assert int(sel.sum()) == 2 * 36
    flat = d.edge_offset[sel] % 36  # column of fc.weight = c * 12 + h * 4 + w
    assert torch.equal(d.edge_attr[sel, SPATIAL].long(), flat % 12)
    # column c * 12 + s comes from channel c's node
    bias = d.edge_param == names.index("c.bias")
    channel_node = d.edge_index[1, bias][torch.argsort(d.edge_offset[bias])]
    assert torch.equal(d.edge_index[0, sel], channel_node[flat // 12])
    # no pooling: a (channel, position) pair is one edge per output, not one per channel
    assert d.num_nodes == 2 + 3 + 2 + 2

    p = torch.tensor([2, 0, 1])
    cols = (p.view(3, 1) * 12 + torch.arange(12)).reshape(-1)
    assert_symmetry(model, pg, inputs, lambda m: (permute_rows(m.c, p), permute_cols(m.fc, cols)))
    # permuting positions is not a symmetry
    positions = (torch.arange(3).view(3, 1) * 12 + torch.arange(12).flip(0)).reshape(-1)
    assert_not_symmetry(model, pg, inputs, lambda m: permute_cols(m.fc, positions))


# ------------------------------------------------------------------ Inception
class Inception(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 2, 1)
        self.b1, self.b2 = nn.Conv2d(3, 2, 1), nn.Conv2d(2, 3, 3, padding=1)
        self.c = nn.Conv2d(3, 2, 1)
        self.fc = nn.Linear(7, 2)

    def forward(self, x):
        h = torch.cat([F.relu(self.a(x)), F.relu(self.b2(F.relu(self.b1(x)))),
                       F.relu(self.c(F.max_pool2d(x, 3, 1, 1)))], dim=1)
        return self.fc(h.mean((2, 3)))


def test_inception_concat_branches():
    model = Inception().eval()
    inputs = (torch.randn(2, 3, 4, 4),)
    pg = assert_oracles(model, inputs, trials=4)
    pa, pb, pc = torch.tensor([1, 0]), torch.tensor([2, 0, 1]), torch.tensor([1, 0])
    assert_symmetry(model, pg, inputs, lambda m: (permute_rows(m.a, pa), permute_rows(m.b2, pb), permute_rows(m.c, pc),
                                                     permute_cols(m.fc, torch.cat([pa, pb + 2, pc + 5]))))
    # branches a and c have the same width but are different branches
    assert_not_symmetry(model, pg, inputs, lambda m: permute_cols(m.fc, torch.tensor([5, 6, 2, 3, 4, 0, 1])))


# ------------------------------------------------------------------ squeeze-and-excitation
class SqueezeExcite(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(2, 4, 3, padding=1)
        self.r, self.e = nn.Conv2d(4, 2, 1), nn.Conv2d(2, 4, 1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        h = F.relu(self.c(x))
        gate = torch.sigmoid(self.e(F.relu(self.r(F.adaptive_avg_pool2d(h, 1)))))
        return self.fc((h * gate).mean((2, 3)))


def test_squeeze_and_excitation():
    model = SqueezeExcite().eval()
    inputs = (torch.randn(2, 2, 4, 4),)
    pg = assert_oracles(model, inputs, trials=3)
    p, q = torch.tensor([3, 1, 0, 2]), torch.tensor([1, 0])
    assert_symmetry(model, pg, inputs, lambda m: (permute_rows(m.c, p), permute_cols(m.r, p), permute_rows(m.r, q), permute_cols(m.e, q),
                                                     permute_rows(m.e, p), permute_cols(m.fc, p)))
    # the gate of channel i must stay with channel i
    assert_not_symmetry(model, pg, inputs, lambda m: permute_rows(m.e, p))


# ------------------------------------------------------------------ layer scale
class LayerScaleBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp, self.mlp, self.out = nn.Linear(3, 4), nn.Linear(4, 4), nn.Linear(4, 2)
        self.gamma = nn.Parameter(torch.randn(4))

    def forward(self, x):
        h = self.inp(x)
        h = h + self.gamma * self.mlp(F.gelu(h))
        return self.out(h)


def test_layer_scale_residual():
    model = LayerScaleBlock().eval()
    inputs = (torch.randn(5, 3),)
    pg = assert_oracles(model, inputs, trials=4)
    p = torch.tensor([2, 0, 3, 1])
    assert_symmetry(model, pg, inputs, lambda m: (permute_rows(m.inp, p), permute_rows(m.mlp, p), permute_cols(m.mlp, p),
                                                     m.gamma.copy_(m.gamma[p]), permute_cols(m.out, p)))
    assert_not_symmetry(model, pg, inputs, lambda m: m.gamma.copy_(m.gamma[p]))


# ------------------------------------------------------------------ 1-D and 3-D CNNs
class CNN1d(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.bn = nn.Conv1d(2, 4, 3, padding=1), nn.BatchNorm1d(4)
        self.c2 = nn.Conv1d(4, 3, 3, stride=2, dilation=2)
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        h = F.max_pool1d(F.relu(self.bn(self.c1(x))), 2)
        return self.fc(F.gelu(self.c2(h)).mean(-1))


def test_cnn_1d():
    model = _prepared(CNN1d())
    inputs = (torch.randn(2, 2, 14),)
    pg = assert_oracles(model, inputs, trials=4)
    p, q = torch.tensor([3, 0, 2, 1]), torch.tensor([1, 2, 0])
    assert_symmetry(model, pg, inputs, lambda m: (permute_rows(m.c1, p), permute_norm(m.bn, p), permute_cols(m.c2, p),
                                                     permute_rows(m.c2, q), permute_cols(m.fc, q)))
    assert_not_symmetry(model, pg, inputs, lambda m: m.c1.weight.copy_(m.c1.weight.flip(-1)))


class CNN3d(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv3d(1, 3, (2, 2, 3), padding=(0, 1, 1))
        self.c2 = nn.Conv3d(3, 2, 2, stride=2)
        self.fc = nn.Linear(2, 2)

    def forward(self, x):
        return self.fc(F.relu(self.c2(F.relu(self.c1(x)))).flatten(2).amax(-1))


def test_cnn_3d():
    model = CNN3d().eval()
    inputs = (torch.randn(2, 1, 3, 4, 4),)
    pg = assert_oracles(model, inputs, trials=4)
    kernel = [S.edge_column(f"kernel{k}") for k in range(3)]
    names = [p.name for p in pg.params]
    sel = pg.data.edge_param == names.index("c1.weight")
    offsets = pg.data.edge_offset[sel] % 12  # kernel (2, 2, 3)
    assert torch.equal(pg.data.edge_attr[sel][:, kernel].long(),
                       torch.stack([offsets // 6, (offsets // 3) % 2, offsets % 3], 1))
    p = torch.tensor([2, 0, 1])
    assert_symmetry(model, pg, inputs, lambda m: (permute_rows(m.c1, p), permute_cols(m.c2, p)))
    assert_not_symmetry(model, pg, inputs, lambda m: m.c1.weight.copy_(m.c1.weight.flip(2)))


# ------------------------------------------------------------------ DeepSets
class DeepSets(nn.Module):
    """Two equivariant layers ``W1 x + W2 mean(x)`` over a set of 5 elements."""

    def __init__(self):
        super().__init__()
        self.w1, self.w2 = nn.Linear(3, 4), nn.Linear(3, 4, bias=False)
        self.v1, self.v2 = nn.Linear(4, 4), nn.Linear(4, 4, bias=False)
        self.out = nn.Linear(4, 2)

    def forward(self, x):  # x: [B, set, 3]
        h = F.relu(self.w1(x) + self.w2(x.mean(1, keepdim=True)))
        h = F.relu(self.v1(h) + self.v2(h.mean(1, keepdim=True)))
        return self.out(h.mean(1))


def test_deepsets_layer_keeps_its_two_weights_apart():
    model = DeepSets().eval()
    inputs = (torch.randn(2, 5, 3),)
    pg = assert_oracles(model, inputs, trials=4)
    d = pg.data
    names = [p.name for p in pg.params]
    for a, b in (("w1.weight", "w2.weight"), ("v1.weight", "v2.weight")):
        src_a = set(d.edge_index[0, d.edge_param == names.index(a)].tolist())
        src_b = set(d.edge_index[0, d.edge_param == names.index(b)].tolist())
        assert not src_a & src_b, f"{a} and {b} read the same nodes: their edges are parallel"

    p = torch.tensor([3, 0, 1, 2])
    assert_symmetry(model, pg, inputs, lambda m: (permute_rows(m.w1, p), permute_rows(m.w2, p), permute_cols(m.v1, p), permute_cols(m.v2, p)))
    # swapping W1 and W2 of the hidden layer (same shapes) changes the function and the graph
    def swap(m):
        w = m.v1.weight.clone()
        m.v1.weight.copy_(m.v2.weight)
        m.v2.weight.copy_(w)
    assert_not_symmetry(model, pg, inputs, swap)


# ------------------------------------------------------------------ shared submodules
class Siamese(nn.Module):
    """One encoder applied to two inputs; the encodings are added."""

    def __init__(self):
        super().__init__()
        self.enc, self.head = nn.Linear(3, 4), nn.Linear(4, 2)

    def forward(self, a, b):
        return self.head(F.relu(self.enc(a)) + F.relu(self.enc(b)))


def test_shared_encoder_applied_to_two_inputs():
    model = Siamese().eval()
    inputs = (torch.randn(5, 3), torch.randn(5, 3))
    pg = assert_oracles(model, inputs, trials=4)
    # both uses are represented and decompile to the one parameter
    assert [p.name for p in pg.params].count("enc.weight") == 1
    assert int((pg.data.edge_param == [p.name for p in pg.params].index("enc.weight")).sum()) == 2 * 12
    p = torch.tensor([2, 0, 3, 1])
    assert_symmetry(model, pg, inputs, lambda m: (permute_rows(m.enc, p), permute_cols(m.head, p)))
    assert_not_symmetry(model, pg, inputs, lambda m: permute_rows(m.enc, p))


class Recurrent(nn.Module):
    """One hidden layer applied twice in sequence: head(tanh(f(tanh(f(h)))))."""

    def __init__(self):
        super().__init__()
        self.inp, self.f, self.head = nn.Linear(3, 4), nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        return self.head(torch.tanh(self.f(torch.tanh(self.f(h)))))


def test_shared_submodule_called_twice_in_sequence():
    model = Recurrent().eval()
    inputs = (torch.randn(5, 3),)
    pg = assert_oracles(model, inputs, trials=4)
    # the one symmetry of the shared width: the same permutation on f's inputs and outputs
    p = torch.tensor([2, 0, 3, 1])
    assert_symmetry(model, pg, inputs, lambda m: (permute_rows(m.inp, p), permute_rows(m.f, p), permute_cols(m.f, p), permute_cols(m.head, p)))
    # permuting f's rows without its columns is not one
    assert_not_symmetry(model, pg, inputs, lambda m: (permute_rows(m.inp, p), permute_rows(m.f, p), permute_cols(m.head, p)))


class RecurrentOnInput(nn.Module):
    """The shared layer reads the (pinned) model input: head(tanh(f(tanh(f(x)))))."""

    def __init__(self):
        super().__init__()
        self.f, self.head = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.head(torch.tanh(self.f(torch.tanh(self.f(x)))))


def test_shared_submodule_on_the_input_called_twice():
    """Tying both uses of f to the pinned input leaves f's hidden units no symmetry; the
    oracles must hold (no declared symmetry may claim one)."""
    assert_oracles(RecurrentOnInput().eval(), (torch.randn(5, 4),), trials=4)


def test_shared_submodule_on_the_input_called_twice_is_sound():
    model = RecurrentOnInput().eval()
    inputs = (torch.randn(5, 4),)
    pg = assert_round_trip(model, inputs)
    gc.check_symmetry(model, inputs, trials=4, graph=pg, completeness=False)
    # f's rows and columns are tied to the pinned input order: P W P^T is not a symmetry
    p = torch.tensor([2, 0, 3, 1])
    assert_not_symmetry(model, pg, inputs, lambda m: (permute_rows(m.f, p), permute_cols(m.f, p), permute_cols(m.head, p)))


# ------------------------------------------------------------------ unsupported ops
class Cumulative(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.b(torch.cumsum(self.a(x), dim=0).sort(0).values)


def test_unsupported_ops_are_all_reported_with_the_plugin_hint():
    with pytest.raises(gc.UnsupportedOpsError) as info:
        gc.compile(Cumulative(), (torch.randn(2, 3),))
    message = str(info.value)
    assert "aten.cumsum.default" in message and "aten.sort.default" in message
    assert "plugin" in message
    assert "test_models.py" in message  # the location in the source model
    assert {kind for kind, _ in info.value.ops} == {"aten.cumsum.default", "aten.sort.default"}
