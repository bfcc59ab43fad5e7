"""ONNX ``Einsum`` through the ops PyTorch computes ``torch.einsum`` with.

The torch frontend never sees ``einsum`` whole: it converts the ops PyTorch decomposes it into
(permutes, reshapes, ``bmm``; see :mod:`.decompositions`). For the ONNX node to compile to the
same graph, it goes the same way: ``torch.einsum(equation, ...)`` is traced with ``make_fx`` on
fake tensors of the operands' shapes, and each traced ATen op becomes an IR op through the
registry's ATen mappings, as the torch frontend would make it. An operand that is an
initializer stays a parameter through layout views (the torch frontend's ``ParamRef.through``);
any other computation on initializers alone is reported as ``param_transform[...]``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..errors import Unsupported
from ..ir import Op, ParamRef, Value
from ..registry import Registry, target_name

OP_TYPES = frozenset({"Einsum"})
"""ONNX op types converted here rather than through a mapping of their own."""


def convert_einsum(equation: str, operands: list[Any], registry: Registry, location: str,
                   new_value: Callable[[torch.Tensor, str], Value]) -> tuple[list[Op], Any]:
    """The IR ops computing ``einsum(equation, *operands)`` (Values and ParamRefs), and what
    stands for its result (a Value, or a ParamRef when only parameters were rearranged).
    ``new_value(meta, name)`` makes a Value shaped like the fake tensor ``meta``."""
    from torch.fx.experimental.proxy_tensor import make_fx

    examples = [torch.empty(tuple(x.shape), dtype=x.tensor.dtype if isinstance(x, ParamRef) else x.dtype)
                for x in operands]
    traced = make_fx(lambda *t: torch.einsum(equation, *t), tracing_mode="fake")(*examples)
    env: dict[str, Any] = {}
    placeholders = [n for n in traced.graph.nodes if n.op == "placeholder"]
    for node, operand in zip(placeholders, operands):
        env[node.name] = operand
    ops: list[Op] = []
    result: Any = None
    for node in traced.graph.nodes:
        if node.op == "call_function":
            env[node.name] = _convert(node, env, registry, location, new_value, ops)
        elif node.op == "output":
            result = env[node.args[0].name] if isinstance(node.args[0], torch.fx.Node) else None
    return ops, result


def _convert(node: torch.fx.Node, env: dict[str, Any], registry: Registry, location: str,
             new_value: Callable[[torch.Tensor, str], Value], ops: list[Op]) -> Any:
    def lookup(a: Any) -> Any:
        return env[a.name] if isinstance(a, torch.fx.Node) else a

    args = torch.utils._pytree.tree_map(lookup, list(node.args))
    kwargs = torch.utils._pytree.tree_map(lookup, dict(node.kwargs))
    name = target_name(node.target)
    val = node.meta["val"]
    mapping = registry.aten.get(name)
    leaves = torch.utils._pytree.tree_leaves((args, kwargs))
    has_value = any(isinstance(x, Value) for x in leaves)
    if not has_value and mapping is not None and registry.view(mapping.kind) is not None:
        refs = [x for x in leaves if isinstance(x, ParamRef)]
        try:
            _, attrs = mapping.normalized(*args, **kwargs)
            seen = refs[0].through(registry.view(mapping.kind), attrs, [tuple(val.shape)], [val.dtype]) \
                if len(refs) == 1 and args and args[0] is refs[0] else None
        except Unsupported:
            seen = None
        if seen is not None:
            return seen[0]
    out = new_value(val, f"einsum.{node.name}")
    if not has_value:
        ops.append(Op(f"param_transform[{name}]", list(args), [out], {}, location, "Einsum"))
    elif mapping is None:
        ops.append(Op(name, list(args), [out], dict(kwargs), location, "Einsum"))
    else:
        try:
            inputs, attrs = mapping.normalized(*args, **kwargs)
            ops.append(Op(mapping.kind, inputs, [out], attrs, location, "Einsum"))
        except Unsupported as refusal:
            ops.append(Op(mapping.kind, list(args), [out], dict(kwargs), location, "Einsum",
                          unsupported=refusal.reason))
    return out
