"""ONNX files whose weights are ``Constant`` nodes (Paddle2ONNX writes them so; PP-OCR's models
hold no initializers at all): by default constants are structure, so such a graph has no
symmetries; ``constant_weights=True`` (CLI ``--constant-weights``) makes them parameters."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import gmn_compiler as gc
from gmn_compiler import canonical
from gmn_compiler.cli import main

RNG = np.random.default_rng(0)


def _constant(name: str, *shape: int) -> onnx.NodeProto:
    value = numpy_helper.from_array(RNG.standard_normal(shape).astype(np.float32), name + "_value")
    return helper.make_node("Constant", [], [name], value=value)


def _paddle_style_mlp() -> onnx.ModelProto:
    nodes = [_constant("w1", 3, 4), _constant("b1", 4), _constant("w2", 4, 2),
             helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Add", ["h", "b1"], ["a"]),
             helper.make_node("Relu", ["a"], ["r"]), helper.make_node("MatMul", ["r", "w2"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in model.graph.node if n.op_type == "Constant"}


def test_constants_are_structure_by_default():
    graph = gc.compile(_paddle_style_mlp())
    assert {p.kind for p in graph.params} == {"constant"}
    assert canonical.automorphism_generators(graph) == []  # every hidden unit told apart by its values


def test_constant_weights_are_parameters_with_their_symmetries():
    model = _paddle_style_mlp()
    graph = gc.compile(model, constant_weights=True)
    assert {p.name: p.kind for p in graph.params} == {"w1": "parameter", "b1": "parameter", "w2": "parameter"}
    report = gc.check_symmetry(model, graph=graph, trials=3)  # sound, and the hidden units are permutable
    assert report is not None and len(canonical.automorphism_generators(graph)) == 3  # S_4 on the hidden units
    values = graph.data.edge_attr[:, 0]
    assert all(np.array_equal(a, b) for a, b in zip(_constants(model).values(),
                                                   _constants(graph.to_onnx_model(values)).values()))
    edited = _constants(graph.to_onnx_model(values * 2))
    assert np.array_equal(edited["w1"], 2 * _constants(model)["w1"])


def test_constant_weights_is_an_onnx_option(tmp_path):
    with pytest.raises(gc.CompileError, match="ONNX models only"):
        gc.compile(torch.nn.Linear(3, 2), (torch.randn(1, 3),), constant_weights=True)
    path, out = tmp_path / "m.onnx", tmp_path / "m.pt"
    onnx.save(_paddle_style_mlp(), str(path))
    assert main([str(path), "--constant-weights", "-o", str(out)]) == 0
    assert {p.kind for p in gc.load(out).params} == {"parameter"}
