"""Checks of an ONNX model that need no shapes, run before onnxruntime computes any.

:func:`load_model` reads the file and refuses, each with a one-line :class:`CompileError`:
an unreadable or foreign file, an opset outside ``MIN_OPSET..MAX_OPSET``, a cycle or a
dangling input, and -- given a registry -- every node kind without a lowering rule (one
:class:`UnsupportedOpsError` listing them all, kind and node name, as the torch path does),
before the ONNX checker, which wants shape fields that such models often lack.
:func:`resolve_input_shapes` checks ``input_shapes`` against the model inputs and sizes them.
"""

from __future__ import annotations

import os
from typing import Any

import onnx

from ..errors import CompileError, UnsupportedOpsError
from ..registry import Registry
from .checks import check_input_shapes, check_input_sizes
from .onnx_einsum import OP_TYPES as EINSUM_OP_TYPES
from .onnx_patterns import FUSABLE_OP_TYPES
from .onnx_torch_signature import torch_declared_constants

MIN_OPSET, MAX_OPSET = 11, 23
TYPE_ONLY_INPUTS = {"CastLike": (1,), "Expand": (1,), "ConstantOfShape": (0,)}
"""Inputs that only give a dtype or shape: a node whose other inputs are constants is constant."""
CONSTANT_OP_TYPES = frozenset({"Constant", "Shape", "Size"})
"""Nodes whose outputs are constants whatever their inputs."""
_FLOAT_TYPES = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
                          onnx.TensorProto.BFLOAT16})


def node_location(node: onnx.NodeProto, index: int) -> str:
    """``"name (OpType)"``, or ``"OpType#index (OpType)"`` for an unnamed node."""
    return f"{node.name or node.op_type + '#' + str(index)} ({node.op_type})"


def op_key(node: onnx.NodeProto) -> str:
    """The registry key of ``node``: ``OpType``, or ``domain::OpType`` outside the default domain."""
    return f"{node.domain}::{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type


def load_model(source: Any, registry: Registry | None = None) -> onnx.ModelProto:
    """Read and validate an ONNX model (path or proto); one-line CompileError on bad input.
    With ``registry``, every node without a lowering rule is reported (UnsupportedOpsError)
    before the ONNX checker runs."""
    if isinstance(source, onnx.ModelProto):
        model = source
    else:
        model = _read(os.fspath(source))
    _check_opset(model)
    _check_topology(model.graph)
    if registry is not None:
        missing = unsupported_nodes(model, registry)
        if missing:
            raise UnsupportedOpsError(missing)
    _check_model(model)
    return model


def _read(path: str) -> onnx.ModelProto:
    if not os.path.exists(path):
        raise CompileError(f"{path}: no such file")
    try:
        model = onnx.load(path, load_external_data=False)
    except OSError as exc:
        raise CompileError(f"{path}: cannot read the file ({exc.strerror or type(exc).__name__})") from None
    except Exception as exc:
        raise CompileError(f"{path}: not a readable ONNX model ({type(exc).__name__}); "
                           "is the file truncated or of another format?") from None
    if not model.graph.node and not model.graph.input:
        raise CompileError(f"{path}: not an ONNX model (no graph)")
    _load_external_data(model, path)
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


DEPRECATED_BUT_READ = ("GroupNormalization",)
"""Op types the ONNX checker refuses as deprecated at some opsets although exporters write
them there (``torch.onnx`` exports ``nn.GroupNorm`` as opset-18 GroupNormalization, which
opset 21 deprecated and respecified); their attributes are checked by their normalizers."""


