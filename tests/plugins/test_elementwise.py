"""plugins/elementwise.py: add/sub/mul/div/maximum between activations (residuals, gating),
with Python scalars (x * 0.5, x + 1, 1 - x) and with parameter operands (layer scale, learnable
bias vector, positional table over tokens).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gmn_compiler as gc
from oracles import (assert_isomorphic, assert_not_isomorphic, assert_not_symmetry, assert_oracles,
                     assert_round_trip, assert_symmetry, functions_differ,
                     permute_cols, permute_rows)

S = gc.schema
ETYPE, SPATIAL = S.edge_column("type"), S.edge_column("spatial")
ROLE = S.node_column("role")
P5 = torch.tensor([3, 0, 4, 1, 2])


def _etype(name):
    return S.code(S.EDGE_TYPES, name)


# ------------------------------------------------------------------ between activations
class Residual(nn.Module):
    """h = relu(l1 x); y = l3(op(l2 h, h))."""

    def __init__(self, op):
        super().__init__()
        self.l1, self.l2, self.l3 = nn.Linear(4, 5), nn.Linear(5, 5), nn.Linear(5, 2)
        self.op = op

    def forward(self, x):
        h = torch.relu(self.l1(x))
        return self.l3(self.op(self.l2(h), h))


PAIRS = {
    "add": (lambda a, b: a + b, ("add", "add")),
    "add-alpha": (lambda a, b: torch.add(a, b, alpha=0.5), ("add", "add")),
    "sub": (lambda a, b: a - b, ("sub_lhs", "sub_rhs")),
    "mul": (lambda a, b: a * b, ("mul", "mul")),
    "div": (lambda a, b: a / (b + 2.0), ("div_num", "div_den")),
    "maximum": (lambda a, b: torch.maximum(a, b), ("max", "max")),
    "minimum": (lambda a, b: torch.minimum(a, b), ("min", "min")),
}


@pytest.mark.parametrize("kind", sorted(PAIRS))
def test_binary_between_activations(kind):
    fn, (lhs, rhs) = PAIRS[kind]
    model = Residual(fn).eval()
    inputs = (torch.randn(3, 4),)
    pg = assert_oracles(model, inputs, trials=3)
    types = pg.data.edge_attr[:, ETYPE].long()
    if lhs == rhs:
        assert int((types == _etype(lhs)).sum()) == 10
    else:
        assert int((types == _etype(lhs)).sum()) == int((types == _etype(rhs)).sum()) == 5
    # permuting h permutes l2's rows and columns, and l3's columns
    assert_symmetry(model, pg, inputs, lambda m: (permute_rows(m.l1, P5), permute_rows(m.l2, P5), permute_cols(m.l2, P5),
                                                     permute_cols(m.l3, P5)))
    # l2's rows alone: the residual pairs unit i of l2 h with unit i of h
    assert_not_symmetry(model, pg, inputs, lambda m: permute_rows(m.l2, P5))


def test_add_alpha_is_encoded():
    one = Residual(lambda a, b: a + b).eval()
    half = Residual(lambda a, b: torch.add(a, b, alpha=0.5)).eval()
    half.load_state_dict(one.state_dict())
    inputs = (torch.randn(3, 4),)
    assert functions_differ(one, half, inputs)
    assert_not_isomorphic(gc.compile(one, inputs), gc.compile(half, inputs))


@pytest.mark.parametrize("kind", ["sub", "div"])
def test_non_commutative_operands_are_told_apart(kind):
    fn, _ = PAIRS[kind]
    forward = Residual(fn).eval()
    backward = Residual(lambda a, b: fn(b, a)).eval()
    backward.load_state_dict(forward.state_dict())
    inputs = (torch.randn(3, 4),)
    assert functions_differ(forward, backward, inputs)
    assert_not_isomorphic(gc.compile(forward, inputs), gc.compile(backward, inputs))


class Gated(nn.Module):
    """GLU-style gating: l3(sigmoid(l1 x) * l2 x)."""

    def __init__(self):
        super().__init__()
        self.l1, self.l2, self.l3 = nn.Linear(4, 5), nn.Linear(4, 5), nn.Linear(5, 2)

    def forward(self, x):
        return self.l3(torch.sigmoid(self.l1(x)) * self.l2(x))


def test_gating_ties_both_operands():
    model = Gated().eval()
    inputs = (torch.randn(3, 4),)
    pg = assert_oracles(model, inputs, trials=4)
    assert_symmetry(model, pg, inputs, lambda m: (permute_rows(m.l1, P5), permute_rows(m.l2, P5), permute_cols(m.l3, P5)))
    assert_not_symmetry(model, pg, inputs, lambda m: (permute_rows(m.l1, P5), permute_cols(m.l3, P5)))
    # swapping the roles of gate and value changes the function and the graph
    assert_not_symmetry(model, pg, inputs, lambda m: (
        m.l1.weight.copy_(m.l2.weight.clone()), m.l1.bias.copy_(m.l2.bias.clone()),
        m.l2.weight.copy_(model.l1.weight), m.l2.bias.copy_(model.l1.bias)))


class SkipToOutput(nn.Module):
    """y = a(x) + b(relu(h(x))): the sum is the model output, so a's and b's output units are
    pinned through it."""

    def __init__(self):
        super().__init__()
        self.a, self.h, self.b = nn.Linear(3, 2), nn.Linear(3, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.a(x) + self.b(torch.relu(self.h(x)))


def test_residual_sum_as_model_output_oracles():
    model = SkipToOutput().eval()
    inputs = (torch.randn(5, 3),)
    assert_oracles(model, inputs, trials=3)


def test_residual_sum_as_model_output_is_sound_and_pinned():
    model = SkipToOutput().eval()
    inputs = (torch.randn(5, 3),)
    pg = assert_round_trip(model, inputs)
    gc.check_symmetry(model, inputs, trials=4, graph=pg, completeness=False)
    p = torch.tensor([2, 0, 3, 1])
    assert_symmetry(model, pg, inputs, lambda m: (permute_rows(m.h, p), permute_cols(m.b, p)))
    # a's output units cannot move: they are summed into pinned outputs
    assert_not_symmetry(model, pg, inputs, lambda m: (permute_rows(m.a, torch.tensor([1, 0]))))


# ------------------------------------------------------------------ scalar operands
class Scalar(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.l1, self.l2 = nn.Linear(4, 5), nn.Linear(5, 2)
        self.fn = fn

    def forward(self, x):
        return self.l2(self.fn(torch.relu(self.l1(x))))


SCALARS = {
    "x*0.5": (lambda x: x * 0.5, "scalar_mul", 0.5),
    "x+1": (lambda x: x + 1, "scalar_add", 1.0),
    "1-x": (lambda x: 1 - x, "scalar_rsub", 1.0),
    "x-3": (lambda x: x - 3, "scalar_sub", 3.0),
    "x/4": (lambda x: x / 4, "scalar_div", 4.0),
    "x**2": (lambda x: x ** 2, "scalar_pow", 2.0),
}


@pytest.mark.parametrize("name", sorted(SCALARS))
def test_scalar_operands(name):
    fn, etype, value = SCALARS[name]
    model = Scalar(fn).eval()
    inputs = (torch.randn(3, 4),)
    pg = assert_oracles(model, inputs, trials=3)
    d = pg.data
    sel = d.edge_attr[:, ETYPE] == _etype(etype)
    assert int(sel.sum()) == 5
    assert bool((d.edge_attr[sel, 0] == value).all())
    assert bool((d.edge_param[sel] == -1).all())
    assert_symmetry(model, pg, inputs, lambda m: (permute_rows(m.l1, P5), permute_cols(m.l2, P5)))


def test_scalar_values_and_sides_are_encoded():
    inputs = (torch.randn(3, 4),)
    base = Scalar(lambda x: x * 0.5).eval()
    graphs = {}
    for name, fn in (("x*0.5", lambda x: x * 0.5), ("x*2", lambda x: x * 2.0),
                     ("1-x", lambda x: 1 - x), ("x-1", lambda x: x - 1)):
        model = Scalar(fn).eval()
        model.load_state_dict(base.state_dict())
        graphs[name] = gc.compile(model, inputs)
    assert_not_isomorphic(graphs["x*0.5"], graphs["x*2"])
    assert_not_isomorphic(graphs["1-x"], graphs["x-1"])


# ------------------------------------------------------------------ parameter operands
class LayerScale(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1, self.l2 = nn.Linear(4, 5), nn.Linear(5, 2)
        self.gamma = nn.Parameter(torch.randn(5))

    def forward(self, x):
        return self.l2(self.gamma * torch.relu(self.l1(x)))


class LearnableBias(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1, self.l2 = nn.Linear(4, 5, bias=False), nn.Linear(5, 2)
        self.beta = nn.Parameter(torch.randn(5))

    def forward(self, x):  # after the ReLU: not a linear layer's bias
        return self.l2(torch.relu(self.l1(x)) + self.beta)


class ReversedBias(LearnableBias):
    def forward(self, x):
        return self.l2(torch.relu(self.beta - self.l1(x)))


class DivideByParam(LayerScale):
    def forward(self, x):
        return self.l2(torch.relu(self.l1(x)) / (self.gamma.abs() + 1))


@pytest.mark.parametrize("cls,etype,pname", [
    (LayerScale, "param_mul", "gamma"), (LearnableBias, "param_add", "beta"),
    (ReversedBias, "param_sub_lhs", "beta"),
], ids=["layer-scale", "bias-vector", "param-minus-x"])
def test_vector_parameter_operands(cls, etype, pname):
    model = cls().eval()
    inputs = (torch.randn(3, 4),)
    pg = assert_oracles(model, inputs, trials=3)
    d = pg.data
    sel = d.edge_attr[:, ETYPE] == _etype(etype)
    assert int(sel.sum()) == 5
    names = [p.name for p in pg.params]
    assert bool((d.edge_param[sel] == names.index(pname)).all())
    assert int((d.x[:, ROLE].long() == S.code(S.NODE_ROLES, "param_operand")).sum()) == 1
    assert d.edge_index.shape[1] - int((d.edge_param < 0).sum()) == sum(p.numel() for p in model.parameters())

    def hidden(m):
        permute_rows(m.l1, P5)
        getattr(m, pname).copy_(getattr(m, pname)[P5])
        permute_cols(m.l2, P5)
    assert_symmetry(model, pg, inputs, hidden)
    assert_not_symmetry(model, pg, inputs, lambda m: getattr(m, pname).copy_(getattr(m, pname)[P5]))


class SharedAcrossGroups(nn.Module):
    """h = l1(x) viewed as [B, 2 groups, 3]; one scale per position in a group, shared by
    both groups: ``h * gamma`` with gamma of shape [3]."""

    def __init__(self):
        super().__init__()
        self.l1, self.l2 = nn.Linear(4, 6), nn.Linear(6, 2)
        self.gamma = nn.Parameter(torch.randn(3))

    def forward(self, x):
        h = torch.relu(self.l1(x)).view(-1, 2, 3) * self.gamma
        return self.l2(h.flatten(1))


def test_parameter_shared_across_a_neuron_axis_ties_its_copies():
    """Each gamma entry meets one unit per group. Moving it with a permutation of the units
    of only one group would give the two copies different values, which no model has: the
    graph ties the copies, so the units move alike in every group (and whole groups swap)."""
    model = SharedAcrossGroups().eval()
    inputs = (torch.randn(3, 4),)
    pg = assert_oracles(model, inputs, trials=6)
    assert int((pg.data.x[:, ROLE].long() == S.code(S.NODE_ROLES, "tie")).sum()) == 3
    within = torch.tensor([2, 0, 1])

    def same_in_both_groups(m):
        p = torch.cat([within, within + 3])
        permute_rows(m.l1, p), permute_cols(m.l2, p)
        m.gamma.copy_(m.gamma[within])

    def swap_groups(m):
        p = torch.tensor([3, 4, 5, 0, 1, 2])
        permute_rows(m.l1, p), permute_cols(m.l2, p)

    def first_group_only(m):
        p = torch.cat([within, torch.arange(3, 6)])
        permute_rows(m.l1, p), permute_cols(m.l2, p)

    assert_symmetry(model, pg, inputs, same_in_both_groups)
    assert_symmetry(model, pg, inputs, swap_groups)
    assert_not_symmetry(model, pg, inputs, first_group_only)


def test_parameter_transformed_before_use_is_rejected_or_exact():
    """``x / (|gamma| + 1)``: the operand is computed from a parameter. Either the compiler
    represents gamma exactly (round trip + oracles) or it refuses with a CompileError."""
    model = DivideByParam().eval()
    inputs = (torch.randn(3, 4),)
    try:
        pg = gc.compile(model, inputs)
    except gc.CompileError:
        return
    assert_oracles(model, inputs, trials=3)
    assert "gamma" in {p.name for p in pg.params}


class ChannelScale(nn.Module):
    """ConvNeXt-style layer scale on a conv feature map: gamma[:, None, None] * x."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(2, 3, 3), nn.Conv2d(3, 2, 1)
        self.gamma = nn.Parameter(torch.randn(3))

    def forward(self, x):
        return self.b(self.gamma[:, None, None] * torch.relu(self.a(x)))


