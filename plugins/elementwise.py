"""Binary elementwise ops: add, sub, mul, div, maximum, minimum, pow.

- Between two activations (residual add, gating mul): one new node per distinct pair of
  operand nodes, fed by a structural edge from each operand node (types ``add``,
  ``sub_lhs``/``sub_rhs``, ``mul``, ``div_num``/``div_den``...). A residual add therefore
  ties the permutations of its two operands, as the function requires.
- With a parameter operand (layer scale ``γ * x``, a learnable bias vector, ``x + pos_embed``):
  one auxiliary ``param_operand`` node with an edge per parameter entry into the nodes it
  meets (free positions in the ``spatial`` column).
- With a constant tensor (a mask, a rotary cos/sin table; from ONNX, a ``Constant`` node or
  a value folded from constants): like an activation without neurons; where the constant
  varies along a neuron axis, the new nodes get fixed positions (their index along that
  axis), since the constant tells them apart.
- With a Python scalar (``x * 0.5``, ``x + 1``): fresh nodes one-to-one with the operand's,
  the edge carrying the scalar (``scalar_*`` types).
- ``where`` / ``masked_fill`` with a mask and fill that carry no neurons: the nodes are marked
  ``masked``; where the mask or fill varies along a neuron axis they get fixed positions too.
"""

from __future__ import annotations

import numbers
from collections.abc import Hashable
from typing import Any, SupportsFloat, cast

import torch

from gmn_compiler.rules import Layout, LoweringContext, Op, ParamRef, Registrar, Unsupported, Value, hookimpl, layout as L

# what a normalizer returns: the kind's canonical inputs and attrs
_Normalized = tuple[list[Any], dict[str, Any]]


# kind -> (edge type for lhs, edge type for rhs)
PAIR_TYPES = {"add": ("add", "add"), "sub": ("sub_lhs", "sub_rhs"), "mul": ("mul", "mul"),
              "div": ("div_num", "div_den"), "maximum": ("max", "max"), "minimum": ("min", "min")}
# kind -> (edge type when the parameter is lhs, edge type when it is rhs)
PARAM_TYPES = {"add": ("param_add", "param_add"), "sub": ("param_sub_lhs", "param_sub_rhs"),
               "mul": ("param_mul", "param_mul"), "div": ("param_div_num", "param_div_den")}
# kind -> (edge type when the scalar is rhs, when it is lhs)
SCALAR_TYPES = {"add": ("scalar_add", "scalar_add"), "sub": ("scalar_sub", "scalar_rsub"),
                "mul": ("scalar_mul", "scalar_mul"), "div": ("scalar_div", "scalar_rdiv"),
                "pow": ("scalar_pow", None)}

# scalar edge types whose scalar leaves the value as it is (x + 0, x * 1)
_IDENTITY_SCALARS = {"scalar_add": 0.0, "scalar_sub": 0.0, "scalar_mul": 1.0, "scalar_div": 1.0, "scalar_pow": 1.0}


def lower_binary(ctx: LoweringContext, op: Op) -> None:
    """inputs ``[a, b]``; attrs ``alpha`` (``a + alpha * b`` for add/sub)."""
    a, b = _constant_tensor(op.inputs[0]), _constant_tensor(op.inputs[1])
    a, b = _one_element_as_scalar(a, b, op.output.shape), _one_element_as_scalar(b, a, op.output.shape)
    alpha = op.attrs.get("alpha", 1)
    a_const, b_const = _as_scalar(ctx, a), _as_scalar(ctx, b)
    if isinstance(a, (Value, torch.Tensor)) and isinstance(b, (Value, torch.Tensor)) and \
            (isinstance(a, Value) or isinstance(b, Value)):
        _lower_pair(ctx, op, a, b, alpha)
    elif isinstance(a, Value) and isinstance(b, ParamRef):
        _lower_param(ctx, op, a, b, param_is_lhs=False)
    elif isinstance(b, Value) and isinstance(a, ParamRef):
        _lower_param(ctx, op, b, a, param_is_lhs=True)
    elif isinstance(a, Value) and b_const is not None:
        _lower_scalar(ctx, op, a, b_const * (alpha if op.kind in ("add", "sub") else 1), scalar_is_lhs=False)
    elif isinstance(b, Value) and a_const is not None:
        _lower_scalar(ctx, op, b, a_const, scalar_is_lhs=True, alpha=alpha)
    else:
        raise ctx.error(f"unsupported operands for {op.kind}: {type(a).__name__}, {type(b).__name__}")


