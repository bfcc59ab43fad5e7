"""Pooling and reductions.

Pooling (avg / max / adaptive / global) and reductions over free axes act on each neuron
separately, so they keep or copy the input's nodes and mark them ``avg_pool``, ``max_pool``
or ``sum_pool``. A reduction over *every* neuron axis (a mean over features, as in a
LayerNorm written out op by op) is invariant to permuting them: its result is one node fed by
every unit, its edges carrying a code of the reduction (a max and a sum differ).
Variance, standard deviation and log-sum-exp are supported over every neuron axis at once
(a LayerNorm written with ``var``). A reduction over some neuron axes (a sum or 2-norm per
group of units, per head) gives one node per group, fed by the group's nodes (squared first
for the 2-norm, which is marked ``sqrt``); symmetries declared across the groups are
withdrawn.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from gmn_compiler.rules import Layout, LoweringContext, Op, Registrar, Unsupported, hookimpl, layout as L

# what a normalizer returns: the kind's canonical inputs and attrs
_Normalized = tuple[list[Any], dict[str, Any]]


_MODE_ACTIVATION = {"avg": "avg_pool", "mean": "avg_pool", "max": "max_pool", "amax": "max_pool",
                    "min": "max_pool", "amin": "max_pool", "sum": "sum_pool"}


def lower_pool(ctx: LoweringContext, op: Op) -> None:
    """Spatial pooling over the trailing ``attrs['spatial_dims']`` axes; attrs ``mode``."""
    x = op.inputs[0]
    layout = ctx.layout(x)
    if layout is None:
        ctx.set_layout(op.outputs[0], None)
    else:
        ndim = len(x.shape)
        pooled = range(ndim - op.attrs["spatial_dims"], ndim)
        if any(a in layout.neuron_axes() for a in pooled):
            raise ctx.error("pooling over an axis that carries neurons is not supported")
        keys = ("window", "global", "adaptive", "auto_pad")
        sig = ("pool", op.attrs["mode"], op.attrs["spatial_dims"]) + tuple(
            (k, L.plain(tuple(sorted(op.attrs[k].items())) if isinstance(op.attrs[k], dict) else op.attrs[k]))
            for k in keys if k in op.attrs)
        default = ("pool", op.attrs["mode"], op.attrs["spatial_dims"], ("global", True))  # global pooling
        ctx.set_layout(op.outputs[0], ctx.derive(x, _MODE_ACTIVATION[op.attrs["mode"]], "pool", sig=sig,
                                                 default=default))
    for extra in op.outputs[1:]:  # indices of max_pool_with_indices
        ctx.set_layout(extra, None)


# reduction modes that are a global pooling when they cover the trailing axes
_GLOBAL_POOL_MODE = {"mean": "avg", "amax": "max", "max": "max"}


def lower_reduce(ctx: LoweringContext, op: Op) -> None:
    """attrs ``dims`` (None: all), ``keepdim``, ``mode`` (``norm``: the Euclidean norm)."""
    x = op.inputs[0]
    layout = ctx.layout(x)
    ndim = len(x.shape)
    dims = sorted({d % ndim for d in (op.attrs.get("dims") or range(ndim))}) if ndim else []
    keepdim = bool(op.attrs.get("keepdim", False))
    for extra in op.outputs[1:]:  # indices of max.dim
        ctx.set_layout(extra, None)
    if layout is None:
        ctx.set_layout(op.outputs[0], None)
        return
    neuron = set(layout.neuron_axes())
    reduced_neuron = neuron & set(dims)
    if reduced_neuron == neuron and neuron:
        ctx.set_layout(op.outputs[0], _invariant_node(ctx, op, layout, dims))
        return
    if op.attrs["mode"] in _INVARIANT_ONLY:
        raise ctx.error(f"{op.attrs['mode']} over some but not all neuron axes, or over axes without "
                        "neurons, is not supported; write a plugin rule for it")
    if reduced_neuron:
        if op.attrs["mode"] == "norm":  # sqrt(sum(x²)): squares, summed per remaining entry
            squares = ctx.fresh(x, L.align(layout, ndim), "activation", activation="square")
            norms = _combine(ctx, op, squares, dims, keepdim, mode="sum")
            ctx.set_activation(norms.nodes(), "sqrt")
            ctx.set_layout(op.outputs[0], norms)
            return
        ctx.set_layout(op.outputs[0], _combine(ctx, op, layout, dims, keepdim))
        return
    # over positions only: one value per unit, a function of that unit's entries (a norm over
    # positions is ConvNeXt-V2's global response normalisation)
    from_end = tuple(sorted(d - ndim for d in dims))
    sig: tuple[Any, ...] = ("reduce", op.attrs["mode"], from_end)
    activation = "sqrt" if op.attrs["mode"] == "norm" else _MODE_ACTIVATION[op.attrs["mode"]]
    global_mode = _GLOBAL_POOL_MODE.get(op.attrs["mode"])
    if global_mode is not None and from_end == tuple(range(-len(dims), 0)):
        # a mean or max over the trailing axes is global pooling over them (x.mean((2, 3)),
        # ONNX ReduceMean for adaptive_avg_pool2d(x, 1)): one function, lower_pool's graph
        sig = ("pool", global_mode, len(dims), ("global", True))
    out = ctx.derive(x, activation, "pool", sig=sig, default=sig if sig[0] == "pool" else None)
    assert out is not None  # x has a layout (checked above)
    if not keepdim:  # the reduced axes are free (size 1 in the id tensor): drop them
        kept = [i for i in range(ndim) if i not in dims]
        out = out.map(lambda t: t.reshape([t.shape[i] for i in kept]))
    ctx.set_layout(op.outputs[0], out)


def _invariant_node(ctx: LoweringContext, op: Op, layout: Layout, dims: list[int]) -> Layout:
    """A reduction over every neuron axis: invariant to permuting them, it gets one node, fed
    by every node it reduces through ``pool`` edges carrying a code of the reduction (mode,
    axes from the end), so a max and a sum of the same units stay apart. Broadcast back
    (``x - x.mean(-1, keepdim=True)``), that one node meets every unit alike."""
    ndim = len(op.inputs[0].shape)
    mode = op.attrs["mode"]
    nodes = layout.nodes()
    stat = ctx.add_nodes(1, "neuron", ctx.depth_of(nodes) + 1,
                                 _MODE_ACTIVATION.get(mode, "none"))
    sig = ("statistic", mode, tuple(d - ndim for d in dims), L.plain(op.attrs.get("correction")))
    ctx.add_edges((nodes.numel(),), nodes, stat.expand(nodes.numel()), "pool",
                          value=L.signature_code(sig))
    out_ndim = len(op.outputs[0].shape)
    return L.Layout(stat.view((1,) * out_ndim) if out_ndim else stat.view(()))


# statistics supported only over every neuron axis at once (then invariant, no neurons)
_INVARIANT_ONLY = ("var", "std", "logsumexp")

_MODE_EDGE = {"sum": "add", "mean": "add", "avg": "add", "amax": "max", "max": "max",
              "amin": "min", "min": "min"}


def _combine(ctx: LoweringContext, op: Op, layout: Layout, dims: list[int], keepdim: bool,
             mode: str | None = None) -> Layout:
    """A reduction over some neuron axes while others remain (``stack([u, v]).sum(0)``): like
    an n-ary residual add, one new node per remaining entry, fed by every node it reduces."""
    if layout.pos is not None:
        raise ctx.error("reducing an axis that merges free positions is not supported")
    ids = layout.ids
    ndim = ids.dim()
    kept = [a for a in range(ndim) if a not in dims]
    moved = ids.permute(*kept, *dims)
    rest_shape = moved.shape[:len(kept)]
    rows = moved.reshape(int(torch.tensor(rest_shape).prod()) if rest_shape else 1, -1)
    uniq, inverse = torch.unique(rows, dim=0, return_inverse=True)
    ctx.withdraw_symmetries_cut_by(uniq)
    count = rows.shape[1]
    mode = mode or op.attrs["mode"]
    weight = 1.0 / count if mode in ("mean", "avg") else 1.0
    new = ctx.add_nodes(uniq.shape[0], "neuron", ctx.depth_of(uniq.reshape(-1)) + 1)
    ctx.add_edges(tuple(uniq.shape), uniq, new.view(-1, 1), _MODE_EDGE[mode], value=weight)
    out = new[inverse].view(rest_shape)
    if keepdim:
        for d in sorted(dims):
            out = out.unsqueeze(d)
    return L.compress(out, None)


def _window(kernel: Any, stride: Any, padding: Any, dilation: Any, ceil_mode: bool | int,
            count_include_pad: bool | None, d: int) -> dict[str, dict[str, Any]]:
    """Pooling hyper-parameters in one form for both frontends: tuples per spatial axis,
    ``padding`` as ONNX's begin..., end... pads."""
    def per_axis(v: Any, default: int | tuple[int, ...]) -> tuple[int, ...]:
        v = default if v is None or (isinstance(v, (list, tuple)) and len(v) == 0) else v
        v = list(v) if isinstance(v, (list, tuple)) else [v]
        return tuple(int(a) for a in (v * d if len(v) == 1 else v))
    kernel = per_axis(kernel, 1)
    padding = per_axis(padding, 0)
    if len(padding) == d:
        padding = padding + padding
    return {"window": {"kernel": kernel, "stride": per_axis(stride, kernel), "padding": padding,
                       "dilation": per_axis(dilation, 1), "ceil_mode": bool(ceil_mode),
                       "count_include_pad": count_include_pad}}