def test_parameter_viewed_over_channels():
    model = ChannelScale().eval()
    inputs = (torch.randn(1, 2, 5, 5),)
    pg = assert_oracles(model, inputs, trials=3)
    p = torch.tensor([2, 0, 1])
    assert_symmetry(model, pg, inputs, lambda m: (permute_rows(m.a, p), m.gamma.copy_(m.gamma[p]), permute_cols(m.b, p)))
    assert_not_symmetry(model, pg, inputs, lambda m: m.gamma.copy_(m.gamma[p]))


class Positional(nn.Module):
    """Tokens [B, N=3, 4] -> linear -> + pos [3, 5] -> relu -> linear, per token."""

    def __init__(self):
        super().__init__()
        self.l1, self.l2 = nn.Linear(4, 5), nn.Linear(5, 2)
        self.pos = nn.Parameter(torch.randn(3, 5))

    def forward(self, x):
        return self.l2(torch.relu(self.l1(x) + self.pos))


def test_positional_table_over_tokens():
    model = Positional().eval()
    inputs = (torch.randn(2, 3, 4),)
    pg = assert_oracles(model, inputs, trials=3)
    d = pg.data
    sel = d.edge_attr[:, ETYPE] == _etype("param_add")
    assert int(sel.sum()) == 15
    # each entry pos[n, j] records its token n in the spatial column
    assert torch.equal(d.edge_attr[sel, SPATIAL].long(), d.edge_offset[sel] // 5)
    assert_symmetry(model, pg, inputs, lambda m: (permute_rows(m.l1, P5), m.pos.copy_(m.pos[:, P5]),
                                                     permute_cols(m.l2, P5)))
    # tokens are not interchangeable: permuting the table's rows is not a symmetry
    assert_not_symmetry(model, pg, inputs, lambda m: m.pos.copy_(m.pos[torch.tensor([2, 0, 1])]))


class PositionalOnInput(nn.Module):
    """ViT-style: the positional table is added to the input tokens [B, N=3, D=4]."""

    def __init__(self):
        super().__init__()
        self.pos = nn.Parameter(torch.randn(3, 4))
        self.l1, self.l2 = nn.Linear(4, 5), nn.Linear(5, 2)

    def forward(self, x):
        return self.l2(torch.relu(self.l1(x + self.pos)))


def test_positional_table_on_the_input_with_explicit_axis():
    model = PositionalOnInput().eval()
    inputs = (torch.randn(2, 3, 4),)
    pg = assert_round_trip(model, inputs, input_neuron_axes={"x": -1})
    gc.check_symmetry(model, inputs, trials=3, graph=pg)
    sel = pg.data.edge_attr[:, ETYPE] == _etype("param_add")
    assert torch.equal(pg.data.edge_attr[sel, SPATIAL].long(), pg.data.edge_offset[sel] // 4)


def test_positional_table_on_the_input_infers_the_feature_axis():
    """The input's first consumer is ``x + pos``, which does not fix the neuron axis; the
    linear layer that follows contracts the last axis, so that is the feature axis."""
    model = PositionalOnInput().eval()
    inputs = (torch.randn(2, 3, 4),)
    pg = assert_oracles(model, inputs, trials=3)
    roles = pg.data.x[:, ROLE].long()
    assert int((roles == S.code(S.NODE_ROLES, "input")).sum()) == 4


def test_bias_free_linear_plus_vector_is_a_linear_layer_with_bias():
    """``l1(x) + beta`` (bias-free linear, then a vector of its width) is nn.Linear with bias."""
    class Spelled(nn.Module):
        def __init__(self):
            super().__init__()
            self.l1, self.l2 = nn.Linear(4, 5, bias=False), nn.Linear(5, 2)
            self.beta = nn.Parameter(torch.randn(5))

        def forward(self, x):
            return self.l2(torch.relu(self.l1(x) + self.beta))

    spelled = Spelled().eval()
    plain = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2)).eval()
    with torch.no_grad():
        plain[0].weight.copy_(spelled.l1.weight), plain[0].bias.copy_(spelled.beta)
        plain[2].load_state_dict(spelled.l2.state_dict())
    inputs = (torch.randn(3, 4),)
    pg = assert_oracles(spelled, inputs, trials=3)
    assert_isomorphic(pg, gc.compile(plain, inputs))


