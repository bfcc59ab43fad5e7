"""Resampling along spatial axes: ``F.interpolate`` / ``nn.Upsample`` (ATen ``upsample_*``) and
ONNX ``Resize`` / ``Upsample`` (nearest, linear, cubic).

Resampling mixes entries along free (spatial) axes only: every channel is resampled on its
own, with fixed weights. Its output therefore gets nodes of its own (``ctx.derive``), marked
with the mode (``resize_nearest`` / ``resize_linear`` / ``resize_cubic``), whose edges carry a
code of everything else that decides the function: how output positions map to input ones
(``coordinates``: ``asymmetric`` for torch's nearest, ``align_corners``, ``pytorch_half_pixel``
for torch's linear and cubic without aligned corners — the same as ``half_pixel`` unless an
output axis has one entry, and named so then —, ``half_pixel``...), the rounding of
``nearest``, the cubic coefficient, the output size and the scales when given (torch and ONNX
both use a given scale in the coordinate mapping instead of size ratios). Two resamplings that
differ in any of these compile to different graphs. Resampling an axis that carries neurons is
refused.
"""

from __future__ import annotations

from typing import Any

import torch

from gmn_compiler.rules import LoweringContext, Op, ParamRef, Registrar, Unsupported, Value, hookimpl, layout as L

_Normalized = tuple[list[Any], dict[str, Any]]
MODES = ("nearest", "linear", "cubic")
TORCH_CUBIC_A = -0.75


def lower_resize(ctx: LoweringContext, op: Op) -> None:
    """attrs ``mode``, ``spatial_dims`` (the trailing axes resampled), ``coordinates``,
    ``nearest`` (rounding, nearest mode only), ``cubic_a``, ``scales`` (None: sizes given),
    ``antialias``."""
    x = op.inputs[0]
    layout = ctx.layout(x)
    if layout is None:
        ctx.set_layout(op.output, None)
        return
    ndim = len(x.shape)
    spatial = range(ndim - op.attrs["spatial_dims"], ndim)
    aligned = L.align(layout, ndim)
    if any(a in aligned.neuron_axes() or (aligned.pos is not None and aligned.pos.shape[a] > 1) for a in spatial):
        raise ctx.error("resampling an axis that carries neurons (or merged positions) is not supported")
    sizes = tuple(op.output.shape[a] for a in spatial)
    coordinates = op.attrs["coordinates"]
    if coordinates == "pytorch_half_pixel" and min(sizes, default=2) > 1:
        coordinates = "half_pixel"  # the two differ only where an output axis has one entry
    sig = ("resize", op.attrs["mode"], coordinates, op.attrs.get("nearest"), L.plain(op.attrs.get("cubic_a")), sizes,
           L.plain(op.attrs.get("scales")), bool(op.attrs.get("antialias", False)))
    ctx.set_layout(op.output, ctx.derive(x, f"resize_{op.attrs['mode']}", "pool", sig=sig))


# ------------------------------------------------------------------ ATen signatures
def _scales(values: Any, spatial_dims: int) -> tuple[float, ...] | None:
    if values is None:
        return None
    found = tuple(float(v) for v in (values if isinstance(values, (list, tuple)) else [values]))
    return found * spatial_dims if len(found) == 1 else found


def _torch_nearest(spatial_dims: int, exact: bool) -> Any:
    def normalize(x: Any, output_size: Any = None, scale_factors: Any = None) -> _Normalized:
        coordinates, nearest = ("half_pixel", "round_prefer_ceil") if exact else ("asymmetric", "floor")
        return [x], {"mode": "nearest", "spatial_dims": spatial_dims, "coordinates": coordinates,
                     "nearest": nearest, "scales": _scales(scale_factors, spatial_dims)}
    return normalize


def _torch_interpolating(mode: str, spatial_dims: int) -> Any:
    def normalize(x: Any, output_size: Any = None, align_corners: bool = False, scale_factors: Any = None,
                  *rest: Any) -> _Normalized:
        attrs: dict[str, Any] = {"mode": mode, "spatial_dims": spatial_dims,
                                 "coordinates": "align_corners" if align_corners else "pytorch_half_pixel",
                                 "scales": None if align_corners else _scales(scale_factors, spatial_dims)}
        if mode == "cubic":
            attrs["cubic_a"] = TORCH_CUBIC_A
        return [x], attrs
    return normalize


