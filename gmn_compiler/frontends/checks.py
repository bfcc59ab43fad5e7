"""Checks of what the user hands the compiler, run before any frontend does real work.
Pure Python (no torch/onnx import), so the CLI can refuse a bad path without loading them.

A model path must be a readable, non-empty file ending in ``.pt2`` or ``.onnx``
(:func:`model_file_kind`).

``input_neuron_axes`` (``{input_name: axis or None}``) and ``input_shapes``
(``{input_name: shape}``, ONNX only) name model inputs; a name the model does not have, an
axis out of range, or a shape of the wrong rank is a :class:`CompileError` of one line that
names the bad key and the model's actual inputs with their ranks.
"""

from __future__ import annotations

import math
import operator
import os
from typing import Any, Mapping

from ..errors import CompileError

MAX_INPUT_ELEMENTS = 1 << 31
"""Most elements all model inputs may have together: the ONNX frontend allocates random
inputs of the declared (or given) shapes, so absurd sizes are refused before that."""


MODEL_SUFFIXES = {".pt2": "pt2", ".onnx": "onnx"}


def model_file_kind(path: str | os.PathLike) -> str:
    """``"pt2"`` or ``"onnx"`` for a model file that exists, is a regular readable file, is
    not empty and has one of those extensions (any case); else a one-line CompileError
    naming the path and what is wrong with it."""
    path = os.fspath(path)
    if not os.path.lexists(path):
        raise CompileError(f"{path}: no such file")
    if os.path.isdir(path):
        raise CompileError(f"{path}: is a directory, not a model file; give a .pt2 or .onnx file")
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in MODEL_SUFFIXES:
        what = f"extension {suffix!r}" if suffix else "no extension"
        raise CompileError(f"{path}: unknown model file type ({what}); expected .pt2 "
                           "(torch.export.save) or .onnx")
    try:
        with open(path, "rb") as handle:
            empty = not handle.read(1)
    except OSError as exc:
        raise CompileError(f"{path}: cannot read the file ({exc.strerror or type(exc).__name__})") from None
    if empty:
        raise CompileError(f"{path}: the file is empty, not a {suffix} model")
    return MODEL_SUFFIXES[suffix]


def describe_inputs(ranks: Mapping[str, int | None]) -> str:
    """``"x (rank 4), mask (rank 2)"``; an unknown rank reads ``rank ?``."""
    if not ranks:
        return "(none)"
    return ", ".join(f"{name} (rank {'?' if rank is None else rank})" for name, rank in ranks.items())


def _check_mapping(option: str, given: Any, ranks: Mapping[str, int | None], what: str) -> dict:
    """``given`` as a dict whose keys are all input names; CompileError naming the unknown keys."""
    if given is None:
        return {}
    if not isinstance(given, Mapping):
        raise CompileError(f"{option} must be a dict {{input_name: {what}}}, not {type(given).__name__}")
    unknown = [key for key in given if key not in ranks]
    if unknown:
        names = ", ".join(repr(k) for k in unknown)
        verb = "which is not an input" if len(unknown) == 1 else "which are not inputs"
        raise CompileError(f"{option} names {names}, {verb} of the model; its inputs are: "
                           f"{describe_inputs(ranks)}")
    return dict(given)


def _as_int(value: Any) -> int | None:
    """``value`` as an int (numpy integers too), or ``None`` if it is no integer (or a bool)."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def check_input_axes(axes: Mapping[str, int | None] | None,
                     ranks: Mapping[str, int | None]) -> dict[str, int | None]:
    """``axes`` checked against the model's inputs (``ranks``: name -> rank, ``None`` when
    unknown), with negative axes normalised to ``0..rank-1``. Contract: every key is an
    input name, every value ``None`` or an int in ``-rank..rank-1`` (not checked where the
    rank is unknown); otherwise CompileError."""
    checked = _check_mapping("input_neuron_axes", axes, ranks, "axis or None")
    for name, axis in checked.items():
        if axis is None:
            continue
        axis = _as_int(axis)
        if axis is None:
            raise CompileError(f"input_neuron_axes[{name!r}] must be an int axis or None, not "
                               f"{type(checked[name]).__name__} {checked[name]!r}")
        rank = ranks[name]
        if rank is None:
            continue
        if not -rank <= axis < rank:
            allowed = f"axes {-rank}..{rank - 1}" if rank else "no axes"
            raise CompileError(f"input_neuron_axes[{name!r}] = {axis} is out of range for input "
                               f"{name} of rank {rank} ({allowed}, or None for no neurons); the "
                               f"inputs are: {describe_inputs(ranks)}")
        checked[name] = axis % rank
    return checked


def check_input_shapes(shapes: Mapping[str, Any] | None,
                       ranks: Mapping[str, int | None]) -> dict[str, tuple[int, ...]]:
    """``shapes`` checked against the model's inputs: every key an input name, every shape a
    sequence of positive ints of the input's rank (any rank where it is unknown). Returns
    the shapes as tuples; CompileError otherwise."""
    checked = _check_mapping("input_shapes", shapes, ranks, "shape")
    for name, shape in checked.items():
        if isinstance(shape, (str, bytes)) or not hasattr(shape, "__iter__"):
            raise CompileError(f"input_shapes[{name!r}] must be a tuple of sizes, not "
                               f"{type(shape).__name__} {shape!r}")
        sizes = tuple(_as_int(s) for s in shape)
        if not all(s is not None and s > 0 for s in sizes):
            raise CompileError(f"input_shapes[{name!r}] = {tuple(shape)}: sizes must be positive integers")
        rank = ranks[name]
        if rank is not None and len(sizes) != rank:
            raise CompileError(f"input_shapes[{name!r}] = {sizes} has rank {len(sizes)}, but input "
                               f"{name} has rank {rank}; the inputs are: {describe_inputs(ranks)}")
        checked[name] = sizes
    return checked


def format_count(n: int) -> str:
    """``2^40`` for a power of two from 1024 up, else the number (with ``~2^k`` when large)."""
    if n >= 1024 and n & (n - 1) == 0:
        return f"2^{n.bit_length() - 1}"
    if n >= 1 << 20:
        return f"{n} (~2^{math.log2(n):.1f})"
    return str(n)


def check_input_sizes(shapes: Mapping[str, tuple[int, ...]], limit: int = MAX_INPUT_ELEMENTS,
                      hint: str = "give smaller input_shapes") -> None:
    """Refuse inputs with more than ``limit`` elements in total, before anything is allocated.
    The message names the largest input (or, if none is over the limit alone, the total)."""
    counts = {name: math.prod(shape) for name, shape in shapes.items()}
    total = sum(counts.values())
    if total <= limit:
        return
    name, largest = max(counts.items(), key=lambda kv: kv[1])
    what = (f"input {name} of shape {tuple(shapes[name])} has {format_count(largest)} elements"
            if largest > limit else
            f"the inputs have {format_count(total)} elements together")
    raise CompileError(f"{what} (limit {format_count(limit)} over all inputs); {hint}")