def _fill(given: Sequence[Any], defaults: list[Any]) -> list[Any]:
    """Trailing positional arguments ``given``, the omitted ones taken from ``defaults``."""
    return list(given)[:len(defaults)] + defaults[len(given):]


def _pool(mode: str, spatial_dims: int) -> Callable[..., _Normalized]:
    def normalize(x: Any, kernel_size: Any, stride: Any = None, padding: Any = 0, *rest: Any,
                  **kwargs: Any) -> _Normalized:
        if mode == "max":  # max_pool(x, kernel, stride, padding, dilation, ceil_mode)
            dilation, ceil_mode = _fill(rest, [1, False])
            extra = _window(kernel_size, stride, padding, dilation, ceil_mode, None, spatial_dims)
        else:  # avg_pool(x, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override)
            ceil_mode, include, divisor = _fill(rest, [False, True, None])
            if divisor is not None:
                raise Unsupported("avg_pool with divisor_override")
            extra = _window(kernel_size, stride, padding, 1, ceil_mode, bool(include), spatial_dims)
        return [x], {"mode": mode, "spatial_dims": spatial_dims, **extra}
    return normalize


def _adaptive(mode: str, spatial_dims: int) -> Callable[..., _Normalized]:
    def normalize(x: Any, output_size: Any, *rest: Any, **kwargs: Any) -> _Normalized:
        size = tuple(int(s) for s in (output_size if isinstance(output_size, (list, tuple)) else [output_size]))
        extra = {"global": True} if all(s == 1 for s in size) else {"adaptive": size}
        return [x], {"mode": mode, "spatial_dims": spatial_dims, **extra}
    return normalize