# ------------------------------------------------------------------ where / masked_fill
class MaskedHidden(nn.Module):
    """y = l2(fill(relu(l1 x))) where ``fill`` masks hidden units with a constant mask."""

    def __init__(self, mask: torch.Tensor, spelling: str, persistent: bool = False):
        super().__init__()
        self.l1, self.l2 = nn.Linear(4, 5), nn.Linear(5, 2)
        self.register_buffer("mask", mask, persistent=persistent)
        self.spelling = spelling

    def forward(self, x):
        h = torch.relu(self.l1(x))
        if self.spelling == "masked_fill":
            h = h.masked_fill(self.mask, -1.0)
        else:
            h = torch.where(self.mask, h, 2.0)
        return self.l2(h)


def _hidden_units_declared(pg):
    return [s["what"] for s in pg.symmetries if "hidden units" in s["what"] and not s.get("withdrawn")]


@pytest.mark.parametrize("spelling", ["masked_fill", "where"])
def test_mask_equal_along_features_keeps_hidden_units_free(spelling):
    model = MaskedHidden(torch.zeros(3, 1, dtype=torch.bool).index_fill(0, torch.tensor([1]), True), spelling)
    x = (torch.randn(3, 4),)
    pg = assert_oracles(model, x)
    assert len(_hidden_units_declared(pg)) == 2
    assert_symmetry(model, pg, x, lambda m: (permute_rows(m.l1, P5), permute_cols(m.l2, P5)))


