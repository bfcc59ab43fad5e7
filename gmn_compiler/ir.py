"""The intermediate representation shared by all frontends.

An :class:`IRGraph` is a list of :class:`Op` in topological order. Operands are
:class:`Value` (an activation), :class:`ParamRef` (a parameter, buffer or constant, possibly
seen through a layout transform), Python scalars, ``None`` or lists of those. Rules see only
these objects, never fx nodes or ONNX protos.
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from .offsets import Affine, Offsets, identity, offsets_tensor, view_through


@dataclass(eq=False)
class Value:
    """An activation tensor flowing between ops."""

    id: int
    shape: tuple[int, ...]
    dtype: torch.dtype = torch.float32
    name: str = ""
    constant: torch.Tensor | None = None  # its value, when computed from constants only

    def __repr__(self) -> str:
        return f"Value({self.name or self.id}, {list(self.shape)})"


@dataclass(eq=False)
class ParamRef:
    """A parameter, buffer or constant as an op sees it.

    ``tensor`` is the view the op consumes; ``offsets`` gives, for each of its entries, the
    flat offset in the source tensor ``name``: ``None`` means the identity view (``tensor``
    *is* the source tensor), an :class:`~gmn_compiler.offsets.Affine` a layout view, else a
    long tensor shaped like ``tensor``. Layout transforms (transpose, slice, reshape) applied
    to a parameter in the model are applied to both (:meth:`apply`, :meth:`through`), so rules
    emit the right provenance.
    """

    name: str
    tensor: torch.Tensor
    offsets: Offsets = None
    kind: str = "parameter"  # "parameter" | "buffer" | "constant"
    # Elementwise functions the model applies to the parameter before using it (``1 + w``,
    # ``-exp(a_log)``), outermost last, each ``(aten name, scalar operands)``: ``tensor`` stays
    # the stored values (what edges carry); the rule that attaches the parameter records these.
    transform: tuple = ()
    # Where the model keeps the (transformed) value, shaped like ``tensor``: ``where(mask, w,
    # c)`` on a constant mask (T5's causal position bias) uses ``c`` elsewhere, recorded as the
    # last ``transform`` step. None: every entry is used. Views apply to it as to the values.
    mask: torch.Tensor | None = None
    # ``(g, dim)`` when the model uses ``v * g / ||v||`` (weight normalisation, the norm over
    # every axis but ``dim``; ``dim=-1``: over all): this reference is ``v``, ``g`` another.
    # Only kinds declared ``weight_norm=True`` take it (they attach ``g``).
    weight_norm: tuple | None = None
    # A constant the model adds to the (transformed) value, shaped like ``tensor`` (HF Swin's
    # relative position bias plus its shifted windows' mask), recorded as a ``transform`` step
    # too. None: nothing added. Views apply to it as to the values.
    offset: torch.Tensor | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.tensor.shape)

    def flat_offsets(self) -> torch.Tensor:
        """Offsets materialised (long tensor shaped like ``tensor``)."""
        return offsets_tensor(self.offsets, self.shape).expand(self.shape)

    def _views(self, fn: Callable[[torch.Tensor], list[torch.Tensor]],
               values: list[torch.Tensor]) -> list[Offsets]:
        """The offsets of ``values = fn(tensor)``: affine when ``fn`` only rearranges entries
        (found without materialising them), else ``fn`` of the materialised offsets."""
        current = identity(self.shape) if self.offsets is None else self.offsets
        if isinstance(current, Affine):
            found = view_through(fn, current, self.shape)
            if found is not None and [s for _, s in found] == [tuple(v.shape) for v in values]:
                return [affine for affine, _ in found]
        return list(fn(self.flat_offsets()))

    def apply(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "ParamRef":
        """A new reference seen through ``fn``, a pure layout function applied to the values
        and the offsets alike."""
        values = fn(self.tensor)
        offsets = self._views(lambda t: [fn(t)], [values])[0]
        mask = None if self.mask is None else fn(self.mask)
        offset = None if self.offset is None else fn(self.offset)
        return dataclasses.replace(self, tensor=values, offsets=offsets, mask=mask, offset=offset)

    def through(self, view: Callable[[torch.Tensor, dict, list[tuple[int, ...]]], list[torch.Tensor]],
                attrs: dict, shapes: list[tuple[int, ...]],
                dtypes: list[torch.dtype | None] | None = None) -> list["ParamRef"] | None:
        """This parameter seen through an op that only rearranges entries: ``view`` (an op
        kind's declared view) applied to the values and the offsets alike, one reference per
        output (values cast to ``dtypes`` where given and floating). None when the view does
        not give one tensor of the expected shape per output."""
        values = view(self.tensor, attrs, shapes)
        if len(values) != len(shapes) or any(tuple(v.shape) != tuple(s) for v, s in zip(values, shapes)):
            return None
        offsets = self._views(lambda t: view(t, attrs, shapes), values)
        dtypes = dtypes or [None] * len(values)
        masks = [None] * len(values) if self.mask is None else view(self.mask, attrs, shapes)
        added = [None] * len(values) if self.offset is None else view(self.offset, attrs, shapes)
        return [dataclasses.replace(self, tensor=v.to(d) if d is not None and d.is_floating_point else v, offsets=o,
                                    mask=m, offset=a)
                for v, o, d, m, a in zip(values, offsets, dtypes, masks, added)]

    def __repr__(self) -> str:
        return f"ParamRef({self.name}, {list(self.shape)})"


@dataclass(eq=False)
class Op:
    """One operation. ``inputs`` are positional operands in the kind's canonical order;
    ``unsupported``: why this op cannot be lowered (a normalizer raised
    :class:`~gmn_compiler.errors.Unsupported`), None when it can."""

    kind: str
    inputs: list[Any]
    outputs: list[Value]
    attrs: dict[str, Any] = field(default_factory=dict)
    location: str = "?"
    target: str = ""
    unsupported: str | None = None

    @property
    def output(self) -> Value:
        if len(self.outputs) != 1:
            raise ValueError(f"op {self.kind} at {self.location} has {len(self.outputs)} outputs")
        return self.outputs[0]

    def values(self) -> list[Value]:
        """Activation operands, flattened out of lists."""
        found: list[Value] = []
        for item in self.inputs:
            items = item if isinstance(item, (list, tuple)) else [item]
            found.extend(v for v in items if isinstance(v, Value))
        return found


@dataclass(eq=False)
class ParamInfo:
    """A row of the parameter table: a tensor of the source model the graph represents."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    kind: str  # "parameter" | "buffer" | "constant"
    aliases: tuple[str, ...] = ()  # other names of the same tensor (tied weights)
    # The source tensor, kept only when some of its entries have no edge (a positional table
    # longer than the example input): decompiling fills those entries from it.
    fill: torch.Tensor | None = None


@dataclass(eq=False)
class IRGraph:
    inputs: list[Value]
    outputs: list[Value]
    ops: list[Op]
    params: dict[str, torch.Tensor]  # every tensor of the source, by qualified name
    param_kinds: dict[str, str]
    input_neuron_axes: dict[int, int | None] = field(default_factory=dict)  # Value.id -> axis
    source: str = "torch"
    aliases: dict[str, tuple[str, ...]] = field(default_factory=dict)  # name -> other names

    def consumers(self) -> dict[int, int]:
        """Number of uses of each value id (a model output counts as one use)."""
        counts: dict[int, int] = {}
        for op in self.ops:
            for v in op.values():
                counts[v.id] = counts.get(v.id, 0) + 1
        for v in self.outputs:
            counts[v.id] = counts.get(v.id, 0) + 1
        return counts
