"""plugins/concat.py: cat and stack along neuron axes (branches side by side, a symmetry within
each branch and none across) and along free axes (parts holding different units, merged into one
node per unit with ``cat_part`` edges; the order of the parts is in the graph).
"""

from __future__ import annotations

import torch
from torch import nn

import gmn_compiler as gc
from gmn_compiler import canonical, testing
from oracles import assert_not_symmetry, assert_oracles, assert_symmetry, permute_cols, permute_rows


class Cat(nn.Module):
    """Two branches of widths (w1, w2) concatenated on the feature axis."""

    def __init__(self, w1=3, w2=2):
        super().__init__()
        self.a, self.b, self.out = nn.Linear(4, w1), nn.Linear(4, w2), nn.Linear(w1 + w2, 2)
        self.w1 = w1

    def forward(self, x):
        return self.out(torch.cat([torch.relu(self.a(x)), torch.tanh(self.b(x))], dim=-1))


def test_cat_of_equal_widths():
    model = Cat(3, 3).eval()
    inputs = (torch.randn(3, 4),)
    pg = assert_oracles(model, inputs, trials=3)
    p = torch.tensor([2, 0, 1])
    assert_symmetry(model, pg, inputs, lambda m: (permute_rows(m.a, p), permute_cols(m.out, torch.cat([p, torch.arange(3, 6)]))))
    # the two halves of the concatenation are different branches: swapping them is not a symmetry
    assert_not_symmetry(model, pg, inputs, lambda m: permute_cols(m.out, torch.tensor([3, 4, 5, 0, 1, 2])))


def test_cat_of_different_widths():
    model = Cat(3, 2).eval()
    inputs = (torch.randn(3, 4),)
    pg = assert_oracles(model, inputs, trials=3)
    assert pg.data.num_nodes == 4 + 3 + 2 + 2 + 3  # inputs, branches, outputs, bias nodes
    p, q = torch.tensor([2, 0, 1]), torch.tensor([1, 0])
    assert_symmetry(model, pg, inputs, lambda m: (permute_rows(m.a, p), permute_rows(m.b, q),
                                                     permute_cols(m.out, torch.cat([p, q + 3]))))


class Stack(nn.Module):
    def __init__(self, reduce: bool):
        super().__init__()
        self.a, self.b = nn.Linear(4, 3), nn.Linear(4, 3)
        self.out = nn.Linear(3 if reduce else 6, 2)
        self.reduce = reduce

    def forward(self, x):
        s = torch.stack([torch.relu(self.a(x)), torch.tanh(self.b(x))], dim=1)  # [B, 2, 3]
        return self.out(s.sum(1) if self.reduce else s.flatten(1))


def test_stack_then_flatten():
    model = Stack(reduce=False).eval()
    inputs = (torch.randn(3, 4),)
    pg = assert_oracles(model, inputs, trials=3)
    p = torch.tensor([1, 2, 0])
    assert_symmetry(model, pg, inputs, lambda m: (permute_rows(m.a, p), permute_cols(m.out, torch.cat([p, torch.arange(3, 6)]))))
    assert_not_symmetry(model, pg, inputs, lambda m: permute_cols(m.out, torch.tensor([3, 4, 5, 0, 1, 2])))


def test_stack_then_sum_over_the_stacked_axis():
    """``stack([u, v]).sum(0)`` is ``u + v``: the graph must behave like the sum's."""
    model = Stack(reduce=True).eval()
    inputs = (torch.randn(3, 4),)
    pg = assert_oracles(model, inputs, trials=3)
    p = torch.tensor([1, 2, 0])
    assert_symmetry(model, pg, inputs, lambda m: (permute_rows(m.a, p), permute_rows(m.b, p), permute_cols(m.out, p)))


class PooledTokens(nn.Module):
    """PiT's pooling stage: the class token goes through a linear layer, the patch tokens through
    a strided depthwise conv, and the two are concatenated along the tokens (``cls_first``) or
    the other way round, then read by one linear layer."""

    def __init__(self, cls_first: bool = True):
        super().__init__()
        self.cls_first = cls_first
        self.embed, self.pool = nn.Conv2d(3, 4, 2, stride=2), nn.Conv2d(4, 8, 2, stride=2, groups=4)
        self.cls, self.fc, self.qkv = nn.Parameter(torch.randn(1, 1, 4)), nn.Linear(4, 8), nn.Linear(8, 6)

    def forward(self, x):
        h = self.embed(x)
        b, c, hh, ww = h.shape
        tokens = torch.cat([self.cls.expand(b, -1, -1), h.flatten(2).transpose(1, 2)], 1)
        cls, patches = self.fc(tokens[:, :1]), self.pool(tokens[:, 1:].transpose(1, 2).reshape(b, c, hh, ww))
        parts = [cls, patches.flatten(2).transpose(1, 2)]
        return self.qkv(torch.cat(parts if self.cls_first else parts[::-1], 1))


def test_tokens_from_different_units_concatenated_along_the_tokens():
    """Each unit of the result is one node fed by the matching unit of each part (``cat_part``
    edges saying which tokens the part fills), the parts' units tied to it: the linear layer
    reading the result moves the class token's and the patches' units together. Every oracle
    passes, and the order of the parts is in the graph."""
    x = (torch.randn(1, 3, 8, 8),)
    model = testing.randomized(PooledTokens())
    graph = assert_oracles(model, x, trials=3)
    testing.assert_swap_faithful(model, x, max_pairs=6)
    assert graph.summary["cat"]["edges"] == 4 + 2 * 8  # the class token attached (4), two parts merged (2 x 8)
    swapped = PooledTokens(cls_first=False)
    swapped.load_state_dict(model.state_dict())
    assert not canonical.isomorphic(graph, gc.compile(swapped, x))
