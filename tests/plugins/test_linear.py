"""plugins/linear.py: nn.Linear, F.linear, x @ W, W @ x, addmm, no bias.

Every form is checked with the oracles (round trip, soundness, completeness), with a hidden-unit
permutation written by hand in the weights (same function, isomorphic graph), and with a
control that is not a symmetry (two input features swapped in the first layer: a different
function, a non-isomorphic graph).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gmn_compiler as gc
from oracles import (assert_isomorphic, assert_not_isomorphic, assert_oracles,
                     assert_round_trip, assert_same_function, functions_differ, permute_cols, permute_rows,
                     permuted_copy)

S = gc.schema
ROLE, ACT = S.node_column("role"), S.node_column("activation")
ETYPE = S.edge_column("type")

PERM = torch.tensor([3, 0, 4, 1, 2])  # a permutation of the 5 hidden units
SWAP = torch.tensor([1, 0, 2, 3])  # swaps input features 0 and 1


def _p(*shape):
    return nn.Parameter(torch.randn(*shape))


class TorchLinear(nn.Module):
    target = "aten.linear.default"

    def __init__(self, bias=True):
        super().__init__()
        self.l1, self.l2 = nn.Linear(4, 5, bias=bias), nn.Linear(5, 2, bias=bias)

    def forward(self, x):
        return self.l2(torch.relu(self.l1(x)))

    def permute_hidden(self, p):
        self.l1.weight.copy_(self.l1.weight[p])
        if self.l1.bias is not None:
            self.l1.bias.copy_(self.l1.bias[p])
        self.l2.weight.copy_(self.l2.weight[:, p])

    def swap_inputs(self, s):
        self.l1.weight.copy_(self.l1.weight[:, s])


class FunctionalLinear(nn.Module):
    target = "aten.linear.default"

    def __init__(self):
        super().__init__()
        self.w1, self.b1, self.w2 = _p(5, 4), _p(5), _p(2, 5)

    def forward(self, x):
        return F.linear(torch.tanh(F.linear(x, self.w1, self.b1)), self.w2)

    def permute_hidden(self, p):
        self.w1.copy_(self.w1[p])
        self.b1.copy_(self.b1[p])
        self.w2.copy_(self.w2[:, p])

    def swap_inputs(self, s):
        self.w1.copy_(self.w1[:, s])


class RightMatmul(nn.Module):
    """``x @ W`` with W stored ``[in, out]`` (the transposed layout)."""
    target = "aten.matmul.default"

    def __init__(self):
        super().__init__()
        self.w1, self.w2 = _p(4, 5), _p(5, 2)

    def forward(self, x):
        return torch.sigmoid(x @ self.w1) @ self.w2

    def permute_hidden(self, p):
        self.w1.copy_(self.w1[:, p])
        self.w2.copy_(self.w2[p])

    def swap_inputs(self, s):
        self.w1.copy_(self.w1[s])


class Mm(RightMatmul):
    """``torch.mm(x, W)``."""
    target = "aten.mm.default"

    def forward(self, x):
        return torch.mm(torch.sigmoid(torch.mm(x, self.w1)), self.w2)


class LeftMatmul(nn.Module):
    """``W @ x`` with features on axis -2 of ``x`` ``[B, 4, T]``."""
    target = "aten.matmul.default"

    def __init__(self):
        super().__init__()
        self.w1, self.w2 = _p(5, 4), _p(2, 5)

    def forward(self, x):
        return self.w2 @ torch.tanh(self.w1 @ x)

    def permute_hidden(self, p):
        self.w1.copy_(self.w1[p])
        self.w2.copy_(self.w2[:, p])

    def swap_inputs(self, s):
        self.w1.copy_(self.w1[:, s])


class Addmm(nn.Module):
    target = "aten.addmm.default"

    def __init__(self):
        super().__init__()
        self.w1, self.b1, self.w2, self.b2 = _p(4, 5), _p(5), _p(5, 2), _p(2)

    def forward(self, x):
        return torch.addmm(self.b2, torch.relu(torch.addmm(self.b1, x, self.w1)), self.w2)

    def permute_hidden(self, p):
        self.w1.copy_(self.w1[:, p])
        self.b1.copy_(self.b1[p])
        self.w2.copy_(self.w2[p])

    def swap_inputs(self, s):
        self.w1.copy_(self.w1[s])


FORMS = {
    "nn.Linear": (lambda: TorchLinear(), (3, 4)),
    "nn.Linear-no-bias": (lambda: TorchLinear(bias=False), (3, 4)),
    "F.linear": (lambda: FunctionalLinear(), (3, 4)),
    "x@W": (lambda: RightMatmul(), (3, 4)),
    "torch.mm": (lambda: Mm(), (3, 4)),
    "W@x-batched": (lambda: LeftMatmul(), (2, 4, 3)),
    "addmm": (lambda: Addmm(), (3, 4)),
}


@pytest.mark.parametrize("form", sorted(FORMS))
def test_linear_forms_oracles_and_hand_permutations(form):
    make, shape = FORMS[form]
    model = make().eval()
    inputs = (torch.randn(*shape),)
    ir = gc.to_ir(model, inputs)
    assert model.target in {op.target for op in ir.ops}, "the form under test is not exercised"
    pg = assert_oracles(model, inputs, trials=3)

    permuted = permuted_copy(model, lambda m: m.permute_hidden(PERM))
    assert_same_function(model, permuted, inputs)
    assert_isomorphic(pg, gc.compile(permuted, inputs))

    swapped = permuted_copy(model, lambda m: m.swap_inputs(SWAP))
    with torch.no_grad():
        assert not torch.allclose(model(*inputs), swapped(*inputs))
    assert_not_isomorphic(pg, gc.compile(swapped, inputs))


@pytest.mark.parametrize("form", sorted(FORMS))
def test_linear_forms_one_edge_per_parameter(form):
    make, shape = FORMS[form]
    model = make().eval()
    pg = assert_round_trip(model, (torch.randn(*shape),))
    n_params = sum(p.numel() for p in model.parameters())
    assert pg.data.edge_index.shape[1] == n_params
    n_biases = sum(1 for p in model.parameters() if p.dim() == 1)
    roles = pg.data.x[:, ROLE].long()
    # 4 inputs, 5 hidden, 2 outputs, one bias node per layer that has a bias
    assert int(pg.data.num_nodes) == 4 + 5 + 2 + n_biases
    assert int((roles == S.code(S.NODE_ROLES, "bias")).sum()) == n_biases
    types = pg.data.edge_attr[:, ETYPE].long()
    assert int((types == S.code(S.EDGE_TYPES, "linear")).sum()) == 4 * 5 + 5 * 2


def test_edge_endpoints_follow_weight_indices():
    model = TorchLinear().eval()
    pg = gc.compile(model, (torch.randn(3, 4),))
    d = pg.data
    names = [p.name for p in pg.params]
    for layer, (n_out, n_in) in (("l1", (5, 4)), ("l2", (2, 5))):
        weight = getattr(model, layer).weight.detach()
        sel = d.edge_param == names.index(f"{layer}.weight")
        o, i = d.edge_offset[sel] // n_in, d.edge_offset[sel] % n_in
        assert torch.equal(d.edge_attr[sel, 0], weight[o, i])
        src, dst = d.edge_index[0, sel], d.edge_index[1, sel]
        # edges sharing a row share their target, edges sharing a column their source
        for k in range(n_out):
            assert torch.unique(dst[o == k]).numel() == 1
        for k in range(n_in):
            assert torch.unique(src[i == k]).numel() == 1
        assert torch.unique(dst).numel() == n_out and torch.unique(src).numel() == n_in
    # the first layer reads the input nodes in feature order
    first = d.edge_param == names.index("l1.weight")
    input_of = d.x[d.edge_index[0, first], S.node_column("position")].long()
    assert torch.equal(input_of, d.edge_offset[first] % 4)


def test_left_matmul_on_unbatched_input():
    """``W @ x`` with ``x`` ``[features, T]``: the input's neuron axis is the contracted
    axis 0, which the compiler must infer from the weight-on-the-left product."""
    model = LeftMatmul().eval()
    inputs = (torch.randn(4, 3),)
    pg = assert_oracles(model, inputs, trials=3)
    roles = pg.data.x[:, ROLE].long()
    assert int((roles == S.code(S.NODE_ROLES, "input")).sum()) == 4
    permuted = permuted_copy(model, lambda m: m.permute_hidden(PERM))
    assert_same_function(model, permuted, inputs)
    assert_isomorphic(pg, gc.compile(permuted, inputs))


def test_linear_over_tokens_shares_weights_across_tokens():
    """A linear layer applied to ``[B, N, D]`` tokens: tokens are a free axis, so the graph
    is the same as for one token (one edge per weight, no per-token nodes)."""
    model = TorchLinear().eval()
    pg_tokens = assert_oracles(model, (torch.randn(2, 6, 4),), trials=3)
    pg_flat = gc.compile(model, (torch.randn(3, 4),))
    assert_isomorphic(pg_tokens, pg_flat)


def test_different_weights_give_non_isomorphic_graphs():
    a, b = TorchLinear().eval(), TorchLinear().eval()
    inputs = (torch.randn(3, 4),)
    assert_not_isomorphic(gc.compile(a, inputs), gc.compile(b, inputs))


def test_addmm_with_beta_is_rejected_not_miscompiled():
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.w, self.b = _p(4, 5), _p(5)

        def forward(self, x):
            return torch.addmm(self.b, x, self.w, beta=0.5)

    with pytest.raises(gc.CompileError):
        gc.compile(Scaled(), (torch.randn(2, 4),))


class TokenMixing(nn.Module):
    """An MLP-Mixer block: a channel linear, then an MLP over the tokens (transpose, linear over
    the token axis, GELU, linear back to the tokens, transpose), added to the stream, then a
    channel MLP and a head."""

    def __init__(self, tokens: int = 4, channels: int = 3, hidden: int = 5):
        super().__init__()
        self.embed = nn.Linear(2, channels)
        self.fc1, self.fc2 = nn.Linear(tokens, hidden), nn.Linear(hidden, tokens)
        self.head = nn.Linear(channels, 2)

    def forward(self, x):  # [batch, tokens, 2]
        h = self.embed(x)
        mixed = self.fc2(torch.nn.functional.gelu(self.fc1(h.transpose(1, 2)))).transpose(1, 2)
        return self.head(h + mixed).mean(1)


def test_token_mixing_mlp_compiles_and_passes_the_oracles():
    torch.manual_seed(0)
    model, x = TokenMixing().eval(), torch.randn(2, 4, 2)
    pg = assert_oracles(model, (x,), trials=4)
    report = gc.check_symmetry(model, (x,), trials=2, graph=pg)
    assert any(what.startswith("hidden units of linear (one copy") and "fc1" in what
               for what in report.symmetries_checked), report.symmetries_checked
    # the token MLP's hidden units permute (fc1 rows with fc2 columns) ...
    p = torch.tensor([2, 0, 4, 1, 3])
    permuted = permuted_copy(model, lambda m: (permute_rows(m.fc1, p), permute_cols(m.fc2, p)))
    assert_same_function(model, permuted, (x,))
    assert_isomorphic(pg, gc.compile(permuted, (x,)))
    # ... the tokens do not: fc1's columns read fixed positions
    t = torch.tensor([1, 0, 2, 3])
    moved = permuted_copy(model, lambda m: permute_cols(m.fc1, t))
    assert functions_differ(model, moved, (x,))
    assert_not_isomorphic(pg, gc.compile(moved, (x,)))


class GroupedLinear(nn.Module):
    """ConvBERT's ``GroupedLinearLayer``: the features split into groups, each group through a
    linear layer of its own, ``x.view(-1, G, I).permute(1, 0, 2) @ W [G, I, O]``."""

    def __init__(self, groups: int = 2, width: int = 6, out: int = 4):
        super().__init__()
        self.groups = groups
        self.inp, self.head = nn.Linear(3, width), nn.Linear(out, 2)
        self.weight = nn.Parameter(torch.randn(groups, width // groups, out // groups))

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        g = h.reshape(-1, self.groups, h.shape[-1] // self.groups).permute(1, 0, 2)
        y = torch.matmul(g, self.weight).permute(1, 0, 2).reshape(x.shape[0], -1)
        return self.head(torch.relu(y))


def test_a_grouped_linear_layer_connects_units_inside_each_group_only():
    torch.manual_seed(0)
    model, x = GroupedLinear().eval(), (torch.randn(5, 3),)
    graph = assert_oracles(model, x)
    weight = [p.name for p in graph.params].index("weight")
    assert int((graph.data.edge_param == weight).sum()) == model.weight.numel()  # 2 groups of 3 x 2
    declared = [s for s in graph.symmetries if "grouped linear" in s["what"]]
    assert declared and declared[0]["groups"] == 2


class WeightTable(nn.Module):
    """Activations times a 4-D weight (as an exporter's optimizer folds a projected position
    table): no linear layer, no rule."""

    def __init__(self):
        super().__init__()
        self.a, self.w, self.o = nn.Linear(6, 8), nn.Parameter(torch.randn(1, 2, 4, 3)), nn.Linear(3, 2)

    def forward(self, x):
        return self.o(torch.tanh(self.a(x)).view(1, 5, 2, 4).transpose(1, 2) @ self.w)


def test_matmul_with_a_weight_table_is_refused_in_one_line():
    with pytest.raises(gc.CompileError, match="matmul with a weight that is not a linear layer's "
                                              r"\(a 4-D weight on the right\)") as caught:
        gc.compile(WeightTable().eval(), (torch.randn(1, 5, 6),))
    assert "\n" not in str(caught.value)
