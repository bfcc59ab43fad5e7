"""Elementwise activations and softmax.

An activation applies the same function to every entry, so it commutes with every
permutation of neurons: its output keeps its input's nodes, marked with the activation in the
node's ``activation`` column — unless the input is also consumed elsewhere or already carries
an activation, in which case fresh nodes are created (one-to-one ``activation`` edges), so
that two different values never share nodes.

Softmax (over any axis) is permutation-equivariant along that axis and handled the same way.
PReLU marks its nodes ``prelu`` and brings its learned slopes on ``param_mul`` edges.

Each function has one name whatever its spelling, and its hyper-parameters in its signature:
``clamp(0, None)`` is ``relu``, ``threshold(0, 0)`` is ``relu``, ``rrelu`` in eval mode is
``leaky_relu`` with the mean slope, softshrink and hardshrink are ONNX's ``Shrink`` with a bias
of ``lambd`` or 0, ONNX ``ThresholdedRelu(alpha)`` is ``threshold(alpha, 0)``.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

import torch

from gmn_compiler.rules import LoweringContext, Op, ParamRef, Registrar, Unsupported, Rule, hookimpl, layout as L

# what a normalizer returns: the kind's canonical inputs and attrs
_Normalized = tuple[list[Any], dict[str, Any]]


# ATen op name (without "aten." and overload) -> schema activation name
ACTIVATION_OPS: dict[str, str] = {
    "relu": "relu", "relu6": "relu6", "leaky_relu": "leaky_relu", "elu": "elu", "selu": "selu",
    "celu": "celu", "silu": "silu", "mish": "mish", "tanh": "tanh", "sigmoid": "sigmoid",
    "hardtanh": "hardtanh", "hardswish": "hardswish", "hardsigmoid": "hardsigmoid",
    "softplus": "softplus", "sin": "sin", "cos": "cos", "exp": "exp", "log": "log", "abs": "abs",
    "neg": "neg", "sqrt": "sqrt", "rsqrt": "rsqrt", "square": "square", "reciprocal": "reciprocal",
    "erf": "erf", "sign": "sign", "clamp": "clamp", "clamp_min": "clamp", "clamp_max": "clamp",
    "log_sigmoid": "logsigmoid", "softsign": "softsign", "tanhshrink": "tanhshrink",
    "expm1": "expm1", "log1p": "log1p", "floor": "floor", "ceil": "ceil", "round": "round",
    "threshold": "threshold",
}
# activations this plugin adds to the built-in vocabulary (schema.ACTIVATIONS is fixed: graph
# files list the built-ins first)
EXTRA_ACTIVATIONS = ("expm1", "log1p", "floor", "ceil", "round", "shrink", "threshold")
_OVERLOADS = ("default", "Tensor", "Scalar")

ONNX_ACTIVATIONS: dict[str, str] = {
    "Relu": "relu", "LeakyRelu": "leaky_relu", "Elu": "elu", "Selu": "selu", "Celu": "celu",
    "Sigmoid": "sigmoid", "Tanh": "tanh", "HardSigmoid": "hardsigmoid", "HardSwish": "hardswish",
    "Softplus": "softplus", "Softsign": "softsign", "Sin": "sin", "Cos": "cos", "Exp": "exp",
    "Log": "log", "Abs": "abs", "Neg": "neg", "Sqrt": "sqrt", "Reciprocal": "reciprocal",
    "Erf": "erf", "Sign": "sign", "Mish": "mish", "Clip": "clamp", "Gelu": "gelu",
    "Floor": "floor", "Ceil": "ceil", "Round": "round", "Shrink": "shrink",
}


def make_activation_rule(name: str) -> Rule:
    def lower_activation(ctx: LoweringContext, op: Op) -> None:
        activation = name
        if name == "gelu" and op.attrs.get("approximate", "none") == "tanh":
            activation = "gelu_tanh"
        if name == "hardtanh" and [float(a) for a in op.attrs.get("args", [])] == [0.0, 6.0]:
            activation = "relu6"  # F.relu6 exports as hardtanh(x, 0, 6)
        params = _activation_params(activation, op.attrs)
        # one name per function, whatever the spelling
        activation = _SAME_AS.get(activation, activation)
        activation, params = _NAMED.get((activation, params), (activation, params))
        sig = (activation,) + params if params else None  # slopes, bounds, betas
        default = (activation,) + tuple(L.plain(d) for _, _, d in _PARAMS.get(activation, ()))
        ctx.set_layout(op.output, ctx.derive(op.inputs[0], activation, sig=sig, default=default))
    lower_activation.__doc__ = f"Elementwise {name}: keeps or copies the input's nodes."
    return lower_activation


# the hyper-parameters of an activation, as (torch positional index, ONNX attribute, default)
_PARAMS: dict[str, tuple[tuple[int, str, float | None], ...]] = {
    "leaky_relu": ((0, "alpha", 0.01),), "elu": ((0, "alpha", 1.0),), "celu": ((0, "alpha", 1.0),),
    "softplus": ((0, "beta", 1.0), (1, "threshold", 20.0)),
    "hardtanh": ((0, "min", -1.0), (1, "max", 1.0)), "clamp": ((0, "min", None), (1, "max", None)),
    "threshold": ((0, "threshold", None), (1, "value", None)),
    "shrink": ((0, "lambd", 0.5), (1, "bias", 0.0)),
}


# activations that are another with the same parameters: hardtanh(a, b) is clamp(a, b)
_SAME_AS = {"hardtanh": "clamp"}
# parameters that make an activation a named one: (activation, parameters) -> (name, parameters)
# (an exporter writes relu6 and hardtanh as Clip; F.threshold(x, 0, 0) is relu)
_NAMED: dict[tuple[str, tuple[Hashable, ...]], tuple[str, tuple[Hashable, ...]]] = {
    ("clamp", (L.plain(0.0), None)): ("relu", ()), ("clamp", (L.plain(0.0), L.plain(6.0))): ("relu6", ()),
    ("clamp", (L.plain(-1.0), L.plain(1.0))): ("hardtanh", (L.plain(-1.0), L.plain(1.0))),
    ("threshold", (L.plain(0.0), L.plain(0.0))): ("relu", ())}


def _activation_params(activation: str, attrs: dict[str, Any]) -> tuple[Hashable, ...]:
    """The activation's hyper-parameters in one form for both frontends (torch passes them
    positionally in ``args``, ONNX as named attributes)."""
    args = attrs.get("args", [])
    out: list[Hashable] = []
    for index, name, default in _PARAMS.get(activation, ()):
        value = args[index] if index < len(args) else attrs.get(name, default)
        out.append(L.plain(value))
    return tuple(out)


def lower_prelu(ctx: LoweringContext, op: Op) -> None:
    """inputs ``[x, slope]``, the slope a parameter shaped to broadcast against ``x`` (one per
    channel, or one for all): the nodes are marked ``prelu`` and get the slopes on
    ``param_mul`` edges from one ``param_operand`` node, so a slope moves with its channel."""
    x, slope = op.inputs
    if not isinstance(slope, ParamRef):
        raise ctx.error("prelu needs a parameter as its slope")
    layout = ctx.own(x)
    if layout is None:
        raise ctx.error(f"prelu slope {slope.name} applied to a value that carries no neurons")
    ctx.set_activation(layout.nodes(), "prelu")
    ctx.attach_param(layout, tuple(op.output.shape), slope, "param_mul", "param_operand")
    ctx.set_layout(op.output, L.align(layout, len(op.output.shape)))


def lower_softmax(ctx: LoweringContext, op: Op) -> None:
    """inputs ``[x]``; attrs ``dim``, ``log``. The axis it normalises over (counted from the
    end) is part of its signature: over features and over tokens are different functions."""
    x = op.inputs[0]
    activation = "log_softmax" if op.attrs.get("log") else "softmax"
    axis = op.attrs.get("dim", -1) % len(x.shape) - len(x.shape) if len(x.shape) else 0
    ctx.set_layout(op.output, ctx.derive(x, activation, sig=(activation, axis), default=(activation, -1)))


def _unary(x: Any, *args: Any, **kwargs: Any) -> _Normalized:
    return [x], {"args": list(args), **kwargs}


def _gelu(x: Any, approximate: str = "none") -> _Normalized:
    return [x], {"approximate": approximate}


def _clamp_min(x: Any, bound: Any) -> _Normalized:
    return [x], {"min": bound}


def _clamp_max(x: Any, bound: Any) -> _Normalized:
    return [x], {"max": bound}


def _round(x: Any, decimals: int = 0) -> _Normalized:
    """round to ``decimals`` places: 0 only (exporters write other places as a multiplication,
    a round and a division, which the torch graph would not match)."""
    if decimals != 0:
        raise Unsupported(f"round to {decimals} decimals; write torch.round(x * 10**d) / 10**d")
    return [x], {}


def _softshrink(x: Any, lambd: float = 0.5) -> _Normalized:
    return [x], {"args": [lambd, lambd]}  # ONNX Shrink(lambd, bias=lambd)


def _hardshrink(x: Any, lambd: float = 0.5) -> _Normalized:
    return [x], {"args": [lambd, 0.0]}  # ONNX Shrink(lambd, bias=0)


def _rrelu(x: Any, lower: float = 1 / 8, upper: float = 1 / 3, training: bool = False, generator: Any = None,
           **kwargs: Any) -> _Normalized:
    """rrelu in eval mode is leaky_relu with the mean of its slope range; in training mode its
    slopes are random."""
    if training:
        raise Unsupported("rrelu in training mode (random slopes); compile the model in eval mode")
    return [x], {"args": [(lower + upper) / 2]}


def _onnx_thresholded_relu(x: Any, alpha: float = 1.0) -> _Normalized:
    return [x], {"args": [alpha, 0.0]}  # threshold(x, alpha, 0)


def _softmax(x: Any, dim: int, *rest: Any, **kwargs: Any) -> _Normalized:
    return [x], {"dim": dim, "log": False}


def _log_softmax(x: Any, dim: int, *rest: Any, **kwargs: Any) -> _Normalized:
    return [x], {"dim": dim, "log": True}


def _prelu(x: Any, weight: Any) -> _Normalized:
    """``weight`` has one slope per channel (axis 1, or axis 0 of a 1-D input) or one."""
    if isinstance(weight, ParamRef) and weight.tensor.numel() > 1 and len(x.shape) > 2:
        weight = weight.apply(lambda t: t.reshape(t.numel(), *([1] * (len(x.shape) - 2))))
    return [x, weight], {}


def _onnx_unary(x: Any, *rest: Any, **attrs: Any) -> _Normalized:
    return [x], dict(attrs)


def _bound(value: object) -> float | str | None:
    """A Clip bound given as an input: a number, a one-element initializer or constant."""
    if value is None or isinstance(value, (int, float)):
        return value
    tensor = getattr(value, "tensor", None)
    if tensor is None:
        tensor = getattr(value, "constant", None)
    if isinstance(tensor, torch.Tensor) and tensor.numel() == 1:
        return float(tensor)
    return "computed"


def _onnx_clip(x: Any, lo: object = None, hi: object = None, **attrs: Any) -> _Normalized:
    """Clip: bounds are inputs from opset 11 (attributes before); both reach the rule as
    ``min`` / ``max`` like torch's clamp."""
    lo, hi = _bound(lo), _bound(hi)
    attrs = {"min": attrs.get("min", lo), "max": attrs.get("max", hi)}
    if "computed" in attrs.values():
        raise Unsupported("Clip with bounds computed in the model")
    return [x], attrs


