"""Elementwise functions of a parameter computed in ``forward`` (issue 20).

Gemma's RMSNorm scales by ``1 + weight``, Mamba uses ``A = -exp(A_log)``: the model stores
one tensor and uses a function of it, entry by entry. The graph keeps carrying the *stored*
values (round trips stay bit-exact and a metanetwork sees what a checkpoint holds); the
function becomes part of the structure: the parameter reference records it
(``ParamRef.transform``) and the rule that attaches the parameter gives its auxiliary node the
identifier of that function (node column ``signature``), so two models that differ only in
the function compile to different graphs. An elementwise function commutes with every
permutation of the entries, so no symmetry changes. Only functions of the parameter and
Python scalars are taken; anything else stays a ``param_transform[...]`` refusal.

One function is positional: ``where(mask, w, c)`` / ``w.masked_fill(~mask, c)`` with a constant
mask (T5's sdpa path keeps its relative position bias only where the causal mask allows). The
reference then also carries the mask (``ParamRef.mask``), which views rearrange like the values;
the rule attaching it names the mask's content and refuses a mask that varies along an axis
carrying neurons (it would tell units apart). A constant tensor added to the parameter (HF
Swin's relative position bias plus its shifted windows' mask) is carried the same way
(``ParamRef.offset``), under the same rule.
"""

from __future__ import annotations

import dataclasses

from typing import Any

import torch

from ..ir import ParamRef

ELEMENTWISE_PARAM_TRANSFORMS = frozenset({
    "aten.add.Tensor", "aten.add.Scalar", "aten.sub.Tensor", "aten.sub.Scalar", "aten.rsub.Scalar",
    "aten.rsub.Tensor", "aten.mul.Tensor", "aten.mul.Scalar", "aten.div.Tensor", "aten.div.Scalar",
    "aten.neg.default", "aten.exp.default", "aten.log.default", "aten.sigmoid.default",
    "aten.tanh.default", "aten.abs.default", "aten.sqrt.default", "aten.rsqrt.default",
    "aten.reciprocal.default", "aten.pow.Tensor_Scalar", "aten.softplus.default",
    "aten.clamp.default", "aten.clamp_min.default", "aten.clamp_max.default",
})
"""ATen ops that map a tensor entry by entry (with scalar operands)."""

MASKING_PARAM_TRANSFORMS = frozenset({"aten.where.ScalarOther", "aten.masked_fill.Scalar"})
"""ATen ops that keep a tensor where a constant mask says and a number elsewhere."""


def elementwise_transform(name: str, args: list[Any], kwargs: dict[str, Any]) -> ParamRef | None:
    """The reference of ``name(*args, **kwargs)`` when exactly one operand is a parameter
    reference and every other one a Python number (or None): the same stored values with
    ``(name, position and scalars)`` appended to its transform. None otherwise."""
    refs = [(i, a) for i, a in enumerate(args) if isinstance(a, ParamRef)]
    others = [a for a in args if not isinstance(a, ParamRef)] + list(kwargs.values())
    if len(refs) != 1 or not all(_scalar(a) for a in others) or refs[0][1].weight_norm is not None:
        return None
    position, ref = refs[0]
    step = (name, position, tuple(_plain(a) for a in args if not isinstance(a, ParamRef)),
            tuple(sorted((k, _plain(v)) for k, v in kwargs.items())))
    return dataclasses.replace(ref, transform=ref.transform + (step,), weight_norm=None)


OFFSET_PARAM_TRANSFORMS = frozenset({"aten.add.Tensor", "aten.sub.Tensor"})
"""ATen ops that may add a constant tensor to a parameter (entry by entry, broadcasting)."""


def offset_transform(name: str, args: list[Any], kwargs: dict[str, Any]) -> ParamRef | None:
    """``ref + c`` / ``c + ref`` / ``ref - c`` with ``c`` a constant floating tensor (``alpha``
    a number): ``ref`` broadcast to the result, carrying ``c`` (times ``alpha``, negated for a
    subtraction) as its ``offset``, the operation recorded as a transform step. None for any
    other operands, and for a reference that already carries an offset or a weight norm."""
    if len(args) != 2 or set(kwargs) - {"alpha"}:
        return None
    alpha = kwargs.get("alpha", 1)
    position = next((i for i, a in enumerate(args) if isinstance(a, ParamRef)), None)
    if position is None or not _scalar(alpha):
        return None
    ref, other = args[position], args[1 - position]
    constant = getattr(other, "constant", None)
    if not isinstance(constant, torch.Tensor) or not constant.is_floating_point() or constant.numel() < 2:
        return None
    if ref.offset is not None or ref.weight_norm is not None:
        return None
    added = constant.double()
    if position == 0:  # ref + alpha * c (or ref - alpha * c)
        added = added * float(alpha) * (-1.0 if name == "aten.sub.Tensor" else 1.0)
    elif name == "aten.sub.Tensor" or float(alpha) != 1.0:  # c - alpha * ref: not an offset of ref
        return None
    shape = torch.broadcast_shapes(tuple(added.shape), ref.shape)
    ref = ref.apply(lambda t: t.reshape((1,) * (len(shape) - t.dim()) + tuple(t.shape)).expand(shape))
    added = added.reshape((1,) * (len(shape) - added.dim()) + tuple(added.shape)).expand(shape).clone()
    step = ("offset", position, (), ())
    return dataclasses.replace(ref, transform=ref.transform + (step,), weight_norm=None, offset=added)


