"""Every ONNX op the plugins map, each in a small graph between two weight layers: it compiles,
its automorphisms preserve onnxruntime's outputs, the declared symmetries are present, and the
unedited values write back identical initializers."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import gmn_compiler as gc
from gmn_compiler import canonical
from gmn_compiler.frontends.onnx_checks import check_onnx

RNG = np.random.default_rng(1)


def _t(name: str, array) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array), name)


def _w(name: str, *shape: int) -> onnx.TensorProto:
    return _t(name, RNG.standard_normal(shape).astype(np.float32))


def _i64(name: str, values) -> onnx.TensorProto:
    return _t(name, np.asarray(values, dtype=np.int64))


def _mlp(op_nodes, extra_inits=(), opset: int = 18, width: int = 4) -> onnx.ModelProto:
    """x[2,3] -> MatMul -> h ... op nodes (read h, write o) ... -> MatMul -> y[2,2]."""
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"])] + op_nodes + \
            [helper.make_node("MatMul", ["o", "w2"], ["y"])]
    inits = [_w("w1", 3, width), _w("w2", width, 2), *extra_inits]
    return _graph(nodes, [2, 3], [2, 2], inits, opset)


def _cnn(op_nodes, extra_inits=(), opset: int = 18, out_channels: int = 4) -> onnx.ModelProto:
    """x[1,3,6,6] -> Conv 3x3 pad 1 -> h ... (read h, write o) ... -> GlobalAveragePool ->
    Flatten -> Gemm -> y[1,2]."""
    nodes = [helper.make_node("Conv", ["x", "cw", "cb"], ["h"], pads=[1, 1, 1, 1])] + op_nodes + \
            [helper.make_node("GlobalAveragePool", ["o"], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "fw"], ["y"], transB=1)]
    inits = [_w("cw", 4, 3, 3, 3), _w("cb", 4), _w("fw", 2, out_channels), *extra_inits]
    return _graph(nodes, [1, 3, 6, 6], [1, 2], inits, opset)


def _graph(nodes, x_shape, y_shape, inits, opset) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9
    return model


N = helper.make_node
CASES = {
    "LeakyRelu": lambda: _mlp([N("LeakyRelu", ["h"], ["o"], alpha=0.2)]),
    "HardSwish": lambda: _mlp([N("HardSwish", ["h"], ["o"])]),
    "HardSigmoid": lambda: _mlp([N("HardSigmoid", ["h"], ["o"])]),
    "Clip": lambda: _mlp([N("Clip", ["h", "lo", "hi"], ["o"])],
                         [_t("lo", np.float32(-0.5)), _t("hi", np.float32(0.5))]),
    "Sin": lambda: _mlp([N("Sin", ["h"], ["o"])]),
    "Shrink": lambda: _mlp([N("Shrink", ["h"], ["o"], bias=0.3, lambd=0.3)]),
    "ThresholdedRelu": lambda: _mlp([N("ThresholdedRelu", ["h"], ["o"], alpha=0.1)]),
    "Floor": lambda: _mlp([N("Floor", ["h"], ["o"])]),
    "Ceil": lambda: _mlp([N("Ceil", ["h"], ["o"])]),
    "Round": lambda: _mlp([N("Round", ["h"], ["o"])]),
    "Elu": lambda: _mlp([N("Elu", ["h"], ["o"])]),
    "Softplus": lambda: _mlp([N("Softplus", ["h"], ["o"])]),
    "Gelu": lambda: _mlp([N("Gelu", ["h"], ["o"], approximate="tanh")], opset=20),
    "Sigmoid-gating": lambda: _mlp([N("Sigmoid", ["h"], ["s"]), N("Mul", ["h", "s"], ["o"])]),
    "Add-residual": lambda: _mlp([N("Tanh", ["h"], ["t"]), N("MatMul", ["t", "w3"], ["u"]),
                                  N("Add", ["u", "t"], ["o"])], [_w("w3", 4, 4)]),
    "Max": lambda: _mlp([N("Relu", ["h"], ["r"]), N("MatMul", ["r", "w3"], ["u"]), N("Max", ["u", "r"], ["o"])],
                        [_w("w3", 4, 4)]),
    "Sub-scalar": lambda: _mlp([N("Sub", ["one", "h"], ["o"])], [_t("one", np.float32(1.0))]),
    "Div-scalar": lambda: _mlp([N("Div", ["h", "two"], ["o"])], [_t("two", np.float32(2.0))]),
    "Pow": lambda: _mlp([N("Pow", ["h", "two"], ["o"])], [_t("two", np.float32(2.0))]),
    "Mul-layer-scale": lambda: _mlp([N("Mul", ["h", "gamma"], ["o"])], [_w("gamma", 4)]),
    "Softmax-hidden": lambda: _mlp([N("Softmax", ["h"], ["o"], axis=-1)]),
    "Unsqueeze-Squeeze": lambda: _mlp([N("Unsqueeze", ["h", "ax"], ["u"]), N("Relu", ["u"], ["r"]),
                                       N("Squeeze", ["r", "ax"], ["o"])], [_i64("ax", [1])]),
    "Transpose": lambda: _mlp([N("Transpose", ["h"], ["t"], perm=[1, 0]), N("Relu", ["t"], ["r"]),
                               N("Transpose", ["r"], ["o"], perm=[1, 0])]),
    "Concat": lambda: _graph([N("MatMul", ["x", "w1"], ["a"]), N("MatMul", ["x", "w3"], ["b"]), N("Relu", ["a"], ["ra"]),
            N("Tanh", ["b"], ["tb"]), N("Concat", ["ra", "tb"], ["c"], axis=1), N("MatMul", ["c", "w2"], ["y"])],
           [2, 3], [2, 2], [_w("w1", 3, 4), _w("w3", 3, 2), _w("w2", 6, 2)], 18),
    "Split": lambda: _graph([N("MatMul", ["x", "w1"], ["h"]), N("Split", ["h", "sizes"], ["a", "b"], axis=1),
                             N("Relu", ["a"], ["ra"]), N("Sigmoid", ["b"], ["sb"]), N("Mul", ["ra", "sb"], ["g"]),
                             N("MatMul", ["g", "w2"], ["y"])],
                            [2, 3], [2, 2], [_w("w1", 3, 6), _i64("sizes", [3, 3]), _w("w2", 3, 2)], 18),
    "Slice": lambda: _graph([N("MatMul", ["x", "w1"], ["h"]), N("Slice", ["h", "st", "en", "axes"], ["s"]),
            N("Relu", ["s"], ["r"]), N("MatMul", ["r", "w2"], ["y"])],
           [2, 3], [2, 2], [_w("w1", 3, 4), _i64("st", [1]), _i64("en", [3]), _i64("axes", [1]), _w("w2", 2, 2)], 18),
    "Gather": lambda: _graph([N("MatMul", ["x", "w1"], ["h"]), N("Gather", ["h", "idx"], ["s"], axis=1),
                              N("Relu", ["s"], ["r"]), N("MatMul", ["r", "w2"], ["y"])],
                             [2, 3], [2, 2], [_w("w1", 3, 4), _i64("idx", [0, 2, 3]), _w("w2", 3, 2)], 18),
    # a Constant mask over hidden units tells them apart (they get fixed positions)
    "Where-constant-mask": lambda: _mlp([N("Constant", [], ["m"], value=_t("mv", np.array([True, False, False, True]))),
                                         N("Where", ["m", "h", "zero"], ["o"])], [_t("zero", np.float32(0.0))]),
    "Where-uniform-mask": lambda: _mlp([N("Constant", [], ["m"], value=_t("mv", np.array([[True], [False]]))),
                                        N("Where", ["m", "zero", "h"], ["o"])], [_t("zero", np.float32(0.0))]),
    "Where-constant-fill": lambda: _mlp([N("Constant", [], ["m"], value=_t("mv", np.array([True]))),
                                         N("Constant", [], ["f"], value=_t("fv", np.float32([0, 1, 2, 3]))),
                                         N("Where", ["m", "f", "h"], ["o"])]),
    "ReduceL2-per-group": lambda: _graph([N("MatMul", ["x", "w1"], ["h"]), N("Reshape", ["h", "groups"], ["g"]),
                                          N("ReduceL2", ["g", "last"], ["n"], keepdims=1), N("Div", ["g", "n"], ["d"]),
                                          N("Reshape", ["d", "flat"], ["f"]), N("MatMul", ["f", "w2"], ["y"])],
                                         [2, 3], [2, 2], [_w("w1", 3, 6), _i64("groups", [2, 2, 3]), _i64("last", [-1]),
                                                          _i64("flat", [2, 6]), _w("w2", 6, 2)], 18),
    "PRelu-per-channel": lambda: _cnn([N("PRelu", ["h", "slope"], ["o"])], [_t("slope", np.float32([[[0.1]], [[0.2]], [[0.3]], [[0.4]]]))]),
    "Identity-Dropout": lambda: _mlp([N("Identity", ["h"], ["i"]), N("Dropout", ["i"], ["o"])]),
    "Relu-conv": lambda: _cnn([N("Relu", ["h"], ["o"])]),
    "AveragePool": lambda: _cnn([N("AveragePool", ["h"], ["o"], kernel_shape=[2, 2], strides=[2, 2])]),
    "MaxPool": lambda: _cnn([N("MaxPool", ["h"], ["o"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])]),
    "ReduceMean": lambda: _graph([N("Conv", ["x", "cw", "cb"], ["h"]), N("Relu", ["h"], ["r"]),
                                  N("ReduceMean", ["r", "axes"], ["m"], keepdims=0),
                                  N("Gemm", ["m", "fw"], ["y"], transB=1)],
                                 [1, 3, 6, 6], [1, 2], [_w("cw", 4, 3, 3, 3), _w("cb", 4), _i64("axes", [2, 3]),
                                                        _w("fw", 2, 4)], 18),
    "InstanceNormalization": lambda: _cnn([N("InstanceNormalization", ["h", "s", "b"], ["o"])],
                                          [_w("s", 4), _w("b", 4)]),
    # opset 18's GroupNormalization (scale and bias per group), which torch.onnx writes and the
    # ONNX checker refuses as deprecated (issue 20): the rest of the model is still checked
    "GroupNormalization-18": lambda: _cnn([N("GroupNormalization", ["h", "s", "b"], ["o"], num_groups=2)],
                                          [_w("s", 2), _w("b", 2)], opset=18),
    "GroupNormalization-21": lambda: _cnn([N("GroupNormalization", ["h", "s", "b"], ["o"], num_groups=2)],
                                          [_w("s", 4), _w("b", 4)], opset=21),
    "LayerNormalization": lambda: _mlp([N("LayerNormalization", ["h", "s", "b"], ["o"])], [_w("s", 4), _w("b", 4)]),
    "Conv-group": lambda: _cnn([N("Conv", ["h", "gw"], ["o"], group=2, pads=[1, 1, 1, 1])], [_w("gw", 4, 2, 3, 3)]),
    "ConvTranspose": lambda: _cnn([N("ConvTranspose", ["h", "tw", "tb"], ["o"], strides=[2, 2])],
                                  [_w("tw", 4, 3, 2, 2), _w("tb", 3)], out_channels=3),
    "Expand": lambda: _cnn([N("Expand", ["h", "shape"], ["o"])], [_i64("shape", [1, 4, 6, 6])]),
    "Resize-nearest-scales": lambda: _cnn([N("Resize", ["h", "", "sc"], ["o"], mode="nearest")],
                                          [_t("sc", np.float32([1, 1, 2, 2]))]),
    "Resize-linear-sizes": lambda: _cnn([N("Resize", ["h", "", "", "sz"], ["o"], mode="linear")],
                                        [_i64("sz", [1, 4, 9, 9])]),
    "Resize-cubic-aligned": lambda: _cnn([N("Resize", ["h", "", "sc"], ["o"], mode="cubic",
                                            coordinate_transformation_mode="align_corners")],
                                         [_t("sc", np.float32([1, 1, 1.5, 1.5]))]),
    # one Slice over two neuron axes of an activation, one of them reversed
    "Slice-two-axes": lambda: _graph([N("MatMul", ["x", "w1"], ["h"]), N("Reshape", ["h", "grid"], ["g"]),
                                      N("Slice", ["g", "st", "en", "axes", "steps"], ["s"]),
                                      N("Reshape", ["s", "flat"], ["f"]), N("Relu", ["f"], ["r"]),
                                      N("MatMul", ["r", "w2"], ["y"])],
                                     [2, 3], [2, 2], [_w("w1", 3, 6), _i64("grid", [2, 2, 3]), _i64("st", [1, 2]),
                                                      _i64("en", [2, -4]), _i64("axes", [1, 2]), _i64("steps", [1, -1]),
                                                      _i64("flat", [2, 3]), _w("w2", 3, 2)], 18),
    "Gather-2d-indices": lambda: _graph([N("MatMul", ["x", "w1"], ["h"]), N("Gather", ["h", "idx"], ["s"], axis=1),
                                         N("Reshape", ["s", "flat"], ["f"]), N("Relu", ["f"], ["r"]),
                                         N("MatMul", ["r", "w2"], ["y"])],
                                        [2, 3], [2, 2], [_w("w1", 3, 4), _i64("idx", [[0, 2], [3, 1]]),
                                                         _i64("flat", [2, 4]), _w("w2", 4, 2)], 18),
    # initializers seen through layout ops: the stored tensors are the parameters
    "Slice-initializer-two-axes": lambda: _graph([N("Slice", ["packed", "st", "en", "axes", "steps"], ["w1"]),
                                                  N("MatMul", ["x", "w1"], ["h"]), N("Relu", ["h"], ["r"]),
                                                  N("MatMul", ["r", "w2"], ["y"])],
                                                 [2, 3], [2, 2], [_w("packed", 5, 6), _i64("st", [3, 5]),
                                                                  _i64("en", [0, 1]), _i64("axes", [0, 1]),
                                                                  _i64("steps", [-1, -1]), _w("w2", 4, 2)], 18),
    "Transpose-Gather-initializer": lambda: _graph([N("Transpose", ["table", ], ["t"], perm=[1, 0]),
                                                    N("Gather", ["t", "rows"], ["w1"], axis=0),
                                                    N("MatMul", ["x", "w1"], ["h"]), N("Relu", ["h"], ["r"]),
                                                    N("MatMul", ["r", "w2"], ["y"])],
                                                   [2, 3], [2, 2], [_w("table", 4, 5), _i64("rows", [4, 0, 2]),
                                                                    _w("w2", 4, 2)], 18),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_onnx_op(name):
    model = CASES[name]()
    check_onnx(model)  # onnx.checker, tolerating GroupNormalization-18's deprecation
    pg = gc.compile(model)
    back = pg.to_onnx_model(pg.data.edge_attr[:, 0])
    originals = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for init in back.graph.initializer:
        np.testing.assert_array_equal(numpy_helper.to_array(init), originals[init.name])
    gc.check_symmetry(model, trials=3)


def test_sliced_initializer_writes_back_in_place():
    """One packed initializer sliced into two weights (as exporters write fused QKV)."""
    nodes = [N("Slice", ["packed", "s0", "e0", "ax"], ["wa"]), N("Slice", ["packed", "s1", "e1", "ax"], ["wb"]),
             N("MatMul", ["x", "wa"], ["a"]), N("MatMul", ["x", "wb"], ["b"]), N("Relu", ["a"], ["ra"]),
             N("Mul", ["ra", "b"], ["g"]), N("MatMul", ["g", "w2"], ["y"])]
    inits = [_w("packed", 3, 8), _i64("s0", [0]), _i64("e0", [4]), _i64("s1", [4]), _i64("e1", [8]),
             _i64("ax", [1]), _w("w2", 4, 2)]
    model = _graph(nodes, [2, 3], [2, 2], inits, 18)
    pg = gc.compile(model)
    values = pg.data.edge_attr[:, 0].clone()
    names = [p.name for p in pg.params]
    packed = pg.data.edge_param == names.index("packed")
    offsets = pg.data.edge_offset[packed]
    assert sorted(offsets.tolist()) == list(range(24))  # both slices together cover it once
    values[packed] = offsets.float()  # write each entry's own flat offset
    back = numpy_helper.to_array(next(i for i in pg.to_onnx_model(values).graph.initializer if i.name == "packed"))
    np.testing.assert_array_equal(back.reshape(-1), np.arange(24, dtype=np.float32))
    gc.check_symmetry(model, trials=3)


def test_hidden_units_permuted_in_the_initializers_give_an_isomorphic_graph():
    from oracles import assert_isomorphic, assert_not_isomorphic

    model = CASES["LeakyRelu"]()
    perm = RNG.permutation(4)
    permuted = onnx.ModelProto()
    permuted.CopyFrom(model)
    arrays = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for init in permuted.graph.initializer:
        if init.name == "w1":
            init.CopyFrom(numpy_helper.from_array(arrays["w1"][:, perm], "w1"))
        if init.name == "w2":
            init.CopyFrom(numpy_helper.from_array(arrays["w2"][perm], "w2"))
    assert_isomorphic(gc.compile(model), gc.compile(permuted))
    swapped = onnx.ModelProto()
    swapped.CopyFrom(model)
    for init in swapped.graph.initializer:
        if init.name == "w1":  # swapping two *input* features is not a symmetry
            init.CopyFrom(numpy_helper.from_array(arrays["w1"][[1, 0, 2]], "w1"))
    assert_not_isomorphic(gc.compile(model), gc.compile(swapped))


def test_edits_of_a_constant_the_graph_computes_are_refused():
    """A weight the ONNX graph computes from a Constant (here Transpose of it) is compiled as
    a parameter, but has no initializer or Constant node to be written to: unedited values
    write back fine, an edit is refused instead of silently dropped."""
    nodes = [N("Constant", [], ["wc"], value=_w("wc_value", 4, 3)), N("Transpose", ["wc"], ["w1"], perm=[1, 0]),
             N("MatMul", ["x", "w1"], ["h"]), N("Relu", ["h"], ["r"]), N("MatMul", ["r", "w2"], ["y"])]
    model = _graph(nodes, [2, 3], [2, 2], [_w("w2", 4, 2)], 18)
    pg = gc.compile(model)
    values = pg.data.edge_attr[:, 0].clone()
    pg.to_onnx_model(values)
    edited = pg.data.edge_param == [p.name for p in pg.params].index("w1")
    assert int(edited.sum()) == 12
    values[edited] += 1.0
    with pytest.raises(gc.DecompileError, match="'w1' cannot be written back"):
        pg.to_onnx_model(values)
    values = pg.data.edge_attr[:, 0].clone()
    values[pg.data.edge_param == [p.name for p in pg.params].index("w2")] += 1.0
    back = pg.to_onnx_model(values)
    w2 = next(i for i in back.graph.initializer if i.name == "w2")
    np.testing.assert_array_equal(numpy_helper.to_array(w2), numpy_helper.to_array(next(
        i for i in model.graph.initializer if i.name == "w2")) + 1.0)



def _gather_2d(index) -> onnx.ModelProto:
    return _graph([N("MatMul", ["x", "w1"], ["h"]), N("Gather", ["h", "idx"], ["s"], axis=1),
                   N("Reshape", ["s", "flat"], ["f"]), N("MatMul", ["f", "w2"], ["y"])],
                  [2, 3], [2, 2], [_t("w1", np.arange(12, dtype=np.float32).reshape(3, 4) / 7),
                                   _i64("idx", index), _i64("flat", [2, 4]),
                                   _t("w2", np.arange(8, dtype=np.float32).reshape(4, 2) / 5)], 18)


def test_a_gather_reading_a_unit_twice_is_not_one_reading_each_once():
    """Same weights; indices over a neuron axis matter up to relabelling the units: reading
    unit 0 twice (and never unit 3) is another function than reading each unit once."""
    from gmn_compiler import canonical

    gc.check_symmetry(_gather_2d([[0, 0], [1, 2]]), trials=2)
    assert not canonical.isomorphic(gc.compile(_gather_2d([[0, 0], [1, 2]])), gc.compile(_gather_2d([[0, 2], [3, 1]])))


def test_the_checker_still_checks_a_model_with_a_deprecated_group_norm():
    model = CASES["GroupNormalization-18"]()
    model.graph.node.append(N("Relu", ["o"], ["unused"], alpha=1.0))  # Relu has no attributes
    with pytest.raises(gc.CompileError, match="invalid ONNX model: Unrecognized attribute: alpha"):
        gc.compile(model)


class _Einsums(__import__("torch").nn.Module):
    """Attention written with einsum (between activations) and an einsum with a weight."""

    def __init__(self, flip: bool = False):
        import torch

        super().__init__()
        self.flip = flip
        self.qkv = torch.nn.Linear(4, 12)
        self.w = torch.nn.Parameter(torch.randn(2, 4))

    def forward(self, x):
        import torch

        q, k, v = self.qkv(x).view(1, 3, 3, 4).unbind(2)
        scores = torch.einsum("bqd,bkd->bqk", q, k) if not self.flip else torch.einsum("bqd,bkd->bkq", q, k)
        h = torch.einsum("bqk,bkd->bqd", torch.softmax(scores, -1), v)
        return torch.einsum("bnd,hd->bnh", torch.tanh(h), self.w)


@pytest.mark.parametrize("flip", [False, True], ids=["qk", "kq"])
def test_onnx_einsum_compiles_to_the_torch_graph(flip, tmp_path):
    import torch

    from gmn_compiler import canonical
    from gmn_compiler.testing import randomized

    model, x = randomized(_Einsums(flip)), (torch.randn(1, 3, 4),)
    path = str(tmp_path / "einsum.onnx")
    torch.onnx.export(model, x, path, dynamo=False, opset_version=17)
    assert "Einsum" in {n.op_type for n in onnx.load(path).graph.node}
    pg = gc.compile(path)
    gc.check_symmetry(path)
    assert canonical.isomorphic(pg, gc.compile(model, x))
    other = randomized(_Einsums(not flip))
    other.load_state_dict(model.state_dict())
    assert not canonical.isomorphic(pg, gc.compile(other, x))


@pytest.mark.parametrize("onnx_op, module", [
    (lambda: N("Shrink", ["h"], ["o"], bias=0.3, lambd=0.3), lambda: torch.nn.Softshrink(0.3)),
    (lambda: N("Shrink", ["h"], ["o"], lambd=0.3), lambda: torch.nn.Hardshrink(0.3)),
    (lambda: N("ThresholdedRelu", ["h"], ["o"], alpha=0.1), lambda: torch.nn.Threshold(0.1, 0.0)),
], ids=["softshrink", "hardshrink", "thresholded_relu"])
def test_onnx_activation_is_the_torch_one(onnx_op, module):
    """ONNX's Shrink and ThresholdedRelu compile to the graph of torch's module for the same
    function, and to another graph for another function."""
    model = _mlp([onnx_op()])
    w1, w2 = (torch.from_numpy(numpy_helper.to_array(i).copy()) for i in model.graph.initializer[:2])
    torch_model = torch.nn.Sequential(torch.nn.Linear(3, 4, bias=False), module(), torch.nn.Linear(4, 2, bias=False))
    with torch.no_grad():
        torch_model[0].weight.copy_(w1.T)
        torch_model[2].weight.copy_(w2.T)
    x = torch.randn(2, 3)
    graph = gc.compile(model)
    assert canonical.isomorphic(graph, gc.compile(torch_model.eval(), (x,)))
    other = torch.nn.Sequential(torch_model[0], torch.nn.Threshold(0.2, 0.0), torch_model[2])
    assert not canonical.isomorphic(graph, gc.compile(other.eval(), (x,)))
