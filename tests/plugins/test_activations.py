"""plugins/activations.py: elementwise activations and softmax, recorded on nodes.

Each activation is checked with the oracles and a hand-written hidden-unit permutation, and
its code in the node ``activation`` column is the one ``gc.schema.ACTIVATIONS`` names; models
that differ only in their activation give non-isomorphic graphs.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gmn_compiler as gc
from test_onnx_default_export import _strip_torch_declarations
from oracles import (assert_isomorphic, assert_not_isomorphic, assert_oracles, export_onnx,
                     assert_same_function, permuted_copy)

S = gc.schema
ROLE, ACT = S.node_column("role"), S.node_column("activation")
ETYPE = S.edge_column("type")
PERM = torch.tensor([3, 0, 4, 1, 2])


class Lambda(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


ACTIVATIONS = {
    # module -> schema name recorded on the hidden nodes
    "relu": (lambda: nn.ReLU(), "relu"),
    "gelu": (lambda: nn.GELU(), "gelu"),
    "gelu_tanh": (lambda: nn.GELU(approximate="tanh"), "gelu_tanh"),
    "silu": (lambda: nn.SiLU(), "silu"),
    "tanh": (lambda: nn.Tanh(), "tanh"),
    "sigmoid": (lambda: nn.Sigmoid(), "sigmoid"),
    "sin": (lambda: Lambda(torch.sin), "sin"),
    "cos": (lambda: Lambda(torch.cos), "cos"),
    "leaky_relu": (lambda: nn.LeakyReLU(), "leaky_relu"),  # the usual slope: a slope of its own gets fresh nodes
    "hardswish": (lambda: nn.Hardswish(), "hardswish"),
    "hardsigmoid": (lambda: nn.Hardsigmoid(), "hardsigmoid"),
    "elu": (lambda: nn.ELU(), "elu"),
    "selu": (lambda: nn.SELU(), "selu"),
    "celu": (lambda: nn.CELU(), "celu"),
    "softplus": (lambda: nn.Softplus(), "softplus"),
    "mish": (lambda: nn.Mish(), "mish"),
    "hardtanh": (lambda: nn.Hardtanh(), "hardtanh"),
    "logsigmoid": (lambda: nn.LogSigmoid(), "logsigmoid"),
    "exp": (lambda: Lambda(torch.exp), "exp"),
    "abs": (lambda: Lambda(torch.abs), "abs"),
    "erf": (lambda: Lambda(torch.erf), "erf"),
}


class MLP(nn.Module):
    def __init__(self, act: nn.Module, out_act: nn.Module | None = None):
        super().__init__()
        self.l1, self.act, self.l2 = nn.Linear(4, 5), act, nn.Linear(5, 3)
        self.out_act = out_act or nn.Identity()

    def forward(self, x):
        return self.out_act(self.l2(self.act(self.l1(x))))

    def permute_hidden(self, p):
        self.l1.weight.copy_(self.l1.weight[p])
        self.l1.bias.copy_(self.l1.bias[p])
        self.l2.weight.copy_(self.l2.weight[:, p])


def _hidden_nodes(pg):
    """Node ids of the 5 hidden units (targets of l1's bias edges)."""
    names = [p.name for p in pg.params]
    sel = pg.data.edge_param == names.index("l1.bias")
    return pg.data.edge_index[1, sel][torch.argsort(pg.data.edge_offset[sel])]


def _assert_hidden_permutation_is_a_symmetry(model, pg, inputs):
    """Permuting the hidden units by hand keeps the function and gives an isomorphic graph."""
    permuted = permuted_copy(model, lambda m: m.permute_hidden(PERM))
    assert_same_function(model, permuted, inputs)
    assert_isomorphic(pg, gc.compile(permuted, inputs))


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_oracles_and_node_code(name):
    make, recorded = ACTIVATIONS[name]
    model = MLP(make()).eval()
    inputs = (torch.randn(3, 4),)
    pg = assert_oracles(model, inputs, trials=3)
    # the activation is on the nodes, not on extra nodes or edges
    assert pg.data.num_nodes == 4 + 5 + 3 + 2
    assert pg.data.edge_index.shape[1] == sum(p.numel() for p in model.parameters())
    acts = pg.data.x[:, ACT].long()
    code = S.code(S.ACTIVATIONS, recorded)
    assert torch.equal(acts[_hidden_nodes(pg)], torch.full((5,), code))
    assert int((acts != S.code(S.ACTIVATIONS, "none")).sum()) == 5

    _assert_hidden_permutation_is_a_symmetry(model, pg, inputs)


def test_relu_and_tanh_models_are_not_isomorphic():
    relu = MLP(nn.ReLU()).eval()
    tanh = MLP(nn.Tanh()).eval()
    tanh.load_state_dict(relu.state_dict())
    inputs = (torch.randn(3, 4),)
    same = MLP(nn.ReLU()).eval()
    same.load_state_dict(relu.state_dict())
    assert_isomorphic(gc.compile(relu, inputs), gc.compile(same, inputs))
    assert_not_isomorphic(gc.compile(relu, inputs), gc.compile(tanh, inputs))


def test_gelu_exact_and_tanh_approximation_are_not_isomorphic():
    exact = MLP(nn.GELU()).eval()
    approx = MLP(nn.GELU(approximate="tanh")).eval()
    approx.load_state_dict(exact.state_dict())
    inputs = (torch.randn(3, 4),)
    assert_not_isomorphic(gc.compile(exact, inputs), gc.compile(approx, inputs))


def test_relu6_and_hardtanh_are_not_isomorphic():
    """torch.export lowers ReLU6 to ``hardtanh(x, 0, 6)``; the schema has a ``relu6`` code,
    and ReLU6 and Hardtanh(-1, 1) are different functions of the same weights."""
    relu6 = MLP(nn.ReLU6()).eval()
    hardtanh = MLP(nn.Hardtanh()).eval()
    hardtanh.load_state_dict(relu6.state_dict())
    inputs = (torch.randn(3, 4) * 4,)
    with torch.no_grad():
        assert not torch.allclose(relu6(*inputs), hardtanh(*inputs))
    assert_not_isomorphic(gc.compile(relu6, inputs), gc.compile(hardtanh, inputs))


def test_functional_and_module_forms_agree():
    class Functional(MLP):
        def forward(self, x):
            return self.l2(F.silu(self.l1(x)))
    module = MLP(nn.SiLU()).eval()
    functional = Functional(nn.Identity()).eval()
    functional.load_state_dict(module.state_dict())
    inputs = (torch.randn(3, 4),)
    assert_isomorphic(gc.compile(module, inputs), gc.compile(functional, inputs))


def test_two_activations_in_a_row_get_their_own_nodes():
    """tanh(relu(h)): one node cannot carry two activations; the second gets fresh nodes
    linked one-to-one by ``activation`` edges."""
    model = MLP(nn.Sequential(nn.ReLU(), nn.Tanh())).eval()
    inputs = (torch.randn(3, 4),)
    pg = assert_oracles(model, inputs, trials=3)
    acts = pg.data.x[:, ACT].long()
    assert int((acts == S.code(S.ACTIVATIONS, "relu")).sum()) == 5
    assert int((acts == S.code(S.ACTIVATIONS, "tanh")).sum()) == 5
    assert pg.data.num_nodes == 4 + 5 + 5 + 3 + 2
    assert int((pg.data.edge_attr[:, ETYPE] == S.code(S.EDGE_TYPES, "activation")).sum()) == 5
    # tanh(relu(.)) and relu(tanh(.)) are different functions with different graphs
    swapped = MLP(nn.Sequential(nn.Tanh(), nn.ReLU())).eval()
    swapped.load_state_dict(model.state_dict())
    assert_not_isomorphic(pg, gc.compile(swapped, inputs))


class SkipActivation(nn.Module):
    """``W1 h + W2 relu(h)``: ``h`` and ``relu(h)`` are two values consumed from the same
    nodes; W1 and W2 edges must not become parallel edges an automorphism could swap."""

    def __init__(self):
        super().__init__()
        self.l0, self.w1, self.w2 = nn.Linear(3, 4), nn.Linear(4, 3), nn.Linear(4, 3)
        self.out = nn.Linear(3, 2)

    def forward(self, x):
        h = self.l0(x)
        return self.out(self.w1(h) + self.w2(torch.relu(h)))


def test_activation_of_a_shared_value_gets_fresh_nodes():
    model = SkipActivation().eval()
    inputs = (torch.randn(5, 3),)
    pg = assert_oracles(model, inputs, trials=4)
    acts = pg.data.x[:, ACT].long()
    relu_nodes = torch.nonzero(acts == S.code(S.ACTIVATIONS, "relu")).view(-1)
    assert relu_nodes.numel() == 4
    names = [p.name for p in pg.params]
    h_nodes = set(pg.data.edge_index[1, pg.data.edge_param == names.index("l0.bias")].tolist())
    assert not h_nodes & set(relu_nodes.tolist())
    # swapping the roles of W1 and W2 changes the function and the graph
    swapped = SkipActivation().eval()
    state = model.state_dict()
    swapped.load_state_dict({**state, "w1.weight": state["w2.weight"], "w1.bias": state["w2.bias"],
                             "w2.weight": state["w1.weight"], "w2.bias": state["w1.bias"]})
    with torch.no_grad():
        assert not torch.allclose(model(*inputs), swapped(*inputs))
    assert_not_isomorphic(pg, gc.compile(swapped, inputs))
    # the hidden units of l0 are still a symmetry when permuted through both consumers
    p = torch.tensor([2, 0, 3, 1])

    def hidden(m):
        m.l0.weight.copy_(m.l0.weight[p])
        m.l0.bias.copy_(m.l0.bias[p])
        m.w1.weight.copy_(m.w1.weight[:, p])
        m.w2.weight.copy_(m.w2.weight[:, p])
    permuted = permuted_copy(model, hidden)
    assert_same_function(model, permuted, inputs)
    assert_isomorphic(pg, gc.compile(permuted, inputs))


@pytest.mark.parametrize("module,recorded", [(nn.Softmax(dim=-1), "softmax"),
                                              (nn.LogSoftmax(dim=-1), "log_softmax")],
                         ids=["softmax", "log_softmax"])
def test_softmax_at_the_output(module, recorded):
    model = MLP(nn.ReLU(), out_act=module).eval()
    inputs = (torch.randn(3, 4),)
    pg = assert_oracles(model, inputs, trials=3)
    acts = pg.data.x[:, ACT].long()
    positions = pg.data.x[:, S.node_column("position")].long()
    roles = pg.data.x[:, ROLE].long()
    outputs = (positions >= 0) & (roles != S.code(S.NODE_ROLES, "input"))
    assert int(outputs.sum()) == 3
    assert bool((acts[outputs] == S.code(S.ACTIVATIONS, recorded)).all())
    _assert_hidden_permutation_is_a_symmetry(model, pg, inputs)
    # output classes are pinned: swapping two rows of the last layer is not a symmetry
    swapped = permuted_copy(model, lambda m: (m.l2.weight.copy_(m.l2.weight[[1, 0, 2]]),
                                              m.l2.bias.copy_(m.l2.bias[[1, 0, 2]])))
    assert_not_isomorphic(pg, gc.compile(swapped, inputs))
    plain = MLP(nn.ReLU()).eval()
    plain.load_state_dict(model.state_dict())
    assert_not_isomorphic(pg, gc.compile(plain, inputs))


# ------------------------------------------------------------------ PReLU
class ConvPReLU(nn.Module):
    """conv(3 -> 4) -> PReLU (one slope per channel, or one for all) -> pool -> linear."""

    def __init__(self, num_parameters: int):
        super().__init__()
        self.conv, self.act, self.fc = nn.Conv2d(3, 4, 3), nn.PReLU(num_parameters), nn.Linear(4, 2)
        with torch.no_grad():
            self.act.weight.copy_(torch.rand(num_parameters) * 0.5)

    def forward(self, x):
        return self.fc(self.act(self.conv(x)).mean((2, 3)))


def _channels(m, p):
    m.conv.weight.copy_(m.conv.weight[p])
    m.conv.bias.copy_(m.conv.bias[p])
    m.fc.weight.copy_(m.fc.weight[:, p])


@pytest.mark.parametrize("num_parameters", [4, 1])
def test_prelu_slopes_move_with_their_channels(num_parameters):
    model, inputs = ConvPReLU(num_parameters).eval(), (torch.randn(2, 3, 5, 5),)
    pg = assert_oracles(model, inputs, trials=4)
    assert int((pg.data.x[:, ACT] == S.code(S.ACTIVATIONS, "prelu")).sum()) == 4
    slopes = pg.data.edge_param == [p.name for p in pg.params].index("act.weight")
    assert bool((pg.data.edge_attr[slopes, ETYPE] == S.code(S.EDGE_TYPES, "param_mul")).all())
    assert int(slopes.sum()) == 4  # one edge per channel; a shared slope needs no ties
    assert int((pg.data.x[:, ROLE] == S.code(S.NODE_ROLES, "tie")).sum()) == 0
    p = torch.tensor([2, 0, 3, 1])

    def channels(m):
        _channels(m, p)
        if num_parameters > 1:
            m.act.weight.copy_(m.act.weight[p])
    permuted = permuted_copy(model, channels)
    assert_same_function(model, permuted, inputs)
    assert_isomorphic(pg, gc.compile(permuted, inputs))
    if num_parameters > 1:  # channels moved without their slopes: another function, another graph
        alone = permuted_copy(model, lambda m: _channels(m, p))
        assert not torch.allclose(model(*inputs), alone(*inputs), atol=1e-5)
        assert_not_isomorphic(pg, gc.compile(alone, inputs))


# functions this plugin adds to the vocabulary: module -> name on the hidden nodes
ADDED = {
    "expm1": (lambda: Lambda(torch.expm1), "expm1"),
    "log1p": (lambda: Lambda(lambda h: torch.log1p(h.abs())), "log1p"),
    "floor": (lambda: Lambda(torch.floor), "floor"),
    "ceil": (lambda: Lambda(torch.ceil), "ceil"),
    "round": (lambda: Lambda(torch.round), "round"),
    "softshrink": (lambda: nn.Softshrink(0.3), "shrink"),
    "hardshrink": (lambda: nn.Hardshrink(0.3), "shrink"),
    "threshold": (lambda: nn.Threshold(0.1, -1.0), "threshold"),
    "rrelu (eval)": (lambda: nn.RReLU(0.1, 0.3), "leaky_relu"),
}


@pytest.mark.parametrize("name", sorted(ADDED))
def test_added_activations_pass_the_oracles_and_name_their_nodes(name):
    make, recorded = ADDED[name]
    model = MLP(make()).eval()
    inputs = (torch.randn(3, 4),)
    pg = assert_oracles(model, inputs, trials=3)
    named = {pg.vocabulary.activations[int(c)] for c in pg.data.x[:, ACT].long()}
    assert recorded in named  # (log1p's hidden nodes are abs's; log1p gets nodes of its own)
    _assert_hidden_permutation_is_a_symmetry(model, pg, inputs)


def _pair(make_a, make_b):
    """Whether two MLPs with the same weights and the given activations compute different
    functions (beyond float32 rounding: ``exp(h) - 1`` and ``expm1`` differ by ulps near 0),
    and their graphs."""
    torch.manual_seed(0)
    inputs = (torch.randn(3, 4) * 2,)
    a, b = MLP(make_a()).eval(), MLP(make_b()).eval()
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        differ = not torch.allclose(a(*inputs), b(*inputs), rtol=1e-5, atol=1e-6)
    return differ, gc.compile(a, inputs), gc.compile(b, inputs)


@pytest.mark.parametrize("a, b", [
    (lambda: nn.Softshrink(0.3), lambda: nn.Hardshrink(0.3)),
    (lambda: nn.Softshrink(0.3), lambda: nn.Softshrink(0.6)),
    (lambda: nn.Threshold(0.1, -1.0), lambda: nn.Threshold(0.1, 0.0)),
    (lambda: nn.RReLU(0.1, 0.3), lambda: nn.RReLU(0.01, 0.03)),
    (lambda: Lambda(torch.floor), lambda: Lambda(torch.ceil)),
    (lambda: Lambda(torch.round), lambda: Lambda(torch.floor)),
    (lambda: Lambda(torch.exp), lambda: Lambda(torch.expm1)),
], ids=["soft_vs_hard_shrink", "shrink_lambda", "threshold_value", "rrelu_range", "floor_vs_ceil",
        "round_vs_floor", "exp_vs_expm1"])
def test_added_activations_and_their_parameters_tell_graphs_apart(a, b):
    differ, graph_a, graph_b = _pair(a, b)
    assert differ
    assert_not_isomorphic(graph_a, graph_b)


@pytest.mark.parametrize("a, b", [
    (lambda: nn.Threshold(0.0, 0.0), lambda: nn.ReLU()),
    (lambda: nn.RReLU(0.1, 0.3), lambda: nn.LeakyReLU(0.2)),
    (lambda: Lambda(lambda h: torch.round(h, decimals=0)), lambda: Lambda(torch.round)),
    (lambda: Lambda(lambda h: torch.exp(h) - 1), lambda: Lambda(torch.expm1)),
    (lambda: Lambda(lambda h: torch.exp(h) - torch.tensor(1.0)), lambda: Lambda(torch.expm1)),
    (lambda: Lambda(lambda h: torch.log(h.abs() + 1)), lambda: Lambda(lambda h: torch.log1p(h.abs()))),
], ids=["threshold_0_0_is_relu", "rrelu_eval_is_leaky_relu", "round_decimals_0", "exp_minus_1_is_expm1",
        "exp_minus_a_tensor_1_is_expm1", "log_of_1_plus_is_log1p"])
def test_one_function_one_graph_whatever_the_spelling(a, b):
    differ, graph_a, graph_b = _pair(a, b)
    assert not differ
    assert_isomorphic(graph_a, graph_b)


def test_rrelu_exported_in_training_mode_is_refused_in_one_line():
    """A module compiles in eval mode; a program exported in training mode keeps random slopes."""
    program = torch.export.export(MLP(nn.RReLU()).train(), (torch.randn(3, 4),))
    with pytest.raises(gc.CompileError, match="rrelu in training mode") as refusal:
        gc.compile(program)
    assert len(str(refusal.value).strip().splitlines()) == 1


def test_round_to_other_places_is_refused_in_one_line():
    with pytest.raises(gc.CompileError, match="round to 1 decimals") as refusal:
        gc.compile(MLP(Lambda(lambda h: torch.round(h, decimals=1))).eval(), (torch.randn(3, 4),))
    assert len(str(refusal.value).strip().splitlines()) == 1


@pytest.mark.parametrize("name", ["ceil", "expm1", "floor", "log1p", "round", "rrelu (eval)"])
def test_added_activations_give_the_same_graph_from_onnx(tmp_path, name):
    """Exporters write expm1 as ``Exp - 1`` and log1p as ``Log(x + 1)``: the ONNX graph is the
    torch graph all the same (the spelled-out forms are recognised)."""
    model = MLP(ADDED[name][0]()).eval()
    x = torch.randn(3, 4)
    path = tmp_path / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # the TorchScript exporter has no expm1; the dynamo exporter's optimiser would store
        # the 1 of ``Exp - 1`` as an initializer, which the ONNX frontend reads as a weight
        extra = {"dynamo": True, "optimize": False} if name == "expm1" else {"dynamo": False}
        torch.onnx.export(model, (x,), str(path), opset_version=18, input_names=["x"], **extra)
    assert_isomorphic(gc.compile(model, (x,)), gc.compile(str(path)))


@pytest.mark.parametrize("threshold, dynamo", [(20.0, False), (20.0, True), (5.0, True)],
                         ids=["torchscript", "dynamo", "dynamo_threshold_5"])
def test_softplus_thresholded_as_exporters_write_it_is_the_torch_graph(tmp_path, threshold, dynamo):
    """The dynamo exporter writes ``F.softplus(x, threshold=t)`` as ``Where(x > t, x,
    Softplus(x))`` (Mamba's time step): fused back, the graph is the torch graph, and its
    threshold counts. (The TorchScript exporter writes a bare ``Softplus``, the default's
    function up to e^-20, and drops any other threshold.)"""
    torch.manual_seed(0)
    model, x = MLP(nn.Softplus(threshold=threshold)).eval(), torch.randn(3, 4)
    path = tmp_path / "m.onnx"
    export_onnx(model, x, path, dynamo=dynamo)
    pg = gc.compile(str(path))
    assert_isomorphic(gc.compile(model, (x,)), pg)
    other = MLP(nn.Softplus(threshold=25.0 - threshold)).eval()
    other.load_state_dict(model.state_dict())
    assert_not_isomorphic(gc.compile(other, (x,)), pg)
    gc.check_symmetry(str(path), {"x": x.numpy()}, trials=3)
    if dynamo:  # a producer that does not declare the threshold constant: a weight, never fused away
        _strip_torch_declarations(path, tmp_path / "plain.onnx")
        with pytest.raises(gc.CompileError, match="onnx.Greater"):
            gc.compile(str(tmp_path / "plain.onnx"))


def test_softplus_threshold_computed_from_the_input_is_not_fused(tmp_path):
    """``Where(h > max(x), h, Softplus(h))``: the threshold changes with the input, so reading
    the example run's value as a fixed threshold would describe another function."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    weight = numpy_helper.from_array(torch.randn(3, 3).numpy(), "W")
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]),
             helper.make_node("ReduceMax", ["x"], ["t"], keepdims=0),
             helper.make_node("Softplus", ["h"], ["s"]), helper.make_node("Greater", ["h", "t"], ["c"]),
             helper.make_node("Where", ["c", "h", "s"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])], [weight])
    path = tmp_path / "input_threshold.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    with pytest.raises(gc.CompileError, match="onnx.Greater"):
        gc.compile(str(path))