def _onnx_softmax(x: Any, axis: int = -1) -> _Normalized:
    return [x], {"dim": axis, "log": False}


def _onnx_log_softmax(x: Any, axis: int = -1) -> _Normalized:
    return [x], {"dim": axis, "log": True}


def _log_sigmoid_forward(x: Any) -> _Normalized:
    return [x], {}


@hookimpl
def gmn_register(registry: Registrar) -> None:
    for name in EXTRA_ACTIVATIONS:
        registry.add_activation(name)
    for activation in sorted(set(ACTIVATION_OPS.values()) | {"gelu", "shrink"}):
        # attributes stay open: ONNX activations pass their own (alpha, gamma...) through
        registry.add_rule(activation, make_activation_rule(activation), inputs=("x",), elementwise=True)
    normalizers: dict[str, Callable[..., _Normalized]] = {"gelu": _gelu, "clamp_min": _clamp_min,
                                                          "clamp_max": _clamp_max}
    for op_name, activation in sorted(ACTIVATION_OPS.items()) + [("gelu", "gelu")]:
        normalize = normalizers.get(op_name, _unary)
        for suffix in ("", "_"):
            for overload in _OVERLOADS:
                registry.map_aten(f"aten.{op_name}{suffix}.{overload}", activation, normalize)
    registry.map_aten("aten.log_sigmoid_forward.default", "logsigmoid", _log_sigmoid_forward)
    registry.map_aten("aten.round.decimals", "round", _round)
    registry.map_aten("aten.softshrink.default", "shrink", _softshrink)
    registry.map_aten("aten.hardshrink.default", "shrink", _hardshrink)
    registry.map_aten("aten.rrelu.default", "leaky_relu", _rrelu)
    registry.map_onnx("ThresholdedRelu", "threshold", _onnx_thresholded_relu)
    registry.add_rule("prelu", lower_prelu, inputs=("x", "weight"), attributes=(), elementwise=True)
    registry.map_aten("aten.prelu.default", "prelu", _prelu)
    registry.map_aten("aten._prelu_kernel.default", "prelu", _prelu)
    registry.map_onnx("PRelu", "prelu", lambda x, slope: ([x, slope], {}))
    # softmax over an axis commutes with permuting any axis: "elementwise" for the core
    registry.add_rule("softmax", lower_softmax, inputs=("x",), attributes=("dim", "log"), elementwise=True)
    for target in ("aten.softmax.int", "aten._softmax.default", "aten.special_softmax.int"):
        registry.map_aten(target, "softmax", _softmax)
    for target in ("aten.log_softmax.int", "aten._log_softmax.default"):
        registry.map_aten(target, "softmax", _log_softmax)
    for op_type, activation in ONNX_ACTIVATIONS.items():
        registry.map_onnx(op_type, activation, _onnx_clip if op_type == "Clip" else _onnx_unary)
    registry.map_onnx("Softmax", "softmax", _onnx_softmax)
    registry.map_onnx("LogSoftmax", "softmax", _onnx_log_softmax)
