"""ONNX frontend: ``.onnx`` path or ``onnx.ModelProto`` -> IR.

Shapes of every value come from one onnxruntime run on random inputs (symbolic dimensions
set to 1 unless ``input_shapes`` says otherwise), so constant subgraphs (Shape → Gather →
Concat → Reshape) need no folding rules of their own: a value computed from constants and
shapes only is a *constant*, and its concrete value is read from that run.

Initializers are parameters; layout ops applied to them (Transpose, Reshape, Squeeze,
Unsqueeze, Slice, Gather, Split, Cast, Identity) keep them parameters seen through a view.
Two exporter patterns are fused before lowering so that torch and ONNX give the same graph:
``MatMul`` + ``Add`` with a 1-D initializer (a linear layer with bias), and the Erf-based GELU
subgraph.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from ..errors import CompileError
from ..ir import IRGraph, Op, ParamRef, Value
from ..ir_patterns import normalize
from ..registry import Registry
from . import onnx_patterns

MIN_OPSET, MAX_OPSET = 11, 23
# inputs that only give a dtype or shape: a node whose other inputs are constants is constant
_TYPE_ONLY_INPUTS = {"CastLike": (1,), "Expand": (1,), "ConstantOfShape": (0,)}


def load_model(source: Any) -> onnx.ModelProto:
    """Read and validate an ONNX model (path or proto); one-line CompileError on bad input."""
    if isinstance(source, onnx.ModelProto):
        model = source
    else:
        path = os.fspath(source)
        if not os.path.exists(path):
            raise CompileError(f"{path}: no such file")
        try:
            model = onnx.load(path, load_external_data=False)
        except Exception as exc:
            raise CompileError(f"{path}: not a readable ONNX model ({type(exc).__name__}); "
                               "is the file truncated or of another format?") from None
        if not model.graph.node and not model.graph.input:
            raise CompileError(f"{path}: not an ONNX model (no graph)")
        _load_external_data(model, path)
    _check_opset(model)
    _check_topology(model.graph)
    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CompileError(f"invalid ONNX model: {first}") from None
    return model


def _load_external_data(model: onnx.ModelProto, path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    for tensor in onnx.external_data_helper._get_all_tensors(model):
        if onnx.external_data_helper.uses_external_data(tensor):
            info = onnx.external_data_helper.ExternalDataInfo(tensor)
            if not os.path.isfile(os.path.join(folder, info.location)):
                raise CompileError(f"{path}: external data file {info.location!r} is missing; keep "
                                   "it next to the .onnx file")
    try:
        onnx.external_data_helper.load_external_data_for_model(model, folder)
    except Exception as exc:
        raise CompileError(f"{path}: cannot read external data ({type(exc).__name__})") from None


def _check_opset(model: onnx.ModelProto) -> None:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx") and not MIN_OPSET <= entry.version <= MAX_OPSET:
            raise CompileError(f"ONNX opset {entry.version} is not handled (supported: "
                               f"{MIN_OPSET}-{MAX_OPSET}); convert with onnx.version_converter")


def _check_topology(graph: onnx.GraphProto) -> None:
    known = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    produced_later = {o: n for n in graph.node for o in n.output}
    for node in graph.node:
        for name in node.input:
            if name not in known:
                kind = "a cycle" if name in produced_later else "a dangling input"
                raise CompileError(f"ONNX graph has {kind}: node {node.name or node.op_type!r} "
                                   f"reads {name!r} before anything produces it")
        known.update(node.output)
    for out in graph.output:
        if out.name not in known:
            raise CompileError(f"ONNX graph output {out.name!r} is produced by no node")


def _input_shapes(graph: onnx.GraphProto, overrides: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    init = {i.name for i in graph.initializer}
    shapes = {}
    for value in graph.input:
        if value.name in init:
            continue
        if value.name in overrides:
            shapes[value.name] = tuple(overrides[value.name])
            continue
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1 for d in dims)
    return shapes


def run_all_values(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, np.ndarray]:
    """Every intermediate value of one onnxruntime run on random inputs of ``shapes``.

    Values whose type shape inference cannot tell (behind function ops such as
    GroupNormalization-21) are requested as float tensors; if onnxruntime refuses that
    guess, the run is repeated without them."""
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    existing = {o.name for o in model.graph.output}
    typed, guessed = [], []
    for node in model.graph.node:
        for name in node.output:
            if not name or name in existing:
                continue
            existing.add(name)
            if name in types and types[name].type.HasField("tensor_type"):
                typed.append(types[name])
            elif name not in types:
                guessed.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    try:
        return _probe(model, typed + guessed, shapes, seed)
    except CompileError:
        if not guessed:
            raise
        return _probe(model, typed, shapes, seed)


def _probe(model: onnx.ModelProto, extra_outputs: list, shapes: dict, seed: int) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(extra_outputs)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise CompileError(f"onnxruntime cannot load the model to infer shapes: {_first_line(exc)[:300]}") from None
    rng = np.random.default_rng(seed)
    feed = {}
    for value in session.get_inputs():
        shape = shapes[value.name]
        if "float" in value.type or "double" in value.type:
            dtype = {"tensor(double)": np.float64, "tensor(float16)": np.float16}.get(value.type, np.float32)
            feed[value.name] = rng.standard_normal(shape).astype(dtype)
        else:
            dtype = {"tensor(int32)": np.int32, "tensor(bool)": np.bool_}.get(value.type, np.int64)
            feed[value.name] = np.zeros(shape, dtype=dtype)
    names = [o.name for o in session.get_outputs()]
    try:
        results = session.run(names, feed)
    except Exception as exc:
        raise CompileError(f"onnxruntime failed running the model on inputs {shapes}: "
                           f"{_first_line(exc)[:300]}; pass input_shapes= with the real input sizes") from None
    values = dict(zip(names, results))
    values.update(feed)
    return values


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


_NP_TO_TORCH = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64,
                np.dtype(np.float16): torch.float16, np.dtype(np.int64): torch.int64,
                np.dtype(np.int32): torch.int32, np.dtype(np.bool_): torch.bool}


def from_onnx(model: onnx.ModelProto, registry: Registry,
              input_neuron_axes: dict[str, int | None] | None = None,
              input_shapes: dict[str, tuple[int, ...]] | None = None) -> IRGraph:
    return _Converter(model, registry).convert(input_neuron_axes or {}, input_shapes or {})


class _Converter:
    def __init__(self, model: onnx.ModelProto, registry: Registry):
        self.model = model
        self.registry = registry
        self.env: dict[str, Any] = {}
        self.ops: list[Op] = []
        self.next_id = 0
        self.tensors: dict[str, torch.Tensor] = {}
        self.kinds: dict[str, str] = {}

    def convert(self, input_axes: dict[str, int | None], input_shapes: dict) -> IRGraph:
        graph = self.model.graph
        for init in graph.initializer:
            tensor = torch.from_numpy(numpy_helper.to_array(init).copy())
            if not tensor.dtype.is_floating_point:  # shapes, axes, indices: constants
                self.env[init.name] = _ConstantTensor(init.name, tensor)
                continue
            self.tensors[init.name] = tensor
            self.kinds[init.name] = "parameter"
            self.env[init.name] = ParamRef(init.name, tensor, None, "parameter")
        values = run_all_values(self.model, _input_shapes(graph, input_shapes))
        self.values = values
        inputs, axes = [], {}
        init_names = set(self.tensors)
        for value in graph.input:
            if value.name in init_names:
                continue
            v = self._new_value(value.name, values[value.name])
            inputs.append(v)
            self.env[value.name] = v
            if value.name in input_axes:
                axes[v.id] = input_axes[value.name]
        nodes = onnx_patterns.fuse(list(graph.node), self.env, values, {o.name for o in graph.output})
        for index, node in enumerate(nodes):
            self._convert_node(node, index)
        outputs = [self.env[o.name] for o in graph.output if isinstance(self.env.get(o.name), Value)]
        return normalize(IRGraph(inputs, outputs, self.ops, self.tensors, self.kinds, axes, "onnx"))

    def _new_value(self, name: str, array: np.ndarray) -> Value:
        self.next_id += 1
        return Value(self.next_id, tuple(int(s) for s in np.shape(array)),
                     _NP_TO_TORCH.get(np.asarray(array).dtype, torch.float32), name)

    def _constant(self, name: str) -> torch.Tensor:
        found = self.env.get(name)
        if isinstance(found, _ConstantTensor):
            return found.tensor
        return torch.from_numpy(np.array(self.values[name]))

    def _convert_node(self, node: onnx.NodeProto, index: int) -> None:
        location = f"{node.name or node.op_type + '#' + str(index)} ({node.op_type})"
        args = [self.env.get(name) if name else None for name in node.input]
        for name, arg in zip(node.input, args):
            if name and arg is None and name not in self.env:
                raise CompileError(f"node {location} reads unknown value {name!r}")
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        data_args = [a for i, a in enumerate(args) if i not in _TYPE_ONLY_INPUTS.get(node.op_type, ())]
        has_value = any(isinstance(a, Value) for a in data_args)
        has_param = any(isinstance(a, ParamRef) for a in args)
        if node.op_type == "Constant" or node.op_type in ("Shape", "Size") or (not has_value and not has_param):
            for out in node.output:
                self._bind_constant(out)
            return
        if not has_value:
            transformed = onnx_patterns.transform_params(
                node, args, attrs, lambda n: tuple(np.shape(self.values[n])), self._constant)
            if transformed is not None:
                for out, ref in zip(node.output, transformed):
                    self.env[out] = ref
                return
        outs = [self._new_value(o, self.values[o]) for o in node.output if o and o in self.values]
        for value in outs:
            self.env[value.name] = value
        operands = [self._operand(a, name) for a, name in zip(args, node.input)]
        if not has_value:
            self.ops.append(Op(f"param_transform[onnx.{node.op_type}]", operands, outs, attrs, location, node.op_type))
            return
        key = f"{node.domain}::{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type
        mapping = self.registry.onnx.get(key)
        if mapping is None:
            self.ops.append(Op(f"onnx.{key}", operands, outs, attrs, location, node.op_type))
            return
        if mapping.normalize is None:
            inputs, norm_attrs = operands, attrs
        else:
            inputs, norm_attrs = mapping.normalize(*operands, **attrs)
        self.ops.append(Op(mapping.kind, inputs, outs, norm_attrs, location, node.op_type))

    def _bind_constant(self, name: str) -> None:
        if name:
            self.env[name] = _ConstantTensor(name, self._constant(name))

    def _operand(self, arg: Any, name: str) -> Any:
        """Constants become Python scalars (one element) or constant ParamRefs."""
        if isinstance(arg, _ConstantTensor):
            tensor = arg.tensor
            if tensor.numel() == 1 and tensor.dtype.is_floating_point:
                return float(tensor.reshape(-1)[0])
            if tensor.numel() == 1:
                return int(tensor.reshape(-1)[0])
            if tensor.dtype.is_floating_point:
                self.tensors.setdefault(name, tensor)
                self.kinds.setdefault(name, "constant")
                return ParamRef(name, tensor, None, "constant")
            return tensor
        return arg


class _ConstantTensor:
    """A value computed from constants and shapes only; ``tensor`` is its concrete value."""

    def __init__(self, name: str, tensor: torch.Tensor):
        self.name, self.tensor = name, tensor
