"""ONNX frontend: ``.onnx`` path or ``onnx.ModelProto`` -> IR.

Shapes of every value come from one onnxruntime run on random inputs (symbolic dimensions
set to 1 unless ``input_shapes`` says otherwise), so constant subgraphs (Shape → Gather →
Concat → Reshape) need no folding rules of their own: a value computed from constants and
shapes only is a *constant*, and its concrete value is read from that run.

Initializers are parameters, except where the file says otherwise: torch's exporter
(``torch.onnx.export(dynamo=True)``) declares each parameter and buffer of the torch model in
``value_info`` metadata, and its optimizer (on by default) lifts the model's Python scalars
(``x * 0.5``, an ``eps``) into undeclared 0-d initializers. In such a file an undeclared 0-d
initializer and a declared non-persistent buffer are constants, as the torch frontend reads
them; see :mod:`.onnx_torch_signature`. Layout ops applied to parameters (Transpose,
Reshape, Squeeze, Unsqueeze, Slice, Gather, Split, Cast, Identity) keep them parameters seen
through a view.
Two exporter patterns are fused before lowering so that torch and ONNX give the same graph:
``MatMul`` + ``Add`` with a 1-D initializer (a linear layer with bias), and the Erf-based GELU
subgraph.

Reading and the checks that need no shapes (opset, topology, unsupported kinds, the ONNX
checker, ``input_shapes``) live in :mod:`.onnx_checks`; ``load_model`` is re-exported here.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from ..errors import CompileError, Unsupported
from ..ir import IRGraph, Op, ParamRef, Value
from ..ir_patterns import normalize
from ..registry import Registry
from . import onnx_patterns
from .onnx_einsum import OP_TYPES as EINSUM_OP_TYPES, convert_einsum
from .onnx_torch_signature import torch_declared_constants
from .param_tables import read_table, table_axis
from .checks import check_input_axes
from .onnx_checks import (CONSTANT_OP_TYPES, MAX_OPSET, MIN_OPSET, TYPE_ONLY_INPUTS, constant_names,  # noqa: F401
                          load_model, model_inputs, node_location, op_key, resolve_input_shapes)


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
              input_shapes: dict[str, tuple[int, ...]] | None = None,
              constant_weights: bool = False) -> IRGraph:
    """The IR of ``model`` (read and checked by :func:`load_model`). ``input_shapes`` and
    ``input_neuron_axes`` are checked against the model inputs (names, ranks, sizes; see
    :mod:`.checks`) before anything is allocated; one-line CompileError otherwise.
    ``constant_weights``: the float tensors of ``Constant`` nodes with more than one entry are
    parameters, not constants (exporters such as Paddle2ONNX store weights that way; as
    constants their values would be structure, and the graph would have no symmetries)."""
    return _Converter(model, registry, constant_weights).convert(input_neuron_axes, input_shapes)


class _Converter:
    def __init__(self, model: onnx.ModelProto, registry: Registry, constant_weights: bool = False):
        self.model = model
        self.registry = registry
        self.constant_weights = constant_weights
        self.env: dict[str, Any] = {}
        self.ops: list[Op] = []
        self.next_id = 0
        self.tensors: dict[str, torch.Tensor] = {}
        self.kinds: dict[str, str] = {}
        self.data_values: set[int] = set()  # integer inputs and what is computed from them only

    def convert(self, input_axes: dict[str, int | None] | None, input_shapes: dict | None) -> IRGraph:
        graph = self.model.graph
        shapes = resolve_input_shapes(graph, input_shapes)
        input_axes = check_input_axes(input_axes, {name: len(shape) for name, shape in shapes.items()})
        constants = torch_declared_constants(graph)
        for init in graph.initializer:
            tensor = torch.from_numpy(numpy_helper.to_array(init).copy())
            if not tensor.dtype.is_floating_point or init.name in constants:  # shapes, indices; lifted scalars
                self.env[init.name] = _ConstantTensor(init.name, tensor)
                continue
            self.tensors[init.name] = tensor
            self.kinds[init.name] = "parameter"
            self.env[init.name] = ParamRef(init.name, tensor, None, "parameter")
        values = run_all_values(self.model, shapes)
        self.values = values
        inputs, axes = [], {}
        for value in model_inputs(graph):
            v = self._new_value(value.name, values[value.name])
            inputs.append(v)
            self.env[value.name] = v
            if not (v.dtype.is_floating_point or v.dtype.is_complex):
                self.data_values.add(v.id)  # token ids, masks: no neurons
            if value.name in input_axes:
                axes[v.id] = input_axes[value.name]
        constants = constant_names(list(graph.node), {n for n, v in self.env.items() if isinstance(v, _ConstantTensor)})
        nodes = onnx_patterns.fuse(list(graph.node), self.env, values, {o.name for o in graph.output}, constants)
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
        location = node_location(node, index)
        args = [self.env.get(name) if name else None for name in node.input]
        for name, arg in zip(node.input, args):
            if name and arg is None and name not in self.env:
                raise CompileError(f"node {location} reads unknown value {name!r}")
        # string attributes come as bytes (Gelu's approximate=b"tanh"): rules see str, as from torch
        attrs = {a.name: _text(helper.get_attribute_value(a)) for a in node.attribute}
        data_args = [a for i, a in enumerate(args) if i not in TYPE_ONLY_INPUTS.get(node.op_type, ())]
        has_value = any(isinstance(a, Value) for a in data_args)
        has_param = any(isinstance(a, ParamRef) for a in args)
        if node.op_type in CONSTANT_OP_TYPES or (not has_value and not has_param):
            for out in node.output:
                self._bind_constant(out, literal=node.op_type == "Constant")
            return
        active = [a for a in data_args if isinstance(a, Value)]
        if active and not has_param and all(v.id in self.data_values for v in active):
            self._data_op(node, location)  # e.g. position ids counted from token ids
            return
        if not has_value:
            seen = self._param_view(node, args, attrs)
            if seen is not None:
                for out, ref in zip(node.output, seen):
                    self.env[out] = ref
                return
        operands = [self._operand(a, name) for a, name in zip(args, node.input)]
        if node.op_type in EINSUM_OP_TYPES and node.domain in ("", "ai.onnx"):
            self._convert_einsum(node, operands, attrs, location)
            return
        outs = [self._new_value(o, self.values[o]) for o in node.output if o and o in self.values]
        for value in outs:
            self.env[value.name] = value
        mapping = self.registry.onnx.get(op_key(node))
        if not has_value and self._read_table(node, mapping, operands, attrs, location):
            has_value = True  # a parameter table a layer reads as a tensor (see param_tables)
        if not has_value:
            self.ops.append(Op(f"param_transform[onnx.{node.op_type}]", operands, outs, attrs, location, node.op_type))
            return
        key = op_key(node)
        if mapping is None:
            self.ops.append(Op(f"onnx.{key}", operands, outs, attrs, location, node.op_type))
            return
        try:
            inputs, norm_attrs = mapping.normalized(*operands, **self._opset_semantics(node, attrs))
        except Unsupported as refusal:
            self.ops.append(Op(mapping.kind, operands, outs, attrs, location, node.op_type,
                               unsupported=refusal.reason))
            return
        self.ops.append(Op(mapping.kind, inputs, outs, norm_attrs, location, node.op_type))

    def _data_op(self, node: onnx.NodeProto, location: str) -> None:
        """A node on values computed only from integer model inputs and constants: no
        neurons (a constant for lowering, without a known value), as in the torch frontend."""
        outs = [self._new_value(o, self.values[o]) for o in node.output if o and o in self.values]
        for value in outs:
            self.env[value.name] = value
        self.data_values.update(v.id for v in outs)
        self.ops.append(Op("constant", [], outs, {}, location, node.op_type))

    def _read_table(self, node: onnx.NodeProto, mapping: Any, operands: list, attrs: dict, location: str) -> bool:
        """When the node is a layer reading the initializer ``operands[0]`` as a tensor: a
        ``param_value`` op reading it, put in its place; True when done."""
        try:
            axis = table_axis(self.registry, mapping, operands, self._opset_semantics(node, attrs))
        except Unsupported:  # the node's attributes say it cannot be converted: reported later
            return False
        if axis is None:
            return False
        self.next_id += 1
        read, operands[0] = read_table(operands[0], axis, self.next_id, location, node.op_type)
        self.ops.append(read)
        return True

    def _convert_einsum(self, node: onnx.NodeProto, operands: list, attrs: dict, location: str) -> None:
        """``Einsum`` as the ops ``torch.einsum`` computes it with (see :mod:`.onnx_einsum`)."""

        def new_value(meta: torch.Tensor, name: str) -> Value:
            self.next_id += 1
            return Value(self.next_id, tuple(int(s) for s in meta.shape), meta.dtype, name)

        ops, result = convert_einsum(str(attrs["equation"]), operands, self.registry, location, new_value)
        self.ops.extend(ops)
        self.env[node.output[0]] = result

    def _param_view(self, node: onnx.NodeProto, args: list, attrs: dict) -> list[ParamRef] | None:
        """The node's outputs as views of its one initializer operand (the first), when the
        node's kind declares a view (:attr:`OpKind.view`); None otherwise."""
        mapping = self.registry.onnx.get(op_key(node))
        view = self.registry.view(mapping.kind) if mapping is not None else None
        refs = [a for a in args if isinstance(a, ParamRef)]
        outputs = [o for o in node.output if o and o in self.values]
        if view is None or len(refs) != 1 or not args or args[0] is not refs[0] or not outputs:
            return None
        operands = [self._operand(a, name) for a, name in zip(args, node.input)]
        try:
            _, norm_attrs = mapping.normalized(*operands, **attrs)
        except Unsupported:
            return None
        arrays = [np.asarray(self.values[o]) for o in outputs]
        return refs[0].through(view, norm_attrs, [tuple(a.shape) for a in arrays],
                               [_NP_TO_TORCH.get(a.dtype) for a in arrays])

    def _opset_semantics(self, node, attrs: dict) -> dict:
        """Attributes whose meaning changed across opsets, in today's meaning. Softmax,
        LogSoftmax before opset 13 flatten the input at ``axis`` (default 1) and normalise
        over everything after it: the same as today's only when ``axis`` is the last one."""
        if node.op_type not in ("Softmax", "LogSoftmax") or node.domain not in ("", "ai.onnx"):
            return attrs
        opset = next((o.version for o in self.model.opset_import if o.domain in ("", "ai.onnx")), 13)
        if opset >= 13:
            return attrs
        rank = len(np.shape(self.values[node.input[0]])) if node.input[0] in self.values else None
        axis = int(attrs.get("axis", 1))
        if rank is None or axis % rank != rank - 1:
            raise Unsupported(f"{node.op_type} before opset 13 over axes {axis}.. "
                              "(flattened); re-export with opset 13 or later")
        return {**attrs, "axis": -1}

    def _bind_constant(self, name: str, literal: bool = False) -> None:
        if name:
            self.env[name] = _ConstantTensor(name, self._constant(name), literal)

    def _operand(self, arg: Any, name: str) -> Any:
        """Constants become Python scalars (one element) or constant ParamRefs."""
        if isinstance(arg, _ConstantTensor):
            tensor = arg.tensor
            if tensor.numel() == 1 and tensor.dtype.is_floating_point:
                return float(tensor.reshape(-1)[0])
            if tensor.numel() == 1:
                return int(tensor.reshape(-1)[0])
            if tensor.dtype.is_floating_point:
                kind = "parameter" if arg.literal and self.constant_weights else "constant"
                self.tensors.setdefault(name, tensor)
                self.kinds.setdefault(name, kind)
                return ParamRef(name, tensor, None, kind)
            return tensor
        return arg


class _ConstantTensor:
    """A value computed from constants and shapes only; ``tensor`` is its concrete value;
    ``literal``: the output of a ``Constant`` node (not computed)."""

    def __init__(self, name: str, tensor: torch.Tensor, literal: bool = False):
        self.name, self.tensor, self.literal = name, tensor, literal


def _text(value):
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, list) and value and all(isinstance(v, bytes) for v in value):
        return [v.decode("utf-8", errors="replace") for v in value]
    return value
