"""Values computed from no input and no parameter (``torch.zeros(...)``, ``arange``,
``zeros_like(x)``): they carry no neurons. A binary op that combines one with an activation
checks it does not vary along a neuron axis (which would pin those neurons)."""

from __future__ import annotations

from typing import Any

from gmn_compiler.rules import LoweringContext, Op, Registrar, hookimpl



def lower_constant(ctx: LoweringContext, op: Op) -> None:
    for out in op.outputs:
        ctx.set_layout(out, None)
        ctx.mark_constant(out)


def _like(x: Any, *args: Any, **kwargs: Any) -> tuple[list[Any], dict[str, Any]]:
    return [], {}


@hookimpl
def gmn_register(registry: Registrar) -> None:
    registry.add_rule("constant", lower_constant, inputs=(), attributes=())
    for name in ("zeros_like", "ones_like", "full_like", "empty_like", "rand_like", "randn_like"):
        registry.map_aten(f"aten.{name}.default", "constant", _like)
