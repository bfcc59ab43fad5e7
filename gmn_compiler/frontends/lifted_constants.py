"""Tensors a model makes in ``forward`` (``torch.tensor(size)``), which ``torch.export`` lifts
as constants of the program (``ExportedProgram.constants``).

The frontend keeps such a tensor as a ``constant`` :class:`~gmn_compiler.ir.ParamRef` while
ops only view it (a constant ``cat`` part, a fixed weight read by a rule); an op that computes
on lifted constants and other constants alone (DeBERTa's log-bucketed relative positions:
``div``, ``log``, ``ceil``, ``where``) has a constant result, evaluated like any other
(``Value.constant``), never a computation on weights.
"""

from __future__ import annotations

from typing import Any

from ..ir import ParamRef, Value


def only_constants(leaves: list) -> bool:
    """Some operand is a lifted tensor constant and none is a weight or an activation."""
    refs = [x for x in leaves if isinstance(x, ParamRef)]
    return (bool(refs) and all(r.kind == "constant" and not r.transform and r.weight_norm is None for r in refs)
            and not any(isinstance(x, Value) and x.constant is None for x in leaves))


def as_constant_value(a: Any) -> Any:
    """A lifted constant as a constant value (its tensor known); anything else unchanged."""
    if isinstance(a, ParamRef):
        return Value(-1, tuple(a.tensor.shape), a.tensor.dtype, a.name, constant=a.tensor)
    return a
