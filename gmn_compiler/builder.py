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

from . import schema, ties
from .blocks import Block, EdgeBlocks
from .offsets import Offsets, affine_of, compact
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
        self._tied = False

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
    def tie_shared_params(self) -> list[tuple[str, list[ties.Relation]]]:
        """Tie the copies of every parameter entry that several edges hold (:mod:`~gmn_compiler.ties`).

        For each axis of such a parameter, and each use, if the source (or target) node of a
        use's edges is a function of the index along that axis, one ``tie`` node per index
        gets an edge (type ``tie``, axis in ``kernel0``) to that node in every use (to each
        of its nodes when the use broadcasts an entry to several, see
        :func:`~gmn_compiler.ties.side_relation`). An automorphism must then permute every use
        the same way, so moving edge values keeps all copies of an entry equal and
        decompilation well defined. A use whose edges the graph cannot tell apart is refused
        (:func:`~gmn_compiler.ties.plan_ties`).

        Returns ``(parameter, relations)`` per tied axis, each relation an ``(index, node)``
        pair of tensors (see :func:`~gmn_compiler.ties.plan_ties`): declarations over the
        nodes must respect them. Runs once; :meth:`finalize` calls it if lowering did not.
        """
        self._tied = True
        uses: dict[int, list[EdgeBlock]] = {}
        for block in self.blocks:
            if block.param >= 0:
                uses.setdefault(block.param, []).append(block)
        tied = []
        for index, all_blocks in uses.items():
            param = self.params[index]
            for blocks in ties.sharing_groups(all_blocks, math.prod(param.shape)):
                for axis, maps in ties.plan_ties(param.name, tuple(param.shape), blocks):
                    tie_nodes = self.add_nodes(param.shape[axis], "tie", depth=self.depth_of(maps[0][1]))
                    for positions, nodes in maps:
                        self.add_edges((positions.numel(),), tie_nodes[positions], nodes, "tie",
                                       kernel=(torch.tensor(axis),))
                    tied.append((param.name, maps))
        return tied

    def finalize(self) -> EdgeBlocks:
        """Tie shared parameters, then the compact graph: every block with its broadcast
        inputs narrowed (:func:`~gmn_compiler.blocks.compact`), its offsets affine where they
        are, and its values not stored but checked to be its parameter's entries at its
        offsets (a rule that emits other values is a bug, reported here)."""
        if not self._tied:
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
