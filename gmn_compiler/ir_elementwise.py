"""Recognising an activation written out as elementwise arithmetic, whatever the spelling.

Exporters and model code spell activations as chains of elementwise ops: the TorchScript
exporter writes GELU (tanh) as ``0.5 * x * (1 + tanh(c1 * (x + c2 * x*x*x)))``, SiLU as
``x * sigmoid(x)``; Hugging Face's ``NewGELUActivation`` uses ``pow(x, 3.0)``. Each spelling
would otherwise compile to its own chain of nodes, so the torch and ONNX graphs of one model
would differ. :func:`fuse_written_activations` finds every maximal *cluster* — elementwise ops
of one activation ``x`` (and Python scalars) whose intermediate results are read only inside
the cluster — evaluates it on a grid of points and, where it equals a known activation to
float32 precision, replaces the cluster with that one op. Nothing is assumed about the
spelling; a cluster that matches nothing is left as it is.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .ir import IRGraph, Op, ParamRef, Value

# op kinds a cluster may contain, evaluated on float64 tensors (scalars stay Python floats)
_EVAL: dict[str, Callable] = {
    "add": lambda a, b, alpha=1: a + alpha * b, "sub": lambda a, b, alpha=1: a - alpha * b,
    "mul": lambda a, b, **_: a * b, "div": lambda a, b, **_: a / b,
    "pow": lambda a, b, **_: a ** b, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "erf": torch.erf,
    "exp": torch.exp, "log": torch.log, "softplus": F.softplus, "square": torch.square,
}
# what a cluster may be recognised as: (op kind, attrs) -> the function
_KNOWN: list[tuple[str, dict, Callable]] = [
    ("gelu", {"approximate": "tanh"}, lambda x: F.gelu(x, approximate="tanh")),
    ("gelu", {"approximate": "none"}, F.gelu),
    ("silu", {}, F.silu),
    ("mish", {}, F.mish),
    ("sigmoid", {}, torch.sigmoid),
    ("tanh", {}, torch.tanh),
    ("expm1", {}, torch.expm1),  # exp(x) - 1
    ("log1p", {}, torch.log1p),  # log(x + 1): undefined below -1, compared where it is defined
]
_GRID = torch.linspace(-6.0, 6.0, 241, dtype=torch.float64)
_KNOWN_ON_GRID = [(kind, attrs, fn(_GRID)) for kind, attrs, fn in _KNOWN]


def fuse_written_activations(ir: IRGraph) -> IRGraph:
    readers = _readers(ir)
    position = {id(op): k for k, op in enumerate(ir.ops)}  # ir.ops is in topological order
    producer = {v.id: op for op in ir.ops for v in op.outputs}
    outputs = {v.id for v in ir.outputs}
    replace: dict[int, Op] = {}
    drop: set[int] = set()
    for root in reversed(ir.ops):
        if id(root) in drop or root.kind not in _EVAL or len(root.outputs) != 1:
            continue
        found = None
        # the widest cluster first; then one that stops at values read twice inside it
        # (``silu(a + b)`` is ``(a + b) * sigmoid(a + b)``: its input is the sum)
        for stop_at_shared in (False, True):
            cluster = _cluster(root, producer, readers, outputs, stop_at_shared)
            if cluster is not None:
                ops, x = cluster
                found = _recognise(sorted(ops, key=lambda o: position[id(o)]), root, x)
                if found is not None:
                    break
        if found is not None:
            kind, attrs = found
            replace[id(root)] = Op(kind, [x], [root.output], dict(attrs), root.location, kind)
            drop.update(id(op) for op in ops if op is not root)
    if replace:
        ir.ops = [replace.get(id(op), op) for op in ir.ops if id(op) not in drop]
    return ir


def _readers(ir: IRGraph) -> dict[int, set[int]]:
    found: dict[int, set[int]] = {}
    for op in ir.ops:
        for v in op.values():
            found.setdefault(v.id, set()).add(id(op))
    return found


def _cluster(root: Op, producer: dict, readers: dict, outputs: set,
             stop_at_shared: bool = False) -> tuple[list[Op], Value] | None:
    """The ops computing ``root`` from one activation ``x`` through ops of :data:`_EVAL`
    whose results are read only inside (and are no model output), if there are two or
    more; else None."""
    ops, members = [root], {id(root)}
    frontier = [v for v in root.values()]
    leaves: set[int] = set()
    while frontier:
        v = frontier.pop()
        op = producer.get(v.id)
        inside = (op is not None and op.kind in _EVAL and len(op.outputs) == 1 and v.constant is None
                  and v.id not in outputs and readers.get(v.id, set()) <= members | {id(op)}
                  and not (stop_at_shared and len(readers.get(v.id, ())) > 1))
        if inside and id(op) not in members:
            ops.append(op)
            members.add(id(op))
            frontier.extend(op.values())
        elif not inside and (op is None or id(op) not in members):
            leaves.add(v.id)
    # a value first taken for a leaf may have joined later through another path
    leaf_values = {v.id: v for op in ops for v in op.values() if v.id in leaves
                   and (producer.get(v.id) is None or id(producer[v.id]) not in members)}
    if len(ops) < 2 or len(leaf_values) != 1:
        return None
    # every intermediate must be read only inside the final cluster
    for op in ops:
        if op is not root and not readers.get(op.output.id, set()) <= members:
            return None
    return ops, next(iter(leaf_values.values()))


def _one_number(operand: object) -> object:
    """A one-element float constant the model made in ``forward`` (``exp(x) - torch.tensor(1.0)``,
    a lifted constant) is the number it holds, as the elementwise rules read it; anything else
    is itself. (ONNX one-element constants reach the IR as numbers already.)"""
    if isinstance(operand, ParamRef) and operand.kind == "constant" and operand.tensor.numel() == 1 \
            and operand.tensor.is_floating_point():
        return float(operand.tensor.reshape(-1)[0])
    return operand


def _recognise(ops: list[Op], root: Op, x: Value) -> tuple[str, dict] | None:
    """The known activation that ``ops`` (in topological order, ending in ``root``) compute
    from ``x``, by evaluation on a grid; None if none matches."""
    values: dict[int, torch.Tensor] = {x.id: _GRID}
    try:
        for op in ops:
            if op.attrs.get("args"):  # a softplus beta, a clamp bound: not evaluated here
                return None
            args = [values[a.id] if isinstance(a, Value) else _one_number(a) for a in op.inputs]
            if any(not isinstance(a, (torch.Tensor, int, float)) or isinstance(a, bool) for a in args):
                return None
            kwargs = {"alpha": op.attrs["alpha"]} if "alpha" in op.attrs and op.kind in ("add", "sub") else {}
            values[op.output.id] = torch.as_tensor(_EVAL[op.kind](*args, **kwargs), dtype=torch.float64)
    except (KeyError, TypeError, RuntimeError):
        return None
    got = values[root.output.id]
    if got.shape != _GRID.shape:
        return None
    defined = torch.isfinite(got)
    if int(defined.sum()) < _GRID.numel() // 2:
        return None
    for kind, attrs, want in _KNOWN_ON_GRID:
        # equal where defined, and defined at the same points
        if torch.equal(defined, torch.isfinite(want)) and torch.allclose(got[defined], want[defined],
                                                                         rtol=1e-5, atol=1e-6):
            return kind, attrs
    return None