def _dims(dim: int | Sequence[int] | None) -> list[int] | None:
    """A reduction's ``dim`` argument (an int, a sequence, or None for all) as a list."""
    return [dim] if isinstance(dim, int) else (list(dim) if dim is not None else None)


def _reduce(mode: str) -> Callable[..., _Normalized]:
    def normalize(x: Any, dims: int | Sequence[int] | None = None, keepdim: bool = False, *rest: Any,
                  **kwargs: Any) -> _Normalized:
        return [x], {"mode": mode, "dims": _dims(dims), "keepdim": keepdim or kwargs.get("keepdim", False)}
    return normalize


def _statistic(mode: str) -> Callable[..., _Normalized]:
    """``var`` / ``std`` (``dim`` with ``unbiased`` or ``correction``) and ``logsumexp``. A
    variance's ``correction`` (the divisor is ``n - correction``: 1 when unbiased, torch's
    default, 0 when biased) is an attribute: it goes into the statistic's signature."""
    def normalize(x: Any, dim: int | Sequence[int] | None = None, *rest: Any, keepdim: bool = False,
                  correction: float | None = None, unbiased: bool | None = None, **kwargs: Any) -> _Normalized:
        if rest and isinstance(rest[0], bool) and mode != "logsumexp":  # var.dim(x, dim, unbiased, keepdim)
            unbiased, rest = rest[0], rest[1:]
        if rest:
            keepdim = bool(rest[0])
        attrs: dict[str, Any] = {"mode": mode, "dims": _dims(dim), "keepdim": keepdim}
        if mode != "logsumexp":
            attrs["correction"] = float(correction if correction is not None
                                        else (1 if unbiased is None or unbiased else 0))
        return [x], attrs
    return normalize


