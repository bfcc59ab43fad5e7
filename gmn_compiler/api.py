"""Public entry points: compile a model into a ParameterGraph."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from .errors import CompileError
from .frontends import onnx_frontend, torch_export
from .frontends.checks import model_file_kind
from .graph import ParameterGraph
from .ir import IRGraph
from .lowering import lower
from .registry import Registry, default_registry


def _is_onnx_proto(source: Any) -> bool:
    return type(source).__name__ == "ModelProto" and hasattr(source, "graph")


def _onnx_ir(source, registry, input_neuron_axes, input_shapes, constant_weights: bool = False) -> IRGraph:
    model = onnx_frontend.load_model(source, registry)
    ir = onnx_frontend.from_onnx(model, registry, input_neuron_axes, input_shapes, constant_weights)
    ir.onnx_model = model
    return ir


def _torch_only(input_shapes: dict | None, constant_weights: bool = False) -> None:
    if input_shapes:
        raise CompileError("input_shapes applies to ONNX models only; a torch model takes the "
                           "shapes of its example inputs")
    if constant_weights:
        raise CompileError("constant_weights applies to ONNX models only (weights stored in Constant "
                           "nodes); a torch model's parameters are its parameters")


def to_ir(source: Any, example_inputs: tuple | None = None, *, registry: Registry | None = None,
          input_neuron_axes: dict[str, int | None] | None = None,
          input_shapes: dict[str, tuple[int, ...]] | None = None,
          allow_pickle: bool = False, constant_weights: bool = False) -> IRGraph:
    """Run the frontend that fits ``source`` and return the IR (no lowering). Options as
    for :func:`compile`; bad input is a one-line :class:`CompileError`."""
    registry = registry or default_registry()
    if isinstance(source, nn.Module):
        _torch_only(input_shapes, constant_weights)
        if example_inputs is None:
            raise CompileError("compiling an nn.Module needs example_inputs, a tuple of tensors "
                               "shaped like a real batch, e.g. (torch.randn(1, 3, 32, 32),)")
        ep = torch_export.export_module(source, example_inputs)
        return torch_export.from_exported(ep, registry, input_neuron_axes, root=source)
    if isinstance(source, torch.export.ExportedProgram):
        _torch_only(input_shapes, constant_weights)
        return torch_export.from_exported(source, registry, input_neuron_axes)
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if model_file_kind(path) == "pt2":
            _torch_only(input_shapes, constant_weights)
            ep = torch_export.load_pt2(path, allow_pickle=allow_pickle)
            return torch_export.from_exported(ep, registry, input_neuron_axes)
        return _onnx_ir(path, registry, input_neuron_axes, input_shapes, constant_weights)
    if _is_onnx_proto(source):
        return _onnx_ir(source, registry, input_neuron_axes, input_shapes, constant_weights)
    raise CompileError(f"cannot compile a {type(source).__name__}; pass an nn.Module with "
                       "example_inputs, a torch.export.ExportedProgram, a .pt2 or .onnx path or "
                       "an onnx.ModelProto")


def compile(source: Any, example_inputs: tuple | None = None, **options: Any) -> ParameterGraph:
    """Compile ``source`` into a :class:`ParameterGraph`.

    ``source``: an ``nn.Module`` (then ``example_inputs``, a tuple, is required; the model is
    traced in eval mode), a ``torch.export.ExportedProgram``, a path to a ``.pt2`` file
    saved with ``torch.export.save``, a path to an ``.onnx`` file, an ``onnx.ModelProto``, or
    an :class:`~gmn_compiler.ir.IRGraph` returned by :func:`to_ir`.

    Options: ``registry`` (a :class:`~gmn_compiler.registry.Registry`, default: built-ins plus
    installed plugins); ``input_neuron_axes`` (``{input_name: axis or None}``, overriding the
    inferred neuron axis of a model input; negative axes count from the end); ``input_shapes``
    (``{input_name: shape}`` for ONNX inputs with symbolic dimensions, which default to 1);
    ``allow_pickle`` (default ``False``: a ``.pt2`` entry that needs unpickling, which can run
    arbitrary code from the file, is refused; ``True`` only for files you trust). An option
    naming an input the model does not have, an axis out of range, a shape of the wrong
    rank or of more than :data:`~gmn_compiler.frontends.checks.MAX_INPUT_ELEMENTS` elements
    is a one-line :class:`CompileError` naming the model's inputs. ``constant_weights`` (ONNX
    only, default ``False``): the float tensors of ``Constant`` nodes with more than one entry
    are parameters (edges whose values are free) instead of constants (whose values are part
    of the structure) — for files that store weights in ``Constant`` nodes (Paddle2ONNX).
    """
    registry = options.pop("registry", None) or default_registry()
    input_axes = options.pop("input_neuron_axes", None)
    input_shapes = options.pop("input_shapes", None)
    allow_pickle = bool(options.pop("allow_pickle", False))
    constant_weights = bool(options.pop("constant_weights", False))
    if options:
        raise TypeError(f"unknown compile options: {sorted(options)}")
    if isinstance(source, IRGraph):  # already traced (gmn-compile --check reuses its IR)
        ir = source
    else:
        ir = to_ir(source, example_inputs, registry=registry, input_neuron_axes=input_axes,
                   input_shapes=input_shapes, allow_pickle=allow_pickle, constant_weights=constant_weights)
    blocks, ctx = lower(ir, registry)
    graph = ParameterGraph(blocks, ctx.builder.params, ctx.summary, ir.source, ctx.symmetries,
                           io_nodes=torch.tensor(sorted(ctx.io_nodes), dtype=torch.long),
                           vocabulary=registry.vocabulary)
    graph.onnx_model = getattr(ir, "onnx_model", None)
    return graph