@pytest.mark.parametrize("spelling", ["masked_fill", "where"])
def test_mask_varying_along_features_pins_the_masked_units(spelling):
    """A mask over hidden units tells them apart: permuting them changes the function, and
    the graph must not have that automorphism (the units get fixed positions)."""
    mask = torch.tensor([True, False, False, True, False])
    model = MaskedHidden(mask, spelling)
    x = (torch.randn(3, 4),)
    pg = assert_oracles(model, x)
    assert len(_hidden_units_declared(pg)) == 1  # only l2's outputs stay free
    masked = pg.data.x[:, S.node_column("activation")] == S.code(S.ACTIVATIONS, "masked")
    assert sorted(pg.data.x[masked, S.node_column("position")].tolist()) == [0, 1, 2, 3, 4]
    swap = torch.tensor([1, 0, 2, 3, 4])  # a masked unit with an unmasked one
    assert_not_symmetry(model, pg, x, lambda m: (permute_rows(m.l1, swap), permute_cols(m.l2, swap)))


def test_mask_computed_from_the_input_pins_the_units_it_selects():
    """A mask that is an input (not a known constant) may differ per unit: pinned."""

    class InputMask(nn.Module):
        def __init__(self):
            super().__init__()
            self.l1, self.l2 = nn.Linear(4, 5), nn.Linear(5, 2)

        def forward(self, x, keep):
            return self.l2(torch.relu(self.l1(x)).masked_fill(~keep, 0.0))

    inputs = (torch.randn(3, 4), torch.rand(3, 5) > 0.5)
    pg = assert_oracles(InputMask(), inputs)
    assert len(_hidden_units_declared(pg)) == 1


