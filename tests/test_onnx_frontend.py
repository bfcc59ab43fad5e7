"""ONNX frontend: models written the way other exporters write them, torch exports with both
exporters, write-back, and the oracles through onnxruntime."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import gmn_compiler as gc
from oracles import assert_isomorphic, randomize_buffers

RNG = np.random.default_rng(0)


def _init(name: str, *shape: int) -> onnx.TensorProto:
    return numpy_helper.from_array(RNG.standard_normal(shape).astype(np.float32), name)


def _model(nodes, inputs, outputs, initializers, opset: int = 18) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _io(name: str, *shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def _run(model: onnx.ModelProto, feed: dict) -> list[np.ndarray]:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)


def _assert_write_back_identity(pg, model: onnx.ModelProto) -> None:
    """Unedited values write back byte-identical initializers."""
    back = pg.to_onnx_model(pg.data.edge_attr[:, 0])
    originals = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for init in back.graph.initializer:
        np.testing.assert_array_equal(numpy_helper.to_array(init), originals[init.name])
        assert numpy_helper.to_array(init).dtype == originals[init.name].dtype


# ---------------------------------------------------------------- hand-written graphs
def gemm_mlp() -> onnx.ModelProto:
    """Gemm with transB=0 (weight stored [in, out]), then Gemm with transB=1."""
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=0),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], transB=1)]
    inits = [_init("w1", 3, 5), _init("b1", 5), _init("w2", 2, 5), _init("b2", 2)]
    return _model(nodes, [_io("x", "batch", 3)], [_io("y", "batch", 2)], inits)


def test_gemm_trans_b_zero_is_a_transposed_linear():
    model = gemm_mlp()
    pg = gc.compile(model)
    assert pg.summary["linear"]["edges"] == 3 * 5 + 5 + 5 * 2 + 2
    names = [p.name for p in pg.params]
    w1 = numpy_helper.to_array(model.graph.initializer[0])
    d = pg.data
    for e in np.nonzero((d.edge_param == names.index("w1")).numpy())[0][:6]:
        i, o = divmod(int(d.edge_offset[e]), 5)  # offset into w1 [in, out]
        assert float(d.edge_attr[e, 0]) == float(w1[i, o])
        assert int(d.x[d.edge_index[0, e], 2]) == i  # from input node i
    _assert_write_back_identity(pg, model)
    report = gc.check_symmetry(model, trials=4)
    assert report.symmetries_checked  # hidden units of the first Gemm


def test_matmul_with_weight_on_the_left_contracts_axis_minus_two():
    nodes = [helper.make_node("MatMul", ["w", "x"], ["h"]), helper.make_node("Tanh", ["h"], ["t"]),
             helper.make_node("MatMul", ["v", "t"], ["y"])]
    model = _model(nodes, [_io("x", 4, 3)], [_io("y", 2, 3)], [_init("w", 6, 4), _init("v", 2, 6)])
    pg = gc.compile(model)
    assert pg.summary["matmul"]["edges"] == 6 * 4 + 2 * 6
    assert int((pg.data.x[:, 0] == 0).sum()) == 4  # the input's neuron axis is axis 0 (size 4)
    gc.check_symmetry(model, trials=4)
    _assert_write_back_identity(pg, model)


def test_matmul_add_becomes_linear_with_bias():
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["y"])]
    model = _model(nodes, [_io("x", 2, 3)], [_io("y", 2, 4)], [_init("w", 3, 4), _init("b", 4)])
    pg = gc.compile(model)
    assert set(pg.summary) == {"linear"}
    linear_bias = gc.schema.code(gc.schema.EDGE_TYPES, "linear_bias")
    assert int((pg.data.edge_attr[:, 1] == linear_bias).sum()) == 4


def conv_bn_model(auto_pad: str = "SAME_UPPER") -> onnx.ModelProto:
    """Conv with auto_pad, an unfused BatchNormalization, global pooling and a Gemm."""
    nodes = [helper.make_node("Conv", ["x", "cw", "cb"], ["c"], auto_pad=auto_pad, kernel_shape=[3, 3], strides=[2, 2]),
             helper.make_node("BatchNormalization", ["c", "s", "bb", "m", "v"], ["n"]),
             helper.make_node("Relu", ["n"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], transB=1)]
    var = numpy_helper.from_array(RNG.uniform(0.5, 2, 4).astype(np.float32), "v")
    inits = [_init("cw", 4, 3, 3, 3), _init("cb", 4), _init("s", 4), _init("bb", 4), _init("m", 4), var,
             _init("fw", 2, 4), _init("fb", 2)]
    return _model(nodes, [_io("x", "N", 3, 7, 7)], [_io("y", "N", 2)], inits)


def test_conv_same_upper_with_unfused_batch_norm():
    model = conv_bn_model()
    pg = gc.compile(model)
    assert pg.summary["conv"]["edges"] == 4 * 3 * 9 + 4 + 4  # weights, biases, signature (padding)
    assert pg.summary["batch_norm"]["edges"] == 4 * 4
    report = gc.check_symmetry(model, trials=4)
    assert any("conv" in s for s in report.symmetries_checked)
    _assert_write_back_identity(pg, model)


def test_initializer_shared_by_two_nodes_is_tied_and_written_back_once():
    nodes = [helper.make_node("MatMul", ["x", "w"], ["a"]), helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("MatMul", ["r", "w"], ["b"]), helper.make_node("Sigmoid", ["b"], ["s"]),
             helper.make_node("MatMul", ["s", "o"], ["y"])]
    model = _model(nodes, [_io("x", 2, 4)], [_io("y", 2, 3)], [_init("w", 4, 4), _init("o", 4, 3)])
    pg = gc.compile(model)
    tie = gc.schema.code(gc.schema.NODE_ROLES, "tie")
    assert int((pg.data.x[:, 0] == tie).sum()) == 8
    gc.check_symmetry(model, trials=6)
    values = pg.data.edge_attr[:, 0].clone()
    w_edges = torch.nonzero(pg.data.edge_param == [p.name for p in pg.params].index("w")).reshape(-1)
    values[w_edges] *= 2  # edit both copies consistently
    edited = pg.to_onnx_model(values)
    w_back = numpy_helper.to_array(next(i for i in edited.graph.initializer if i.name == "w"))
    np.testing.assert_allclose(w_back, 2 * numpy_helper.to_array(model.graph.initializer[0]))


def test_edited_values_change_onnxruntime_output(tmp_path):
    model = gemm_mlp()
    pg = gc.compile(model)
    path = tmp_path / "edited.onnx"
    pg.to_onnx(pg.data.edge_attr[:, 0] * 0.5, path)
    onnx.checker.check_model(onnx.load(path))
    x = RNG.standard_normal((3, 3)).astype(np.float32)
    assert not np.allclose(_run(model, {"x": x})[0], _run(onnx.load(path), {"x": x})[0])


# ---------------------------------------------------------------- torch exports
class SmallNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.gn = nn.GroupNorm(2, 4)
        self.fc = nn.Linear(4 * 4 * 4, 6)
        self.ln = nn.LayerNorm(6)
        self.out = nn.Linear(6, 3)

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(x)))
        y = nn.functional.max_pool2d(self.gn(y), 2).flatten(1)
        return self.out(self.ln(nn.functional.gelu(self.fc(y))))


def _export(model, x, path, dynamo: bool, optimize: bool) -> None:
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            extra = {"optimize": optimize} if dynamo else {}
            torch.onnx.export(model, (x,), str(path), dynamo=dynamo, opset_version=18,
                              do_constant_folding=optimize, input_names=["x"], **extra)
    finally:
        logging.disable(logging.NOTSET)


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_parity_with_torch_when_optimisation_is_off(tmp_path, dynamo):
    model = randomize_buffers(SmallNet()).eval()
    x = torch.randn(1, 3, 8, 8)
    path = tmp_path / "m.onnx"
    _export(model, x, path, dynamo, optimize=False)
    from_torch, from_onnx = gc.compile(model, (x,)), gc.compile(str(path))
    assert_isomorphic(from_torch, from_onnx)
    gc.check_symmetry(str(path), trials=3)


def _fold_batch_norm(model: SmallNet) -> SmallNet:
    folded = SmallNet().eval()
    folded.load_state_dict(model.state_dict())
    bn = model.bn
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    with torch.no_grad():
        folded.conv.weight.copy_(model.conv.weight * scale.view(-1, 1, 1, 1))
        folded.conv.bias.copy_((model.conv.bias - bn.running_mean) * scale + bn.bias)
    folded.bn = nn.Identity()
    return folded


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_folded_export_gives_the_graph_of_the_folded_model(tmp_path, dynamo):
    model = randomize_buffers(SmallNet()).eval()
    x = torch.randn(1, 3, 8, 8)
    path = tmp_path / "m.onnx"
    _export(model, x, path, dynamo, optimize=True)
    pg_onnx = gc.compile(str(path))
    assert "batch_norm" not in pg_onnx.summary
    pg_folded = gc.compile(_fold_batch_norm(model), (x,))
    rounded = lambda pg: pg.data.edge_attr.__setitem__((slice(None), 0), pg.data.edge_attr[:, 0].round(decimals=4))
    rounded(pg_onnx), rounded(pg_folded)
    assert_isomorphic(pg_folded, pg_onnx)


def test_symbolic_batch_and_shape_subgraphs(tmp_path):
    """Dynamic batch: Reshape targets come from Shape/Gather/Concat subgraphs."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(2, 3, 3), nn.Linear(3 * 4 * 4, 2)

        def forward(self, x):
            return self.fc(torch.relu(self.conv(x)).reshape(x.shape[0], -1))

    model = Net().eval()
    path = tmp_path / "dyn.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(2, 2, 6, 6),), str(path), dynamo=False, input_names=["x"],
                          dynamic_axes={"x": {0: "batch"}}, do_constant_folding=False, opset_version=17)
    assert any(n.op_type == "Shape" for n in onnx.load(path).graph.node)
    pg = gc.compile(str(path))
    spatial = pg.data.edge_attr[:, gc.schema.edge_column("spatial")]
    assert int(spatial.max()) == 15  # the flattened (h, w) position of the 4x4 map
    assert_isomorphic(gc.compile(model, (torch.randn(1, 2, 6, 6),)), pg)