def _constant_tensor(operand: object) -> object:
    """An ONNX float ``Constant`` (or a value folded from constants) reaches the rules as a
    ``ParamRef`` of kind ``constant``: it is no weight (nothing writes it back), so it is
    treated as torch treats a constant tensor — by its value, not as edges carrying it."""
    if isinstance(operand, ParamRef) and operand.kind == "constant":
        return operand.tensor
    return operand


def _one_element_as_scalar(operand: object, other: object, out_shape: tuple[int, ...]) -> object:
    """A one-element constant that does not widen the result (``x * torch.tensor([0.7])``,
    an exporter's ``Constant``) is the scalar it holds, so torch and ONNX spellings agree."""
    known = operand.constant if isinstance(operand, Value) else operand
    if (isinstance(known, torch.Tensor) and known.numel() == 1 and known.is_floating_point()
            and isinstance(other, Value) and other.constant is None and tuple(other.shape) == tuple(out_shape)):
        return float(known.reshape(-1)[0])
    return operand


def _layout_of(ctx: LoweringContext, operand: Value | torch.Tensor) -> Layout | None:
    return None if isinstance(operand, torch.Tensor) else ctx.layout(operand)


def _as_scalar(ctx: LoweringContext, operand: object) -> float | None:
    if isinstance(operand, bool):
        return float(operand)
    if isinstance(operand, numbers.Number):  # typeshed's Number has no __float__; cast, not narrowed
        return float(cast(SupportsFloat, operand))
    return None


def _lower_pair(ctx: LoweringContext, op: Op, a: Value | torch.Tensor, b: Value | torch.Tensor, alpha: float) -> None:
    if op.kind not in PAIR_TYPES:
        raise ctx.error(f"{op.kind} between two activations is not supported")
    out = op.output
    ndim = len(out.shape)
    la, lb = _layout_of(ctx, a), _layout_of(ctx, b)
    varying: list[int] = []
    for constant, other in ((a, b), (b, a)):
        if isinstance(constant, torch.Tensor) or ctx.is_constant(constant):
            varying += _varying_neuron_axes(ctx, constant, other, ndim)
    if la is None and lb is None:
        ctx.set_layout(out, None)
        return
    varying += _free_axes_spelled_out(ctx, a, la, b, lb, ndim)
    ta, tb = L.broadcast_pair(la, lb, ndim)
    n = ctx.num_nodes + 1
    keys = ta * n + (tb + 1)
    uniq, inverse = torch.unique(keys.reshape(-1), return_inverse=True)
    src_a, src_b = uniq // n, uniq % n - 1
    nodes_in = torch.cat([src_a[src_a >= 0], src_b[src_b >= 0]])
    new = ctx.add_nodes(uniq.numel(), "neuron", ctx.depth_of(nodes_in) + 1)
    type_a, type_b = PAIR_TYPES[op.kind]
    weights = [1.0, float(alpha)]
    for side, constant in enumerate((a, b)):  # the constant's content is the op's signature
        if isinstance(constant, torch.Tensor) or ctx.is_constant(constant):
            sig = ("constant", op.kind, side, float(alpha), _content(ctx, constant))
            weights[1 - side] = L.signature_code(sig)
    for src, etype, weight in ((src_a, type_a, weights[0]), (src_b, type_b, weights[1])):
        keep = src >= 0
        ctx.add_edges((int(keep.sum()),), src[keep], new[keep], etype, value=weight)
    if la is None or lb is None:  # the other operand has no neurons: one-to-one copies
        ctx.note_copies(new, src_a if lb is None else src_b)
    else:  # units paired one to one (a residual add, a gate) must move together
        for src in (src_a, src_b):
            if bool((src >= 0).all()) and torch.unique(src).numel() == src.numel():
                ctx.tie_units(src, new)
    if ctx.anchored(nodes_in):  # told apart by what tells their operands apart
        keys_a = ctx.anchor_keys(src_a.clamp(min=0))
        keys_b = ctx.anchor_keys(src_b.clamp(min=0))
        ctx.anchor(new, [("pair", op.kind, ka if a >= 0 else None, kb if b >= 0 else None)
                         for ka, kb, a, b in zip(keys_a, keys_b, src_a.tolist(), src_b.tolist())])
    pos = _merged_pos(ctx, la, lb, ndim, keys.shape)
    ids = new[inverse].view(keys.shape)
    if pos is not None:  # entries of one node at several positions meet other units: each
        # new unit is told apart (a joint move with the node's own permutation is not a
        # declaration of these units)
        ctx.partition_units(ids, ids, "positions of the entries they combine")
    if varying:
        ctx.pin_along(ids, varying)
    ctx.set_layout(out, L.compress(ids, pos))


