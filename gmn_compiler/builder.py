"""GraphBuilder: accumulates nodes and edge blocks while rules lower ops.

Rules describe each block of edges by a *grid* shape and tensors broadcastable to it (source
ids, target ids, values, kernel positions...). Nothing is materialised per edge:
:meth:`GraphBuilder.finalize` returns the compact graph (:mod:`gmn_compiler.blocks`), whose
per-edge tensors are written only when a consumer asks for them, one tensor op per field per
block, never a Python loop over weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from . import schema
from .blocks import Block, EdgeBlocks
from .offsets import Affine, Offsets, affine_of, compact, offsets_tensor
from .declarations import UnitClasses
from .errors import LoweringError, ProvenanceError
from .ir import ParamInfo, ParamRef



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
        self._columns["signature"].extend(count, 0)
        return torch.arange(start, start + count)

    def node_column(self, name: str) -> torch.Tensor:
        """A live view of one node column (writes go to the graph)."""
        return self._columns[name].view()

    def depth_of(self, ids: torch.Tensor) -> int:
        ids = ids[ids >= 0]
        return int(self.node_column("depth")[ids].max()) if ids.numel() else 0

    def set_activation(self, ids: torch.Tensor, activation: str, signature: int = 0) -> None:
        """Mark nodes with the function applied at them (and its hyper-parameters' identifier,
        :func:`~gmn_compiler.layout.signature_id`, when they are not the usual ones)."""
        self.node_column("activation")[ids] = self.vocabulary.code("activations", activation)
        self.node_column("signature")[ids] = signature

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
            if param.transform:
                names = ", ".join(step[0] for step in param.transform)
                raise LoweringError(f"parameter {param.name!r} is used after an elementwise function of it "
                                    f"({names}) by a rule that does not record that function; a plugin "
                                    "attaches such parameters through ctx.attach_param")
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
        gets an edge (type ``tie``, axis in ``kernel0``) to that node in every use (to each
        of its nodes when the use broadcasts an entry to several, see :func:`_side_relation`). An
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
                        found = _side_relation(position, compact(side, block.grid), size)
                        if found is not None:
                            maps.append(found)
                if len(maps) < 2:
                    continue
                ties = self.add_nodes(size, "tie", depth=self.depth_of(maps[0][1]))
                for index, nodes in maps:
                    self.add_edges((index.numel(),), ties[index], nodes, "tie", kernel=(torch.tensor(axis),))

    def finalize(self) -> EdgeBlocks:
        """Tie shared parameters, then the compact graph: every block with its broadcast
        inputs narrowed (:func:`~gmn_compiler.blocks.compact`), its offsets affine where they
        are, and its values not stored but checked to be its parameter's entries at its
        offsets (a rule that emits other values is a bug, reported here)."""
        self.tie_shared_params()
        dtype = torch.float64 if torch.float64 in self._param_dtypes else torch.float32
        nodes = torch.stack([self._columns[c].view() for c in schema.NODE_COLUMNS], dim=1).clone()
        sources = [self._sources[p.name].detach() for p in self.params]
        graph = EdgeBlocks(nodes, [], sources, dtype)
        for block in self.blocks:
            stored = _stored(block, sources)
            if block.param >= 0:
                _check_values(graph, stored, block, self.params[block.param].name)
            graph.blocks.append(stored)
        return graph


def _stored(block: EdgeBlock, sources: list[torch.Tensor]) -> Block:
    """The compact :class:`~gmn_compiler.blocks.Block` of a lowering-time block."""
    grid = block.grid
    common = dict(grid=grid, etype=block.etype, src=compact(block.src, grid), dst=compact(block.dst, grid),
                  kernel=tuple(compact(k, grid) for k in block.kernel),
                  spatial=None if block.spatial is None else compact(block.spatial, grid))
    if block.param < 0:
        return Block(**common, value=block.value)
    offsets: Offsets = block.offsets
    if isinstance(offsets, torch.Tensor):
        offsets = affine_of(offsets, grid) or compact(offsets, grid)
    value = block.value
    assert isinstance(value, torch.Tensor)
    cast = value.dtype if value.dtype != sources[block.param].dtype else None
    return Block(**common, param=block.param, offsets=offsets, value_dtype=cast)


def _check_values(graph: EdgeBlocks, stored: Block, block: EdgeBlock, name: str) -> None:
    """The values a rule emitted must be the parameter's entries at the block's offsets."""
    assert isinstance(block.value, torch.Tensor)
    expected = block.value.to(graph.dtype)
    found = graph.block_values(stored)
    if torch.equal(found, expected):
        return
    same = (found == expected) | (torch.isnan(found) & torch.isnan(expected))
    if not bool(same.all()):
        raise ProvenanceError(name, f"a rule emitted edge values of {name!r} that are not its entries "
                              "at the offsets it gave (a ParamRef's tensor and offsets must be "
                              "transformed together: use ParamRef.apply)")


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
        mask[offsets_tensor(b.offsets, b.grid).reshape(-1)] = True
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
    ``block``'s edges, compacted (see :func:`compact`): for an identity view, whose grid is
    the parameter's shape, that is an ``arange`` along ``axis``."""
    size = shape[axis]
    if block.offsets is None and block.grid == shape:
        view = [1] * len(shape)
        view[axis] = size
        return torch.arange(size).view(view)
    if isinstance(block.offsets, Affine):
        return _affine_axis_position(block.offsets, block.grid, size, stride)
    return (compact(offsets_tensor(block.offsets, block.grid), block.grid) // stride) % size


def _affine_axis_position(offsets: Affine, grid: tuple[int, ...], size: int, stride: int) -> torch.Tensor:
    """:func:`_axis_position` of affine offsets, built over only the grid axes that move the
    index along the source axis: an axis whose stride is a multiple of ``stride * size`` never
    changes it; and when every other moving axis steps by multiples of ``stride``, axes whose
    steps together (with the base's remainder) stay below ``stride`` never carry into it."""
    moving = [a for a, (s, g) in enumerate(zip(offsets.strides, grid)) if g > 1 and s % (stride * size)]
    small = [a for a in moving if 0 < offsets.strides[a] < stride]
    reach = offsets.base % stride + sum(offsets.strides[a] * (grid[a] - 1) for a in small)
    clean = reach < stride and all(offsets.strides[a] % stride == 0 for a in moving if a not in small)
    kept = [s if a in moving and not (clean and a in small) else 0 for a, s in enumerate(offsets.strides)]
    base = offsets.base - offsets.base % stride if clean else offsets.base
    return (Affine(base, tuple(kept)).tensor(grid) // stride) % size


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


def _side_relation(position: torch.Tensor, nodes: torch.Tensor,
                   size: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The ``(index, node)`` pairs a use's side gives along one parameter axis, when they tie
    the use soundly: one node per index (:func:`_side_function`), or one index per node -- an
    entry broadcast to several nodes (``repeat_interleave``, an expanded table), whose nodes
    then all hang off that entry's tie node, so every use moves the entry's copies together.
    ``None`` when neither holds or a single node or index takes everything."""
    found = _side_function(position, nodes, size)
    if found is not None:
        present = found >= 0
        return torch.nonzero(present).reshape(-1), found[present]
    for a in range(nodes.dim()):  # never wider than ``nodes``: no grid is materialised
        if nodes.shape[a] == 1 and position.shape[a] > 1:
            first = position.narrow(a, 0, 1)
            if not torch.equal(position, first.expand_as(position)):
                return None  # one node meets several indices
            position = first
    index, node = torch.unique(torch.stack([position.expand(nodes.shape).reshape(-1), nodes.reshape(-1)]), dim=1)
    if torch.unique(node).numel() != node.numel() or torch.unique(index).numel() < 2:
        return None
    return index, node


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
