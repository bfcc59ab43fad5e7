"""In-place writes the torch frontend reads (issue 20, MViT-v2): ``x.copy_(y)`` into all of a
value that nothing reads afterwards is ``y``; a write into a block of slices of a value makes
that value, from the write on, its other entries concatenated around ``y``; a write that a view
taken before it would have to see is refused in one line (never compiled as if nothing were
written)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gmn_compiler as gc
from gmn_compiler import canonical
from gmn_compiler.errors import CompileError
from gmn_compiler.testing import assert_oracles, randomized


class Overwrite(nn.Module):
    """``h[...] = new`` in the spellings MViT-v2 uses, and the same functions without a write."""

    def __init__(self, where: str = "whole"):
        super().__init__()
        self.where = where
        self.a, self.b, self.out = nn.Linear(3, 4), nn.Linear(3, 4), nn.Linear(4, 2)

    def forward(self, x):  # x: [B, T, 3]
        h = self.a(x)
        new = torch.tanh(self.b(x)) + h
        if self.where == "whole":  # attn[:, :, 0:, 0:] = ... without a class token
            h[:, 0:] = new
        elif self.where == "tokens":  # every token but the class token
            h[:, 1:] = new[:, 1:]
        elif self.where == "tokens, as a cat":
            h = torch.cat([h[:, :1], new[:, 1:]], 1)
        elif self.where == "stale view":  # a view taken before the write, read after it
            first = h[:, :2]
            h[:, 1:] = new[:, 1:]
            h = h + first.mean(1, keepdim=True)
        else:  # "none": the whole write, without it
            h = new
        return self.out(torch.relu(h))


X = torch.randn(2, 5, 3)


@pytest.mark.parametrize("where, same_as", [("whole", "none"), ("tokens", "tokens, as a cat")])
def test_a_write_compiles_as_the_value_it_makes(where, same_as):
    model = randomized(Overwrite(where))
    graph = assert_oracles(model, (X,), trials=3)
    plain = Overwrite(same_as)
    plain.load_state_dict(model.state_dict())
    assert torch.equal(model(X), plain(X))
    assert canonical.isomorphic(graph, gc.compile(plain, (X,)))


def test_writing_other_tokens_gives_another_graph():
    model = randomized(Overwrite("tokens"))
    whole = Overwrite("whole")
    whole.load_state_dict(model.state_dict())
    assert not torch.allclose(model(X), whole(X))
    assert not canonical.isomorphic(gc.compile(model, (X,)), gc.compile(whole, (X,)))


def test_a_write_an_earlier_view_must_see_is_refused_in_one_line():
    with pytest.raises(CompileError, match="aten.copy_.default") as info:
        gc.compile(Overwrite("stale view"), (X,))
    assert "\n" not in str(info.value)
