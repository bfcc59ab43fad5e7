"""ParameterGraph: the compiled graph, its parameter table, decompilation and (de)serialisation."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from torch import nn
from torch_geometric.data import Data

from . import graph_file, schema
from .blocks import EdgeBlocks
from .errors import DecompileError
from .fileio import write_atomically
from .ir import ParamInfo


@dataclass(eq=False)
class ParameterGraph:
    """A compiled parameter graph.

    ``blocks`` is the compact form (schema v2, :mod:`gmn_compiler.blocks`): node columns,
    parameter tensors and edge blocks; :attr:`data` materialises the schema's PyG ``Data``
    from it on first use (see :mod:`gmn_compiler.schema`). ``params`` is the parameter table
    (name, shape, dtype, kind) that ``data.edge_param`` indexes; ``vocabulary`` names the codes
    of the categorical columns (the built-ins plus what plugins registered when it was
    compiled; :meth:`translated` maps them into another vocabulary).
    """

    blocks: EdgeBlocks
    params: list[ParamInfo]
    summary: dict[str, dict[str, int]] = field(default_factory=dict)
    source: str = "torch"
    symmetries: list[dict] = field(default_factory=list)  # declared by rules; not saved
    io_nodes: torch.Tensor | None = None  # nodes of model inputs and outputs; not saved
    onnx_model: object = None  # the source onnx.ModelProto when compiled from ONNX; not saved
    vocabulary: schema.Vocabulary = schema.BUILTIN  # names behind the categorical codes; saved
    _data: Data | None = field(default=None, repr=False)
    # derived from the structure only, computed once: canonical.edge_feature_ids, symmetry.move_values
    _structure_cache: dict = field(default_factory=dict, repr=False)

    @property
    def data(self) -> Data:
        """The graph as a PyG ``Data`` (schema columns), built from :attr:`blocks` on first
        use and kept: edits to its tensors stay with this graph object."""
        if self._data is None:
            self._data = self.blocks.materialize()
        return self._data

    @property
    def num_nodes(self) -> int:
        return self.blocks.num_nodes

    @property
    def num_edges(self) -> int:
        return self.blocks.num_edges

    def edge_values(self) -> torch.Tensor:
        """The value of every edge (``[E]``: ``data.edge_attr[:, 0]``), without building the
        other per-edge columns when :attr:`data` was not built yet."""
        if self._data is not None:
            return self._data.edge_attr[:, 0]
        return self.blocks.edge_values()

    # ------------------------------------------------------------ decompile
    def to_state_dict(self, edge_values: torch.Tensor, *, include_constants: bool = False) -> dict[str, torch.Tensor]:
        """Parameters and buffers rebuilt from one value per edge (shape ``[E]``).

        Returns every parameter and buffer the graph represents, under the model's own names,
        shapes and dtypes. Structural edges are ignored. Entries of a parameter that no edge
        carries (rows of a positional table beyond the example input's length) keep their
        source values, which the graph stores. Where a parameter is represented by several
        edges (a shared parameter, a parameter broadcast onto several nodes), all its copies
        must hold the same value, else :class:`DecompileError` is raised. Tensors the graph
        does not represent (unused parameters, integer buffers such as BatchNorm's
        ``num_batches_tracked``) are not returned; lifted constants only with
        ``include_constants``.
        """
        return self.blocks.state_dict(edge_values, self.params, include_constants=include_constants)

    def write_into(self, model: nn.Module, edge_values: torch.Tensor, *, only: set[int] | None = None) -> None:
        """Decompile ``edge_values`` (``[E]``) straight into ``model``'s own parameters and
        buffers, in place: what ``model.load_state_dict(self.to_state_dict(edge_values),
        strict=False)`` does, without a second copy of the weights. ``model`` is the module the
        graph was compiled from (or one with the same names and shapes); entries no edge
        carries keep the model's values. A :class:`DecompileError` (disagreeing copies,
        missing names, other shapes) is raised before anything is written. ``only``: indices
        into :attr:`params` of the parameters to write (default: all)."""
        with torch.no_grad():
            self.blocks.state_dict(edge_values, self.params, into=model.state_dict(keep_vars=True), only=only)

    def to_onnx_model(self, edge_values: torch.Tensor):
        """The source ONNX model with its initializers (and the constant tensors the graph
        represents) replaced by the decompiled ``edge_values``; transposed, sliced and shared
        initializers are written back in their own layout. Only for graphs compiled from
        ONNX in this process. Returns an ``onnx.ModelProto`` that passed ``onnx.checker``."""
        import onnx
        from onnx import numpy_helper

        from .frontends.onnx_checks import check_onnx

        if self.onnx_model is None:
            raise DecompileError("to_onnx needs a graph compiled from an ONNX model in this process")
        state = self.to_state_dict(edge_values, include_constants=True)
        model = onnx.ModelProto()
        model.CopyFrom(self.onnx_model)
        written = set()
        for init in model.graph.initializer:
            if init.name in state:
                init.CopyFrom(numpy_helper.from_array(state[init.name].numpy(), init.name))
                written.add(init.name)
        for node in model.graph.node:
            if node.op_type == "Constant" and node.output[0] in state:
                for attr in node.attribute:
                    if attr.name == "value":
                        attr.t.CopyFrom(numpy_helper.from_array(state[node.output[0]].numpy(), node.output[0]))
                        written.add(node.output[0])
        self._check_unwritten_constants(state, set(state) - written)
        check_onnx(model)
        return model

    def _check_unwritten_constants(self, state: dict[str, torch.Tensor], unwritten: set[str]) -> None:
        """A constant the ONNX graph computes from other constants (not an initializer, not a
        ``Constant`` node) has nowhere to be written: refuse an edit of it rather than drop it."""
        if not unwritten:
            return
        original = self.to_state_dict(self.edge_values(), include_constants=True)
        for name in sorted(unwritten):
            if not torch.equal(state[name], original[name]):
                raise DecompileError(f"edited values of {name!r} cannot be written back: the ONNX "
                                     "graph computes it from constants (it is no initializer or "
                                     "Constant node); leave its edges' values unchanged")

    def to_onnx(self, edge_values: torch.Tensor, path: str | os.PathLike) -> None:
        """Write :meth:`to_onnx_model` to ``path`` atomically (no partial file on failure)."""
        payload = self.to_onnx_model(edge_values).SerializeToString()

        def write(tmp: str) -> None:
            with open(tmp, "wb") as handle:
                handle.write(payload)

        write_atomically(path, write)

    # ------------------------------------------------------------ I/O
    def to_dict(self) -> dict:
        """Plain tensors, strings and numbers only (loads with ``torch.load(weights_only=True)``):
        the compact form, as :meth:`save` writes it (see :mod:`gmn_compiler.graph_file`)."""
        return graph_file.to_dict(self)

    def save(self, path: str | os.PathLike) -> None:
        """Write the graph as a safetensors file, atomically (temporary file + rename: no
        partial file on failure). Nothing in it needs unpickling (:func:`load`)."""
        graph_file.save(self, path)

    @classmethod
    def from_dict(cls, d: dict) -> "ParameterGraph":
        """Inverse of :meth:`to_dict`; a schema-v1 dict (per-edge tensors) is converted."""
        return cls._from_stored(graph_file.from_dict(d))

    @classmethod
    def _from_stored(cls, stored: graph_file.StoredGraph) -> "ParameterGraph":
        return cls(stored.blocks, stored.params, stored.summary, stored.source, vocabulary=stored.vocabulary)

    def translated(self, vocabulary: schema.Vocabulary) -> Data:
        """A copy of :attr:`data` whose categorical codes are those of ``vocabulary`` (matched
        by name; names ``vocabulary`` lacks become -1, the "unknown" code)."""
        translated = self.vocabulary.translate(self.data, vocabulary)
        return translated.clone() if translated is self.data else translated

    def __repr__(self) -> str:
        return (f"ParameterGraph(nodes={self.num_nodes}, edges={self.num_edges}, "
                f"params={len(self.params)})")


def load(path: str | os.PathLike) -> ParameterGraph:
    """Load a graph written by :meth:`ParameterGraph.save` (a safetensors file, or a schema-v1
    ``torch.save`` file, converted); never unpickles arbitrary objects."""
    return ParameterGraph._from_stored(graph_file.load(path))
