"""Normalisation layers: batch norm, layer norm, group norm, instance norm.

- Batch norm (eval mode: a per-channel affine map) attaches its weight, bias, running mean
  and running variance to the channel nodes, each through one auxiliary node per layer.
- Layer norm and instance norm mark the nodes with the normalisation (it is a nonlinearity
  that mixes entries) and attach weight and bias; a weight over several axes (C, H, W)
  records its free position in the ``spatial`` column.
- Group norm adds one ``group`` node per group with a membership edge to each of its
  channels, so only within-group and whole-group permutations remain automorphisms.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

from gmn_compiler.rules import Layout, LoweringContext, Op, ParamRef, Registrar, Unsupported, hookimpl, layout as L

# what a normalizer returns: the kind's canonical inputs and attrs
_Normalized = tuple[list[Any], dict[str, Any]]



def _set_main_output(ctx: LoweringContext, op: Op, layout: Layout) -> None:
    ctx.set_layout(op.outputs[0], layout)
    for extra in op.outputs[1:]:  # saved statistics of native_* variants
        ctx.set_layout(extra, None)


def lower_batch_norm(ctx: LoweringContext, op: Op) -> None:
    """inputs ``[x, weight, bias, running_mean, running_var]`` (any may be None)."""
    x = op.inputs[0]
    weight, bias, mean, var = (list(op.inputs[1:5]) + [None] * 4)[:4]
    layout = ctx.own(x, sig=_eps_signature(op, "batch_norm"))
    if layout is None:
        raise ctx.error("batch norm input carries no neurons")
    if mean is None or var is None:
        raise ctx.error("batch norm without running statistics normalises with batch "
                        "statistics; compile the model in eval mode with track_running_stats=True")
    ctx.attach_per_channel(layout, x.shape, 1 if len(x.shape) > 1 else 0, [
        (weight, "bn_weight", "norm_weight"), (bias, "bn_bias", "norm_bias"),
        (mean, "bn_mean", "running_mean"), (var, "bn_var", "running_var")])
    _set_main_output(ctx, op, layout)


def lower_instance_norm(ctx: LoweringContext, op: Op) -> None:
    """inputs ``[x, weight, bias, running_mean, running_var]``; attrs ``use_input_stats``."""
    x = op.inputs[0]
    weight, bias, mean, var = (list(op.inputs[1:5]) + [None] * 4)[:4]
    found = ctx.layout(x)
    if found is not None and any(a >= 2 for a in L.align(found, len(x.shape)).neuron_axes()):
        # the statistics would mix units that the nodes do not show mixed
        raise ctx.error("instance norm over an axis that carries neurons (a group norm written "
                        "as reshape + instance norm that the compiler did not recognise) is not supported")
    layout = ctx.derive(x, "instance_norm", sig=_eps_signature(op, "instance_norm"))
    if layout is None:
        raise ctx.error("instance norm input carries no neurons")
    if op.attrs.get("use_input_stats", True):
        mean = var = None  # running statistics are not used by the function
    ctx.attach_per_channel(layout, x.shape, 1, [
        (weight, "in_weight", "norm_weight"), (bias, "in_bias", "norm_bias"),
        (mean, "in_mean", "running_mean"), (var, "in_var", "running_var")])
    _set_main_output(ctx, op, layout)


def _eps_signature(op: Op, kind: str) -> tuple[str, Hashable] | None:
    """A batch / group / instance norm's eps when it is not the usual 1e-5 (then the graph
    records it; the usual one leaves the graph as it always was)."""
    eps = L.plain(op.attrs.get("eps", op.attrs.get("epsilon", 1e-5)))
    return None if eps in (None, L.plain(1e-5)) else (kind, eps)


def _norm_signature(ctx: LoweringContext, op: Op, kind: str) -> tuple[str, int, tuple[bool, ...], Hashable]:
    """What decides a layer / RMS norm besides its parameters: how many trailing axes it
    normalises, which of them carry neurons (features vs tokens), and eps."""
    x = op.inputs[0]
    k = len(op.attrs.get("normalized_shape") or [x.shape[-1]])
    layout = ctx.layout(x)
    neuron = tuple(bool(layout is not None and L.align(layout, len(x.shape)).ids.shape[a] > 1)
                   for a in range(len(x.shape) - k, len(x.shape)))
    return (kind, k, neuron, L.plain(op.attrs.get("eps")))


def lower_layer_norm(ctx: LoweringContext, op: Op) -> None:
    """inputs ``[x, weight | None, bias | None]``; attrs ``normalized_shape``."""
    x, weight, bias = (list(op.inputs) + [None] * 3)[:3]
    layout = ctx.derive(x, "layer_norm", sig=_norm_signature(ctx, op, "layer_norm"),
                        default=("layer_norm", 1, (True,), L.plain(1e-5)))
    if layout is None:
        raise ctx.error("layer norm input carries no neurons")
    for ref, etype, role in ((weight, "ln_weight", "norm_weight"), (bias, "ln_bias", "norm_bias")):
        if ref is not None:
            ctx.attach_param(layout, x.shape, ref, etype, role)
    _set_main_output(ctx, op, layout)


def lower_rms_norm(ctx: LoweringContext, op: Op) -> None:
    """inputs ``[x, weight | None]``; attrs ``normalized_shape``."""
    x, weight = (list(op.inputs) + [None, None])[:2]
    layout = ctx.derive(x, "rms_norm", sig=_norm_signature(ctx, op, "rms_norm"),
                        default=("rms_norm", 1, (True,), None))
    if layout is None:
        raise ctx.error("RMS norm input carries no neurons")
    if weight is not None:
        ctx.attach_param(layout, x.shape, weight, "rms_weight", "norm_weight")
    _set_main_output(ctx, op, layout)


def lower_group_norm(ctx: LoweringContext, op: Op) -> None:
    """inputs ``[x, weight | None, bias | None]``; attrs ``num_groups``."""
    x, weight, bias = (list(op.inputs) + [None] * 3)[:3]
    groups = int(op.attrs["num_groups"])
    layout = ctx.derive(x, "group_norm", sig=_eps_signature(op, "group_norm"))
    if layout is None:
        raise ctx.error("group norm input carries no neurons")
    try:
        channels, pos = L.axis_entries(layout, x.shape, 1)
    except ValueError as exc:
        raise ctx.error(f"group norm input {x}: {exc}") from None
    if pos is not None:
        raise ctx.error("group norm over channels that merge free positions is not supported")
    size = channels.numel() // groups
    ctx.refine_symmetry(channels, groups, f"group norm at {op.location}", permute_groups=True)
    group_ids = ctx.add_nodes(groups, "group", ctx.depth_of(channels))
    ctx.add_edges((groups, size), group_ids.view(groups, 1), channels.view(groups, size),
                          "gn_member")
    ctx.attach_per_channel(layout, x.shape, 1, [(weight, "gn_weight", "norm_weight"),
                                          (bias, "gn_bias", "norm_bias")])
    _set_main_output(ctx, op, layout)


# ------------------------------------------------------------------ ATen signatures
def _batch_norm(x: Any, weight: Any, bias: Any, running_mean: Any, running_var: Any, training: bool = False,
                momentum: float = 0.1, eps: float = 1e-5, cudnn_enabled: bool = False) -> _Normalized:
    return [x, weight, bias, running_mean, running_var], {"eps": eps, "training": training}


def _native_bn_no_training(x: Any, weight: Any, bias: Any, running_mean: Any, running_var: Any, momentum: float,
                           eps: float) -> _Normalized:
    return [x, weight, bias, running_mean, running_var], {"eps": eps, "training": False}


def _instance_norm(x: Any, weight: Any, bias: Any, running_mean: Any, running_var: Any, use_input_stats: bool = True,
                   momentum: float = 0.1, eps: float = 1e-5, cudnn_enabled: bool = False) -> _Normalized:
    return [x, weight, bias, running_mean, running_var], {"eps": eps,
                                                          "use_input_stats": use_input_stats}


def _layer_norm(x: Any, normalized_shape: Sequence[int], weight: Any = None, bias: Any = None, eps: float = 1e-5,
                cudnn_enable: bool = True) -> _Normalized:
    return [x, weight, bias], {"normalized_shape": list(normalized_shape), "eps": eps}


def _native_layer_norm(x: Any, normalized_shape: Sequence[int], weight: Any, bias: Any, eps: float) -> _Normalized:
    return [x, weight, bias], {"normalized_shape": list(normalized_shape), "eps": eps}


def _group_norm(x: Any, num_groups: int, weight: Any = None, bias: Any = None, eps: float = 1e-5,
                cudnn_enabled: bool = True) -> _Normalized:
    return [x, weight, bias], {"num_groups": num_groups, "eps": eps}


def _rms_norm(x: Any, normalized_shape: Sequence[int], weight: Any = None, eps: float | None = None) -> _Normalized:
    return [x, weight], {"normalized_shape": list(normalized_shape), "eps": eps}


def _onnx_rms_norm(x: Any, scale: Any, axis: int = -1, epsilon: float = 1e-5, stash_type: int = 1) -> _Normalized:
    return [x, _identity_constant(scale, 1.0)], {"normalized_shape": list(x.shape[axis:]), "eps": epsilon}


def _native_group_norm(x: Any, weight: Any, bias: Any, n: int, c: int, hxw: int, group: int,
                       eps: float) -> _Normalized:
    return [x, weight, bias], {"num_groups": group, "eps": eps}


def _onnx_batch_norm(x: Any, scale: Any, bias: Any, mean: Any, var: Any, epsilon: float = 1e-5, momentum: float = 0.9,
                     training_mode: int = 0) -> _Normalized:
    if training_mode:
        raise Unsupported("BatchNormalization in training mode")
    attrs: dict[str, Any] = {"eps": epsilon, "training": False}
    return [x, _identity_constant(scale, 1.0), _identity_constant(bias, 0.0), mean, var], attrs


def _identity_constant(ref: object, fill: float) -> object:
    """None for an exporter's constant scale of ones or bias of zeros (``F.layer_norm``
    without an affine exports them as ``Constant`` nodes): torch has no such operand."""
    if isinstance(ref, ParamRef) and ref.kind == "constant" and bool((ref.tensor == fill).all()):
        return None
    if isinstance(ref, (int, float)) and not isinstance(ref, bool) and float(ref) == fill:
        return None  # a one-element constant, already a number
    return ref


def _onnx_layer_norm(x: Any, scale: Any, bias: Any = None, axis: int = -1, epsilon: float = 1e-5,
                     stash_type: int = 1) -> _Normalized:
    return ([x, _identity_constant(scale, 1.0), _identity_constant(bias, 0.0)],
            {"normalized_shape": list(x.shape[axis:]), "eps": epsilon})


def _onnx_group_norm(x: Any, scale: Any, bias: Any, num_groups: int, epsilon: float = 1e-5,
                     stash_type: int = 1) -> _Normalized:
    channels = x.shape[1]
    if isinstance(scale, ParamRef) and scale.tensor.numel() == num_groups != channels:
        # opset 18: one scale/bias per group, broadcast to the group's channels
        per = channels // num_groups
        scale = scale.apply(lambda t: t.repeat_interleave(per))
        bias = bias.apply(lambda t: t.repeat_interleave(per)) if isinstance(bias, ParamRef) else bias
    return [x, scale, bias], {"num_groups": num_groups, "eps": epsilon}


def _onnx_instance_norm(x: Any, scale: Any, bias: Any, epsilon: float = 1e-5) -> _Normalized:
    return ([x, _identity_constant(scale, 1.0), _identity_constant(bias, 0.0), None, None],
            {"eps": epsilon, "use_input_stats": True})


@hookimpl
def gmn_register(registry: Registrar) -> None:
    statistics = ("x", "weight", "bias", "running_mean", "running_var")
    registry.add_rule("batch_norm", lower_batch_norm, inputs=statistics, attributes=("eps", "training"), input_axis=1)
    registry.add_rule("instance_norm", lower_instance_norm, inputs=statistics, attributes=("eps", "use_input_stats"),
                      input_axis=1)
    registry.add_rule("layer_norm", lower_layer_norm, inputs=("x", "weight", "bias"),
                      attributes=("normalized_shape", "eps"), input_axis=-1)
    registry.add_rule("group_norm", lower_group_norm, inputs=("x", "weight", "bias"), attributes=("num_groups", "eps"),
                      input_axis=1)
    registry.add_rule("rms_norm", lower_rms_norm, inputs=("x", "weight"), attributes=("normalized_shape", "eps"),
                      input_axis=-1)
    registry.map_aten("aten.rms_norm.default", "rms_norm", _rms_norm)
    registry.map_onnx("RMSNormalization", "rms_norm", _onnx_rms_norm)
    registry.map_aten("aten.batch_norm.default", "batch_norm", _batch_norm)
    registry.map_aten("aten._native_batch_norm_legit_no_training.default", "batch_norm",
                      _native_bn_no_training)
    registry.map_aten("aten.instance_norm.default", "instance_norm", _instance_norm)
    registry.map_aten("aten.layer_norm.default", "layer_norm", _layer_norm)
    registry.map_aten("aten.native_layer_norm.default", "layer_norm", _native_layer_norm)
    registry.map_aten("aten.group_norm.default", "group_norm", _group_norm)
    registry.map_aten("aten.native_group_norm.default", "group_norm", _native_group_norm)
    registry.map_onnx("BatchNormalization", "batch_norm", _onnx_batch_norm)
    registry.map_onnx("LayerNormalization", "layer_norm", _onnx_layer_norm)
    registry.map_onnx("GroupNormalization", "group_norm", _onnx_group_norm)
    registry.map_onnx("InstanceNormalization", "instance_norm", _onnx_instance_norm)
