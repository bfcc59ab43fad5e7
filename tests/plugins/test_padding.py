"""Padding along free axes (``F.pad``, ``nn.Conv2d(padding_mode=...)``, ONNX ``Pad``): a view
with a signature, so padding modes and amounts stay apart in the graph."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gmn_compiler as gc
from gmn_compiler import canonical
from gmn_compiler.errors import CompileError
from gmn_compiler.testing import check_all, randomized
from oracles import assert_isomorphic, assert_not_isomorphic, assert_oracles

MODES = ("zeros", "reflect", "replicate", "circular")


def _conv(mode: str) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, padding_mode=mode), nn.ReLU(), nn.Conv2d(3, 2, 1))


def test_each_padding_mode_is_sound_and_its_own_graph():
    x = (torch.randn(1, 2, 5, 5),)
    graphs = {mode: assert_oracles(_conv(mode), x) for mode in MODES}
    for i, a in enumerate(MODES):
        for b in MODES[i + 1:]:
            assert_not_isomorphic(graphs[a], graphs[b])


class TwoPaddings(nn.Module):
    """Two branches that differ only in padding (mode, or which side)."""

    def __init__(self, pad_a, pad_b):
        super().__init__()
        self.pad_a, self.pad_b = pad_a, pad_b
        self.a, self.b = nn.Conv2d(2, 3, 3), nn.Conv2d(2, 3, 3)

    def forward(self, x):
        return self.a(self.pad_a(x)) + self.b(self.pad_b(x))


@pytest.mark.parametrize("pad_a, pad_b", [
    (lambda x: F.pad(x, (1, 1, 1, 1), mode="reflect"), lambda x: F.pad(x, (1, 1, 1, 1), mode="replicate")),
    (lambda x: F.pad(x, (2, 0, 1, 1)), lambda x: F.pad(x, (0, 2, 1, 1))),
    (lambda x: F.pad(x, (1, 1, 1, 1), value=1.0), lambda x: F.pad(x, (1, 1, 1, 1))),
])
def test_branches_that_differ_only_in_padding_are_not_swappable(pad_a, pad_b):
    torch.manual_seed(0)
    check_all(TwoPaddings(pad_a, pad_b), (torch.randn(2, 2, 5, 5),))


class PadChannels(nn.Module):
    def __init__(self, pads=(1, 1), value=0.0, mode="constant"):
        super().__init__()
        self.pads, self.value, self.mode = pads, value, mode
        self.a, self.b = nn.Linear(3, 4), nn.Linear(4 + sum(pads), 2)

    def forward(self, x):
        h = torch.tanh(self.a(x))
        return self.b(F.pad(h, self.pads, mode=self.mode, value=self.value if self.mode == "constant" else None))


def test_constant_units_padded_along_neurons_pass_every_oracle():
    graph = assert_oracles(randomized(PadChannels(value=1.0)), (torch.randn(2, 3),))
    assert canonical.isomorphic(graph, gc.compile(randomized(PadChannels(value=1.0)), (torch.randn(2, 3),)))


@pytest.mark.parametrize("other", [dict(value=2.0), dict(pads=(2, 0)), dict(pads=(0, 2))],
                         ids=["value", "begin", "end"])
def test_the_fill_value_and_the_side_of_constant_units_tell_graphs_apart(other):
    model = randomized(PadChannels(value=1.0))
    changed = PadChannels(**{"value": 1.0, **other})
    changed.load_state_dict(model.state_dict())
    x = (torch.randn(2, 3),)
    assert not torch.allclose(model(*x), changed(*x))
    assert_not_isomorphic(gc.compile(model, x), gc.compile(changed, x))


def test_reflect_padding_along_neurons_is_refused():
    with pytest.raises(CompileError, match="padding axis 1, which carries neurons, is only supported in constant mode"):
        gc.compile(PadChannels(mode="reflect"), (torch.randn(2, 3),))


class LinearAttention(nn.Module):
    """EfficientViT's LiteMLA, small: ReLU-kernel linear attention whose values get a channel
    of ones per head (``F.pad`` along the head dims), so one product gives the weighted sum and
    its normaliser: ``out[..., :-1] / (out[..., -1:] + eps)``."""

    def __init__(self, value: float = 1.0, heads: int = 2, dim: int = 3):
        super().__init__()
        self.value, self.heads, self.dim = value, heads, dim
        self.qkv, self.proj = nn.Conv2d(4, 3 * heads * dim, 1), nn.Conv2d(heads * dim, 4, 1)

    def forward(self, x):
        b, _, h, w = x.shape
        qkv = self.qkv(x).reshape(b, self.heads, 3 * self.dim, h * w).transpose(-1, -2)
        q, k, v = qkv.chunk(3, dim=-1)
        q, k = torch.relu(q), torch.relu(k)
        v = F.pad(v, (0, 1), mode="constant", value=self.value)
        out = q @ (k.transpose(-1, -2) @ v)
        out = out[..., :-1] / (out[..., -1:] + 1e-5)
        return self.proj(out.transpose(-1, -2).reshape(b, -1, h, w))


def test_linear_attention_with_a_ones_channel_passes_every_oracle(tmp_path):
    model, x = randomized(LinearAttention()), (torch.randn(1, 4, 3, 3),)
    graph = assert_oracles(model, x)
    other = LinearAttention(value=2.0)
    other.load_state_dict(model.state_dict())
    assert not torch.allclose(model(*x), other(*x))
    assert_not_isomorphic(graph, gc.compile(other, x))
    path = str(tmp_path / "mla.onnx")
    torch.onnx.export(model, x, path, dynamo=False, opset_version=17)
    assert canonical.isomorphic(gc.compile(path), graph)


@pytest.mark.parametrize("mode", MODES)
def test_onnx_pad_gives_the_torch_graph(mode, tmp_path):
    model, x = randomized(_conv(mode)), (torch.randn(1, 2, 5, 5),)
    path = str(tmp_path / "pad.onnx")
    torch.onnx.export(model, x, path, dynamo=False, opset_version=17)
    pg = gc.compile(path)
    gc.check_symmetry(path)
    assert canonical.isomorphic(pg, gc.compile(model, x))


def test_circular_padding_by_the_whole_length_matches_its_onnx_spelling(tmp_path):
    """Circular padding by the whole axis exports as ``Concat(x, x)``: a cat of two whole views
    of the same nodes along a free axis is a take of every position twice."""
    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.c, self.o = nn.Conv1d(2, 3, 1), nn.Conv1d(3, 2, 3)

        def forward(self, x):
            return self.o(F.pad(self.c(x), (2, 0), mode="circular"))

    torch.manual_seed(0)
    model, x = randomized(Wrap()), (torch.randn(2, 2, 2),)
    pg = assert_oracles(model, x)
    path = str(tmp_path / "wrap.onnx")
    torch.onnx.export(model, x, path, dynamo=False, opset_version=17)
    assert canonical.isomorphic(pg, gc.compile(path))


class Trigram(nn.Module):
    """MobileBERT's trigram input: each token next to its neighbours, the sequence shifted
    both ways and filled with ``fill`` (``spelling``: a concatenated constant, or ``F.pad``)."""

    def __init__(self, spelling: str, fill: torch.Tensor | float = 0.0):
        super().__init__()
        self.spelling, self.fill = spelling, fill
        self.a, self.out = nn.Linear(4, 4), nn.Linear(12, 2)

    def forward(self, x):
        h = self.a(x)
        if self.spelling == "pad":
            after, before = F.pad(h[:, 1:], (0, 0, 0, 1), value=self.fill), F.pad(h[:, :-1], (0, 0, 1, 0), value=self.fill)
        else:
            z = self.fill if isinstance(self.fill, torch.Tensor) else torch.full((1, 1, 4), self.fill)
            z = z.expand(h.shape[0], 1, 4)
            after, before = torch.cat([h[:, 1:], z], 1), torch.cat([z, h[:, :-1]], 1)
        return self.out(torch.cat([after, h, before], 2))


def test_concatenating_a_constant_along_tokens_is_padding():
    """Issue 20: ``cat`` of a constant with activations along a free axis compiles to the same
    graph as ``F.pad`` with that value, and a different fill gives a different graph."""
    torch.manual_seed(0)
    x = torch.randn(2, 5, 4)
    cat, pad = Trigram("cat").eval(), Trigram("pad").eval()
    pad.load_state_dict(cat.state_dict())
    assert_isomorphic(gc.compile(cat, (x,)), gc.compile(pad, (x,)))
    assert_oracles(cat, (x,), trials=4)
    other = Trigram("cat", 1.0).eval()
    other.load_state_dict(cat.state_dict())
    assert_not_isomorphic(gc.compile(cat, (x,)), gc.compile(other, (x,)))
    # where the constant goes (before or after the sequence) matters too
    after = Tail("after").eval()
    before = Tail("before").eval()
    before.load_state_dict(after.state_dict())
    assert_not_isomorphic(gc.compile(after, (x,)), gc.compile(before, (x,)))


class Tail(nn.Module):
    """A shifted copy of the sequence with one zero row ``side`` of it."""

    def __init__(self, side: str):
        super().__init__()
        self.side = side
        self.a, self.out = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        h = self.a(x)
        z = torch.zeros(h.shape[0], 1, 4)
        parts = [h[:, 1:], z] if self.side == "after" else [z, h[:, 1:]]
        return self.out(torch.cat(parts, 1) * h)


def test_a_constant_varying_along_features_is_no_padding_and_stays_sound():
    """Such a constant tells feature units apart (it is not padding): the units it meets are
    pinned by the constant's own nodes, never left interchangeable."""
    from gmn_compiler.testing import assert_sound

    varying = Trigram("cat", torch.arange(4.0).view(1, 1, 4)).eval()
    x = torch.randn(2, 5, 4)
    assert_sound(randomized(varying), (x,))
    zeros = Trigram("cat").eval()
    zeros.load_state_dict(varying.state_dict())
    assert_not_isomorphic(gc.compile(varying, (x,)), gc.compile(zeros, (x,)))
