"""GraphBuilder: accumulates nodes and edge blocks, then writes them once into preallocated
tensors.

Rules describe each block of edges by a *grid* shape and tensors broadcastable to it (source
ids, target ids, values, kernel positions...). Nothing is materialised per edge until
:meth:`GraphBuilder.finalize`, which allocates the final tensors and fills every block by
broadcasting into its slice — one tensor op per field per block, never a Python loop over
weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

try:
    import numpy as _np
except ImportError:  # pragma: no cover - numpy comes with torch_geometric
    _np = None

from . import schema
from .declarations import UnitClasses
from .ir import ParamInfo, ParamRef

_ROLE = schema.node_column("role")
_DEPTH = schema.node_column("depth")
_POSITION = schema.node_column("position")
_ACTIVATION = schema.node_column("activation")


@dataclass(eq=False)
class EdgeBlock:
    grid: tuple[int, ...]
    src: torch.Tensor
    dst: torch.Tensor
    etype: int
    value: torch.Tensor | float
    param: int = -1
    offsets: torch.Tensor | None = None  # None with param >= 0: identity offsets
    kernel: tuple[torch.Tensor, ...] = ()
    spatial: torch.Tensor | None = None

    @property
    def count(self) -> int:
        return math.prod(self.grid)


class _Column:
    """A growable 1-D long tensor."""

    def __init__(self) -> None:
        self.data = torch.empty(1024, dtype=torch.long)
        self.size = 0

    def extend(self, count: int, fill: int) -> None:
        if self.size + count > self.data.numel():
            grown = torch.empty(max(2 * self.data.numel(), self.size + count), dtype=torch.long)
            grown[: self.size] = self.data[: self.size]
            self.data = grown
        self.data[self.size : self.size + count] = fill
        self.size += count

    def view(self) -> torch.Tensor:
        return self.data[: self.size]


@dataclass(eq=False)
class BuiltGraph:
    x: torch.Tensor
    edge_index: torch.Tensor
    edge_attr: torch.Tensor
    edge_param: torch.Tensor
    edge_offset: torch.Tensor
    num_nodes: int
    params: list[ParamInfo]


class GraphBuilder:
    """Collects the nodes and edges of one parameter graph."""

    def __init__(self, sources: dict[str, torch.Tensor] | None = None,
                 aliases: dict[str, tuple[str, ...]] | None = None,
                 vocabulary: schema.Vocabulary = schema.BUILTIN) -> None:
        self.vocabulary = vocabulary
        self._sources = sources or {}
        self._aliases = aliases or {}
        self._columns = {c: _Column() for c in schema.NODE_COLUMNS}
        self.blocks: list[EdgeBlock] = []
        self.params: list[ParamInfo] = []
        self._param_index: dict[str, int] = {}
        self._param_dtypes: set[torch.dtype] = set()

    # ---------------------------------------------------------------- nodes
    @property
    def num_nodes(self) -> int:
        return self._columns["role"].size

    def add_nodes(self, count: int, role: str, depth: int, activation: str = "none") -> torch.Tensor:
        """Create ``count`` nodes; returns their ids (long tensor ``[count]``)."""
        start = self.num_nodes
        self._columns["role"].extend(count, self.vocabulary.code("node_roles", role))
        self._columns["depth"].extend(count, depth)
        self._columns["position"].extend(count, -1)
        self._columns["activation"].extend(count, self.vocabulary.code("activations", activation))
        return torch.arange(start, start + count)

    def node_column(self, name: str) -> torch.Tensor:
        """A live view of one node column (writes go to the graph)."""
        return self._columns[name].view()

    def depth_of(self, ids: torch.Tensor) -> int:
        ids = ids[ids >= 0]
        return int(self.node_column("depth")[ids].max()) if ids.numel() else 0

    def set_activation(self, ids: torch.Tensor, activation: str) -> None:
        self.node_column("activation")[ids] = self.vocabulary.code("activations", activation)

    def has_activation(self, ids: torch.Tensor) -> bool:
        return bool((self.node_column("activation")[ids] != 0).any())

    def pin(self, ids: torch.Tensor, positions: torch.Tensor) -> None:
        """Give nodes fixed positions (model inputs and outputs)."""
        self.node_column("position")[ids] = positions

    # ---------------------------------------------------------------- params
    def register_param(self, name: str, kind: str) -> int:
        """Index of source tensor ``name`` in the parameter table (added on first use)."""
        if name not in self._param_index:
            tensor = self._sources[name]
            self._param_index[name] = len(self.params)
            self.params.append(ParamInfo(name, tuple(tensor.shape), tensor.dtype, kind,
                                         tuple(self._aliases.get(name, ()))))
            self._param_dtypes.add(tensor.dtype)
        return self._param_index[name]

    # ---------------------------------------------------------------- edges
    def add_edges(
        self,
        grid: tuple[int, ...],
        src: torch.Tensor,
        dst: torch.Tensor,
        etype: str,
        *,
        param: ParamRef | None = None,
        value: float = 1.0,
        kernel: tuple[torch.Tensor, ...] = (),
        spatial: torch.Tensor | None = None,
    ) -> None:
        """Add ``prod(grid)`` edges. Every tensor argument broadcasts to ``grid``.

        With ``param``, edge ``g`` carries ``param.tensor[g]`` (the grid must be the
        parameter view's shape) and points back to its source offset; otherwise every edge
        is structural and carries ``value``.
        """
        grid = tuple(int(g) for g in grid)
        if math.prod(grid) == 0:
            return
        etype_code = self.vocabulary.code("edge_types", etype)
        if param is not None:
            if tuple(param.tensor.shape) != grid:
                raise ValueError(f"grid {grid} != shape {tuple(param.tensor.shape)} of {param.name}")
            index = self.register_param(param.name, param.kind)
            block = EdgeBlock(grid, src, dst, etype_code, param.tensor.detach(), index,
                              param.offsets, tuple(kernel), spatial)
        else:
            block = EdgeBlock(grid, src, dst, etype_code, float(value), -1, None, tuple(kernel), spatial)
        if len(block.kernel) > 3:
            raise ValueError("at most 3 kernel dimensions")
        self.blocks.append(block)

    # ---------------------------------------------------------------- output
    def tie_shared_params(self) -> None:
        """Tie the node sets of the uses of every parameter used by several edge blocks.

        For each axis of such a parameter, and each use, if the source (or target) node of a
        use's edges is a function of the index along that axis, one ``tie`` node per index
        gets an edge (type ``tie``, axis in ``kernel0``) to that node in every use. An
        automorphism must then permute every use the same way, so moving edge values keeps
        all copies of an entry equal and decompilation well defined.

        Works on the blocks' broadcast inputs, never on per-edge tensors (see
        :func:`_side_function`): GPT-2's tied 50257 x 768 token embedding costs microseconds.
        """
        uses: dict[int, list[EdgeBlock]] = {}
        for block in self.blocks:
            if block.param >= 0:
                uses.setdefault(block.param, []).append(block)
        for index, all_blocks in uses.items():
            for blocks in _sharing_groups(all_blocks, math.prod(self.params[index].shape)):
                self._tie_uses(index, blocks)

    def _tie_uses(self, index: int, blocks: list[EdgeBlock]) -> None:
        """Tie the uses ``blocks`` of parameter ``index`` (see :meth:`tie_shared_params`)."""
        if len(blocks) >= 2:
            shape = self.params[index].shape
            strides = [math.prod(shape[a + 1:]) for a in range(len(shape))]
            for axis, (size, stride) in enumerate(zip(shape, strides)):
                maps = []
                for block in blocks:
                    position = _axis_position(block, shape, axis, stride)
                    for side in (block.src, block.dst):
                        found = _side_function(position, _compact(side, block.grid), size)
                        if found is not None:
                            maps.append(found)
                if len(maps) < 2:
                    continue
                first = maps[0][maps[0] >= 0]
                ties = self.add_nodes(size, "tie", depth=self.depth_of(first))
                for node_of in maps:
                    keep = node_of >= 0
                    self.add_edges((int(keep.sum()),), ties[keep], node_of[keep], "tie",
                                   kernel=(torch.tensor(axis),))

    def keep_unrepresented_entries(self) -> None:
        """Record the source tensor of every parameter some of whose entries no edge carries
        (only views — slices, lookups — can leave entries out)."""
        viewed = {b.param for b in self.blocks if b.param >= 0 and b.offsets is not None}
        for index in viewed:
            info = self.params[index]
            seen = torch.zeros(math.prod(info.shape), dtype=torch.bool)
            for b in self.blocks:
                if b.param == index:
                    if b.offsets is None:
                        seen[:b.count] = True
                    else:  # only the set of offsets matters: read them in memory order,
                        # so a transposed or expanded view is flattened without a copy
                        seen[_memory_order(_compact(b.offsets, b.grid)).reshape(-1)] = True
            if not bool(seen.all()):
                info.fill = self._sources[info.name].detach().clone()

    def finalize(self) -> BuiltGraph:
        self.tie_shared_params()
        self.keep_unrepresented_entries()
        total = sum(b.count for b in self.blocks)
        dtype = torch.float64 if torch.float64 in self._param_dtypes else torch.float32
        edge_index = _empty((2, total), torch.long)
        edge_attr = _empty((total, len(schema.EDGE_COLUMNS)), dtype)
        edge_param = _empty((total,), torch.long)
        edge_offset = _empty((total,), torch.long)
        start = 0
        for block in self.blocks:
            _fill(block, start, edge_index, edge_attr, edge_param, edge_offset)
            start += block.count
        x = torch.stack([self._columns[c].view() for c in schema.NODE_COLUMNS], dim=1).to(dtype)
        return BuiltGraph(x, edge_index, edge_attr, edge_param, edge_offset, self.num_nodes,
                          list(self.params))


def _compact(t: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
    """``t`` (broadcastable to ``grid``) with as many dimensions as ``grid``, narrowed to one
    entry along every axis where it only repeats itself (size 1 or stride 0). Over the grid it
    takes the same values, each the same function of the remaining axes' indices."""
    t = t.reshape((1,) * (len(grid) - t.dim()) + tuple(t.shape))
    for a in range(t.dim()):
        if t.shape[a] > 1 and t.stride(a) == 0:
            t = t.narrow(a, 0, 1)
    return t


