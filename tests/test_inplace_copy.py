"""In-place writes the torch frontend reads (issue 20, MViT-v2): ``x.copy_(y)`` into all of a
value that nothing reads afterwards is ``y``; a write into part of a value, or into a value
read later, is refused in one line (never compiled as if nothing were written)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gmn_compiler as gc
from gmn_compiler import canonical
from gmn_compiler.errors import CompileError
from gmn_compiler.testing import assert_oracles, randomized


class Overwrite(nn.Module):
    """MViT-v2's ``attn[:, :, 0:, 0:] = attn + bias`` (no class token: the whole tensor)."""

    def __init__(self, where: str = "whole"):
        super().__init__()
        self.where = where
        self.a, self.b, self.out = nn.Linear(3, 4), nn.Linear(3, 4), nn.Linear(4, 2)

    def forward(self, x):
        h = self.a(x)
        new = torch.tanh(self.b(x)) + h
        if self.where == "whole":
            h[:, 0:] = new
        elif self.where == "part":
            h[:, 1:] = new[:, 1:]
        else:  # "none": the same function without the write
            h = new
        return self.out(h)


X = torch.randn(5, 3)


def test_a_whole_overwrite_is_the_written_value():
    model = randomized(Overwrite("whole"))
    graph = assert_oracles(model, (X,), trials=3)
    plain = Overwrite("none")
    plain.load_state_dict(model.state_dict())
    assert torch.equal(model(X), plain(X))
    assert canonical.isomorphic(graph, gc.compile(plain, (X,)))


def test_a_write_into_part_of_a_value_is_refused_in_one_line():
    with pytest.raises(CompileError, match="aten.copy_.default") as info:
        gc.compile(Overwrite("part"), (X,))
    assert "\n" not in str(info.value)