def _checkable(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model``, or a copy in which nodes of :data:`DEPRECATED_BUT_READ` types are stand-ins
    with the same inputs and outputs (``Sum``), so that the checker still checks the rest."""
    if not any(n.op_type in DEPRECATED_BUT_READ for n in model.graph.node):
        return model
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for node in copy.graph.node:
        if node.op_type in DEPRECATED_BUT_READ and node.domain in ("", "ai.onnx"):
            node.op_type = "Sum"
            del node.attribute[:]
    return copy


def check_onnx(model: onnx.ModelProto) -> None:
    """``onnx.checker.check_model``, except that nodes of :data:`DEPRECATED_BUT_READ` types
    refused as deprecated do not fail it (the rest of the model is still checked)."""
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        if "is deprecated" not in str(exc) or _checkable(model) is model:
            raise
        onnx.checker.check_model(_checkable(model))


def _check_model(model: onnx.ModelProto) -> None:
    """The ONNX checker (:func:`check_onnx`); its first line, plus the graph inputs/outputs
    without a shape field when that is what it refuses."""
    try:
        check_onnx(model)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        shapeless = [v.name for v in list(model.graph.input) + list(model.graph.output)
                     if v.type.HasField("tensor_type") and not v.type.tensor_type.HasField("shape")]
        if shapeless and "shape" in first:
            first += f" (graph inputs/outputs without a shape: {', '.join(map(repr, shapeless))})"
        raise CompileError(f"invalid ONNX model: {first}") from None


# ---------------------------------------------------------------- unsupported ops, shape-free
def unsupported_nodes(model: onnx.ModelProto, registry: Registry) -> list[tuple[str, str]]:
    """``(kind, location)`` of every node that will certainly have no lowering rule, found
    from the graph's structure alone (no shapes). It follows the converter: a node reading
    a model input (directly or not) maps to ``registry.onnx[op_key]``'s kind (``onnx.<key>``
    when unmapped), unless the inputs it reads are integer model inputs and what is computed
    from them only (data: position ids, masks, which need no rule); a node reading
    initializers only is a layout view of one parameter, a layer reading a parameter table
    as a tensor, or a ``param_transform[onnx.<op>]`` op; anything else is a constant and needs
    no rule. Op types :mod:`.onnx_patterns` may rewrite are left for lowering to judge."""
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    values = {v.name for v in graph.input if v.name not in initializers}
    data = {v.name for v in graph.input if v.name in values and v.type.tensor_type.elem_type not in _FLOAT_TYPES}
    constants = torch_declared_constants(graph)
    params = {i.name for i in graph.initializer if i.data_type in _FLOAT_TYPES and i.name not in constants}
    found = []
    for index, node in enumerate(graph.node):
        type_only = TYPE_ONLY_INPUTS.get(node.op_type, ())
        has_value = any(n in values for i, n in enumerate(node.input) if i not in type_only)
        param_args = [n for n in node.input if n in params]
        outputs = [o for o in node.output if o]
        if node.op_type in CONSTANT_OP_TYPES or not (has_value or param_args):
            continue
        read = [n for i, n in enumerate(node.input) if i not in type_only and n in values]
        if read and not param_args and all(n in data for n in read):
            values.update(outputs)
            data.update(outputs)
            continue
        if not has_value:
            mapping = registry.onnx.get(op_key(node))
            if mapping is not None and registry.view(mapping.kind) is not None \
                    and len(param_args) == 1 and node.input[0] in params:
                params.update(outputs)  # still a parameter, seen through a view
                continue
            entry = registry.rule(mapping.kind) if mapping is not None else None
            if entry is not None and entry.input_axis is not None and node.input and node.input[0] in params:
                values.update(outputs)  # a layer reading a parameter table as a tensor (param_tables)
                continue
            values.update(outputs)
            found.append((f"param_transform[onnx.{node.op_type}]", node_location(node, index)))
            continue
        values.update(outputs)
        mapping = registry.onnx.get(op_key(node))
        kind = mapping.kind if mapping is not None else f"onnx.{op_key(node)}"
        if registry.rule(kind) is None and node.op_type not in FUSABLE_OP_TYPES | EINSUM_OP_TYPES:
            found.append((kind, node_location(node, index)))
    return found


def constant_names(nodes: list[onnx.NodeProto], known: set[str]) -> set[str]:
    """``known`` (constant initializers) and the outputs of every node computed from
    constants and shapes only, as the converter binds them (it reads no model input's values
    and no weight)."""
    constants = set(known)
    for node in nodes:
        data = [n for i, n in enumerate(node.input) if n and i not in TYPE_ONLY_INPUTS.get(node.op_type, ())]
        if node.op_type in CONSTANT_OP_TYPES or all(n in constants for n in data):
            constants.update(o for o in node.output if o)
    return constants


# ---------------------------------------------------------------- model inputs
def model_inputs(graph: onnx.GraphProto) -> list[onnx.ValueInfoProto]:
    """The graph inputs that are not initializers (what the model is run on)."""
    initializers = {i.name for i in graph.initializer}
    return [v for v in graph.input if v.name not in initializers]


def declared_rank(value: onnx.ValueInfoProto) -> int | None:
    """The rank the file declares for ``value``; ``None`` when it declares no shape."""
    tensor = value.type.tensor_type
    return len(tensor.shape.dim) if tensor.HasField("shape") else None


def resolve_input_shapes(graph: onnx.GraphProto, overrides: dict | None) -> dict[str, tuple[int, ...]]:
    """The shape to run each model input with: ``overrides`` (``input_shapes``, checked:
    known names, declared rank, positive sizes), else the declared sizes with symbolic or
    non-positive dimensions set to 1. Refuses (CompileError) more than
    :data:`~gmn_compiler.frontends.checks.MAX_INPUT_ELEMENTS` elements in total."""
    inputs = model_inputs(graph)
    given = check_input_shapes(overrides, {v.name: declared_rank(v) for v in inputs})
    shapes = {}
    for value in inputs:
        if value.name in given:
            shapes[value.name] = given[value.name]
            continue
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1
                                   for d in dims)
    check_input_sizes(shapes)
    return shapes
