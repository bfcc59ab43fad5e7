"""Sparse mixtures of experts (``plugins/moe.py``): a Mixtral-style block written small passes
every oracle (experts permute with their router rows, hidden units within each expert), the
top-k and the renormalisation tell graphs apart, and what the rule cannot read is refused in
one line. The real Mixtral is in the heavy set (``tests/test_heavy_coverage.py``)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gmn_compiler as gc
from gmn_compiler import canonical
from gmn_compiler.errors import CompileError
from gmn_compiler.registry import hookimpl, load_registry
from gmn_compiler.testing import assert_oracles, randomized
from plugins import moe

D, I, E = 6, 3, 4


class Router(nn.Module):
    def __init__(self, top_k: int, renormalise: bool):
        super().__init__()
        self.top_k, self.norm_topk_prob = top_k, renormalise
        self.weight = nn.Parameter(torch.randn(E, D))

    def forward(self, x):
        probs = torch.softmax(F.linear(x, self.weight), dim=-1)
        top, index = torch.topk(probs, self.top_k, dim=-1)
        if self.norm_topk_prob:
            top = top / top.sum(-1, keepdim=True)
        return top, index


class Experts(nn.Module):
    def __init__(self, act_fn: nn.Module | None = None):
        super().__init__()
        self.gate_up_proj = nn.Parameter(torch.randn(E, 2 * I, D))
        self.down_proj = nn.Parameter(torch.randn(E, D, I))
        self.act_fn = act_fn if act_fn is not None else nn.SiLU()

    def forward(self, x, top, index):
        out = torch.zeros_like(x)
        for e in range(E):  # every expert on every token, weighted by zero where not chosen
            weight = (top * (index == e)).sum(-1, keepdim=True)
            gate, up = F.linear(x, self.gate_up_proj[e]).chunk(2, dim=-1)
            out = out + weight * F.linear(self.act_fn(gate) * up, self.down_proj[e])
        return out


class ToyMoe(nn.Module):
    """Laid out as transformers' ``MixtralSparseMoeBlock``."""

    def __init__(self, top_k: int = 2, renormalise: bool = True, act_fn: nn.Module | None = None):
        super().__init__()
        self.gate, self.experts = Router(top_k, renormalise), Experts(act_fn)

    def forward(self, x):
        return self.experts(x, *self.gate(x))


class Model(nn.Module):
    def __init__(self, **moe_options):
        super().__init__()
        self.inp, self.moe, self.out = nn.Linear(3, D), ToyMoe(**moe_options), nn.Linear(D, 2)

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        return self.out(h + self.moe(h))


class _ToyPlugin:
    @hookimpl
    def gmn_register(self, registry):
        moe.register_sparse_moe(registry, ToyMoe)


REGISTRY = load_registry([_ToyPlugin()], entry_points=False)
X = torch.randn(5, 3)


def test_a_mixture_of_experts_passes_every_oracle():
    graph = assert_oracles(randomized(Model()), (X,), registry=REGISTRY)
    declared = [s for s in graph.symmetries if "within each expert" in s["what"]]
    assert declared and declared[0]["groups"] == E and declared[0]["permute_groups"]


def test_experts_permuted_with_their_router_rows_give_the_same_graph_and_function():
    model = randomized(Model())
    other = randomized(Model())
    other.load_state_dict(model.state_dict())
    order = torch.tensor([2, 0, 3, 1])
    with torch.no_grad():
        for name in ("gate.weight", "experts.gate_up_proj", "experts.down_proj"):
            p = other.moe.get_parameter(name)
            p.copy_(p[order])
    assert torch.allclose(model(X), other(X), atol=1e-6)
    assert canonical.isomorphic(gc.compile(model, (X,), registry=REGISTRY), gc.compile(other, (X,), registry=REGISTRY))


def test_moving_one_hidden_unit_to_another_expert_is_no_symmetry():
    """Exchange hidden unit 0 of experts 0 and 1 (gate, up and down weights): another function,
    and another graph."""
    model = randomized(Model())
    other = randomized(Model())
    other.load_state_dict(model.state_dict())
    with torch.no_grad():
        for name, axis in (("experts.gate_up_proj", 1), ("experts.down_proj", 2)):
            p = other.moe.get_parameter(name)
            rows = [0, I] if axis == 1 else [0]
            for r in rows:
                a, b = p[0].select(axis - 1, r).clone(), p[1].select(axis - 1, r).clone()
                p[0].select(axis - 1, r).copy_(b)
                p[1].select(axis - 1, r).copy_(a)
    assert not torch.allclose(model(X), other(X))
    assert not canonical.isomorphic(gc.compile(model, (X,), registry=REGISTRY),
                                    gc.compile(other, (X,), registry=REGISTRY))


@pytest.mark.parametrize("base, options", [
    (dict(), dict(top_k=1)), (dict(), dict(renormalise=False)), (dict(), dict(act_fn=nn.GELU())),
    (dict(act_fn=nn.GELU()), dict(act_fn=nn.GELU(approximate="tanh"))),
], ids=["top_k", "renormalise", "silu_vs_gelu", "gelu_vs_gelu_tanh"])
def test_top_k_renormalisation_and_activation_tell_graphs_apart(base, options):
    model = randomized(Model(**base))
    other = Model(**options)
    other.load_state_dict(model.state_dict())
    assert not torch.allclose(model(X), other(X))
    assert not canonical.isomorphic(gc.compile(model, (X,), registry=REGISTRY),
                                    gc.compile(other, (X,), registry=REGISTRY))


def test_an_exported_program_is_refused_in_one_line():
    model = randomized(Model()).eval()
    ep = torch.export.export(model, (X,))
    with pytest.raises(CompileError, match="compiles from the nn.Module"):
        gc.compile(ep, registry=REGISTRY)


def test_an_activation_the_rule_does_not_know_is_refused():
    model = randomized(Model(act_fn=nn.Softplus()))
    with pytest.raises(CompileError, match="activation Softplus"):
        gc.compile(model, (X,), registry=REGISTRY)


def test_a_block_with_a_part_the_rule_does_not_know_is_refused():
    model = randomized(Model())
    model.moe.experts.register_parameter("bias", nn.Parameter(torch.zeros(E, D)))
    with pytest.raises(CompileError, match="only a linear router and gate/up/down experts"):
        gc.compile(model, (X,), registry=REGISTRY)