def _vector_norm(x: Any, ord: float = 2, dim: int | Sequence[int] | None = None, keepdim: bool = False, *,
                 dtype: torch.dtype | None = None) -> _Normalized:
    """``torch.linalg.vector_norm`` (``F.normalize``, ``x.norm(dim=...)``): the 2-norm only."""
    if ord != 2:
        raise Unsupported(f"vector norm of order {ord} (only the 2-norm is supported)")
    return [x], {"mode": "norm", "dims": _dims(dim), "keepdim": keepdim}


def _onnx_pool(mode: str, global_pool: bool) -> Callable[..., _Normalized]:
    def normalize(x: Any, *rest: Any, **attrs: Any) -> _Normalized:
        d = len(x.shape) - 2
        out = {"mode": mode, "spatial_dims": d}
        if global_pool:
            return [x], {**out, "global": True}
        if attrs.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET"):
            out["auto_pad"] = str(attrs["auto_pad"])
        include = bool(attrs.get("count_include_pad", 0)) if mode == "avg" else None
        return [x], {**out, **_window(attrs.get("kernel_shape"), attrs.get("strides"), attrs.get("pads"),
                                      attrs.get("dilations"), attrs.get("ceil_mode", 0), include, d)}
    return normalize


def _onnx_reduce(mode: str) -> Callable[..., _Normalized]:
    def normalize(x: Any, axes: Any = None, keepdims: int = 1, noop_with_empty_axes: int = 0,
                  **attrs: Any) -> _Normalized:
        axes = attrs.get("axes", axes)
        if axes is not None:
            axes = [int(a) for a in torch.as_tensor(axes).reshape(-1).tolist()]
        if not axes and noop_with_empty_axes:
            raise Unsupported("Reduce with noop_with_empty_axes")
        return [x], {"mode": mode, "dims": axes or None, "keepdim": bool(keepdims)}
    return normalize


@hookimpl
def gmn_register(registry: Registrar) -> None:
    registry.add_rule("pool", lower_pool, inputs=("x",),
                      attributes=("mode", "spatial_dims", "global", "adaptive", "window", "auto_pad"))
    registry.add_rule("reduce", lower_reduce, inputs=("x",), attributes=("mode", "dims", "keepdim", "correction"))
    for d in (1, 2, 3):
        registry.map_aten(f"aten.avg_pool{d}d.default", "pool", _pool("avg", d))
        registry.map_aten(f"aten.max_pool{d}d.default", "pool", _pool("max", d))
        registry.map_aten(f"aten.max_pool{d}d_with_indices.default", "pool", _pool("max", d))
        registry.map_aten(f"aten.adaptive_avg_pool{d}d.default", "pool", _adaptive("avg", d))
        registry.map_aten(f"aten.adaptive_max_pool{d}d.default", "pool", _adaptive("max", d))
    registry.map_aten("aten._adaptive_avg_pool2d.default", "pool", _adaptive("avg", 2))
    registry.map_aten("aten.mean.dim", "reduce", _reduce("mean"))
    registry.map_aten("aten.mean.default", "reduce", _reduce("mean"))
    registry.map_aten("aten.sum.dim_IntList", "reduce", _reduce("sum"))
    registry.map_aten("aten.sum.default", "reduce", _reduce("sum"))
    registry.map_aten("aten.amax.default", "reduce", _reduce("amax"))
    registry.map_aten("aten.amin.default", "reduce", _reduce("amin"))
    registry.map_aten("aten.max.dim", "reduce", _reduce("max"))
    registry.map_aten("aten.linalg_vector_norm.default", "reduce", _vector_norm)
    for mode in ("var", "std"):
        for overload in ("dim", "correction"):
            registry.map_aten(f"aten.{mode}.{overload}", "reduce", _statistic(mode))
    registry.map_aten("aten.logsumexp.default", "reduce", _statistic("logsumexp"))
    registry.map_aten("aten.min.dim", "reduce", _reduce("min"))
    registry.map_onnx("GlobalAveragePool", "pool", _onnx_pool("avg", True))
    registry.map_onnx("GlobalMaxPool", "pool", _onnx_pool("max", True))
    registry.map_onnx("AveragePool", "pool", _onnx_pool("avg", False))
    registry.map_onnx("MaxPool", "pool", _onnx_pool("max", False))
    for op_type, mode in (("ReduceMean", "mean"), ("ReduceSum", "sum"), ("ReduceMax", "amax"),
                          ("ReduceMin", "amin"), ("ReduceL2", "norm")):
        registry.map_onnx(op_type, "reduce", _onnx_reduce(mode))
