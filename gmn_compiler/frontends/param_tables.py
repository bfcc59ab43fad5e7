"""A parameter read whole as a tensor, by a layer, with no activation among the operands.

DeBERTa normalises its relative-position embedding table with a LayerNorm and projects it with
the attention's own query and key layers; Perceiver-style models project learned query tokens.
No model input flows into the table, so the op reads only parameters: both frontends would
otherwise refuse it as a computation on parameters (``param_transform[...]``). Instead, the
table becomes an activation of its own through a ``param_value`` op (the lookup of every row
of the table, see ``plugins/embedding.py``), and the layer reads that activation as usual.

Only where it is safe to say so: the layer's kind names the neuron axis of what it reads
(:attr:`~gmn_compiler.registry.OpKind.input_axis`: linear, conv, the norms), and the table is
stored as it is used (no elementwise transform, mask, added constant or reparametrisation).
"""

from __future__ import annotations

from typing import Any

from ..errors import Unsupported
from ..ir import Op, ParamRef, Value
from ..registry import Registry


def table_axis(registry: Registry, mapping: Any, args: list | tuple, kwargs: dict) -> int | None:
    """The neuron axis of ``args[0]``, a parameter read as a tensor by the op that ``mapping``
    (an aten or ONNX mapping of the registry, or None) normalises from ``args`` / ``kwargs``;
    None when that is not the case."""
    table = args[0] if args else None
    entry = registry.rule(mapping.kind) if mapping is not None else None
    if entry is None or entry.input_axis is None or not plain_table(table):
        return None
    try:
        inputs, attrs = mapping.normalized(*args, **kwargs)
    except Unsupported:
        return None
    if not inputs or inputs[0] is not table:
        return None
    axis = entry.axis_of_input(Op(mapping.kind, inputs, [], attrs))
    return None if axis is None else axis % table.tensor.dim()


def plain_table(table: Any) -> bool:
    """A weight or buffer used as it is stored (no elementwise transform, mask, added constant
    or reparametrisation), with at least one axis."""
    return (isinstance(table, ParamRef) and table.kind != "constant" and not table.transform
            and table.mask is None and table.weight_norm is None and table.offset is None and table.tensor.dim() > 0)


def read_table(table: ParamRef, axis: int, value_id: int, location: str, target: str) -> tuple[Op, Value]:
    """The op reading ``table`` as a tensor with neurons along ``axis``, and its output (a value
    shaped like the table, with id ``value_id``)."""
    value = Value(value_id, table.shape, table.tensor.dtype, f"{table.name}.table")
    return Op("param_value", [table], [value], {"axis": axis}, location, target), value
