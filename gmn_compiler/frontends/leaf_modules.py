"""Leaf modules in the torch frontend: a module class a plugin claims
(``Registrar.add_leaf_module``) becomes one op per call, instead of the ATen ops it runs.

The calls are found from each fx node's ``nn_module_stack`` (:func:`leaf_groups`); the nodes of
one call become one op (:func:`leaf_op`) whose ``params`` are the module's parameters and
persistent buffers by local name, whose inputs are the values the call reads from outside and
whose outputs are the values read outside it.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from ..ir import Op, ParamRef, Value
from ..registry import Registry, target_name


class _Converting(Protocol):
    """What :func:`leaf_op` reads off the torch frontend's converter."""

    ep: torch.export.ExportedProgram
    registry: Registry
    root: torch.nn.Module | None
    env: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    kinds: dict[str, str]

    def values_for(self, node: torch.fx.Node) -> Any: ...


def module_type_name(entry: Any) -> str:
    """The qualified class name of an ``nn_module_stack`` entry ``(path, type)``."""
    _, type_name = entry
    if isinstance(type_name, str):
        return type_name
    return f"{type_name.__module__}.{type_name.__qualname__}"


def leaf_groups(ep: torch.export.ExportedProgram, registry: Registry) -> dict[str, str]:
    """fx node name -> key of the outermost claimed leaf-module call containing it."""
    if not registry.leaf_modules:
        return {}
    groups: dict[str, str] = {}
    for node in ep.graph.nodes:
        if node.op != "call_function":
            continue
        for key, entry in (node.meta.get("nn_module_stack") or {}).items():
            if module_type_name(entry) in registry.leaf_modules:
                groups[node.name] = key
                break
    return groups


def _module_state(conv: _Converting, prefix: str) -> dict[str, ParamRef]:
    """The floating parameters and persistent buffers under ``prefix``, by local name, read
    from the state dict (strict tracing lifts only the tensors a call uses)."""
    non_persistent = set(conv.ep.graph_signature.non_persistent_buffers)
    return {name[len(prefix):]: ParamRef(name, t, None, conv.kinds[name])
            for name, t in conv.tensors.items()
            if name.startswith(prefix) and conv.kinds[name] in ("parameter", "buffer")
            and name not in non_persistent and t.is_floating_point()}


def leaf_op(conv: _Converting, key: str, nodes: list[torch.fx.Node]) -> Op:
    """The op of one leaf-module call (``key`` in the nodes' ``nn_module_stack``, ``nodes`` its
    fx nodes in order). Binds, in ``conv.env``, the values its nodes give to nodes outside."""
    entry = nodes[0].meta["nn_module_stack"][key]
    path, type_name = entry[0], module_type_name(entry)
    mapping = conv.registry.leaf_modules[type_name]
    inside = {n.name for n in nodes}
    prefix = f"{path}." if path else ""
    params: dict[str, ParamRef] = {}
    inputs: list[Value] = []
    for n in nodes:
        for a in torch.utils._pytree.tree_leaves((n.args, n.kwargs)):
            if isinstance(a, torch.fx.Node) and a.name not in inside:
                obj = conv.env[a.name]
                if isinstance(obj, ParamRef) and obj.offsets is None:
                    params[obj.name[len(prefix):] if obj.name.startswith(prefix) else obj.name] = obj
                elif isinstance(obj, Value) and obj not in inputs:
                    inputs.append(obj)
    for name, ref in _module_state(conv, prefix).items():  # unused ones too (cached expansions)
        params.setdefault(name, ref)
    outputs: list[Value] = []
    for n in nodes:
        if any(user.name not in inside for user in n.users):
            value = conv.values_for(n)
            conv.env[n.name] = value
            outputs.extend(v for v in (value if isinstance(value, list) else [value]) if isinstance(v, Value))
    # the constant arguments of the calls inside (a conv's stride and padding...), so a
    # rule can tell apart two calls that differ only there
    inner = tuple((target_name(n.target), tuple(a for a in torch.utils._pytree.tree_leaves((n.args, n.kwargs))
                                               if a is None or isinstance(a, (bool, int, float, str))))
                  for n in nodes)
    attrs = {"module_path": path, "module_type": type_name, "params": params, "inner": inner,
             "module_attrs": None}
    if mapping.module_attrs is not None and conv.root is not None:
        attrs["module_attrs"] = mapping.module_attrs(conv.root.get_submodule(path))
    return Op(mapping.kind, inputs, outputs, attrs, f"{path} ({type_name.rsplit('.', 1)[-1]})", type_name)
