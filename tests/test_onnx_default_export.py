"""ONNX files written by ``torch.onnx.export`` with its defaults (dynamo exporter, optimizer on).

The optimizer lifts the model's Python scalars (``x * 0.5``, ``h / 3``) into 0-d initializers.
The exporter declares the torch model's parameters and buffers in ``value_info`` metadata, so
the frontend reads undeclared 0-d initializers as the constants they were, and declared
non-persistent buffers as constants too, as the torch frontend does: the graph from the file is
the graph from the model (parity), the automorphisms still preserve the file's function
(onnxruntime), and different scalars still give different graphs.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings

import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gmn_compiler as gc
from gmn_compiler.frontends.onnx_torch_signature import (TORCH_INPUT_KIND, _folded_from, _named_by_the_exporter,
                                                        torch_declared_constants)
from oracles import assert_isomorphic, assert_not_isomorphic
from test_onnx_attention import DIM, HEADS, SEQ, HandWritten


class Scalars(nn.Module):
    """An MLP whose hidden layer goes through ``fn`` (scalar arithmetic in it)."""

    def __init__(self, fn):
        super().__init__()
        self.a, self.b, self.fn = nn.Linear(4, 6), nn.Linear(6, 2), fn

    def forward(self, x):
        return self.b(self.fn(self.a(x)))


SCALAR_SPELLINGS = {
    "scale and shift": lambda h: torch.tanh(h) * 0.5 + 1.0,
    "division and reverse division": lambda h: h / 3.0 + 2.0 / (h.abs() + 1.5),
    "SIREN frequency": lambda h: torch.sin(30.0 * h),
    "softmax temperature": lambda h: torch.softmax(h / 0.7, -1),
    "subtraction from a scalar": lambda h: 1.0 - torch.sigmoid(h),
}


def export_default(model: nn.Module, x: torch.Tensor, path, **options) -> None:
    """``torch.onnx.export`` as a user calls it: no exporter or optimizer options."""
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (x,), str(path), input_names=["x"], **options)
    finally:
        logging.disable(logging.NOTSET)


def _undeclared_scalars(path) -> list[str]:
    graph = onnx.load(str(path)).graph
    return [i.name for i in graph.initializer if len(i.dims) == 0 and i.name in torch_declared_constants(graph)]


@pytest.mark.parametrize("spelling", sorted(SCALAR_SPELLINGS))
def test_default_export_gives_the_torch_graph(spelling, tmp_path):
    torch.manual_seed(0)
    model, x = Scalars(SCALAR_SPELLINGS[spelling]).eval(), torch.randn(3, 4)
    path = tmp_path / "m.onnx"
    export_default(model, x, path)
    assert _undeclared_scalars(path), "the exporter no longer lifts scalars: this test checks nothing"
    pg = gc.compile(str(path))
    assert_isomorphic(gc.compile(model, (x,)), pg)
    gc.check_symmetry(str(path), trials=3, graph=pg)


def test_lifted_scalars_are_still_in_the_graph(tmp_path):
    torch.manual_seed(0)
    half, quarter = Scalars(lambda h: torch.tanh(h) * 0.5).eval(), Scalars(lambda h: torch.tanh(h) * 0.25).eval()
    quarter.load_state_dict(half.state_dict())
    x = torch.randn(3, 4)
    export_default(half, x, tmp_path / "half.onnx")
    export_default(quarter, x, tmp_path / "quarter.onnx")
    assert_not_isomorphic(gc.compile(str(tmp_path / "half.onnx")), gc.compile(str(tmp_path / "quarter.onnx")))


class LearnedScalar(nn.Module):
    """A 0-d parameter (a learned temperature): declared by the exporter, so a weight."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 2)
        self.temperature = nn.Parameter(torch.tensor(1.7))

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)) * self.temperature * 0.5)


def test_declared_0d_parameter_stays_a_weight(tmp_path):
    torch.manual_seed(0)
    model, x = LearnedScalar().eval(), torch.randn(3, 4)
    path = tmp_path / "m.onnx"
    export_default(model, x, path)
    pg = gc.compile(str(path))
    assert_isomorphic(gc.compile(model, (x,)), pg)
    assert "temperature" in pg.to_state_dict(pg.data.edge_attr[:, 0])


def _strip_torch_declarations(path, out) -> None:
    model = onnx.load(str(path))
    for info in model.graph.value_info:
        kept = [p for p in info.metadata_props if p.key != TORCH_INPUT_KIND]
        del info.metadata_props[:]
        info.metadata_props.extend(kept)
    onnx.save(model, str(out))


def test_without_declarations_every_float_initializer_is_a_weight(tmp_path):
    """Another producer's file says nothing about which initializers were weights, so a 0-d
    initializer is one; the graph is then larger than the torch graph but still faithful."""
    torch.manual_seed(0)
    model, x = Scalars(SCALAR_SPELLINGS["scale and shift"]).eval(), torch.randn(3, 4)
    export_default(model, x, tmp_path / "m.onnx")
    _strip_torch_declarations(tmp_path / "m.onnx", tmp_path / "plain.onnx")
    assert torch_declared_constants(onnx.load(str(tmp_path / "plain.onnx")).graph) == set()
    declared, plain = gc.compile(str(tmp_path / "m.onnx")), gc.compile(str(tmp_path / "plain.onnx"))
    assert plain.data.num_edges > declared.data.num_edges
    gc.check_symmetry(str(tmp_path / "plain.onnx"), trials=3, graph=plain)