def test_parameter_fill_varying_along_features_is_rejected():
    class LearnedFill(nn.Module):
        def __init__(self):
            super().__init__()
            self.l1 = nn.Linear(4, 5)
            self.fill = nn.Parameter(torch.randn(5))
            self.register_buffer("mask", torch.tensor([True, False, True, False, False]), persistent=False)

        def forward(self, x):
            return torch.where(self.mask, self.l1(x), self.fill)

    with pytest.raises(gc.CompileError, match="fill varying along a neuron axis|parameter fill"):
        gc.compile(LearnedFill(), (torch.randn(3, 4),))


def test_constant_tensor_times_a_value_of_integer_inputs_compiles_soundly():
    """A mask computed from token ids only, times a constant tensor (no neurons on either
    side), then applied to an embedding: used to crash (a tensor was asked for its layout)."""
    from gmn_compiler.testing import assert_oracles

    class Masked(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 4)

        def forward(self, ids):
            mask = (ids != 0).float() * torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
            return self.emb(ids) * mask.unsqueeze(-1)

    torch.manual_seed(0)
    assert_oracles(Masked(), (torch.randint(1, 10, (2, 5)),))


class ParameterChain(nn.Module):
    """MobileBERT's embeddings: ``(h + a) * w + b`` with three parameter vectors applied one
    after another to a linear layer's output (``+ a`` a token-type row, then a NoNorm)."""

    def __init__(self, order: str = "add-mul-add"):
        super().__init__()
        self.order = order
        self.lin, self.out = nn.Linear(3, 4), nn.Linear(4, 2)
        self.a, self.w, self.b = (nn.Parameter(torch.randn(4)) for _ in range(3))

    def forward(self, x):
        h = self.lin(x)
        if self.order == "add-mul-add":
            h = (h + self.a) * self.w + self.b
        elif self.order == "mul-add-add":  # the same three operations in another order
            h = h * self.w + self.a + self.b
        else:  # "add-add-mul"
            h = (h + self.a + self.b) * self.w
        return self.out(torch.relu(h))