def test_skl2onnx_mlp_regressor():
    import skl2onnx
    from sklearn.neural_network import MLPRegressor

    X = RNG.standard_normal((40, 4)).astype(np.float32)
    reg = MLPRegressor(hidden_layer_sizes=(6, 5), max_iter=50, random_state=0).fit(X, X[:, 0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proto = skl2onnx.to_onnx(reg, X[:1])
    pg = gc.compile(proto)
    assert pg.summary["linear"]["edges"] == 4 * 6 + 6 + 6 * 5 + 5 + 5 + 1
    gc.check_symmetry(proto, trials=4)


# ---------------------------------------------------------------- bad input
def test_truncated_and_foreign_files(tmp_path):
    good = tmp_path / "good.onnx"
    onnx.save(gemm_mlp(), good)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(good.read_bytes()[:40])
    foreign = tmp_path / "foreign.onnx"
    foreign.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    for path in (truncated, foreign, tmp_path / "missing.onnx"):
        with pytest.raises(gc.CompileError) as info:
            gc.compile(str(path))
        assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_all_unsupported_ops_are_listed_with_node_names():
    nodes = [helper.make_node("MatMul", ["x", "w"], ["a"], name="proj"),
             helper.make_node("CumSum", ["a", "axis"], ["c"], name="running_total"),
             helper.make_node("TopK", ["c", "k"], ["v", "i"], name="pick"),
             helper.make_node("Relu", ["v"], ["y"])]
    inits = [_init("w", 3, 4), numpy_helper.from_array(np.array(1, np.int64), "axis"),
             numpy_helper.from_array(np.array([2], np.int64), "k")]
    model = _model(nodes, [_io("x", 2, 3)], [_io("y", 2, 2)], inits)
    with pytest.raises(gc.UnsupportedOpsError) as info:
        gc.compile(model)
    message = str(info.value)
    assert "onnx.CumSum" in message and "running_total" in message
    assert "onnx.TopK" in message and "pick" in message and "plugin" in message


def test_missing_external_data(tmp_path):
    model = conv_bn_model()
    path = tmp_path / "ext.onnx"
    onnx.save(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights.bin", size_threshold=0)
    assert gc.compile(str(path)).summary["conv"]["edges"] == 112 + 4  # loads with its data (+ padding signature)
    (tmp_path / "weights.bin").unlink()
    with pytest.raises(gc.CompileError, match="external data file 'weights.bin' is missing"):
        gc.compile(str(path))


def test_unhandled_opset():
    model = gemm_mlp()
    model.opset_import[0].version = 7
    with pytest.raises(gc.CompileError, match="opset 7 is not handled"):
        gc.compile(model)


def test_cycle_and_dangling_input():
    cyclic = _model([helper.make_node("Relu", ["b"], ["a"]), helper.make_node("Relu", ["a"], ["b"])],
                    [_io("x", 2)], [_io("b", 2)], [])
    with pytest.raises(gc.CompileError, match="cycle"):
        gc.compile(cyclic)
    dangling = _model([helper.make_node("Add", ["x", "ghost"], ["y"])], [_io("x", 2)], [_io("y", 2)], [])
    with pytest.raises(gc.CompileError, match="dangling input"):
        gc.compile(dangling)
