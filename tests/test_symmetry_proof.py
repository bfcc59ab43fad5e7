"""The witnesses that stand for a whole automorphism group (gmn_compiler.symmetry_proof)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

import gmn_compiler as gc
from gmn_compiler import canonical, symmetry_proof, testing
from gmn_compiler.registry import load_registry
from gmn_compiler.symmetry import check_completeness, free_declarations
from gmn_plugins.linear import lower_linear


class GroupedResNet(nn.Module):
    """A stem conv, residual blocks of two grouped 1x1 convs, a linear head: the stream is
    declared once per block (tied units), hidden channels permute within groups, and whole
    groups (of the stream and every hidden layer together) can be exchanged although no rule
    declares it."""

    def __init__(self, channels: int = 8, blocks: int = 2, groups: int = 2):
        super().__init__()
        self.stem = nn.Conv2d(3, channels, 3, padding=1)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(channels, channels, 1, groups=groups), nn.ReLU(),
                          nn.Conv2d(channels, channels, 1, groups=groups))
            for _ in range(blocks))
        self.head = nn.Linear(channels, 5)

    def forward(self, x):
        h = self.stem(x)
        for block in self.blocks:
            h = h + block(h)
        return self.head(h.mean((2, 3)))


def _grouped(channels=8, blocks=2, groups=2):
    model = testing.randomized(GroupedResNet(channels, blocks, groups).eval())
    inputs = (torch.randn(1, 3, 4, 4),)
    return model, inputs, gc.compile(model, inputs)


def test_four_exact_orders_give_the_known_group():
    _, _, pg = _grouped(channels=8, blocks=2, groups=2)
    w = symmetry_proof.find_witnesses(pg, free_declarations(pg))
    assert w.sound
    k = math.factorial(4)  # 4 channels per group
    # stream + 2 hidden layers, each 2 groups of 4 freely permutable units; and the 2 groups swap
    assert w.orders["A"] == k ** (2 * 3) * 2
    assert w.orders["A_B"] == k ** (2 * 3)  # blocks kept in place
    assert w.orders["A_S"] == 1 and w.orders["A_P"] == 2  # positions kept: only the group swap


def test_a_few_witnesses_stand_for_every_generator():
    model, inputs, pg = _grouped(channels=16, blocks=3, groups=4)
    w = symmetry_proof.find_witnesses(pg, free_declarations(pg))
    bliss = canonical.automorphism_generators(pg)
    assert w.sound and len(w.generators) < len(bliss) / 4
    # the group swap puts every group of a layer in one orbit: one transposition per layer
    assert len(w.transpositions) == 4
    report = gc.check_symmetry(model, inputs, graph=pg, trials=2)
    assert report.proof.startswith(f"{len(w.generators)} witnesses generate all")
    assert len(report.symmetries_checked) == len(free_declarations(pg))


def test_every_declared_block_and_block_swap_is_proved_by_the_witnesses():
    class Grouped(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.norm, self.b = nn.Linear(3, 8), nn.GroupNorm(2, 8), nn.Linear(8, 2)

        def forward(self, x):
            return self.b(torch.relu(self.norm(self.a(x))))

    pg = gc.compile(testing.randomized(Grouped()), (torch.randn(4, 3),))
    syms = free_declarations(pg)
    assert any(s.get("permute_groups") for s in syms)
    w = symmetry_proof.find_witnesses(pg, syms)
    for sym in syms:
        complete, swaps = symmetry_proof.proved_parts(w, sym)
        assert all(complete) and swaps == bool(sym.get("permute_groups"))


def test_a_symmetry_that_leaves_the_declared_units_falls_back_to_every_generator():
    """Two identical branches may be exchanged; with one branch's declaration dropped, that
    exchange maps declared units onto undeclared ones, the orders disagree and the check
    runs every BLISS generator instead (and still passes: the exchange is a true symmetry)."""
    class Branches(nn.Module):
        def __init__(self):
            super().__init__()
            self.a1, self.a2, self.b1, self.b2 = nn.Linear(3, 4), nn.Linear(4, 2), nn.Linear(3, 4), nn.Linear(4, 2)

        def forward(self, x):
            return self.a2(torch.tanh(self.a1(x))) + self.b2(torch.tanh(self.b1(x)))

    model, inputs = testing.randomized(Branches()), (torch.randn(5, 3),)
    pg = gc.compile(model, inputs)
    assert symmetry_proof.find_witnesses(pg, free_declarations(pg)).sound
    pg = gc.compile(model, inputs)
    pg.symmetries = [s for s in pg.symmetries if "b1" not in s["what"]]
    w = symmetry_proof.find_witnesses(pg, free_declarations(pg))
    assert not w.sound and w.orders["A"] * w.orders["A_S"] > w.orders["A_B"] * w.orders["A_P"]
    report = gc.check_symmetry(model, inputs, graph=pg, trials=2)
    assert "BLISS generators" in report.proof


class _ForgottenBias:
    """A plugin whose linear rule gives the bias no edges: hidden units look exchangeable."""

    @gc.hookimpl
    def gmn_register(self, registry):
        registry.add_rule("linear", lambda ctx, op: lower_linear(ctx, dataclasses.replace(op, inputs=op.inputs[:2])),
                          override=True)


def test_a_false_symmetry_is_caught_by_the_witnesses_alone():
    model = testing.randomized(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)))
    inputs = (torch.randn(5, 3),)
    pg = gc.compile(model, inputs, registry=load_registry([_ForgottenBias()], entry_points=False))
    w = symmetry_proof.find_witnesses(pg, free_declarations(pg))
    assert w.sound  # the forgotten bias is invisible to the structure ...
    with pytest.raises(gc.SymmetryError, match="the transposition witness #0 is not function-preserving"):
        gc.check_symmetry(model, inputs, graph=pg, trials=0)  # ... not to the model


def test_completeness_through_witnesses_still_proves_a_missing_symmetry():
    """A second declaration over the stream's units (tied to the first) that claims its two
    groups are one block: the witnesses exist (built from the first declaration), cannot join
    units across groups, and the per-transposition check proves the swap missing."""
    _, _, pg = _grouped()
    sym = free_declarations(pg)[0]
    wrong = dict(sym, groups=1, permute_groups=False, what="the stream as one block")
    pg.symmetries = pg.symmetries + [wrong]
    w = symmetry_proof.find_witnesses(pg, free_declarations(pg))
    assert w is not None and symmetry_proof.proved_parts(w, sym) == ([True, True], False)
    assert symmetry_proof.proved_parts(w, wrong) == ([False], False)
    with pytest.raises(gc.SymmetryError, match=r"missing symmetry \(proved\): swapping units 3 and 4 of block 0 "
                                               r"of the stream as one block"):
        check_completeness(pg)