def _content(ctx: LoweringContext, constant: Value | torch.Tensor) -> tuple[Hashable, ...]:
    """A constant operand by value (shape and digest); one of unknown value (too large to
    materialise) by the op that reads it, so it is never taken for another."""
    known = constant if isinstance(constant, torch.Tensor) else constant.constant
    if known is None:
        assert ctx.op is not None  # set while an op is lowered
        return ("unknown", ctx.op.location)
    shape = list(known.shape)
    while shape and shape[0] == 1:  # [1, T, 1] and [T, 1] broadcast alike
        shape.pop(0)
    return (tuple(shape), L.content_digest(known))


def _merged_pos(ctx: LoweringContext, la: Layout | None, lb: Layout | None, ndim: int,
                shape: tuple[int, ...]) -> torch.Tensor | None:
    found: list[torch.Tensor] = []
    for l in (la, lb):
        if l is not None and l.pos is not None:
            pos = L.align(l, ndim).pos
            assert pos is not None  # align keeps pos
            found.append(pos.expand(shape))
    if len(found) == 2 and not torch.equal(found[0], found[1]):
        raise ctx.error("operands merge free positions differently; not supported")
    return found[0] if found else None


def _varying_neuron_axes(ctx: LoweringContext, constant: Value | torch.Tensor, other: Value | torch.Tensor,
                         ndim: int) -> list[int]:
    """The neuron axes of ``other`` along which ``constant`` (a constant activation, or a
    tensor literal from an ONNX ``Constant``) takes different values (a rotary cos/sin table
    along the dims of a head, a channel mask). Those neurons are told apart by the constant,
    so they get fixed positions. A constant whose value is unknown counts as varying."""
    layout = _layout_of(ctx, other)  # a tensor (a constant paired with a constant) has none
    if layout is None:
        return []
    shape = (1,) * (ndim - len(constant.shape)) + tuple(constant.shape)
    known = constant if isinstance(constant, torch.Tensor) else constant.constant
    if known is not None:
        known = known.reshape(shape)
    axes = []
    for axis in L.align(layout, ndim).neuron_axes():
        if shape[axis] == 1:
            continue
        if known is not None and L.same_along(known, axis):
            continue  # equal along the axis: no neuron is told apart
        axes.append(axis)
    return axes


def _free_axes_spelled_out(ctx: LoweringContext, a: Value | torch.Tensor, la: Layout | None,
                           b: Value | torch.Tensor, lb: Layout | None, ndim: int) -> list[int]:
    """Axes along which one operand holds data at several free positions (its layout is
    free there, its entries are not known to be equal copies) while the other operand has
    neurons: each new node reads that operand's entry at one position, which no
    permutation of nodes may move (``x + emb(ids)`` where ``x``'s neuron axis is its tokens
    and the embedding's its features), so the new nodes get fixed positions along the axis."""
    axes = []
    for value, layout, other in ((a, la, lb), (b, lb, la)):
        if layout is None or other is None or isinstance(value, torch.Tensor):
            continue
        shift = ndim - len(value.shape)
        shape = (1,) * shift + tuple(value.shape)
        copies = {k + shift for k in ctx.broadcast_axes(value)}  # ``norm.expand_as(h)``
        mine, theirs = L.align(layout, ndim).ids.shape, L.align(other, ndim).ids.shape
        axes += [k for k in range(ndim) if shape[k] > 1 and k not in copies and mine[k] == 1 and theirs[k] > 1]
    return sorted(set(axes))


