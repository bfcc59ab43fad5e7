"""Every bad input gets one clean line: files that are not models, unsupported ONNX ops,
absurd input sizes, input options naming inputs the model lacks, example inputs of the
wrong shape. Table-driven: the CLI cases assert exit 1, one ``gmn-compile: error:`` line on
stderr, nothing on stdout and no output file; the API cases a one-line CompileError."""

from __future__ import annotations

import os
from typing import Callable

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import gmn_compiler as gc
from gmn_compiler import cli
from gmn_compiler.frontends.checks import MAX_INPUT_ELEMENTS

RNG = np.random.default_rng(0)


# ---------------------------------------------------------------- ONNX models built by hand
def _model(nodes, inputs, outputs, initializers=()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    return model


def _floats(name: str, *shape: int) -> onnx.TensorProto:
    return numpy_helper.from_array(RNG.standard_normal(shape).astype(np.float32), name)


def _scalar(name: str, value, dtype) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(value, dtype=dtype), name)


def conv_model(shape=(1, 3, 8, 8)) -> onnx.ModelProto:
    """x [N, 3, H, W] -> Conv(4 filters, 3x3) -> Relu -> y."""
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv"),
             helper.make_node("Relu", ["c"], ["y"], name="act")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    return _model(nodes, [x], [y], [_floats("w", 4, 3, 3, 3), _floats("b", 4)])