# ------------------------------------------------------------------ ONNX
def _numbers(value: Any) -> list[float] | None:
    """A constant operand's entries (None when absent or empty; Unsupported when computed)."""
    if value is None:
        return None
    if isinstance(value, Value):
        if value.constant is None:
            raise Unsupported("Resize with scales or sizes computed from activations")
        value = value.constant
    tensor = value.tensor if isinstance(value, ParamRef) else torch.as_tensor(value)
    return tensor.reshape(-1).tolist() if tensor.numel() else None


def _onnx_resize(x: Any, roi: Any = None, scales: Any = None, sizes: Any = None, *, mode: str = "nearest",
                 coordinate_transformation_mode: str = "half_pixel", nearest_mode: str = "round_prefer_floor",
                 cubic_coeff_a: float = -0.75, exclude_outside: int = 0, antialias: int = 0,
                 axes: list[int] | None = None, **rest: Any) -> _Normalized:
    ndim = len(x.shape)
    axes = [a % ndim for a in axes] if axes else list(range(ndim))
    given = _numbers(scales)
    found = dict(zip(axes, given)) if given else {}
    out_sizes = _numbers(sizes)
    changed = {a for a in axes if (found.get(a, 1.0) != 1.0) or (out_sizes and out_sizes[axes.index(a)] != x.shape[a])}
    if changed & {0, 1}:
        raise Unsupported("Resize of the batch or channel axis")
    if mode not in MODES or coordinate_transformation_mode == "tf_crop_and_resize" or exclude_outside:
        raise Unsupported(f"Resize with mode {mode!r}, {coordinate_transformation_mode!r} coordinates "
                          f"or exclude_outside={exclude_outside}")
    spatial_dims = ndim - 2
    attrs: dict[str, Any] = {"mode": mode, "spatial_dims": spatial_dims, "coordinates": coordinate_transformation_mode,
                             "scales": tuple(found.get(a, 1.0) for a in range(2, ndim)) if found else None,
                             "antialias": bool(antialias)}
    if mode == "nearest":
        attrs["nearest"] = nearest_mode
    if mode == "cubic":
        attrs["cubic_a"] = float(cubic_coeff_a)
    if coordinate_transformation_mode == "align_corners":
        attrs["scales"] = None  # the corners decide the mapping, not the scale
    return [x], attrs


def _onnx_upsample(x: Any, scales: Any = None, *, mode: str = "nearest", **rest: Any) -> _Normalized:
    """``Upsample`` (opsets 7-9): asymmetric coordinates, nearest rounds down."""
    return _onnx_resize(x, None, scales, None, mode=mode, coordinate_transformation_mode="asymmetric",
                        nearest_mode="floor")


@hookimpl
def gmn_register(registry: Registrar) -> None:
    for mode in MODES:
        registry.add_activation(f"resize_{mode}")
    registry.add_rule("resize", lower_resize, inputs=("x",),
                      attributes=("mode", "spatial_dims", "coordinates", "nearest", "cubic_a", "scales", "antialias"))
    for d, name in ((1, "linear1d"), (2, "bilinear2d"), (3, "trilinear3d")):
        registry.map_aten(f"aten.upsample_nearest{d}d.vec", "resize", _torch_nearest(d, exact=False))
        registry.map_aten(f"aten._upsample_nearest_exact{d}d.vec", "resize", _torch_nearest(d, exact=True))
        registry.map_aten(f"aten.upsample_{name}.vec", "resize", _torch_interpolating("linear", d))
    registry.map_aten("aten.upsample_bicubic2d.vec", "resize", _torch_interpolating("cubic", 2))
    registry.map_onnx("Resize", "resize", _onnx_resize)
    registry.map_onnx("Upsample", "resize", _onnx_upsample)