_COMMUTING = ({"param_add", "param_sub_rhs"}, {"param_mul", "param_div_den"})
"""Parameter operations that may share nodes in any order: ``h + a - b``, ``h * g / s``."""


def _lower_param(ctx: LoweringContext, op: Op, x: Value, ref: ParamRef, param_is_lhs: bool) -> None:
    if op.kind not in PARAM_TYPES:
        raise ctx.error(f"{op.kind} with a parameter operand is not supported")
    if op.kind in ("add", "sub") and op.attrs.get("alpha", 1) != 1:
        raise ctx.error("add/sub with alpha != 1 and a parameter operand is not supported")
    layout = ctx.own(x)
    if layout is None:
        raise ctx.error(f"parameter {ref.name} combined with a value that carries no neurons")
    etype = PARAM_TYPES[op.kind][0 if param_is_lhs else 1]
    before = ctx.attached_param_types(layout.ids)
    if before and not any(before | {etype} <= group for group in _COMMUTING):
        # the nodes already carry a parameter operation this one does not commute with: new
        # nodes keep the order ((h + a) * w is not h * w + a)
        layout = ctx.fresh(x, layout, "activation")
    ctx.attach_param(layout, op.output.shape, ref, etype, "param_operand")
    ctx.set_layout(op.output, L.align(layout, len(op.output.shape)))


def _lower_scalar(ctx: LoweringContext, op: Op, x: Value, scalar: float, scalar_is_lhs: bool,
                  alpha: float = 1) -> None:
    etype = SCALAR_TYPES.get(op.kind, (None, None))[1 if scalar_is_lhs else 0]
    if etype is None:
        raise ctx.error(f"{op.kind} with a scalar operand is not supported")
    layout = ctx.layout(x)
    if layout is None:
        ctx.set_layout(op.output, None)
        return
    if scalar_is_lhs and op.kind in ("add", "sub") and alpha != 1:
        raise ctx.error("scalar - alpha * x with alpha != 1 is not supported")
    if _IDENTITY_SCALARS.get(etype) == float(scalar) and tuple(op.output.shape) == tuple(x.shape):
        # x + 0, x * 1 (an exporter folds them away): the identity, no nodes
        ctx.set_layout(op.output, L.align(layout, len(op.output.shape)))
        return
    fresh = ctx.fresh(x, L.align(layout, len(op.output.shape)), etype, weight=scalar)
    ctx.set_layout(op.output, fresh)


def lower_where(ctx: LoweringContext, op: Op) -> None:
    """``where(cond, x, other)`` / ``masked_fill``: inputs ``[x, cond, other]`` where ``x``
    is the activation. Its nodes are marked ``masked``. Where the condition or the fill
    varies along a neuron axis of ``x`` (a constant channel mask, a mask computed from the
    input), the masked nodes get fixed positions along that axis, since the mask tells them
    apart; a parameter fill that varies along a neuron axis is not supported."""
    x, rest = op.inputs[0], op.inputs[1:]
    layout = ctx.layout(x)
    if layout is None:
        ctx.set_layout(op.output, None)
        return
    ndim = len(op.output.shape)
    varying: set[int] = set()
    # the mask's and the fill's content, and the branch x is on, decide the function:
    # ``where(causal, x, -inf)`` and ``where(anti_causal, x, -inf)`` must not look alike
    sig = ("where", bool(op.attrs.get("x_if_false", False)),
           *(_operand_content(ctx, other) for other in rest))
    for other in rest:
        if isinstance(other, Value) and ctx.layout(other) is not None:
            raise ctx.error("where() between two activations is not supported")
        other = _constant_tensor(other)
        if isinstance(other, ParamRef):
            shape = (1,) * (ndim - len(other.shape)) + tuple(other.shape)
            if any(shape[a] > 1 for a in L.align(layout, ndim).neuron_axes()):
                raise ctx.error(f"where() with parameter {other.name} varying along a neuron axis "
                                "is not supported; write a plugin rule for this layer")
        elif isinstance(other, (Value, torch.Tensor)):
            varying.update(_varying_neuron_axes(ctx, other, x, ndim))
    derived = ctx.derive(x, "masked", sig=sig)
    assert derived is not None  # x has a layout (checked above)
    masked = L.align(derived, ndim)
    if varying:
        ctx.pin_along(masked.ids, sorted(varying))
    ctx.set_layout(op.output, masked)


