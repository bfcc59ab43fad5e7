"""``torch.gather`` / ONNX ``GatherElements`` with constant indices: ``out[..., i, ...] =
x[..., index[..., i, ...], ...]`` along ``dim``.

DeBERTa's disentangled attention scores every query against every *relative position*, then
gathers, for each (query, key) pair, the score of their distance: a gather along an axis that
carries no neurons (positions), with an index table shared by every head. Such a gather only
moves entries between free positions, so the output is a view of the input's nodes: laid out
as the input, with a ``gather`` entry (axis, shapes, a digest of the index table) in its view
signature. The consumer's copy edges then carry the signature's code, so two models that
gather different positions compile to different graphs (DESIGN §4).

Refused, in one line: a gather along an axis that carries neurons, an index that differs along
one (each head picking other positions), indices computed from activations, and inputs whose
neuron axis merges free positions (a flattened feature map). On a parameter the gather is a
view of it, like any other selection.
"""

from __future__ import annotations

from typing import Any

import torch

from gmn_compiler.rules import LoweringContext, Op, Registrar, Unsupported, Value, hookimpl, layout as L

_Normalized = tuple[list[Any], dict[str, Any]]


def lower_gather_elements(ctx: LoweringContext, op: Op) -> None:
    """inputs ``[x]``; attrs ``dim``, ``index`` (a long tensor shaped like the output)."""
    x = op.inputs[0]
    ndim = len(x.shape)
    dim = op.attrs["dim"] % ndim
    index = torch.as_tensor(op.attrs["index"]).long() % x.shape[dim]
    found = ctx.layout(x)
    if found is None:  # a constant or a statistic without neurons
        ctx.set_layout(op.output, None)
        return
    layout = L.align(found, ndim)
    if layout.pos is not None:
        raise ctx.error("gather on a value whose neuron axis merges free positions is not supported")
    neuron_axes = [a for a in range(ndim) if layout.ids.shape[a] > 1]
    if dim in neuron_axes:
        raise ctx.error(f"gather along axis {dim}, which carries neurons, is not supported")
    shared = index
    for axis in neuron_axes:
        if index.shape[axis] != x.shape[axis]:
            raise ctx.error(f"gather keeping part of axis {axis}, which carries neurons, is not supported")
        first = index.narrow(axis, 0, 1)
        if not torch.equal(index, first.expand_as(index)):
            raise ctx.error(f"gather whose indices differ along axis {axis}, which carries neurons, "
                            "is not supported")
        shared = shared.narrow(axis, 0, 1)
    entry = ("gather", dim - ndim, tuple(x.shape), tuple(shared.shape), L.content_digest(shared))
    ctx.set_layout(op.output, layout.signed(entry))


def _view_gather_elements(t: torch.Tensor, attrs: dict[str, Any], shapes: list[tuple[int, ...]]) -> list[torch.Tensor]:
    dim = attrs["dim"] % t.dim()
    return [t.gather(dim, torch.as_tensor(attrs["index"]).long() % t.shape[dim])]


def _constant_indices(index: Any) -> torch.Tensor:
    if isinstance(index, Value):
        if index.constant is None:
            raise Unsupported("gather with indices computed from activations")
        return index.constant.long()
    if isinstance(index, torch.Tensor):
        return index.long()
    raise Unsupported("gather with indices computed from activations")


def _gather(x: Any, dim: int, index: Any, sparse_grad: bool = False) -> _Normalized:
    return [x], {"dim": dim, "index": _constant_indices(index)}


def _onnx_gather_elements(x: Any, indices: Any, axis: int = 0) -> _Normalized:
    return [x], {"dim": axis, "index": _constant_indices(indices)}


@hookimpl
def gmn_register(registry: Registrar) -> None:
    registry.add_rule("gather_elements", lower_gather_elements, inputs=("x",), attributes=("dim", "index"),
                      aliasing=True, view=_view_gather_elements)
    registry.map_aten("aten.gather.default", "gather_elements", _gather)
    registry.map_onnx("GatherElements", "gather_elements", _onnx_gather_elements)
