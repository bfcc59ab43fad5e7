"""ONNX attributes reach the rules with their meaning (issue 19, family J): Clip bounds given
as inputs, Softmax before opset 13 (flattening at ``axis``), pooling and conv pads."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import gmn_compiler as gc
from gmn_compiler import canonical
from gmn_compiler.testing import randomized


class TwoClamps(nn.Module):
    """Parallel branches that differ only in their clamp bounds."""

    def __init__(self, lo: float, hi: float):
        super().__init__()
        self.e, self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 3), nn.Linear(6, 3)
        self.lo, self.hi = lo, hi

    def forward(self, x):
        h = self.e(x)
        return self.a(torch.clamp(h, -1, 1)) + self.b(torch.clamp(h, self.lo, self.hi))


def test_clip_bounds_given_as_inputs_tell_branches_apart(tmp_path):
    model, inputs = randomized(TwoClamps(0.0, 2.0)), (torch.randn(2, 4),)
    path = str(tmp_path / "clamps.onnx")
    torch.onnx.export(model, inputs, path, dynamo=False, opset_version=17)
    gc.check_symmetry(path)  # the swap of a and b changes the function: no such automorphism
    assert canonical.isomorphic(gc.compile(path), gc.compile(model, inputs))


def _softmax_model(opset: int, axis: int):
    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32), "W")
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Softmax", ["h"], ["y"], axis=axis)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5, 3])], [weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize("opset, axis", [(11, 2), (11, -1), (13, 1), (13, -1)])
def test_softmax_with_todays_meaning(opset, axis):
    model = _softmax_model(opset, axis)
    gc.check_symmetry(model)


def test_softmax_before_opset_13_flattening_axes_is_refused():
    with pytest.raises(gc.UnsupportedOpsError, match="before opset 13 over axes 1"):
        gc.compile(_softmax_model(11, 1))
