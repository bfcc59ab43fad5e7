"""Torch frontend: ``nn.Module`` / ``ExportedProgram`` / ``.pt2`` -> IR.

One tracing path serves all torch input: ``torch.export`` (an fx graph of ATen ops that
records, per node, the stack of modules it came from). ``torch.fx.symbolic_trace`` cannot
trace ``nn.TransformerEncoder`` and much real code; ``torch.export`` can, and a ``.pt2`` file
is exactly its saved result, so both inputs share this code.

Leaf modules (a plugin claiming a module class) are found from ``nn_module_stack``: the nodes
of one call of such a module become one op, whose params are the module's parameters by
local name (:mod:`.leaf_modules`).
"""

from __future__ import annotations

import dataclasses
import operator
import os
import re
from typing import Any

import torch
from torch import nn

from ..errors import CompileError, Unsupported
from ..ir import IRGraph, Op, ParamRef, Value
from ..ir_patterns import normalize
from ..registry import Registry, target_name
from .higher_order import higher_order_name, inline, resolve_attribute
from .leaf_modules import leaf_groups, leaf_op
from .param_concat import ParamConcat, concat_used
from .inplace import Emit, overwrites_whole_value, sliced_write, write_into
from .lifted_constants import as_constant_value, only_constants
from .param_tables import read_table, table_axis
from .param_transforms import PARAM_FUNCTIONS, param_function, weight_normalised, weight_standardised
from .checks import check_input_axes
from .decompositions import trace_decomposition
from .pt2_safe import load_exported_program
from .torch_inputs import export_error, quiet_loggers, user_input_ranks

_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__))
_MAX_CONSTANT = 1 << 22  # entries; larger constants are not materialised
_MAX_DECOMPOSITION_DEPTH = 4  # an op without a rule decomposes into ops that may decompose…
# Lookups into a parameter with constant indices: the result is a view of the parameter.
_INDEX_TARGETS = {"aten.embedding.default"}
# Ops that read only the shape, dtype and device of their tensor operand: on a parameter, the
# result is a constant (Mamba's ``A.new_zeros(...)``).
_SHAPE_ONLY_TARGETS = {"aten.new_zeros.default", "aten.new_ones.default", "aten.new_empty.default",
                       "aten.new_full.default", "aten.zeros_like.default", "aten.ones_like.default",
                       "aten.empty_like.default", "aten.full_like.default"}
# Casts of a parameter view keep its provenance (offsets unchanged).
_CAST_TARGETS = {"aten.to.dtype_layout", "aten.to.dtype", "aten.to.device", "aten._to_copy.default",
                 "aten.type_as.default"}


def _rows_kept(ref: ParamRef, name: str, node: torch.fx.Node) -> bool:
    """A reshape of a standardised weight ``(1, O, K)`` back to ``(O, ...)``: its rows (output
    units) stay whole and in order, which is all the standardisation needs."""
    val = node.meta.get("val")
    return (isinstance(ref.weight_norm[1], tuple) and name in _RESHAPE_BACK and isinstance(val, torch.Tensor)
            and ref.tensor.dim() == 3 and val.dim() >= 2 and int(val.shape[0]) == ref.shape[1])


# weight reparametrisations computed in forward, recognised on plain parameters
_WEIGHT_NORMS = {"aten._weight_norm.default": weight_normalised, "aten.batch_norm.default": weight_standardised}
# functions of one parameter computed in forward, recorded on its reference
_AS_TARGETS = {"aten.reshape_as.default", "aten.view_as.default", "aten.expand_as.default"}
_RESHAPE_BACK = {"aten.reshape_as.default", "aten.reshape.default", "aten.view.default", "aten._unsafe_view.default"}


def _constant_index(args) -> torch.Tensor | None:
    index = args[1] if len(args) > 1 else None
    return index.constant if isinstance(index, Value) else None


