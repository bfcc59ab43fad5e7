"""Higher-order ops in exported graphs (issue 20): autocast and grad-mode regions are inlined,
data-dependent control flow is refused in one line naming it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gmn_compiler as gc
from gmn_compiler import canonical
from gmn_compiler.testing import assert_oracles


class Region(nn.Module):
    """A hidden layer computed inside ``context()`` (or plainly with ``context=None``), as MIT
    EfficientViT computes its linear attention with autocast disabled."""

    def __init__(self, context=None):
        super().__init__()
        self.context = context
        self.a, self.b, self.out = nn.Linear(4, 6), nn.Linear(6, 6), nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.a(x))
        if self.context is None:
            g = torch.tanh(self.b(h)) * h
        else:
            with self.context():
                g = torch.tanh(self.b(h)) * h
        return self.out(g + h)


CONTEXTS = {
    "autocast disabled": lambda: torch.autocast("cpu", enabled=False),
    "grad disabled": lambda: torch.set_grad_enabled(False),
}


@pytest.mark.parametrize("name", sorted(CONTEXTS))
def test_a_wrapped_region_compiles_like_the_same_code_inline(name):
    torch.manual_seed(0)
    wrapped, plain = Region(CONTEXTS[name]).eval(), Region().eval()
    plain.load_state_dict(wrapped.state_dict())
    x = torch.randn(3, 4)
    exported = torch.export.export(wrapped, (x,))
    hops = [n for n in exported.graph.nodes if isinstance(n.target, torch._ops.HigherOrderOperator)]
    if name == "autocast disabled":  # the region really reaches the frontend as a wrapper
        assert [str(n.target.name()) for n in hops] == ["wrap_with_autocast"]
    assert canonical.isomorphic(gc.compile(wrapped, (x,)), gc.compile(plain, (x,)))
    assert_oracles(wrapped, (x,), trials=4)


class Branch(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cond(x.sum() > 0, lambda t: self.a(t), lambda t: self.b(t), (x,))


def test_data_dependent_control_flow_is_refused_in_one_line():
    with pytest.raises(gc.CompileError, match=r"control flow \(cond\)") as info:
        gc.compile(Branch().eval(), (torch.randn(2, 4),))
    assert "\n" not in str(info.value)