def test_parameter_operations_that_do_not_commute_keep_their_order():
    """They all used to attach to the linear layer's nodes: (h + a) * w + b and h * w + a + b
    compiled to isomorphic graphs, and an automorphism exchanged a and b (a false symmetry the
    soundness oracle found on MobileBERT)."""
    torch.manual_seed(0)
    x = torch.randn(5, 3)
    graphs = {}
    for order in ("add-mul-add", "mul-add-add", "add-add-mul"):
        model = ParameterChain(order).eval()
        assert_oracles(model, (x,), trials=4)
        graphs[order] = gc.compile(model, (x,))
    reference = ParameterChain("add-mul-add").eval()
    for order in ("mul-add-add", "add-add-mul"):
        other = ParameterChain(order).eval()
        other.load_state_dict(reference.state_dict())
        assert functions_differ(reference, other, (x,))
        assert_not_isomorphic(graphs["add-mul-add"], graphs[order])
    # exchanging a and b changes (h + a) * w + b: the graphs differ
    swapped = ParameterChain().eval()
    swapped.load_state_dict({**reference.state_dict(), "a": reference.b.detach(), "b": reference.a.detach()})
    assert functions_differ(reference, swapped, (x,))
    assert_not_isomorphic(graphs["add-mul-add"], gc.compile(swapped, (x,)))
    # adds that commute still share the nodes: h + a + b is one set of nodes with two operands
    commuting = gc.compile(ParameterChain("add-add-mul").eval(), (x,))
    assert commuting.num_nodes < graphs["add-mul-add"].num_nodes