def name_is_random(target) -> bool:
    name = target_name(target)
    return any(word in name for word in ("rand", "normal", "bernoulli", "dropout", "empty"))

# Runtime checks torch.export inserts (dtype casts, shape guards): no output, no effect.
_NO_OP_TARGETS = {"aten._assert_tensor_metadata.default", "aten._assert_scalar.default",
                  "aten.sym_constrain_range_for_size.default", "aten._assert_async.msg",
                  "aten.sym_constrain_range.default"}



def export_module(model: nn.Module, example_inputs: tuple) -> torch.export.ExportedProgram:
    """``torch.export`` of ``model`` in eval mode (its training flags are restored after);
    non-strict tracing first, then strict (dynamo) tracing when that fails.

    When export fails, the model is run once eagerly on ``example_inputs``: if that fails
    too, the inputs do not fit the model and the CompileError says so, with the given shapes
    and PyTorch's own (eager, short) message, which names the expected shape when it can;
    otherwise it is an export limitation, reported with torch.export's first line. The
    tracebacks torch logs while tracing are kept off stderr."""
    if not isinstance(example_inputs, tuple):
        raise CompileError("example_inputs must be a tuple of tensors, e.g. (torch.randn(1, 3, 32, 32),)")
    modes = {m: m.training for m in model.modules()}
    with torch.no_grad():  # a module caching derived tensors on eval() keeps plain leaves
        model.eval()
    try:
        with quiet_loggers("torch._subclasses.fake_tensor", "torch.export", "torch._dynamo"):
            try:
                return torch.export.export(model, example_inputs)
            except Exception as exc:
                # Non-strict tracing runs the module's own Python with fake tensors, which
                # fails where that Python inspects tensor data (e2cnn hashes its basis buffers
                # when the module tree is walked); dynamo's strict tracing does not: retry it.
                first = exc
            return torch.export.export(model, example_inputs, strict=True)
    except Exception:
        raise export_error(model, example_inputs, first) from first
    finally:
        for module, mode in modes.items():
            module.training = mode


def load_pt2(path: str | os.PathLike, *, allow_pickle: bool = False) -> torch.export.ExportedProgram:
    """The ExportedProgram saved at ``path``, read without running code from the file unless
    ``allow_pickle`` (see :func:`.pt2_safe.load_exported_program`, which also gives the
    one-line errors)."""
    return load_exported_program(path, allow_pickle=allow_pickle)


def from_exported(ep: torch.export.ExportedProgram, registry: Registry,
                  input_neuron_axes: dict[str, int | None] | None = None,
                  root: nn.Module | None = None) -> IRGraph:
    """The IR of ``ep``. ``input_neuron_axes`` is keyed by the model's input names (the
    exported placeholders, e.g. ``x`` for ``forward(self, x)``) and checked against them:
    unknown names and out-of-range axes are a one-line CompileError, negative axes count
    from the end. ``root``: the module ``ep`` was exported from, when there is one (leaf
    rules may read plain attributes off its submodules, see ``Registrar.add_leaf_module``)."""
    return _Converter(ep, registry, root).convert(input_neuron_axes)