class Buffered(nn.Module):
    def __init__(self, persistent: bool):
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 2)
        self.register_buffer("gain", torch.linspace(0.5, 1.5, 6), persistent=persistent)

    def forward(self, x):
        return self.b(F.gelu(self.a(x)) * self.gain)


@pytest.mark.parametrize("persistent", [True, False], ids=["persistent", "non-persistent"])
def test_buffers_read_as_the_torch_frontend_reads_them(persistent, tmp_path):
    """Unoptimised, the exporter keeps buffers as declared initializers: a persistent buffer is
    a weight, a non-persistent one a constant, in the torch graph and the ONNX graph alike."""
    torch.manual_seed(0)
    model, x = Buffered(persistent).eval(), torch.randn(3, 4)
    path = tmp_path / "m.onnx"
    export_default(model, x, path, optimize=False)
    graph = onnx.load(str(path)).graph
    assert "gain" in {i.name for i in graph.initializer}
    assert ("gain" in torch_declared_constants(graph)) is (not persistent)
    pg = gc.compile(str(path))
    assert_isomorphic(gc.compile(model, (x,)), pg)
    gc.check_symmetry(str(path), trials=3, graph=pg)


class MaskedAttention(HandWritten):
    """A causal mask built in forward from shapes only: the optimizer folds it into an
    initializer, recorded as folded from the traced graph's nodes (``tril``, ``masked_fill``)."""

    def __init__(self, window: int | None = None):
        super().__init__()
        self.window = window

    def forward(self, x):
        q, k, v = self.split(x)
        t = x.shape[1]
        future = torch.ones(t, t, dtype=torch.bool).tril().logical_not()
        if self.window is not None:  # and keys more than ``window`` steps back
            future = future | torch.ones(t, t, dtype=torch.bool).tril(-self.window - 1)
        mask = torch.zeros(1, 1, t, t).masked_fill(future, float("-inf"))
        scores = (q @ k.transpose(-2, -1)) * (DIM // HEADS) ** -0.5 + mask
        return self.merge(scores.softmax(-1) @ v, x)


def _folded(path) -> dict[str, list[str]]:
    graph = onnx.load(str(path)).graph
    return {info.name: _folded_from(info) for info in graph.value_info if _folded_from(info)}


def test_a_mask_folded_from_shapes_is_a_constant(tmp_path):
    torch.manual_seed(0)
    model, x = MaskedAttention().eval(), torch.randn(1, SEQ, DIM)
    path = tmp_path / "m.onnx"
    export_default(model, x, path)
    masks = [name for name, sources in _folded(path).items() if "tril" in sources]
    assert masks, "the exporter no longer folds the mask: this test checks nothing"
    assert set(masks) <= torch_declared_constants(onnx.load(str(path)).graph)
    pg = gc.compile(str(path))
    assert_isomorphic(gc.compile(model, (x,)), pg)
    gc.check_symmetry(str(path), trials=3, graph=pg)


def test_folded_masks_that_differ_give_different_graphs(tmp_path):
    """The folded mask is a constant read by its content: a causal mask and a sliding-window
    one (same weights) are different functions and give different graphs."""
    torch.manual_seed(0)
    causal, windowed, x = MaskedAttention().eval(), MaskedAttention(window=1).eval(), torch.randn(1, SEQ, DIM)
    windowed.load_state_dict(causal.state_dict())
    assert not torch.allclose(causal(x), windowed(x))
    export_default(causal, x, tmp_path / "causal.onnx")
    export_default(windowed, x, tmp_path / "windowed.onnx")
    assert_not_isomorphic(gc.compile(str(tmp_path / "causal.onnx")), gc.compile(str(tmp_path / "windowed.onnx")))


class FoldedWeights(nn.Module):
    """Weights the optimizer folds (transposes): a module-level one and one inside a module."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(6, 4))
        self.inner = nn.Linear(6, 5)
        self.out = nn.Linear(5, 2)

    def forward(self, x):
        h = torch.tanh(x @ self.w.t())
        return self.out(torch.tanh(h @ self.inner.weight.t()))


def test_weights_folded_by_the_optimizer_stay_weights(tmp_path):
    torch.manual_seed(0)
    model, x = FoldedWeights().eval(), torch.randn(3, 4)
    path = tmp_path / "m.onnx"
    export_default(model, x, path)
    folded = _folded(path)
    from_weights = [name for name, sources in folded.items() if {"w", "inner.weight"} & set(sources)]
    assert len(from_weights) == 2, f"the exporter no longer folds the transposes: {folded}"
    assert not set(from_weights) & torch_declared_constants(onnx.load(str(path)).graph)
    pg = gc.compile(str(path))
    assert_isomorphic(gc.compile(model, (x,)), pg)
    gc.check_symmetry(str(path), trials=3, graph=pg)


@pytest.mark.parametrize("name, exporter_made", [
    ("val_12", True), ("add_1", True), ("expand", True), ("getitem_3", True), ("masked_fill", True),
    ("convert_element_type_default", True), ("scalar_tensor_default_2", True),
    ("blocks.0.attn.qkv.weight", False), ("cls_token", False), ("w", False), ("mul_2", False),
    ("Add_1", False)])
def test_which_sources_the_exporter_named(name, exporter_made):
    """mul_2 would be an exporter name, but the file declares it a parameter."""
    assert _named_by_the_exporter(name, {"mul_2": {}}) is exporter_made
