"""The lowering context: what a rule works with while it lowers one op.

A :class:`LoweringContext` owns the layouts of all values (which graph node each entry of an
activation belongs to), the node reuse policy (when an op may hand its input's nodes on, and
when it must create fresh ones), the declared symmetries and the graph being built. Rules use
its methods only (``gmn_compiler.rules`` re-exports it with everything else a rule needs):
they never reach into the builder.
"""

from __future__ import annotations

from collections.abc import Hashable

import itertools
import math

import torch

from . import layout as L
from .builder import GraphBuilder
from .declarations import Partition, UnitClasses
from .errors import LoweringError
from .ir import IRGraph, Op, ParamRef, Value
from .ir_analysis import AliasFamilies, broadcast_axes
from .layout import Layout
from .registry import Registry

class LoweringContext:
    """What a rule works with: the builder, the layouts of values, and helpers that keep the
    graph's automorphisms function-preserving."""

    def __init__(self, ir: IRGraph, registry: Registry, builder: GraphBuilder):
        self.ir = ir
        self.registry = registry
        self.builder = builder
        self.layouts: dict[int, Layout | None] = {}
        self.op: Op | None = None
        self._family = AliasFamilies(ir, registry)
        self._next_value_id = 0  # values rules make for themselves count down from -1
        self.constants: set[int] = set()  # ids of values computed from no input and no parameter
        self.symmetries: list[dict] = []
        self._origin: dict[int, int] = {}  # node made by fresh() -> the node it copies
        self.io_nodes: set[int] = set()  # nodes of model inputs and outputs
        self._anchored: set[int] = set()  # nodes a constant tells apart, and nodes mixing them
        self._anchor_keys: dict[int, Hashable] = {}  # what tells an anchored node apart
        self._attached: dict[int, set[str]] = {}  # node -> edge types of parameters attached to it
        self._constant_layouts: dict[tuple[int, int], Layout] = {}  # constants read by layers
        self.summary: dict[str, dict[str, int]] = {}
        self.integer_inputs: dict[int, int] = {}  # value id of an integer model input -> its node
        self.unit_classes = UnitClasses()  # nodes tied one-to-one (copies, elementwise pairs)
        self.derived: set[int] = set()  # nodes made as one-to-one functions of tied nodes
        self._copies: dict[tuple, Layout] = {}  # signed view -> the nodes materialising it
        self.partitions: list[Partition] = []  # groupings later ops impose on units
        self._sources: dict[int, frozenset[int]] | None = None
        self._broadcast: dict[int, frozenset[int]] | None = None

    # ------------------------------------------------------------ nodes and edges
    @property
    def num_nodes(self) -> int:
        """How many nodes the graph has so far (ids are ``0 .. num_nodes - 1``)."""
        return self.builder.num_nodes

    def add_nodes(self, count: int, role: str, depth: int, activation: str = "none") -> torch.Tensor:
        """Create ``count`` nodes of ``role`` (a name of the vocabulary: built in or registered
        by a plugin) at ``depth``, marked with ``activation``; returns their ids ``[count]``."""
        return self.builder.add_nodes(count, role, depth, activation)

    def add_edges(self, grid: tuple[int, ...], src: torch.Tensor, dst: torch.Tensor, etype: str, *,
                  param: ParamRef | None = None, value: float = 1.0,
                  kernel: tuple[torch.Tensor, ...] = (), spatial: torch.Tensor | None = None) -> None:
        """Add ``prod(grid)`` edges of type ``etype`` from ``src`` to ``dst`` (every tensor
        broadcasts to ``grid``). With ``param`` (a :class:`~gmn_compiler.ir.ParamRef` whose
        shape is ``grid``) edge ``g`` carries ``param.tensor[g]`` and decompiles into it;
        otherwise every edge is structural and carries ``value``. ``kernel`` (per spatial
        dimension) and ``spatial`` fill the edge columns of the same names."""
        self.builder.add_edges(grid, src, dst, etype, param=param, value=value, kernel=kernel, spatial=spatial)

    def depth_of(self, ids: torch.Tensor) -> int:
        """The largest depth among the nodes ``ids`` (0 for none); a new layer's nodes go one deeper."""
        return self.builder.depth_of(ids)

    def set_activation(self, ids: torch.Tensor, activation: str) -> None:
        """Mark the nodes ``ids`` with ``activation`` (prefer :meth:`derive`, which decides
        whether marking the input's nodes is safe or fresh nodes are needed)."""
        self.builder.set_activation(ids, activation)

    def new_value(self, shape: tuple[int, ...], dtype: torch.dtype = torch.float32, name: str = "") -> Value:
        """A value a rule makes for an intermediate result of its own, when it lowers an op
        through other kinds (:meth:`lower_as`); it has no layout until one is set."""
        self._next_value_id -= 1
        return Value(self._next_value_id, tuple(shape), dtype, name)

    def set_node_signature(self, ids: torch.Tensor, sig: tuple) -> None:
        """Name the nodes ``ids`` by ``sig`` (their node column ``signature`` holds its
        identifier): what the nodes hold that their edges do not say (a padded constant's
        value), so that nodes holding other things are told apart."""
        self.builder.node_column("signature")[ids] = L.signature_id(sig)

    def pin(self, ids: torch.Tensor, positions: torch.Tensor) -> None:
        """Give the nodes ``ids`` fixed positions: no automorphism may move them (token rows of
        an embedding table, entries a constant tells apart)."""
        self.builder.pin(ids, positions)

    def mark_constant(self, value: Value) -> None:
        """Record that ``value`` is computed from no model input and no parameter."""
        self.constants.add(value.id)

    def is_constant(self, value: Value) -> bool:
        """Whether ``value`` was marked by :meth:`mark_constant`."""
        return value.id in self.constants

    # ------------------------------------------------------------ layouts
    def layout(self, value: Value) -> Layout | None:
        """The layout of ``value``. An op that changes values (not an aliasing one) never
        sees a signed view (:class:`~gmn_compiler.layout.Layout`, ``sig``): the view is
        first materialised into fresh nodes, once per value."""
        try:
            found = self.layouts[value.id]
        except KeyError:
            raise self.error(f"value {value} has no layout (was its producer lowered?)") from None
        if found is not None and found.sig and not self._in_aliasing_op():
            found = self.materialize(value)
        return found

    def materialize(self, value: Value) -> Layout:
        """Copy a signed view into fresh nodes, one-to-one with its nodes, fed by ``copy``
        edges whose value identifies the signature; the value's layout is replaced, so
        every later consumer shares the copy."""
        layout = self.layouts[value.id]
        if not layout.sig:
            return layout
        copied = self.copy_view(value, layout)
        self.layouts[value.id] = copied
        return copied

    def copy_view(self, value: Value, layout: Layout) -> Layout:
        """``layout``, a signed view (of ``value``), copied into fresh nodes as
        :meth:`materialize` does; for a rule that composes views itself (a reshape after a
        transpose of free axes), so it compiles as the separate ops would."""
        # the same view of the same nodes, taken twice (one transpose per reader, where an
        # exporter keeps one), holds the same data: one copy
        key = (tuple(layout.ids.shape), tuple(layout.ids.reshape(-1).tolist()),
               None if layout.pos is None else (tuple(layout.pos.shape), tuple(layout.pos.reshape(-1).tolist())),
               layout.sig)
        copied = self._copies.get(key)
        if copied is None:
            copied = self.fresh(value, layout.unsigned(), "copy", weight=L.signature_code(layout.sig))
            self._copies[key] = copied
        return copied

    def _in_aliasing_op(self) -> bool:
        return self.op is not None and self.registry.is_aliasing(self.op.kind)

    def require_layout(self, value: Value, constant_axis: int | None = None) -> Layout:
        """The layout of ``value``, which must carry neurons. With ``constant_axis``, a value
        computed from constants only whose entries are known (Fourier position features a
        conv reads) gets one pinned node per index of that axis, named by the constant's
        content: data the model fixed, which no permutation may move."""
        found = self.layout(value)
        if found is None and constant_axis is not None and value.constant is not None:
            found = self._constant_nodes(value, constant_axis)
        if found is None:
            raise self.error(f"operand {value} carries no neurons (it is invariant to every "
                             "permutation), so this op cannot attach weights to it")
        return found

    def _constant_nodes(self, value: Value, axis: int) -> Layout:
        assert value.constant is not None
        axis %= len(value.shape)
        known = self._constant_layouts.get((value.id, axis))
        if known is not None:  # read by several layers: the same nodes
            return known
        size = value.shape[axis]
        ids = self.builder.add_nodes(size, "input", depth=0)
        self.builder.pin(ids, torch.arange(size))
        content = L.signature_id(("constant operand", axis, tuple(value.shape), L.content_digest(value.constant)))
        self.builder.node_column("signature")[ids] = content
        self.anchor(ids, [("constant", content, k) for k in range(size)])
        layout = L.for_axis(ids, len(value.shape), axis)
        self._constant_layouts[(value.id, axis)] = layout  # not its layout: other ops see a constant
        return layout

    def set_layout(self, value: Value, layout: Layout | None) -> None:
        if layout is not None and layout.ndim != len(value.shape):
            raise self.error(f"layout of rank {layout.ndim} for {value} of rank {len(value.shape)}")
        if layout is not None and self._in_aliasing_op():
            # a view of a view: the output inherits its input's signature
            inherited = [self.layouts[v.id].sig for v in self.op.values()
                         if isinstance(v, Value) and self.layouts.get(v.id) is not None]
            prefix = inherited[0] if len(inherited) == 1 else ()
            if prefix and layout.sig[:len(prefix)] != prefix:  # not already carried by map()
                layout = Layout(layout.ids, layout.pos, prefix + layout.sig)
        self.layouts[value.id] = layout

    def integer_sources(self, value: Value) -> list[int]:
        """Nodes of the integer model inputs (token ids) that ``value`` is computed from, so a
        lookup can say which input it reads: two tables read by two id inputs differ."""
        if self._sources is None:
            sources: dict[int, frozenset[int]] = {v: frozenset([n]) for v, n in self.integer_inputs.items()}
            for op in self.ir.ops:
                found = frozenset().union(*(sources.get(v.id, frozenset()) for v in op.values()))
                for out in op.outputs:
                    sources[out.id] = found
            self._sources = sources
        return sorted(self._sources.get(value.id, frozenset()))

    def broadcast_axes(self, value: Value) -> frozenset[int]:
        """Axes along which ``value``'s entries are known to be equal (broadcast by an
        ``expand``; :func:`~gmn_compiler.ir_analysis.broadcast_axes`)."""
        if self._broadcast is None:
            self._broadcast = broadcast_axes(self.ir, self.registry)
        return self._broadcast.get(value.id, frozenset())

    def error(self, message: str) -> LoweringError:
        where = f"{self.op.kind} at {self.op.location}" if self.op else "lowering"
        return LoweringError(f"{where}: {message}")

    # ------------------------------------------------------------ node policy
    def lower_as(self, kind: str, op: Op) -> None:
        """Lower ``op`` with the rule registered for ``kind`` (a rule delegating a case it
        does not handle, e.g. matmul between activations, to the plugin that does)."""
        entry = self.registry.rule(kind)
        if entry is None:
            raise self.error(f"no rule registered for {kind!r}, which this op needs")
        entry.rule(self, op)

    def exclusive(self, value: Value) -> bool:
        """True when this op is the only value-changing consumer of ``value`` and of every
        value sharing its nodes, so the op's output may reuse those nodes."""
        return self._family.uses(value) == 1

    def fresh(self, value: Value, layout: Layout, etype: str, activation: str = "none",
              weight: float = 1.0) -> Layout:
        """New nodes one-to-one with the nodes of ``layout``, each fed by a structural edge of
        type ``etype`` carrying ``weight`` from its original."""
        old = layout.nodes()
        new = self.builder.add_nodes(old.numel(), "neuron", self.builder.depth_of(old) + 1, activation)
        self.builder.add_edges((old.numel(),), old, new, etype, value=weight)
        self.note_copies(new, old)
        mapping = torch.full((int(old.max()) + 1,), -1, dtype=torch.long)
        mapping[old] = new
        return layout.map(lambda t: mapping[t]) if layout.pos is None else Layout(mapping[layout.ids], layout.pos)

    def own(self, value: Value, sig: tuple | None = None) -> Layout | None:
        """Nodes this op may attach edges to (norm statistics, parameter operands): the
        input's own nodes when it is exclusive and carries no activation yet, else fresh
        copies. ``sig`` (a hyper-parameter that differs from the usual one, a
        norm's eps) forces fresh copies whose edges carry its code."""
        layout = self.layout(value)
        if layout is None:
            return None
        if not sig and self.exclusive(value) and not self.builder.has_activation(layout.nodes()):
            return layout
        return self.fresh(value, layout, "activation", weight=L.signature_code(sig) if sig else 1.0)

    def derive(self, value: Value, activation: str, etype: str = "activation",
               sig: tuple | None = None, default: tuple | None = None) -> Layout | None:
        """Layout of an elementwise function of ``value``: its nodes marked with
        ``activation`` when exclusive and unmarked, else fresh nodes carrying it, fed by
        one-to-one edges of type ``etype``. ``sig`` holds what else decides the function
        (a slope, the axis of a softmax, a pooling window): unless it is ``default`` (the
        usual one, which the activation code alone stands for), the nodes also get its
        identifier in the node column ``signature`` (and fresh nodes' edges carry its code),
        so two functions that differ only there (of the same nodes, or of two branches'
        nodes) stay apart."""
        layout = self.layout(value)
        if layout is None:
            return None
        nodes = layout.nodes()
        unusual = bool(sig) and sig != default
        if self.exclusive(value) and not self.builder.has_activation(nodes):
            self.builder.set_activation(nodes, activation, L.signature_id(sig) if unusual else 0)
            return layout
        fresh = self.fresh(value, layout, etype, activation, weight=L.signature_code(sig) if sig else 1.0)
        if unusual:
            self.builder.set_activation(fresh.nodes(), activation, L.signature_id(sig))
        return fresh

    def declare_symmetry(self, nodes: torch.Tensor, what: str, groups: int = 1,
                         permute_groups: bool = False) -> None:
        """Declare that permuting ``nodes`` within each of ``groups`` equal consecutive
        blocks (and, with ``permute_groups``, permuting whole blocks) preserves the model's
        function; the completeness oracle checks that the graph has these automorphisms."""
        where = f" at {self.op.location}" if self.op else ""
        if self.anchored(nodes):  # e.g. rotary-embedded q/k dims: a constant fixes them
            self.partitions.append(Partition(self.root_nodes(nodes).tolist(), list(range(nodes.numel())),
                                             False, what + where + " (fixed)"))
            return
        self.symmetries.append({"nodes": nodes.clone(), "groups": groups,
                                "permute_groups": permute_groups, "what": what + where})

    def link_to_heads(self, heads: torch.Tensor, members: torch.Tensor) -> None:
        """``members[k]`` (value dims) belong to head ``heads[k]``: a declaration that swaps
        these heads moves the members' blocks too, so it holds only while nothing fixes or
        cuts those blocks (checked in :func:`~gmn_compiler.declarations.reconcile`)."""
        present = set(heads.tolist())
        order = {h: i for i, h in enumerate(sorted(present))}
        link = Partition(self.root_nodes(members).tolist(), [order[h] for h in heads.tolist()], True, "value dims")
        for sym in self.symmetries:
            if sym.get("permute_groups") and present <= set(sym["nodes"].tolist()):
                sym.setdefault("moves", []).append(link)

    def refine_symmetry(self, nodes: torch.Tensor, groups: int, what: str,
                        permute_groups: bool) -> None:
        """A later op splits ``nodes`` (or the nodes they copy) into ``groups`` consecutive
        blocks: a GroupNorm (whole blocks may move: ``permute_groups``) or a grouped conv
        reading them (only within-block moves). Declarations over these nodes are narrowed,
        never widened: conflicting groupings keep their common refinement, within blocks."""
        roots = torch.tensor([self._root(n) for n in nodes.tolist()])
        size = roots.numel() // groups
        self.partitions.append(Partition(roots.tolist(), [k // size for k in range(roots.numel())],
                                         permute_groups, what))
        for sym in self.symmetries:
            if sym["nodes"].numel() != roots.numel() or not torch.equal(sym["nodes"], roots):
                continue
            if sym["groups"] == 1:
                sym["groups"], sym["permute_groups"] = groups, permute_groups
            elif sym["groups"] == groups:
                sym["permute_groups"] = sym["permute_groups"] and permute_groups
            else:
                finer = math.lcm(sym["groups"], groups)
                if roots.numel() % finer:
                    sym["withdrawn"] = True
                    continue
                sym["groups"], sym["permute_groups"] = finer, False
            sym["what"] += f", in {groups} groups of {what}"

    def withdraw_symmetries(self, nodes: torch.Tensor) -> None:
        """An op treats parts of a declared node set differently (a split, a slice): its
        nodes are no longer freely permutable, so declarations touching them are dropped."""
        roots = {self._root(n) for n in torch.unique(nodes).tolist()}
        for sym in self.symmetries:
            if not sym.get("withdrawn") and roots & set(sym["nodes"].tolist()):
                sym["withdrawn"] = True

    def withdraw_symmetries_cut_by(self, rows: torch.Tensor) -> None:
        """An op combines the nodes of each row of ``rows`` (``[R, K]`` ids) into one result
        (a norm per group of units). A declared node set of which some row holds two or more
        nodes, but not a whole block, is cut: permuting within a block would move nodes
        between rows. Those declarations are withdrawn."""
        if rows.shape[0] < 2:
            return
        roots = self.root_nodes(rows)
        present = torch.unique(roots)
        for sym in self.symmetries:
            if sym.get("withdrawn") or not bool(torch.isin(sym["nodes"], present).any()):
                continue
            blocks = sym["nodes"].view(sym["groups"], -1)
            block_of = {n: b for b, block in enumerate(blocks.tolist()) for n in block}
            for row in roots.tolist():
                members = [block_of[n] for n in set(row) if n in block_of]
                if len(members) >= 2 and (len(set(members)) > 1 or len(members) != blocks.shape[1]):
                    sym["withdrawn"] = True
                    break

    def anchor(self, nodes: torch.Tensor, keys: list[Hashable] | None = None) -> None:
        """Mark nodes that a constant tells apart (fixed positions), or that combine such
        nodes elementwise: no symmetry is declared over them, and declarations made
        before (the layer that created them) are withdrawn. ``keys`` (one per node of
        ``nodes``, flattened) say what tells each apart, so that a rule can compare groups of
        anchored nodes (:meth:`anchor_keys`): equal keys, told apart alike."""
        flat = nodes.reshape(-1).tolist()
        self._anchored.update(flat)
        if keys is not None:
            self._anchor_keys.update(zip(flat, keys))
        self.withdraw_symmetries(nodes)

    def anchor_keys(self, nodes: torch.Tensor) -> list[Hashable]:
        """Per node (flattened), what anchors it: its own key, else the key of the node it
        copies; ``"free"`` for a node no constant tells apart, ``"unknown"`` for one anchored
        without a key."""
        out: list[Hashable] = []
        for n in nodes.reshape(-1).tolist():
            lineage = self._lineage(n)
            key = next((self._anchor_keys[m] for m in lineage if m in self._anchor_keys), None)
            if key is None:
                key = "unknown" if any(m in self._anchored for m in lineage) else "free"
            out.append(key)
        return out

    def _lineage(self, node: int) -> list[int]:
        """``node``, the node it copies, the node that one copies, ... up to its root."""
        chain = [node]
        while chain[-1] in self._origin:
            chain.append(self._origin[chain[-1]])
        return chain

    def anchored(self, nodes: torch.Tensor) -> bool:
        """True when any of ``nodes``, or a node one of them copies (through any chain of
        copies), is anchored."""
        if not self._anchored:
            return False
        return any(m in self._anchored for n in nodes.reshape(-1).tolist() for m in self._lineage(n))

    def note_copies(self, new: torch.Tensor, old: torch.Tensor) -> None:
        """Record that nodes ``new`` are one-to-one copies of ``old`` (same function of the
        same neuron, e.g. after an activation), so symmetries and heads follow them."""
        self._origin.update(zip(new.tolist(), old.tolist()))
        self.unit_classes.tie(new, old)
        self.derived.update(new.reshape(-1).tolist())

    def partition_units(self, ids: torch.Tensor, block: torch.Tensor, what: str) -> None:
        """An op treats the units ``ids`` (any shape) by blocks ``block`` (same shape): a
        slice keeps some and drops others, a split sends them to different places. Blocks
        never move as a whole; declarations over units tied to these are narrowed."""
        ranks = L.rank_keys(L.keys_per_node(ids, block))
        nodes = torch.tensor(list(ranks), dtype=torch.long)
        self.partitions.append(Partition(self.root_nodes(nodes).tolist(), list(ranks.values()), False, what))

    def tie_units(self, a: torch.Tensor, b: torch.Tensor) -> None:
        """Nodes ``b[k]`` are made from ``a[k]`` one to one (an elementwise op pairing its
        operand's units with new nodes): they must move together, so declarations over
        either are reconciled with partitions of the other."""
        self.unit_classes.tie(a, b)
        self.derived.update(b.reshape(-1).tolist())

    def root_nodes(self, ids: torch.Tensor) -> torch.Tensor:
        """``ids`` with every one-to-one copy (activation, scaling, masking) replaced by the
        node it copies."""
        flat = ids.reshape(-1).tolist()
        return torch.tensor([self._root(n) for n in flat], dtype=torch.long).view(ids.shape)

    def _root(self, node: int) -> int:
        """The node that ``node`` is a one-to-one copy of (through activations, pooling)."""
        while node in self._origin:
            node = self._origin[node]
        return node

    def pin_along(self, ids: torch.Tensor, axes: list[int]) -> None:
        """Fix the position of every node in ``ids`` (an id grid) to its flat index along
        ``axes``; nodes along the other axes (heads, when a table is shared by all heads) keep
        equal positions, so they stay interchangeable."""
        index = torch.zeros(ids.shape, dtype=torch.long)
        for axis in axes:
            shape = [1] * ids.dim()
            shape[axis] = ids.shape[axis]
            index = index * ids.shape[axis] + torch.arange(ids.shape[axis]).view(shape)
        # a node met at several indices (a unit shared by tokens that a table tells apart from
        # another block's) is pinned by its set of indices: equal sets, equal positions
        keys = L.keys_per_node(ids, index)
        single = all(len(key) == 1 for key in keys.values())
        uniq = torch.tensor(list(keys), dtype=torch.long)
        positions = torch.tensor([k[0] for k in keys.values()] if single else list(L.rank_keys(keys).values()),
                                 dtype=torch.long)
        self.pin(uniq, positions)
        # units tied one to one to these (a residual add before) are told apart as well
        self.partition_units(uniq, positions, "positions a constant fixes")
        self.withdraw_symmetries(uniq)
        self.anchor(uniq, [("position", p, k) for p, k in zip(positions.tolist(), self.anchor_keys(uniq))])

    def attached_param_types(self, nodes: torch.Tensor) -> set[str]:
        """Edge types of the parameters :meth:`attach_param` attached to any of ``nodes``: a
        rule attaching another parameter to the same nodes must first check that the two
        operations commute (``(h + a) * w`` and ``h * w + a`` would otherwise look alike)."""
        found: set[str] = set()
        for node in torch.unique(nodes).tolist():
            found |= self._attached.get(node, set())
        return found

    def attach_weight_norm_gain(self, weight: ParamRef, out_ids: torch.Tensor, out_axis: int, depth: int) -> None:
        """For a weight-normalised ``weight`` (``ParamRef.weight_norm``; a no-op otherwise): its
        gain ``g`` as edges from one auxiliary node to the layer's output units ``out_ids`` (the
        weight's axis ``out_axis``), see :mod:`gmn_compiler.weight_norm`. Rules that call it
        declare ``weight_norm=True``."""
        from .weight_norm import attach_gain

        attach_gain(self, weight, out_ids, out_axis, depth)

    def attach_per_channel(self, layout: Layout, shape: tuple[int, ...], channel_axis: int,
                           named: list[tuple[ParamRef | Value | None, str, str]]) -> None:
        """Attach per-channel vectors (a norm's weight, bias, running statistics) to the
        channel nodes of ``layout`` (an activation of ``shape`` whose channels run along
        ``channel_axis``): each ``(ref, etype, role)`` through one auxiliary node of ``role``
        with edges of ``etype`` (:meth:`attach_param`); entries that are None are skipped, an
        operand that is no parameter is refused."""
        ndim = len(shape)
        for ref, etype, role in named:
            if ref is None:
                continue
            if not isinstance(ref, ParamRef):
                raise self.error(f"{etype} operand must be a parameter or buffer")
            view = [1] * ndim
            view[channel_axis] = ref.tensor.numel()
            self.attach_param(layout, shape, ref.apply(lambda t, v=tuple(view): t.reshape(v)), etype, role)

    def attach_param(self, layout: Layout, shape: tuple[int, ...], ref: ParamRef, etype: str,
                     role: str, spatial: torch.Tensor | None = None) -> None:
        """Edges from one new auxiliary node (``role``) to the nodes of ``layout``, carrying
        ``ref`` broadcast against a value of ``shape`` as torch broadcasting would.

        Where the parameter varies along a free axis (a positional table over tokens, a
        LayerNorm weight over (C, H, W)), the edge records the flat position along those
        axes in the ``spatial`` column; ``spatial`` (broadcastable to the parameter, aligned
        to ``shape``) overrides that position.
        """
        ndim = len(shape)
        if ref.tensor.dim() > ndim:
            raise self.error(f"parameter {ref.name} {list(ref.shape)} has more dimensions than "
                             f"the activation {list(shape)}")
        ref = ref.apply(lambda t: t.reshape((1,) * (ndim - t.dim()) + tuple(t.shape)))
        lay = L.align(layout, ndim)
        ref = _drop_broadcast_axes(ref, lay)
        grid = tuple(torch.broadcast_shapes(ref.shape, tuple(lay.ids.shape)))
        free = [a for a in range(ndim) if ref.shape[a] > 1 and lay.ids.shape[a] == 1]
        if spatial is not None:
            free = []
        if free and lay.pos is not None:
            raise self.error(f"parameter {ref.name} varies along free axes {free} of an "
                             "activation whose neuron axis already merges free positions")
        if free:
            spatial = torch.zeros((1,) * ndim, dtype=torch.long)
            stride = 1
            for axis in reversed(free):
                view = [1] * ndim
                view[axis] = grid[axis]
                spatial = spatial + torch.arange(grid[axis]).view(view) * stride
                stride *= grid[axis]
        elif lay.pos is not None and spatial is None:
            spatial = lay.pos
        for node in torch.unique(lay.ids).tolist():
            self._attached.setdefault(node, set()).add(etype)
        aux = self.builder.add_nodes(1, role, self.builder.depth_of(lay.ids.reshape(-1)))
        if ref.transform:  # an elementwise function of the stored values: named by the aux node
            steps = ("param_transform",) + ref.transform + _mask_signature(self, ref, lay)
            self.builder.node_column("signature")[aux] = L.signature_id(steps)
            ref = ParamRef(ref.name, ref.tensor, ref.offsets, ref.kind)
        # Along a neuron axis the parameter does not vary over (a per-dim table shared by all
        # heads), each entry meets one node per index: one edge block per index makes those
        # copies uses of a shared parameter, which the builder ties, so that an automorphism
        # permutes the nodes the same way in every copy (as the shared values require).
        # A symmetry declared per copy (q/k dims permuted independently in each head) no
        # longer holds, so the nodes are anchored: no such symmetry is declared over them.
        # (A parameter that varies along no neuron axis, a shared PReLU slope or temperature,
        # is equal in all its copies whatever moves: one block.)
        neuron_axes = [a for a in range(ndim) if lay.ids.shape[a] > 1]
        varies = any(ref.shape[a] > 1 for a in neuron_axes)
        copies = [a for a in neuron_axes if ref.shape[a] == 1] if varies else []
        if copies:  # each node told apart by the table entry it meets (equal in every copy)
            entry = torch.zeros(lay.ids.shape, dtype=torch.long)
            for a in range(ndim):
                if ref.shape[a] > 1 and lay.ids.shape[a] > 1:
                    view = [1] * ndim
                    view[a] = lay.ids.shape[a]
                    entry = entry * lay.ids.shape[a] + torch.arange(lay.ids.shape[a]).view(view)
            prior = self.anchor_keys(lay.ids)  # what told them apart before, if anything
            self.anchor(lay.ids, [("table", ref.name, e, k) for e, k in zip(entry.reshape(-1).tolist(), prior)])
        block = tuple(1 if a in copies else g for a, g in enumerate(grid))
        if block != ref.shape:
            ref = ref.apply(lambda t: t.expand(block))
        for index in itertools.product(*(range(grid[a]) for a in copies)):
            at = lambda t: _select(t, copies, index)
            self.builder.add_edges(block, aux.view((1,) * ndim), at(lay.ids), etype, param=ref,
                                   spatial=None if spatial is None else at(spatial))


def _select(t: torch.Tensor, axes: list[int], index: tuple[int, ...]) -> torch.Tensor:
    """``t`` narrowed to entry ``index[i]`` along each ``axes[i]`` where it has more than one."""
    for axis, i in zip(axes, index):
        if t.shape[axis] > 1:
            t = t.narrow(axis, i, 1)
    return t


def _mask_signature(ctx: "LoweringContext", ref: ParamRef, layout: Layout) -> tuple:
    """The content of the mask of a masked parameter (``where(mask, w, c)``) and of a constant
    added to it (``w + c``), each of which must be the same for every index of an axis
    carrying neurons: a mask that kept one head's bias and replaced another's would tell the
    heads apart."""
    out: tuple = ()
    for what, data in (("mask", ref.mask), ("offset", ref.offset)):
        if data is None:
            continue
        data = data.expand(ref.shape)
        for axis in range(data.dim()):
            if layout.ids.shape[axis] > 1 and not L.same_along(data, axis):
                raise ctx.error(f"parameter {ref.name} is {'masked by' if what == 'mask' else 'offset by'} a "
                                f"constant that differs along an axis carrying neurons (axis {axis}); only "
                                "constants over free axes (positions) are supported")
        out += ((what, tuple(data.shape), L.content_digest(data)),)
    return out


def _drop_broadcast_axes(ref: ParamRef, layout: Layout) -> ParamRef:
    """Narrow to one entry every free axis along which ``ref`` only repeats itself (an
    ``expand`` over the batch), so the graph does not depend on the example's batch size."""
    offsets = ref.flat_offsets()
    for axis in range(offsets.dim()):
        if offsets.shape[axis] > 1 and layout.ids.shape[axis] == 1:
            same_mask = all(data is None or L.same_along(data.expand(ref.shape), axis) for data in (ref.mask, ref.offset))
            if same_mask and L.same_along(offsets, axis):
                ref = ref.apply(lambda t, axis=axis: t.narrow(axis, 0, 1))
                offsets = ref.flat_offsets()
    return ref


