"""Heavy test (issue 17): the PaddleOCR models shipped in ``rapidocr_onnxruntime`` (PP-OCRv4
detection with its ``Resize`` upsampling decoder, PP-OCRv4 recognition, the v2 direction
classifier) compile from ONNX, write back bit-exactly, and an edit of the graph's values reaches
the written model. Their weights are ``Constant`` nodes, not initializers. Run with
``python -m pytest -q -m heavy``; the package is in the ``heavy`` extra. The models are read
from the installed package's folder; the package itself is never imported."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import gmn_compiler as gc

pytestmark = pytest.mark.heavy

MODELS = ["ch_PP-OCRv4_det_infer.onnx", "ch_PP-OCRv4_rec_infer.onnx", "ch_ppocr_mobile_v2.0_cls_infer.onnx"]
INPUTS = {"ch_PP-OCRv4_det_infer.onnx": (1, 3, 64, 64), "ch_PP-OCRv4_rec_infer.onnx": (1, 3, 48, 64),
          "ch_ppocr_mobile_v2.0_cls_infer.onnx": (1, 3, 48, 192)}


def _model_path(name: str) -> Path:
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("rapidocr_onnxruntime is not installed: pip install -e '.[test,heavy]'")
    return Path(list(spec.submodule_search_locations)[0]) / "models" / name


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in model.graph.node
            if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"}


def _run(model: onnx.ModelProto, shape: tuple[int, ...]) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    return session.run(None, {session.get_inputs()[0].name: x})


@pytest.mark.parametrize("name", MODELS)
def test_paddleocr_model_compiles_and_writes_back_exactly(name):
    path = _model_path(name)
    original = onnx.load(str(path))
    shape = INPUTS[name]
    graph = gc.compile(str(path), input_shapes={original.graph.input[0].name: shape})
    values = graph.data.edge_attr[:, 0]
    back = graph.to_onnx_model(values)
    before, after = _constants(original), _constants(back)
    assert all(np.array_equal(before[k], after[k]) for k in before)
    for a, b in zip(_run(original, shape), _run(back, shape)):
        np.testing.assert_array_equal(a, b)
    edited = values.clone()
    is_weight = graph.data.edge_param >= 0
    edited[is_weight] *= 1.01
    changed = _constants(graph.to_onnx_model(edited))
    assert sum(not np.array_equal(before[k], changed[k]) for k in before) == len(graph.params)