def _operand_content(ctx: LoweringContext, operand: object) -> tuple[Hashable, ...]:
    """A mask or fill operand of ``where`` by value: a scalar as itself, a parameter by name
    (its values are edge values), a constant by shape and digest."""
    operand = _constant_tensor(operand)
    if isinstance(operand, ParamRef):
        return ("param", operand.name)
    if isinstance(operand, (Value, torch.Tensor)):
        return _content(ctx, operand)
    return ("scalar", repr(operand))


def _where(condition: Any, a: Any, b: Any) -> _Normalized:
    active = [t for t in (a, b) if isinstance(t, Value) and t.constant is None]
    if len(active) != 1:
        raise Unsupported("where() whose branches are not one activation and a constant")
    if active[0] is a:
        return [a, condition, b], {}
    return [b, condition, a], {"x_if_false": True}


def _masked_fill(x: Any, mask: Any, value: Any) -> _Normalized:
    """``masked_fill(mask, v)`` is ``where(mask, v, x)``: x is the false branch."""
    return [x, mask, value], {"x_if_false": True}


def _binary(a: Any, b: Any, alpha: float = 1, **kwargs: Any) -> _Normalized:
    return [a, b], {"alpha": alpha, **kwargs}


def _rsub(a: Any, b: Any, alpha: float = 1) -> _Normalized:
    """``rsub(a, b, alpha) = b - alpha * a``."""
    return [b, a], {"alpha": alpha}


def _div(a: Any, b: Any, rounding_mode: str | None = None) -> _Normalized:
    return [a, b], {"rounding_mode": rounding_mode}


def _onnx_binary(*operands: Any, **attrs: Any) -> _Normalized:
    if len(operands) != 2:
        raise Unsupported(f"{len(operands)} operands (only 2 are supported)")
    return list(operands), {"alpha": 1}


def _onnx_pow(base: Any, exponent: Any) -> _Normalized:
    """An exponent stored as a one-element initializer is a constant, not a weight."""
    if isinstance(exponent, ParamRef) and exponent.tensor.numel() == 1:
        exponent = float(exponent.tensor.reshape(-1)[0])
    return [base, exponent], {"alpha": 1}


@hookimpl
def gmn_register(registry: Registrar) -> None:
    for kind in ("add", "sub", "mul", "div", "maximum", "minimum", "pow"):
        registry.add_rule(kind, lower_binary, inputs=("a", "b"), elementwise=True)
    for kind in ("add", "sub", "mul", "div"):
        for overload in ("Tensor", "Scalar"):
            for suffix in ("", "_"):
                normalize = _div if kind == "div" else _binary
                registry.map_aten(f"aten.{kind}{suffix}.{overload}", kind, normalize)
    registry.map_aten("aten.rsub.Scalar", "sub", _rsub)
    registry.map_aten("aten.rsub.Tensor", "sub", _rsub)
    registry.map_aten("aten.maximum.default", "maximum", _binary)
    registry.map_aten("aten.minimum.default", "minimum", _binary)
    registry.map_aten("aten.pow.Tensor_Scalar", "pow", _binary)
    for op_type, kind in (("Add", "add"), ("Sub", "sub"), ("Mul", "mul"), ("Div", "div"),
                          ("Max", "maximum"), ("Min", "minimum")):
        registry.map_onnx(op_type, kind, _onnx_binary)
    registry.map_onnx("Pow", "pow", _onnx_pow)
    registry.add_rule("where", lower_where, inputs=("x", "condition", "other"), attributes=("x_if_false",),
                      elementwise=True)
    for target in ("aten.where.self", "aten.where.ScalarOther", "aten.where.ScalarSelf", "aten.where.Scalar"):
        registry.map_aten(target, "where", _where)
    for target in ("aten.masked_fill.Scalar", "aten.masked_fill.Tensor", "aten.masked_fill_.Scalar"):
        registry.map_aten(target, "where", _masked_fill)
    registry.map_onnx("Where", "where", _where)