def masked_transform(name: str, args: list[Any], kwargs: dict[str, Any]) -> ParamRef | None:
    """``where(cond, ref, number)`` or ``masked_fill(ref, cond, number)`` with ``cond`` a constant
    boolean: ``ref`` broadcast to the result, kept where ``cond`` (resp. ``~cond``) holds, the
    number recorded as a transform step. None for any other operands."""
    if kwargs:
        return None
    if name == "aten.where.ScalarOther" and len(args) == 3:
        cond, ref, fill = args
        keep = _constant_bool(cond)
    elif name == "aten.masked_fill.Scalar" and len(args) == 3:
        ref, cond, fill = args
        keep = _constant_bool(cond)
        keep = None if keep is None else ~keep
    else:
        return None
    if keep is None or not isinstance(ref, ParamRef) or not _scalar(fill) or ref.weight_norm is not None:
        return None
    shape = torch.broadcast_shapes(tuple(keep.shape), ref.shape)
    ref = ref.apply(lambda t: t.reshape((1,) * (len(shape) - t.dim()) + tuple(t.shape)).expand(shape))
    keep = keep.expand(shape)
    if ref.mask is not None:
        keep = keep & ref.mask
    step = ("masked", 1, (_plain(fill),), ())
    return dataclasses.replace(ref, transform=ref.transform + (step,), mask=keep.clone(), weight_norm=None)


PARAM_FUNCTIONS = ELEMENTWISE_PARAM_TRANSFORMS | MASKING_PARAM_TRANSFORMS | OFFSET_PARAM_TRANSFORMS
"""ATen ops :func:`param_function` may turn into a transformed parameter reference."""


def param_function(name: str, args: list[Any], kwargs: dict[str, Any]) -> ParamRef | None:
    """``name(*args, **kwargs)`` on one parameter reference as a transformed reference: an
    elementwise function with scalars, a constant mask, or a constant added; None when none
    applies (the frontend then refuses ``param_transform[name]``)."""
    if name in MASKING_PARAM_TRANSFORMS:
        return masked_transform(name, args, kwargs)
    found = elementwise_transform(name, args, kwargs) if name in ELEMENTWISE_PARAM_TRANSFORMS else None
    if found is None and name in OFFSET_PARAM_TRANSFORMS:
        found = offset_transform(name, args, kwargs)
    return found


def _constant_bool(value: Any) -> torch.Tensor | None:
    constant = getattr(value, "constant", None)
    return constant if isinstance(constant, torch.Tensor) and constant.dtype == torch.bool else None


def _scalar(a: Any) -> bool:
    return a is None or (isinstance(a, (int, float)) and not isinstance(a, bool))


def _plain(a: Any) -> Any:
    return float(a) if isinstance(a, (int, float)) and not isinstance(a, bool) else a


def weight_normalised(args: list[Any], kwargs: dict[str, Any]) -> ParamRef | None:
    """``_weight_norm(v, g, dim)`` of two plain parameters: ``v`` carrying ``(g, dim)`` (see
    ``ParamRef.weight_norm``). None for anything else."""
    v, g = args[0], args[1] if len(args) > 1 else kwargs.get("g")
    dim = args[2] if len(args) > 2 else kwargs.get("dim", 0)
    plain = all(isinstance(r, ParamRef) and not r.transform and r.mask is None and r.weight_norm is None
                and r.offset is None for r in (v, g))
    if not plain or not isinstance(dim, int):
        return None
    return ParamRef(v.name, v.tensor, v.offsets, v.kind, (), None, (g, dim))


def weight_standardised(args: list[Any], kwargs: dict[str, Any]) -> ParamRef | None:
    """``batch_norm(w.reshape(1, O, -1), gain, None, None, None, training=True, ...)`` on a
    parameter ``w`` (timm's ``ScaledStdConv2d``: each output unit's weights standardised, times
    a gain): ``w.reshape(1, O, -1)`` carrying ``(gain, ("standardise", eps))`` (see
    ``ParamRef.weight_norm``), which a reshape back to ``w``'s shape keeps. None otherwise."""
    names = ("input", "weight", "bias", "running_mean", "running_var", "training", "momentum", "eps")
    given = dict(zip(names, args), **{k: v for k, v in kwargs.items() if k in names})
    ref, gain = given.get("input"), given.get("weight")
    if not (isinstance(ref, ParamRef) and isinstance(gain, ParamRef) and given.get("training") is True
            and given.get("bias") is None and given.get("running_mean") is None and given.get("running_var") is None):
        return None
    if ref.transform or ref.mask is not None or ref.weight_norm is not None or gain.mask is not None or gain.offset is not None:
        return None
    if ref.tensor.dim() != 3 or ref.shape[0] != 1 or gain.tensor.numel() != ref.shape[1]:
        return None
    whole = torch.arange(ref.tensor.numel()).view(ref.shape)
    if not torch.equal(ref.flat_offsets(), whole):  # every entry of w, rows in order
        return None
    how = ("standardise", float(given.get("eps", 1e-5)))
    return ParamRef(ref.name, ref.tensor, ref.offsets, ref.kind, (), None, (gain, how))