def relu_model(*shape: int) -> onnx.ModelProto:
    """x of ``shape`` (as declared in the file) -> Relu -> y of the same shape."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, list(shape))
    return _model([helper.make_node("Relu", ["x"], ["y"])], [x], [y])


def unsupported_model() -> onnx.ModelProto:
    """Hardmax, NonMaxSuppression and QLinearConv (no rules), with a supported Relu in between;
    no output declares a shape, so anything that needs shapes would fail first."""
    nodes = [
        helper.make_node("Hardmax", ["seq"], ["hard"], name="encoder_hardmax"),
        helper.make_node("Relu", ["hard"], ["h"], name="act"),
        helper.make_node("NonMaxSuppression", ["boxes", "scores"], ["keep"], name="box_filter"),
        helper.make_node("QLinearConv", ["xq", "xs", "xz", "wq", "ws", "wz", "ys", "yz"], ["yq"],
                         name="quant_conv"),
    ]
    inputs = [helper.make_tensor_value_info("seq", TensorProto.FLOAT, [5, 1, 3]),
              helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, 10, 4]),
              helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 1, 10]),
              helper.make_tensor_value_info("xq", TensorProto.UINT8, [1, 1, 8, 8])]
    outputs = [helper.make_tensor_value_info("h", TensorProto.FLOAT, None),
               helper.make_tensor_value_info("keep", TensorProto.INT64, None),
               helper.make_tensor_value_info("yq", TensorProto.UINT8, None)]
    inits = [_scalar("xs", 0.1, np.float32), _scalar("xz", 0, np.uint8),
             numpy_helper.from_array(np.ones((2, 1, 3, 3), np.uint8), "wq"),
             _scalar("ws", 0.1, np.float32), _scalar("wz", 0, np.uint8),
             _scalar("ys", 0.1, np.float32), _scalar("yz", 0, np.uint8)]
    return _model(nodes, inputs, outputs, inits)


# ---------------------------------------------------------------- bad files, through the CLI
def _write(path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def _save(model: onnx.ModelProto, path) -> str:
    onnx.save(model, str(path))
    return str(path)


def _truncated(tmp_path) -> str:
    data = conv_model().SerializeToString()
    return _write(tmp_path / "truncated.onnx", data[: len(data) // 2])


def _directory(tmp_path) -> str:
    (tmp_path / "folder.onnx").mkdir()
    return str(tmp_path / "folder.onnx")


def _unreadable(tmp_path) -> str:
    path = _save(conv_model(), tmp_path / "locked.onnx")
    os.chmod(path, 0)
    try:
        open(path, "rb").close()
    except PermissionError:
        return path
    pytest.skip("running as root: permissions do not stop reading")


BAD_FILES: dict[str, tuple[Callable, tuple[str, ...]]] = {
    "random-bytes": (lambda t: _write(t / "random.onnx", os.urandom(4096)), ("random.onnx: not a readable ONNX model",)),
    "empty": (lambda t: _write(t / "empty.onnx", b""), ("empty.onnx: the file is empty",)),
    "truncated-protobuf": (_truncated, ("truncated.onnx:", "ONNX")),
    "directory": (_directory, ("folder.onnx: is a directory",)),
    "unreadable": (_unreadable, ("locked.onnx: cannot read the file (Permission denied)",)),
    "no-extension": (lambda t: _write(t / "model", b"\x08\x07"), ("model: unknown model file type (no extension)", ".pt2", ".onnx")),
    "unknown-extension": (lambda t: _write(t / "model.h5", b"\x08\x07"), ("model.h5: unknown model file type (extension '.h5')",)),
    "missing": (lambda t: str(t / "nowhere.onnx"), ("nowhere.onnx: no such file",)),
    "empty-pt2": (lambda t: _write(t / "empty.pt2", b""), ("empty.pt2: the file is empty",)),
    "unsupported-onnx-ops": (lambda t: _save(unsupported_model(), t / "rnn.onnx"),
                             ("onnx.Hardmax at encoder_hardmax", "onnx.NonMaxSuppression at box_filter",
                              "onnx.QLinearConv at quant_conv", "plugin")),
    "huge-declared-input": (lambda t: _save(relu_model(1 << 20, 1 << 20), t / "huge.onnx"),
                            ("input x of shape (1048576, 1048576) has 2^40 elements", "limit 2^31",
                             "give smaller input_shapes")),
    "huge-declared-inputs-together": (lambda t: _save(relu_model(3, 1 << 30), t / "huge3.onnx"),
                                      ("has 3221225472 (~2^31.6) elements",)),
}


def run_cli(capfd, *args) -> tuple[int, str, str]:
    capfd.readouterr()
    code = cli.main([str(a) for a in args])
    out, err = capfd.readouterr()
    return code, out, err


@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_file_is_one_line_exit_1_and_no_output(case, tmp_path, capfd):
    make, needles = BAD_FILES[case]
    path = make(tmp_path)
    out = tmp_path / "out.pt"
    code, stdout, err = run_cli(capfd, path, "-o", out)
    assert code == 1 and stdout == "", err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("gmn-compile: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert not out.exists() and not [n for n in os.listdir(tmp_path) if n.startswith(".gmn")]


def test_check_lists_every_unsupported_onnx_op_without_shapes(tmp_path, capfd):
    path = _save(unsupported_model(), tmp_path / "rnn.onnx")
    code, stdout, err = run_cli(capfd, path, "--check")
    assert code == 1
    for line in ("onnx.Hardmax  (1 op)", "encoder_hardmax (Hardmax)", "box_filter (NonMaxSuppression)",
                 "quant_conv (QLinearConv)"):
        assert line in stdout, stdout
    assert f"{path}: 3 ops unsupported (3 kinds)" in stdout
    assert err.splitlines() == [f"gmn-compile: error: 3 unsupported ops of 3 kinds in {path}"]


def test_unsupported_ops_come_before_the_missing_shape_complaint():
    with pytest.raises(gc.UnsupportedOpsError) as info:
        gc.compile(unsupported_model())
    assert sorted(kind for kind, _ in info.value.ops) == ["onnx.Hardmax", "onnx.NonMaxSuppression",
                                                         "onnx.QLinearConv"]
    model = conv_model()  # supported, but its output has no shape: the checker says which
    with pytest.raises(gc.CompileError, match="without a shape: 'y'"):
        gc.compile(model)


# ---------------------------------------------------------------- bad options and inputs, through the API
class _TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 3), nn.Linear(2, 3)

    def forward(self, x, mask):
        return self.a(x) + self.b(mask)


def _two_inputs(**options):
    return gc.compile(_TwoInputs(), (torch.randn(2, 4), torch.randn(2, 2)), **options)


def _onnx(**options):
    """The conv model with a symbolic batch size, and a declared output shape."""
    model = conv_model(("batch", 3, 8, 8))
    model.graph.output[0].CopyFrom(helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4, 6, 6]))
    return gc.compile(model, **options)


BAD_CALLS: dict[str, tuple[Callable, tuple[str, ...]]] = {
    "axes-unknown-input": (lambda: _two_inputs(input_neuron_axes={"y": 1}),
                           ("input_neuron_axes names 'y'", "x (rank 2), mask (rank 2)")),
    "axes-out-of-range": (lambda: _two_inputs(input_neuron_axes={"mask": 2}),
                          ("input_neuron_axes['mask'] = 2 is out of range", "rank 2", "axes -2..1")),
    "axes-too-negative": (lambda: _two_inputs(input_neuron_axes={"x": -3}), ("= -3 is out of range",)),
    "axes-not-an-int": (lambda: _two_inputs(input_neuron_axes={"x": "last"}), ("must be an int axis or None",)),
    "axes-not-a-dict": (lambda: _two_inputs(input_neuron_axes=[1]), ("input_neuron_axes must be a dict",)),
    "input-shapes-for-torch": (lambda: _two_inputs(input_shapes={"x": (2, 4)}), ("ONNX models only",)),
    "onnx-axes-unknown-input": (lambda: _onnx(input_neuron_axes={"image": 1}),
                                ("input_neuron_axes names 'image'", "x (rank 4)")),
    "onnx-axes-out-of-range": (lambda: _onnx(input_neuron_axes={"x": 4}), ("out of range", "rank 4")),
    "onnx-shapes-unknown-input": (lambda: _onnx(input_shapes={"image": (1, 3, 8, 8)}),
                                  ("input_shapes names 'image'", "x (rank 4)")),
    "onnx-shapes-wrong-rank": (lambda: _onnx(input_shapes={"x": (3, 8, 8)}),
                               ("input_shapes['x'] = (3, 8, 8) has rank 3", "input x has rank 4")),
    "onnx-shapes-zero-size": (lambda: _onnx(input_shapes={"x": (1, 3, 0, 8)}), ("positive integers",)),
    "onnx-shapes-negative-size": (lambda: _onnx(input_shapes={"x": (1, 3, -8, 8)}), ("positive integers",)),
    "onnx-shapes-not-a-shape": (lambda: _onnx(input_shapes={"x": 8}), ("must be a tuple of sizes",)),
    "onnx-shapes-2^40-elements": (lambda: _onnx(input_shapes={"x": (1 << 10, 1 << 10, 1 << 10, 1 << 10)}),
                                  ("input x of shape", "has 2^40 elements", "limit 2^31",
                                   "give smaller input_shapes")),
    "linear-wrong-width": (lambda: gc.compile(nn.Sequential(nn.Linear(8, 4)), (torch.randn(1, 5),)),
                           ("example input shapes [(1, 5)] do not fit Sequential",
                            "(1x5 and 8x4)", "give inputs shaped like a real batch")),
    "conv-wrong-channels": (lambda: gc.compile(nn.Conv2d(3, 4, 3), (torch.randn(1, 5, 8, 8),)),
                            ("example input shapes [(1, 5, 8, 8)] do not fit Conv2d",
                             "to have 3 channels, but got 5")),
    "missing-example-input": (lambda: gc.compile(nn.Linear(8, 4), ()),
                              ("example input shapes [] do not fit Linear", "missing")),
}


@pytest.mark.parametrize("case", BAD_CALLS)
def test_bad_option_or_input_is_one_line_compile_error(case, capfd):
    call, needles = BAD_CALLS[case]
    with pytest.raises(gc.CompileError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and len(message) < 500, message
    for needle in needles:
        assert needle in message, (needle, message)
    assert "Traceback" not in capfd.readouterr().err  # torch's tracing logs stay quiet


def test_limit_is_a_generous_module_constant():
    assert MAX_INPUT_ELEMENTS == 1 << 31
    _onnx(input_shapes={"x": (64, 3, 8, 8)})  # an ordinary batch is fine


def _same_graph(a, b) -> bool:
    return torch.equal(a.data.x, b.data.x) and torch.equal(a.data.edge_index, b.data.edge_index)


def test_negative_axes_are_normalised():
    assert _same_graph(_two_inputs(input_neuron_axes={"x": -1, "mask": -1}),
                       _two_inputs(input_neuron_axes={"x": 1, "mask": 1}))
    assert _same_graph(_onnx(input_neuron_axes={"x": -3}), _onnx(input_neuron_axes={"x": 1}))
    assert _same_graph(_onnx(input_neuron_axes={"x": np.int64(1)}), _onnx(input_neuron_axes={"x": 1}))


def test_input_shapes_of_numpy_ints_are_accepted():
    pg = _onnx(input_shapes={"x": tuple(np.array([2, 3, 8, 8]))})
    assert pg.data.num_nodes > 0


def test_axis_checks_normalise_and_allow_none():
    from gmn_compiler.frontends.checks import check_input_axes

    ranks = {"x": 4, "mask": 2, "count": None}
    assert check_input_axes({"x": -3, "mask": None, "count": 7}, ranks) == {"x": 1, "mask": None, "count": 7}
    assert check_input_axes(None, ranks) == {}
