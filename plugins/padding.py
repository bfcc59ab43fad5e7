"""Padding along free axes: ``F.pad`` (constant, reflect, replicate, circular), what
``nn.Conv2d(padding_mode=...)`` traces to, and ONNX ``Pad``.

Padding moves entries along positions and adds constant (or reflected, repeated, wrapped)
ones, so it is a view with a signature: the output keeps its input's nodes, with a ``pad``
entry (axes, amounts, fill value) in its view signature — or, for reflect, replicate and
circular padding, which only select entries, the ``take`` entries a slice-and-concat spelling
of it gets — and the op that reads it gets
its own copy nodes whose edges carry the signature's code (DESIGN §4). Two convolutions that
differ only in their padding mode therefore read different nodes. Constant padding along an
axis that carries neurons adds units of its own (see :func:`_constant_units`); any other
padding of such an axis is refused.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from gmn_compiler.rules import LoweringContext, Op, ParamRef, Registrar, Unsupported, Value, hookimpl, layout as L

# what a normalizer returns: the kind's canonical inputs and attrs
_Normalized = tuple[list[Any], dict[str, Any]]



# ONNX Pad modes in torch's names
_ONNX_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate", "wrap": "circular"}


def lower_pad(ctx: LoweringContext, op: Op) -> None:
    """inputs ``[x]``; attrs ``pads`` ({axis >= 0: (begin, end)}), ``mode``, ``value``."""
    x = op.inputs[0]
    layout = ctx.layout(x)
    if layout is None:
        ctx.set_layout(op.output, None)
        return
    ndim = len(x.shape)
    aligned = L.align(layout, ndim)
    pads = {a: p for a, p in op.attrs["pads"].items() if tuple(p) != (0, 0)}
    along_neurons = [a for a in pads if aligned.ids.shape[a] > 1]
    if along_neurons:
        ctx.set_layout(op.output, _constant_units(ctx, op, aligned, pads, along_neurons))
        return
    if not pads:
        ctx.set_layout(op.output, aligned)
        return
    mode = op.attrs.get("mode", "constant")
    if mode != "constant" and all(b >= 0 and e >= 0 for b, e in pads.values()):
        # reflect / replicate / circular only select entries: one take per axis, in the form
        # a slice-and-concat spelling of the same padding gets (exporters write it so)
        shape, layout = list(x.shape), aligned
        for axis, (b, e) in sorted(pads.items()):
            layout = L.take(layout, tuple(shape), axis, layout, _indices(mode, shape[axis], b, e))
            shape[axis] += b + e
        ctx.set_layout(op.output, layout)
        return
    value = L.plain(op.attrs.get("value") or 0.0) if mode == "constant" else None
    sig = ("pad", tuple((a - ndim, int(b), int(e)) for a, (b, e) in sorted(pads.items())), mode, value)
    ctx.set_layout(op.output, aligned.signed(sig))


def _constant_units(ctx: LoweringContext, op: Op, aligned: L.Layout, pads: dict[int, tuple[int, int]],
                    along_neurons: list[int]) -> L.Layout:
    """Constant padding along one axis that carries neurons (EfficientViT's LiteMLA appends a
    channel of ones to each head's values, whose attention-weighted sum is the normaliser):
    each padded entry is a unit of its own, a ``constant`` node named by the fill value (its
    node signature), one per entry of the other neuron axes (per head), so it moves with the
    units beside it and never with a real channel."""
    mode, value = op.attrs.get("mode", "constant"), float(op.attrs.get("value") or 0.0)
    if mode != "constant" or len(pads) != 1 or aligned.pos is not None:
        raise ctx.error(f"padding axis {along_neurons[0]}, which carries neurons, is only supported in "
                        "constant mode, alone, on a value without merged positions")
    (axis, (begin, end)), = pads.items()
    if begin < 0 or end < 0:
        raise ctx.error(f"cropping axis {axis}, which carries neurons, is not supported")
    x = op.inputs[0]

    def constant_part(count: int) -> tuple[L.Layout, tuple[int, ...]]:
        shape = list(aligned.ids.shape)
        shape[axis] = count
        ids = ctx.add_nodes(math.prod(shape), "constant", ctx.depth_of(aligned.nodes()))
        ctx.set_node_signature(ids, ("pad", L.plain(value)))
        return L.Layout(ids.view(shape)), tuple(count if a == axis else s for a, s in enumerate(x.shape))

    parts = ([constant_part(begin)] if begin else []) + [(aligned, tuple(x.shape))] + \
        ([constant_part(end)] if end else [])
    return L.cat([p for p, _ in parts], [s for _, s in parts], axis)


def _indices(mode: str, n: int, begin: int, end: int) -> list[int]:
    """The input positions that a ``mode`` padding of ``begin`` / ``end`` entries reads."""
    inner = list(range(n))
    if mode == "circular":
        return [(n - begin + i) % n for i in range(begin)] + inner + [i % n for i in range(end)]
    if mode == "reflect":
        return [begin - i for i in range(begin)] + inner + [n - 2 - i for i in range(end)]
    return [0] * begin + inner + [n - 1] * end  # replicate


def _torch_pad(x: Any, pad: Sequence[int], mode: str = "constant", value: float | None = None) -> _Normalized:
    """``pad`` lists (begin, end) pairs from the last axis backwards."""
    ndim = len(x.shape)
    pads = {ndim - 1 - i: (int(pad[2 * i]), int(pad[2 * i + 1])) for i in range(len(pad) // 2)}
    return [x], {"pads": pads, "mode": mode, "value": value}


def _constant_pad_nd(x: Any, pad: Sequence[int], value: float = 0) -> _Normalized:
    return _torch_pad(x, pad, "constant", value)


def _numbers(operand: object) -> list[Any] | None:
    if operand is None:
        return None
    if isinstance(operand, torch.Tensor):  # an integer constant the ONNX frontend folded
        return operand.reshape(-1).tolist()
    if isinstance(operand, ParamRef):
        return operand.tensor.reshape(-1).tolist()
    if isinstance(operand, Value) and operand.constant is not None:
        return operand.constant.reshape(-1).tolist()
    if isinstance(operand, (int, float)):
        return [operand]
    if isinstance(operand, (list, tuple)):
        return list(operand)
    return None


def _onnx_pad(x: Any, pads: object = None, constant_value: object = None, axes: object = None,
              mode: str = "constant") -> _Normalized:
    ndim = len(x.shape)
    amounts, fill, chosen = _numbers(pads), _numbers(constant_value), _numbers(axes)
    if amounts is None or mode not in _ONNX_MODES:
        raise Unsupported(f"Pad with pads computed in the model or mode {mode!r}")
    axes_list = [int(a) % ndim for a in chosen] if chosen is not None else list(range(ndim))
    k = len(axes_list)
    found = {a: (int(amounts[i]), int(amounts[k + i])) for i, a in enumerate(axes_list)}
    return [x], {"pads": found, "mode": _ONNX_MODES[mode], "value": fill[0] if fill else 0.0}


@hookimpl
def gmn_register(registry: Registrar) -> None:
    registry.add_node_role("constant")
    registry.add_rule("pad", lower_pad, inputs=("x",), attributes=("pads", "mode", "value"), aliasing=True)
    registry.map_aten("aten.pad.default", "pad", _torch_pad)
    registry.map_aten("aten.constant_pad_nd.default", "pad", _constant_pad_nd)
    for dims in (1, 2, 3):
        for kind, mode in (("reflection", "reflect"), ("replication", "replicate")):
            registry.map_aten(f"aten.{kind}_pad{dims}d.default",
                              "pad", lambda x, pad, mode=mode: _torch_pad(x, pad, mode))
    registry.map_onnx("Pad", "pad", _onnx_pad)