def _memory_order(t: torch.Tensor) -> torch.Tensor:
    """``t`` with its axes permuted into memory order (a transposed view becomes contiguous)."""
    return t.permute(sorted(range(t.dim()), key=lambda a: -t.stride(a)))


def _sharing_groups(blocks: list[EdgeBlock], numel: int) -> list[list[EdgeBlock]]:
    """The uses of one parameter, grouped by the entries they share (connected by overlap).
    Uses of disjoint parts (the q, k and v rows of one in-projection) share no value, so
    nothing ties their nodes; a use of the whole tensor shares entries with every other."""
    if len(blocks) < 2 or any(b.offsets is None for b in blocks):
        return [blocks]
    masks = []
    for b in blocks:
        mask = torch.zeros(numel, dtype=torch.bool)
        mask[b.offsets.reshape(-1)] = True
        masks.append(mask)
    groups = UnitClasses()
    for i in range(len(blocks)):
        for j in range(i + 1, len(blocks)):
            if bool((masks[i] & masks[j]).any()):
                groups.union(i, j)
    found: dict[int, list[EdgeBlock]] = {}
    for i, b in enumerate(blocks):
        found.setdefault(groups.find(i), []).append(b)
    return list(found.values())


def _axis_position(block: EdgeBlock, shape: tuple[int, ...], axis: int, stride: int) -> torch.Tensor:
    """The index along ``axis`` of the source entry (in a parameter of ``shape``) of each of
    ``block``'s edges, compacted (see :func:`_compact`): for an identity view, whose grid is
    the parameter's shape, that is an ``arange`` along ``axis``."""
    size = shape[axis]
    if block.offsets is None and block.grid == shape:
        view = [1] * len(shape)
        view[axis] = size
        return torch.arange(size).view(view)
    offsets = block.offsets if block.offsets is not None else torch.arange(block.count).view(block.grid)
    return (_compact(offsets, block.grid) // stride) % size


def _side_function(position: torch.Tensor, nodes: torch.Tensor, size: int) -> torch.Tensor | None:
    """:func:`_index_function` of the (position, node) pairs of a block's edges, both given
    compacted. Only the *set* of pairs matters, so the full grid (38.6M edges for GPT-2's
    token embedding) is never materialised: an axis along which only one of the two varies
    is narrowed to one entry if the other merely repeats along it, and if ``nodes`` varies
    where the position does not, ``nodes`` is no function of it (``None``, as
    :func:`_index_function` would find)."""
    for a in range(nodes.dim()):
        if position.shape[a] == 1 and nodes.shape[a] > 1:
            first = nodes.narrow(a, 0, 1)
            if not torch.equal(nodes, first.expand_as(nodes)):
                return None
            nodes = first
        elif nodes.shape[a] == 1 and position.shape[a] > 1:
            first = position.narrow(a, 0, 1)
            if torch.equal(position, first.expand_as(position)):
                position = first
    shape = torch.broadcast_shapes(position.shape, nodes.shape)
    return _index_function(position.expand(shape).reshape(-1), nodes.expand(shape).reshape(-1), size)


def _index_function(index: torch.Tensor, nodes: torch.Tensor, size: int) -> torch.Tensor | None:
    """``node_of[i]`` if ``nodes`` is a function of ``index`` that is not constant (-1 where
    an index does not occur); else ``None``."""
    low = torch.full((size,), torch.iinfo(torch.long).max).scatter_reduce(0, index, nodes, "amin")
    high = torch.full((size,), -1).scatter_reduce(0, index, nodes, "amax")
    present = high >= 0
    if not bool((low[present] == high[present]).all()):
        return None
    if int(present.sum()) > 1 and torch.unique(high[present]).numel() == 1:
        return None
    return torch.where(present, high, torch.full_like(high, -1))


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


def _fill(block: EdgeBlock, start: int, edge_index, edge_attr, edge_param, edge_offset) -> None:
    end = start + block.count
    grid = block.grid
    edge_index[0, start:end].view(grid).copy_(block.src.expand(grid))
    edge_index[1, start:end].view(grid).copy_(block.dst.expand(grid))
    _fill_features(block, edge_attr[start:end])
    value_col = edge_attr[start:end, 0].view(grid)
    if isinstance(block.value, torch.Tensor):
        value_col.copy_(block.value)
    else:
        value_col.fill_(block.value)
    edge_param[start:end].fill_(block.param)
    if block.param < 0:
        edge_offset[start:end].fill_(-1)
    elif block.offsets is None:
        torch.arange(block.count, out=edge_offset[start:end])
    else:
        edge_offset[start:end].view(grid).copy_(block.offsets)


def _fill_features(block: EdgeBlock, attr: torch.Tensor) -> None:
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
