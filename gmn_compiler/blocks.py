"""Edge blocks: the compact form of a compiled graph (schema v2).

A compiled graph is stored as its node columns, its parameter tensors in their own layout and
dtype, and a list of :class:`Block`s. A block describes ``prod(grid)`` edges by tensors that
broadcast to its ``grid`` (source ids, target ids, kernel positions, spatial positions), each
kept *compact* (narrowed to one entry along every axis where it only repeats); a parametric
block's values are not stored at all: they are its parameter's entries at its offsets, and
offsets that are an affine function of the grid index (every layout view: transpose, slice,
reshape, expand) are two small integer lists (:class:`Affine`). A GPT-2-sized graph therefore
costs little more than its weights; the per-edge tensors of a PyG ``Data`` are built only when
asked for (:meth:`EdgeBlocks.materialize`), in the block order (the edge columns are schema
v1's; the node columns gained ``signature``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch_geometric.data import Data

from . import schema
from .errors import DecompileError
from .ir import ParamInfo
from .offsets import Affine, Offsets, offsets_tensor

try:
    import numpy as _np
except ImportError:  # pragma: no cover - numpy comes with torch_geometric
    _np = None


@dataclass(eq=False)
class Block:
    """``prod(grid)`` edges of one edge type. ``src``, ``dst``, ``kernel`` and ``spatial``
    broadcast to ``grid``. With ``param >= 0`` edge ``g`` carries entry ``offsets[g]`` of the
    parameter's flat entries (``offsets`` None: the identity, ``grid`` is the parameter's
    shape), read as ``value_dtype`` (the dtype the rule saw it in); otherwise it carries
    ``value`` (a number or a tensor broadcasting to ``grid``)."""

    grid: tuple[int, ...]
    etype: int
    src: torch.Tensor
    dst: torch.Tensor
    param: int = -1
    offsets: Offsets = None
    value_dtype: torch.dtype | None = None
    value: torch.Tensor | float = 1.0
    kernel: tuple[torch.Tensor, ...] = ()
    spatial: torch.Tensor | None = None

    @property
    def count(self) -> int:
        return math.prod(self.grid)

    def offset_tensor(self) -> torch.Tensor:
        """The offsets as a long tensor broadcasting to ``grid``."""
        return offsets_tensor(self.offsets, self.grid)

    def injective(self) -> bool:
        """No two edges read the same entry of the parameter."""
        if self.offsets is None:
            return True
        if isinstance(self.offsets, Affine):
            return self.offsets.injective(self.grid)
        flat = self.offsets.expand(self.grid).reshape(-1)
        return torch.unique(flat).numel() == flat.numel()


@dataclass(eq=False)
class EdgeBlocks:
    """Nodes, parameter tensors and edge blocks of one graph (see the module docstring).

    ``nodes``: long ``[N, len(NODE_COLUMNS)]``; ``sources[i]``: the tensor of parameter table
    row ``i`` in its own shape and dtype; ``dtype``: the float dtype of the materialised value
    and feature columns (float64 when a parameter is float64, else float32).
    """

    nodes: torch.Tensor
    blocks: list[Block]
    sources: list[torch.Tensor]
    dtype: torch.dtype = torch.float32

    @property
    def num_nodes(self) -> int:
        return int(self.nodes.shape[0])

    @property
    def num_edges(self) -> int:
        return sum(b.count for b in self.blocks)

    def starts(self) -> list[int]:
        """The first edge of each block in the materialised order."""
        out, start = [], 0
        for block in self.blocks:
            out.append(start)
            start += block.count
        return out

    def block_values(self, block: Block) -> torch.Tensor:
        """The values of ``block``'s edges (shape ``grid``, :attr:`dtype`); a view of the
        parameter where its offsets are affine and no cast is needed."""
        if block.param < 0:
            value = block.value
            if isinstance(value, torch.Tensor):
                return value.to(self.dtype).expand(block.grid)
            return torch.full(block.grid, float(value), dtype=self.dtype)
        flat = self.sources[block.param].reshape(-1)
        values = _strided(flat, block)
        if values is None:
            values = flat[block.offset_tensor().expand(block.grid)]
        if block.value_dtype is not None:
            values = values.to(block.value_dtype)
        return values.to(self.dtype)

    def edge_values(self) -> torch.Tensor:
        """The value column alone (``[E]``), without building the index and feature columns."""
        out = _empty((self.num_edges,), self.dtype)
        for start, block in zip(self.starts(), self.blocks):
            out[start:start + block.count].view(block.grid).copy_(self.block_values(block))
        return out

    def materialize(self) -> Data:
        """The schema's PyG ``Data`` (``x``, ``edge_index``, ``edge_attr``, ``edge_param``,
        ``edge_offset``, ``num_nodes``), written block by block into preallocated tensors."""
        total = self.num_edges
        edge_index = _empty((2, total), torch.long)
        edge_attr = _empty((total, len(schema.EDGE_COLUMNS)), self.dtype)
        edge_param = _empty((total,), torch.long)
        edge_offset = _empty((total,), torch.long)
        for start, block in zip(self.starts(), self.blocks):
            end = start + block.count
            grid = block.grid
            edge_index[0, start:end].view(grid).copy_(block.src.expand(grid))
            edge_index[1, start:end].view(grid).copy_(block.dst.expand(grid))
            _fill_features(block, edge_attr[start:end])
            edge_attr[start:end, 0].view(grid).copy_(self.block_values(block))
            edge_param[start:end].fill_(block.param)
            if block.param < 0:
                edge_offset[start:end].fill_(-1)
            elif block.offsets is None:
                torch.arange(block.count, out=edge_offset[start:end])
            elif isinstance(block.offsets, Affine):
                block.offsets.write(edge_offset[start:end].view(grid))
            else:
                edge_offset[start:end].view(grid).copy_(block.offsets.expand(grid))
        return Data(x=self.nodes.to(self.dtype), edge_index=edge_index, edge_attr=edge_attr,
                    edge_param=edge_param, edge_offset=edge_offset, num_nodes=self.num_nodes)

    def state_dict(self, edge_values: torch.Tensor, params: list[ParamInfo], *,
                   include_constants: bool = False,
                   into: dict[str, torch.Tensor] | None = None,
                   only: set[int] | None = None) -> dict[str, torch.Tensor]:
        """Every parameter rebuilt from one value per edge (``[E]``, in the materialised
        order): entries no edge carries keep their stored value; copies of an entry carried
        by several edges must agree (:class:`DecompileError` otherwise, before anything is
        written). With ``into`` (name -> tensor of the parameter's shape), each parameter is
        written into that tensor in place (entries no edge carries keep its values) and the
        result holds those tensors: no second copy of the weights. ``only``: the indices of
        the parameters to rebuild (default: all)."""
        values = torch.as_tensor(edge_values)
        if values.dim() != 1 or values.numel() != self.num_edges:
            raise DecompileError(f"expected one value per edge, shape [{self.num_edges}], "
                                 f"got {list(values.shape)}")
        uses: dict[int, list[tuple[int, Block]]] = {}
        for start, block in zip(self.starts(), self.blocks):
            if block.param >= 0:
                uses.setdefault(block.param, []).append((start, block))
        chosen = [(i, p) for i, p in enumerate(params)
                  if (p.kind != "constant" or include_constants) and (only is None or i in only)]
        targets = _targets(into, [p for _, p in chosen])
        # parameters whose copies must agree are rebuilt and checked first, so that a
        # DecompileError leaves every target as it was
        checked = {i for i, _ in chosen if _copies(uses.get(i, []))}
        rebuilt: dict[int, torch.Tensor] = {}
        for i, p in chosen:
            if i in checked:
                target, blocks = targets.get(p.name), uses.get(i, [])
                primary = _primary_copy(p, blocks, values)  # a view of the values: no copy yet
                if primary is not None:
                    rebuilt[i] = primary if target is not None else primary.clone()
                else:
                    rebuilt[i] = self._rebuild(i, p, blocks, values, target)
        out: dict[str, torch.Tensor] = {}
        for index, info in chosen:
            blocks = uses.get(index, [])
            target = targets.get(info.name)
            if index in rebuilt:
                result = rebuilt.pop(index)
            elif target is not None and target.dtype == values.dtype and target.is_contiguous():
                _write(target.view(-1), blocks, values)  # straight into the caller's tensor
                result = target
            else:
                result = self._rebuild(index, info, blocks, values, target)
            out[info.name] = result if target is None or result is target else target.copy_(result)
            for alias in info.aliases:  # tied weights: every name of the tensor
                out[alias] = out[info.name]
        return out

    def _rebuild(self, index: int, info: ParamInfo, blocks: list[tuple[int, Block]],
                 values: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        """Parameter ``index`` rebuilt from ``values`` in a tensor of its own (entries no edge
        carries from ``target``, else from the stored tensor), its copies checked."""
        if any(b.count == math.prod(info.shape) and b.injective() for _, b in blocks):
            flat = torch.empty(math.prod(info.shape), dtype=values.dtype)  # every entry is written
        else:  # entries no edge carries keep their stored value
            kept = self.sources[index] if target is None else target
            flat = kept.reshape(-1).to(values.dtype, copy=True)
        _write(flat, blocks, values)
        if _copies(blocks):
            _check_copies_agree(info.name, flat, blocks, values)
        return flat.view(info.shape).to(info.dtype)


def _copies(blocks: list[tuple[int, Block]]) -> bool:
    """Some entry of the parameter is carried by more than one edge of ``blocks``."""
    return len(blocks) > 1 or any(not b.injective() for _, b in blocks)


def _primary_copy(info: ParamInfo, blocks: list[tuple[int, Block]], values: torch.Tensor) -> torch.Tensor | None:
    """When one block carries the whole parameter in its own layout (a tied embedding's
    lookup), its slice of ``values`` *is* the parameter: every other copy is checked against
    it and it is returned as a view (no rebuilt copy); None when no block does."""
    numel = math.prod(info.shape)
    primary = next(((s, b) for s, b in blocks if b.offsets is None and b.count == numel), None)
    if primary is None or info.dtype != values.dtype:
        return None
    start, block = primary
    flat = values[start:start + numel]
    _check_copies_agree(info.name, flat, blocks, values)
    return flat.view(info.shape)


def _targets(into: dict[str, torch.Tensor] | None, params: list[ParamInfo]) -> dict[str, torch.Tensor]:
    """The tensors of ``into`` the parameters are written into, checked before any is."""
    if into is None:
        return {}
    missing = [p.name for p in params if p.name not in into]
    if missing:
        raise DecompileError(f"no tensor to write {missing[0]!r} into ({len(missing)} parameters "
                             "of the graph are missing); pass the model the graph was compiled from")
    wrong = [p.name for p in params if tuple(into[p.name].shape) != tuple(p.shape)]
    if wrong:
        raise DecompileError(f"{wrong[0]!r} has shape {list(into[wrong[0]].shape)}, the graph's is "
                             f"{list(next(p.shape for p in params if p.name == wrong[0]))}")
    return {p.name: into[p.name] for p in params}


def _write(flat: torch.Tensor, blocks: list[tuple[int, Block]], values: torch.Tensor) -> None:
    """Write each block's values at its offsets into ``flat`` (a parameter's flat entries)."""
    for start, block in blocks:
        mine = values[start:start + block.count].view(block.grid)
        entries = _entries(flat, block)
        if entries is not None:
            entries.copy_(mine)
        else:
            flat[block.offset_tensor().expand(block.grid)] = mine


def _strided(flat: torch.Tensor, block: Block) -> torch.Tensor | None:
    """A view of ``flat`` (a parameter's flat entries) at ``block``'s offsets, shaped like its
    grid, when the offsets are the identity or affine with no negative stride; else None.
    ``flat`` may itself be strided (a column of ``edge_attr``): as_strided counts in storage
    elements, so the offsets are scaled by its stride."""
    if block.offsets is None:
        return flat.view(block.grid)
    if isinstance(block.offsets, Affine) and min(block.offsets.strides, default=0) >= 0:
        step = flat.stride(0)
        return flat.as_strided(block.grid, [s * step for s in block.offsets.strides],
                               flat.storage_offset() + block.offsets.base * step)
    return None


def _entries(flat: torch.Tensor, block: Block) -> torch.Tensor | None:
    """:func:`_strided` when it reads each entry once (so it can be written); else None."""
    return _strided(flat, block) if block.injective() else None


def _check_copies_agree(name: str, flat: torch.Tensor, blocks: list[tuple[int, Block]],
                        values: torch.Tensor) -> None:
    """Every edge of ``blocks`` must carry the value written at its entry."""
    disagree = 0
    for start, block in blocks:
        mine = values[start:start + block.count].view(block.grid)
        kept = _entries(flat, block)
        if kept is None:
            kept = flat[block.offset_tensor().expand(block.grid)]
        differs = (mine != kept) & ~(torch.isnan(mine) & torch.isnan(kept))
        disagree += int(differs.sum())
    if disagree:
        raise DecompileError(f"copies of parameter {name!r} disagree ({disagree} edges): a "
                             "parameter used several times must get one value per entry; "
                             "average the copies first if that is intended")


def _empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised tensor for one of the large outputs.

    Allocated through numpy, which asks Linux for transparent huge pages (``madvise``) on
    large arrays: the first-touch page faults of the ~1.4 GB of a ResNet-50 graph cost
    ~200 ms with 4 KiB pages and ~20 ms with 2 MiB pages. The tensor shares numpy's memory
    (its storage is not resizable; everything else behaves as usual). Falls back to
    ``torch.empty`` without numpy or for a dtype numpy lacks.
    """
    np_dtype = _NP_DTYPES.get(dtype) if _np is not None else None
    if np_dtype is None:
        return torch.empty(shape, dtype=dtype)
    return torch.from_numpy(_np.empty(shape, dtype=np_dtype))


_NP_DTYPES = {} if _np is None else {torch.long: _np.int64, torch.float32: _np.float32,
                                     torch.float64: _np.float64}

_PATTERN_EDGES = 4096  # edges per copy of a block's feature pattern (~100 KiB)
_PATTERN_MAX = 1 << 20  # a larger pattern is written column by column instead


def _fill_features(block: Block, attr: torch.Tensor) -> None:
    """Every edge column but the value (type, kernel, spatial; -1 where unused) of one
    block's rows ``attr`` (``[count, F]``, contiguous).

    Writing a row-major ``[count, F]`` tensor one column at a time, or from a source that
    broadcasts with an inner dimension of a few entries, runs element by element. The
    features repeat with a short period instead -- they vary only along the block's trailing
    grid axes (kernel positions, input positions) -- so build that pattern once, repeated to
    about ``_PATTERN_EDGES`` edges, and copy it over the rows with one long inner loop.
    """
    grid = block.grid
    ndim = len(grid)
    width = attr.shape[1]
    columns = [(2 + k, t) for k, t in enumerate(block.kernel)]
    if block.spatial is not None:
        columns.append((5, block.spatial))
    columns = [(c, t.reshape((1,) * (ndim - t.dim()) + tuple(t.shape))) for c, t in columns]
    lead = ndim  # every feature is constant along the grid axes before `lead`
    for _, t in columns:
        varying = [a for a in range(ndim) if t.shape[a] > 1]
        if varying:
            lead = min(lead, varying[0])
    period = math.prod(grid[lead:])
    if period > _PATTERN_MAX:
        attr[:, 1].fill_(block.etype)
        attr[:, 2:].fill_(-1)
        for c, t in columns:
            attr[:, c].view(grid).copy_(t.expand(grid))
        return
    pattern = torch.empty(grid[lead:] + (width,), dtype=attr.dtype)
    pattern[..., :2] = torch.tensor([0, block.etype], dtype=attr.dtype)
    pattern[..., 2:] = -1
    for c, t in columns:
        pattern[..., c] = t[(0,) * lead]
    periods = block.count // period
    reps = max(1, min(periods, _PATTERN_EDGES // period))
    chunk = reps * period * width
    pattern = pattern.view(1, period * width).expand(reps, period * width).reshape(chunk)
    flat = attr.view(-1)
    full = periods // reps
    flat[:full * chunk].view(full, chunk).copy_(pattern.expand(full, chunk))
    rest = flat.numel() - full * chunk
    if rest:
        flat[full * chunk:].copy_(pattern[:rest])
