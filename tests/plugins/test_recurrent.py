"""Recurrent layers (nn.LSTM / nn.GRU / nn.RNN): every oracle on single- and multi-layer,
bidirectional, batch-first models and an LSTM language model; one edge per parameter entry;
the cell, its nonlinearity and the direction tell graphs apart; unsupported forms are refused
clearly."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gmn_compiler as gc
from gmn_compiler import canonical
from gmn_compiler.testing import assert_oracles

CELLS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}
CONFIGS = {
    "one layer, batch first": dict(batch_first=True),
    "two layers, bidirectional": dict(num_layers=2, bidirectional=True),
    "no biases": dict(bias=False),
}


class Sequence(nn.Module):
    """A recurrent layer read at its last step (``states=True``: read through ``h_n`` and, for an
    LSTM, ``c_n`` too)."""

    def __init__(self, cell: type[nn.Module], states: bool = False, **options):
        super().__init__()
        self.rnn = cell(3, 4, **options)
        self.batch_first, self.states = options.get("batch_first", False), states
        directions = 2 if options.get("bidirectional") else 1
        self.head = nn.Linear(4 if states else 4 * directions, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, state = self.rnn(x)
        if self.states:
            h, c = state if isinstance(state, tuple) else (state, state)
            return self.head(h[-1]) + self.head(torch.tanh(c[0]))
        return self.head(out[:, -1] if self.batch_first else out[-1])


def _input(options: dict) -> torch.Tensor:
    return torch.randn(2, 5, 3) if options.get("batch_first") else torch.randn(5, 2, 3)


@pytest.mark.parametrize("config", sorted(CONFIGS))
@pytest.mark.parametrize("cell", sorted(CELLS))
def test_recurrent_models_pass_every_oracle(cell, config):
    options = CONFIGS[config]
    model = Sequence(CELLS[cell], **options)
    graph = assert_oracles(model, (_input(options),))
    entries = sum(p.numel() for p in model.parameters())
    assert int((graph.data.edge_param >= 0).sum()) == entries  # one edge per parameter entry


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_final_states_read_by_the_model_pass_every_oracle(cell):
    assert_oracles(Sequence(CELLS[cell], states=True, num_layers=2), (torch.randn(5, 2, 3),))


class LanguageModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed, self.lstm, self.out = nn.Embedding(11, 5), nn.LSTM(5, 6, batch_first=True), nn.Linear(6, 11)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.out(self.lstm(self.embed(tokens))[0])


def test_an_lstm_language_model_passes_every_oracle():
    assert_oracles(LanguageModel(), (torch.randint(0, 11, (2, 7)),))


def _graph(model: nn.Module, x: torch.Tensor):
    return gc.compile(model.eval(), (x,))


def test_cell_nonlinearity_and_direction_tell_graphs_apart():
    x = torch.randn(5, 2, 3)
    torch.manual_seed(0)
    tanh = Sequence(nn.RNN, nonlinearity="tanh")
    relu = Sequence(nn.RNN, nonlinearity="relu")
    relu.load_state_dict(tanh.state_dict())
    assert not canonical.isomorphic(_graph(tanh, x), _graph(relu, x))
    # a bidirectional layer whose two directions hold the same weights: still not symmetric in them
    both = Sequence(nn.GRU, bidirectional=True)
    with torch.no_grad():
        for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
            getattr(both.rnn, name + "_reverse").copy_(getattr(both.rnn, name))
    assert_oracles(both, (x,))
    # the same tensor read batch first is another function: batch_first is in the graph
    time_first, batch_first = Sequence(nn.LSTM), Sequence(nn.LSTM, batch_first=True)
    batch_first.load_state_dict(time_first.state_dict())
    assert not canonical.isomorphic(_graph(time_first, x), _graph(batch_first, x))


def test_unsupported_forms_are_refused_with_the_reason():
    class GivenState(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn, self.h0 = nn.GRU(3, 4), nn.Parameter(torch.randn(1, 1, 4))

        def forward(self, x):
            return self.rnn(x, self.h0.expand(1, x.shape[1], 4).contiguous())[0]

    with pytest.raises(gc.CompileError, match="zero initial states only"):
        gc.compile(GivenState().eval(), (torch.randn(5, 2, 3),))
    with pytest.raises(gc.CompileError, match="proj_size"):
        gc.compile(nn.LSTM(3, 4, proj_size=2).eval(), (torch.randn(5, 2, 3),))


def _export(model: nn.Module, x: torch.Tensor, path) -> str:
    torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17)
    return str(path)


@pytest.mark.parametrize("layers", ["one layer", "two layers, bidirectional"])
@pytest.mark.parametrize("cell", sorted(CELLS))
def test_onnx_export_passes_the_oracle_and_matches_torch(cell, layers, tmp_path):
    """ONNX LSTM / GRU / RNN nodes (gates in ONNX's order, both biases in one initializer) give
    the graph of the torch model. (A batch-first model exports with transposes around the
    node, which the ONNX graph records: parity holds for time-first models.)"""
    from gmn_compiler.testing import randomized

    options = {} if layers == "one layer" else CONFIGS["two layers, bidirectional"]
    model = randomized(Sequence(CELLS[cell], **options))
    x = torch.randn(5, 2, 3)
    path = _export(model, x, tmp_path / "rnn.onnx")
    gc.check_symmetry(path, trials=3)
    graph = gc.compile(path)
    assert canonical.isomorphic(graph, gc.compile(model, (x,)))
    back = graph.to_onnx_model(graph.data.edge_attr[:, 0])
    import onnx
    from onnx import numpy_helper
    original = {i.name: numpy_helper.to_array(i) for i in onnx.load(path).graph.initializer}
    for init in back.graph.initializer:
        assert (numpy_helper.to_array(init) == original[init.name]).all(), init.name


def test_an_onnx_reverse_only_layer_is_not_the_forward_one(tmp_path):
    import onnx

    model = Sequence(nn.GRU)
    x = torch.randn(5, 2, 3)
    path = _export(model, x, tmp_path / "forward.onnx")
    proto = onnx.load(path)
    node = next(n for n in proto.graph.node if n.op_type == "GRU")
    node.attribute.append(onnx.helper.make_attribute("direction", "reverse"))
    reverse = str(tmp_path / "reverse.onnx")
    onnx.save(proto, reverse)
    gc.check_symmetry(reverse, trials=3)
    assert not canonical.isomorphic(gc.compile(path), gc.compile(reverse))