def _location(node: torch.fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    where = ""
    if stack:
        path, type_name = list(stack.values())[-1]
        cls = type_name.rsplit(".", 1)[-1] if isinstance(type_name, str) else getattr(type_name, "__name__", "?")
        where = f"{path or '<root>'} ({cls})"
    frames = re.findall(r'File "([^"]+)", line (\d+)', node.meta.get("stack_trace") or "")
    user = [(f, l) for f, l in frames if _TORCH_DIR not in os.path.abspath(f)]
    if user:
        file, line = user[-1]
        where = f"{where} at {os.path.basename(file)}:{line}".strip()
    return where or node.name


class _Converter:
    def __init__(self, ep: torch.export.ExportedProgram, registry: Registry, root: nn.Module | None = None):
        self.ep = ep
        self.registry = registry
        self.root = root
        self.env: dict[str, Any] = {}
        self.ops: list[Op] = []
        self._decomposing = 0  # depth of nested decompositions being converted
        self.next_id = 0
        self.data_values: set[int] = set()  # integer inputs and what is computed from them only
        tensors: dict[str, torch.Tensor] = {}
        kinds: dict[str, str] = {}
        self.canonical: dict[str, str] = {}  # tied weights: every name -> the first name
        aliases: dict[str, list[str]] = {}
        first_by_tensor: dict[int, str] = {}
        for name, t in ep.state_dict.items():
            first = first_by_tensor.setdefault(id(t), name)
            self.canonical[name] = first
            if first != name:
                aliases.setdefault(first, []).append(name)
                continue
            tensors[name] = t.detach()
            kinds[name] = "parameter" if isinstance(t, nn.Parameter) else "buffer"
        self.aliases = {k: tuple(v) for k, v in aliases.items()}
        for name, t in ep.constants.items():
            if isinstance(t, torch.Tensor):
                tensors[name] = t.detach()
                kinds[name] = "constant"
        sig = ep.graph_signature
        for name in sig.buffers:
            if name in kinds and name not in sig.non_persistent_buffers:
                kinds[name] = "buffer"
        self.tensors, self.kinds = tensors, kinds

    def new_value(self, meta_val: Any, name: str) -> Value:
        self.next_id += 1
        shape = tuple(int(s) for s in meta_val.shape)
        return Value(self.next_id, shape, meta_val.dtype, name)

    def values_for(self, node: torch.fx.Node) -> Any:
        val = node.meta.get("val")
        if isinstance(val, torch.Tensor):
            return self.new_value(val, node.name)
        if isinstance(val, (list, tuple)):
            return [self.new_value(v, f"{node.name}[{i}]") if isinstance(v, torch.Tensor) else v
                    for i, v in enumerate(val)]
        return val

    def convert(self, input_axes: dict[str, int | None] | None) -> IRGraph:
        sig = self.ep.graph_signature
        sources = {**sig.inputs_to_parameters, **sig.inputs_to_buffers,
                   **sig.inputs_to_lifted_tensor_constants}
        input_axes = check_input_axes(input_axes, user_input_ranks(self.ep))
        inputs: list[Value] = []
        axes: dict[int, int | None] = {}
        for node in self.ep.graph.nodes:
            if node.op == "placeholder":
                if node.name in sources:
                    name = self.canonical.get(sources[node.name], sources[node.name])
                    tensor = self.tensors[name]
                    if not (tensor.is_floating_point() or tensor.is_complex()):
                        self._constant_placeholder(node, tensor)  # masks, indices, counters
                        continue
                    if name in sig.non_persistent_buffers:
                        # not part of the state dict (rotary inverse frequencies, cached
                        # cos/sin tables): derived constants, not weights
                        self._constant_placeholder(node, tensor)
                        continue
                    self.env[node.name] = ParamRef(name, tensor, None, self.kinds[name])
                else:
                    value = self.values_for(node)
                    if not isinstance(value, Value):
                        raise CompileError(f"model input {node.name} is not a tensor; only tensor inputs are supported")
                    inputs.append(value)
                    if not (value.dtype.is_floating_point or value.dtype.is_complex):
                        self.data_values.add(value.id)  # token ids, masks: no neurons
                    if node.name in input_axes:
                        axes[value.id] = input_axes[node.name]
                    self.env[node.name] = value
        groups = leaf_groups(self.ep, self.registry)
        seen_groups: set[str] = set()
        outputs: list[Value] = []
        for node in self.ep.graph.nodes:
            if node.op == "call_function":
                key = groups.get(node.name)
                if key is None:
                    self._convert_call(node)
                elif key not in seen_groups:
                    seen_groups.add(key)
                    nodes = [n for n in self.ep.graph.nodes if groups.get(n.name) == key]
                    self.ops.append(leaf_op(self, key, nodes))
            elif node.op == "output":
                for item in torch.utils._pytree.tree_leaves(node.args[0]):
                    if isinstance(item, torch.fx.Node):
                        value = self.env[item.name]
                        if isinstance(value, Value):
                            outputs.append(value)
            elif node.op == "get_attr":  # the body of a higher-order op
                self.env[node.name] = resolve_attribute(self.ep.graph_module, str(node.target), _location(node))
            elif node.op not in ("placeholder",):
                raise CompileError(f"unexpected fx node {node.op} {node.target} in the exported graph")
        return normalize(IRGraph(inputs, outputs, self.ops, self.tensors, self.kinds, axes, "torch",
                                 self.aliases))

    def _convert_body(self, body: torch.fx.GraphModule, operands: list[Any]) -> list[Any]:
        """Convert a higher-order op's subgraph on ``operands`` (its placeholders, in order)
        in a scope of its own; returns what its output node returns."""
        outer, self.env = self.env, {}
        try:
            placeholders = [n for n in body.graph.nodes if n.op == "placeholder"]
            if len(placeholders) != len(operands):
                raise CompileError(f"a subgraph with {len(placeholders)} inputs called with {len(operands)}")
            for node, operand in zip(placeholders, operands):
                self.env[node.name] = operand
            for node in body.graph.nodes:
                if node.op == "call_function":
                    self._convert_call(node)
                elif node.op == "get_attr":
                    self.env[node.name] = resolve_attribute(body, str(node.target), _location(node))
                elif node.op == "output":
                    return [self._arg(item) for item in node.args[0]]
            raise CompileError("a subgraph without an output")
        finally:
            self.env = outer

    # ---------------------------------------------------------------- calls
    def _arg(self, a: Any) -> Any:
        if isinstance(a, torch.fx.Node):
            return self.env[a.name]
        if isinstance(a, (list, tuple)):
            return type(a)(self._arg(x) for x in a)
        return a

    def _convert_call(self, node: torch.fx.Node) -> None:
        args = [self._arg(a) for a in node.args]
        kwargs = {k: self._arg(v) for k, v in node.kwargs.items()}
        if node.target is operator.getitem:
            self.env[node.name] = args[0][args[1]]
            return
        hop = higher_order_name(node.target)
        if hop is not None:
            inline(hop, node, args, self.env, self._convert_body, _location(node))
            return
        name = target_name(node.target)
        if name in _NO_OP_TARGETS:
            return
        if name == "aten.copy_.default" and isinstance(args[1], Value):  # in-place writes: see inplace
            written = sliced_write(node)
            if written is not None:  # ``base[..., a:b] = y``: base is its other entries around y from here on
                base, chain = written
                self.env[base.name] = write_into(self.env[base.name], chain, args[1], self._emit(_location(node)))
                self.env[node.name] = args[1]
                return
            if overwrites_whole_value(node):  # ``x.copy_(y)`` into all of x: ``y``, as x's shape
                name, args, kwargs = "aten.expand.default", [args[1], list(node.meta["val"].shape)], {}
        if name in _AS_TARGETS and len(args) > 1 and isinstance(args[1], ParamRef):
            args = [args[0], args[1].tensor.detach()]  # ``w2.reshape_as(w)`` reads w's shape only
        leaves = torch.utils._pytree.tree_leaves((args, kwargs))
        if only_constants(leaves) and not self._is_view(name):
            # a tensor made in forward (DeBERTa's ``torch.tensor(size)``) combined with other
            # constants: the result is a constant, not a function of the weights
            args, kwargs = torch.utils._pytree.tree_map(as_constant_value, (args, kwargs))
            leaves = torch.utils._pytree.tree_leaves((args, kwargs))
        has_param = any(isinstance(x, ParamRef) for x in leaves)
        # values computed from constants only (position ids, masks) count as constants
        active = [x for x in leaves if isinstance(x, Value) and x.constant is None]
        has_value = bool(active)
        if has_value and not has_param and all(v.id in self.data_values for v in active):
            self._data_op(node, name)  # e.g. a padding mask built from integer inputs
            return
        if not has_value and has_param and name in _CAST_TARGETS:
            ref = args[0]

            def cast(t: torch.Tensor | None) -> torch.Tensor | None:
                return None if t is None else node.target(t, *args[1:], **kwargs)

            self.env[node.name] = dataclasses.replace(ref, tensor=cast(ref.tensor), offset=cast(ref.offset))
            return
        if name in _WEIGHT_NORMS and not has_value:
            reparametrised = _WEIGHT_NORMS[name](args, kwargs)
            if reparametrised is not None:  # v * g / ||v||, or standardised rows: ParamRef.weight_norm
                self.env[node.name] = reparametrised
                return
        normed = [x for x in leaves if isinstance(x, ParamRef) and x.weight_norm is not None]
        if normed and name not in _CAST_TARGETS and not self._takes_weight_norm(name) \
                and not _rows_kept(normed[0], name, node):
            made = "batch_norm" if isinstance(normed[0].weight_norm[1], tuple) else "_weight_norm"
            self._refuse_transform(node, name, args, f"aten.{made}.default")
            return
        if name == "aten.cat.default" and not has_value and has_param:
            concat = ParamConcat.of(args, kwargs)
            if concat is not None:  # a bias assembled from parameters (BEiT): see param_concat
                self.env[node.name] = concat
                return
        if any(isinstance(x, ParamConcat) for x in leaves):
            if not concat_used(self, node, name, args, kwargs, _location(node)):
                self._refuse_transform(node, name, args, "aten.cat.default")
            return
        if not has_value and has_param and name in PARAM_FUNCTIONS:
            transformed = param_function(name, args, kwargs)
            if transformed is not None:  # 1 + w, -exp(w), where(mask, w, c): see param_transforms
                self.env[node.name] = transformed
                return
        if has_param and name in _SHAPE_ONLY_TARGETS:  # ``a.new_zeros(...)``: no value read
            args = [a.tensor.detach() if isinstance(a, ParamRef) else a for a in args]
            has_param = False
        if not has_value and has_param and name in _INDEX_TARGETS and _constant_index(args) is not None:
            self.env[node.name] = self._lookup(args[0], _constant_index(args))
            return
        if not has_value and has_param:
            seen = self._param_view(node, name, args, kwargs)
            if seen is not None:
                self.env[node.name] = seen
                return
        if has_value and name not in self.registry.aten and self._convert_decomposed(node):
            return
        outputs = self.values_for(node)
        out_list = outputs if isinstance(outputs, list) else [outputs]
        out_values = [v for v in out_list if isinstance(v, Value)]
        self.env[node.name] = outputs
        location = _location(node)
        if not has_value and not has_param:
            self._evaluate_constant(node, args, kwargs, out_values)
            self.ops.append(Op("constant", [], out_values, {}, location, name))
            return
        mapping = self.registry.aten.get(name)
        axis = None if has_value else table_axis(self.registry, mapping, args, kwargs)
        if axis is not None:  # a parameter table a layer reads as a tensor (DeBERTa's relative embeddings)
            self.next_id += 1
            read, table = read_table(args[0], axis, self.next_id, location, name)
            self.ops.append(read)
            args = [table, *args[1:]]
            has_value = True
        if not has_value and not self._reads_constant(mapping, args):
            self.ops.append(Op(f"param_transform[{name}]", list(args), out_values, {}, location, name))
            return
        if mapping is None:
            self.ops.append(Op(name, list(args), out_values, dict(kwargs), location, name))
            return
        self.append_op(name, args, kwargs, out_values, location)

    def append_op(self, name: str, args: list | tuple, kwargs: dict, outs: list[Value], location: str) -> None:
        """The op of aten ``name`` with a rule: its canonical operands and attributes, or the
        normalizer's refusal, or a refusal of a transformed parameter its rule cannot record."""
        mapping = self.registry.aten[name]
        try:
            inputs, attrs = mapping.normalized(*args, **kwargs)
        except Unsupported as refusal:
            self.ops.append(Op(mapping.kind, list(args), outs, dict(kwargs), location, name,
                               unsupported=refusal.reason))
            return
        transformed = [x for x in torch.utils._pytree.tree_leaves(inputs) if isinstance(x, ParamRef) and x.transform]
        if transformed and not self.registry.attaches_transformed(mapping.kind):
            # only kinds whose rules attach a parameter through ctx.attach_param (which records
            # the function and the mask) take it; any other use is reported, never mis-encoded
            steps = ", ".join(step[0] for step in transformed[0].transform)
            self.ops.append(Op(f"param_transform[{steps}]", list(args), outs, {}, location, name))
            return
        self.ops.append(Op(mapping.kind, inputs, outs, attrs, location, name))

    def _emit(self, location: str) -> Emit:
        """A function appending the op of an aten ``name`` on ``args`` (and its output, a new
        value of ``shape``), for IR written by the frontend itself (:func:`.inplace.write_into`)."""

        def emit(name: str, args: list, shape: tuple[int, ...], dtype: torch.dtype, label: str) -> Value:
            self.next_id += 1
            out = Value(self.next_id, shape, dtype, label)
            self.append_op(name, args, {}, [out], location)
            return out

        return emit

    def _refuse_transform(self, node: torch.fx.Node, name: str, args: list, what: str) -> None:
        """An op on a parameter the model transformed in a way this op's rule cannot encode:
        a ``param_transform[what]`` refusal (reported with every other one)."""
        outputs = self.values_for(node)
        self.env[node.name] = outputs
        outs = [v for v in (outputs if isinstance(outputs, list) else [outputs]) if isinstance(v, Value)]
        self.ops.append(Op(f"param_transform[{what}]", list(args), outs, {}, _location(node), name))

    def _is_view(self, name: str) -> bool:
        """Ops that keep a tensor what it is (casts, layout views): a view of a lifted constant
        stays one, read by the rule that meets it (a constant ``cat`` part, a constant weight)."""
        mapping = self.registry.aten.get(name)
        return name in _CAST_TARGETS or (mapping is not None and self.registry.view(mapping.kind) is not None)

    def _reads_constant(self, mapping: Any, args: list) -> bool:
        """A layer (a kind that names the neuron axis of what it reads: conv, linear) applied to
        a constant with known values (EdgeNeXt's conv over Fourier position features): its rule
        gives the constant pinned nodes (``ctx.require_layout(x, constant_axis=...)``)."""
        rule = self.registry.rule(mapping.kind) if mapping is not None else None
        first = args[0] if args else None
        return (rule is not None and rule.input_axis is not None and isinstance(first, Value)
                and first.constant is not None)

    def _takes_weight_norm(self, name: str) -> bool:
        mapping = self.registry.aten.get(name)
        return mapping is not None and self.registry.takes_weight_norm(mapping.kind)

    def _convert_decomposed(self, node: torch.fx.Node) -> bool:
        """Convert an op that has no rule through the ops PyTorch decomposes it into (see
        :mod:`.decompositions`), in its place and with its location. False (nothing
        converted) when it has no decomposition or decomposes into ops without rules."""
        if self._decomposing >= _MAX_DECOMPOSITION_DEPTH:
            return False
        traced = trace_decomposition(node)
        if traced is None:
            return False
        sub, inputs = traced
        for n in sub.graph.nodes:
            n.name = f"{node.name}__{n.name}"  # apart from every name of the exported graph
        placeholders = [n for n in sub.graph.nodes if n.op == "placeholder"]
        for placeholder, source in zip(placeholders, inputs):
            self.env[placeholder.name] = self.env[source.name]
        start = len(self.ops)
        self._decomposing += 1
        try:
            for n in sub.graph.nodes:
                if n.op == "call_function":
                    for key in ("nn_module_stack", "stack_trace"):
                        if key in node.meta:
                            n.meta[key] = node.meta[key]
                    self._convert_call(n)
                elif n.op == "output":
                    self.env[node.name] = self._arg(n.args[0])
        finally:
            self._decomposing -= 1
        if any(self.registry.rule(op.kind) is None or op.unsupported is not None for op in self.ops[start:]):
            # it decomposes into ops without rules either: report the op the user wrote
            del self.ops[start:]
            for key in [k for k in self.env if k == node.name or k.startswith(f"{node.name}__")]:
                del self.env[key]
            return False
        return True

    def _data_op(self, node, name: str) -> None:
        """An op on values computed only from integer model inputs and constants: no neurons
        (a constant for lowering, without a known value)."""
        outputs = self.values_for(node)
        out_values = [v for v in (outputs if isinstance(outputs, list) else [outputs]) if isinstance(v, Value)]
        self.env[node.name] = outputs
        self.data_values.update(v.id for v in out_values)
        self.ops.append(Op("constant", [], out_values, {}, _location(node), name))

    def _constant_placeholder(self, node, tensor: torch.Tensor) -> None:
        self.next_id += 1
        value = Value(self.next_id, tuple(tensor.shape), tensor.dtype, node.name, constant=tensor)
        self.env[node.name] = value
        self.ops.append(Op("constant", [], [value], {}, node.name, "buffer"))

    def _evaluate_constant(self, node, args, kwargs, out_values: list[Value]) -> None:
        """Record the concrete value of an op computed from constants only (``arange`` for
        position ids, a causal mask), when it is deterministic and cheap to run."""
        if name_is_random(node.target) or not out_values:
            return
        unwrap = lambda a: a.constant if isinstance(a, Value) else a
        try:
            result = node.target(*torch.utils._pytree.tree_map(unwrap, args),
                                 **torch.utils._pytree.tree_map(unwrap, kwargs))
        except Exception:
            return
        results = [result] if isinstance(result, torch.Tensor) else list(result) if isinstance(result, (list, tuple)) else []
        if len(results) != len(out_values):  # a split of a table (GPT-J's sin/cos) has several outputs
            return
        for value, tensor in zip(out_values, results):
            if isinstance(tensor, torch.Tensor) and tensor.numel() <= _MAX_CONSTANT:
                value.constant = tensor

    def _lookup(self, ref: ParamRef, index: torch.Tensor) -> ParamRef:
        """``weight[index]`` along axis 0 with constant indices (learned positional tables)."""
        return ref.apply(lambda t: t[index.long()])

    def _param_view(self, node: torch.fx.Node, name: str, args: tuple, kwargs: dict) -> Any:
        """The outputs of an op on one parameter (and constants) as views of that parameter,
        when the op's kind declares a view (:attr:`OpKind.view`); None otherwise."""
        mapping = self.registry.aten.get(name)
        view = self.registry.view(mapping.kind) if mapping is not None else None
        refs = [x for x in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(x, ParamRef)]
        if view is None or len(refs) != 1 or not args or args[0] is not refs[0]:
            return None
        try:
            _, attrs = mapping.normalized(*args, **kwargs)
        except Unsupported:
            return None
        val = node.meta.get("val")
        vals = list(val) if isinstance(val, (list, tuple)) else [val]
        if not all(isinstance(v, torch.Tensor) for v in vals):
            return None
        seen = refs[0].through(view, attrs, [tuple(v.shape) for v in vals], [v.dtype for v in vals])
        if seen is None:
            return None
        return seen if isinstance(val, (list, tuple)) else seen[0]
