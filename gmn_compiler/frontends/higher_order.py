"""Higher-order ops in an exported graph: wrappers are inlined, control flow is refused.

``torch.export`` keeps some regions of a model as a call of a *higher-order op* on a
submodule (``get_attr`` of a ``GraphModule``): ``torch.autocast(..., enabled=False)`` regions
become ``wrap_with_autocast``, ``torch.set_grad_enabled`` regions
``wrap_with_set_grad_enabled``. Their bodies are ordinary graphs that run once on the given
operands; precision and gradient modes do not change which weights meet which units, so the
body is converted in place of the call, as if it had been written inline. Data-dependent
control flow (``cond``, ``while_loop``, ``map``, ``scan``...) picks or repeats a subgraph at
run time: no single parameter graph describes it, so it is refused with its name.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from ..errors import CompileError

INLINED = ("wrap_with_autocast", "wrap_with_set_grad_enabled", "wrap")
"""Higher-order ops whose body runs exactly once on its operands."""


def higher_order_name(target: Any) -> str | None:
    """The name of a higher-order op target, None for any other target."""
    if isinstance(target, torch._ops.HigherOrderOperator):
        return str(target.name())
    return None


def resolve_attribute(module: torch.nn.Module, target: str, where: str) -> torch.fx.GraphModule:
    """The submodule a ``get_attr`` node names (a dotted path); only subgraphs are expected."""
    found: Any = module
    for part in target.split("."):
        found = getattr(found, part, None)
    if not isinstance(found, torch.fx.GraphModule):
        raise CompileError(f"{where}: get_attr {target!r} is no subgraph ({type(found).__name__}); "
                           "only the bodies of higher-order ops are expected there")
    return found


def inline(name: str, node: torch.fx.Node, args: list[Any], env: dict[str, Any],
           convert_body: Callable[[torch.fx.GraphModule, list[Any]], list[Any]], where: str) -> None:
    """Bind ``node``'s result to the outputs of its body converted inline (``name`` in
    :data:`INLINED`), or refuse control flow."""
    if name not in INLINED:
        raise CompileError(f"{where}: data-dependent control flow ({name}) cannot be compiled into one "
                           "parameter graph; remove the branch or loop for export (e.g. trace one "
                           "branch), or compile each variant separately")
    position = next((i for i, a in enumerate(args) if isinstance(a, torch.fx.GraphModule)), None)
    if position is None:
        raise CompileError(f"{where}: {name} without a subgraph operand")
    outputs = convert_body(args[position], list(args[position + 1:]))
    env[node.name] = tuple(outputs)
