"""ParameterGraph: the compiled graph, its parameter table, decompilation and (de)serialisation."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from torch_geometric.data import Data

from . import schema
from .errors import CompileError, DecompileError
from .fileio import write_atomically
from .ir import ParamInfo

FORMAT = "gmn-compiler-graph"


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


@dataclass(eq=False)
class ParameterGraph:
    """A compiled parameter graph.

    ``data`` follows schema v1 (see :mod:`gmn_compiler.schema`); ``params`` is the parameter
    table (name, shape, dtype, kind) that ``data.edge_param`` indexes; ``vocabulary`` names
    the codes of ``data``'s categorical columns (the built-ins plus what plugins registered
    when it was compiled; :meth:`translated` maps them into another vocabulary).
    """

    data: Data
    params: list[ParamInfo]
    summary: dict[str, dict[str, int]] = field(default_factory=dict)
    source: str = "torch"
    symmetries: list[dict] = field(default_factory=list)  # declared by rules; not saved
    io_nodes: torch.Tensor | None = None  # nodes of model inputs and outputs; not saved
    onnx_model: object = None  # the source onnx.ModelProto when compiled from ONNX; not saved
    vocabulary: schema.Vocabulary = schema.BUILTIN  # names behind the categorical codes; saved

    # ------------------------------------------------------------ decompile
    def to_state_dict(self, edge_values: torch.Tensor, *, include_constants: bool = False) -> dict[str, torch.Tensor]:
        """Parameters and buffers rebuilt from one value per edge (shape ``[E]``).

        Returns every parameter and buffer the graph represents, under the model's own names,
        shapes and dtypes. Structural edges are ignored. Entries of a parameter that no edge
        carries (rows of a positional table beyond the example input's length) keep their
        source values, which the graph stores for that purpose. Where a parameter is represented by
        several edges (a shared parameter, a parameter broadcast onto several nodes), all its
        copies must hold the same value, else :class:`DecompileError` is raised. Tensors the
        graph does not represent (unused parameters, integer buffers such as BatchNorm's
        ``num_batches_tracked``) are not returned; lifted constants only with
        ``include_constants``.
        """
        data = self.data
        values = torch.as_tensor(edge_values)
        if values.dim() != 1 or values.numel() != data.edge_index.shape[1]:
            raise DecompileError(f"expected one value per edge, shape [{data.edge_index.shape[1]}], "
                                 f"got {list(values.shape)}")
        mask = data.edge_param >= 0
        param, offset, vals = data.edge_param[mask], data.edge_offset[mask], values[mask]
        numels = torch.tensor([_numel(p.shape) for p in self.params], dtype=torch.long)
        base = torch.cumsum(numels, 0) - numels
        flat_index = base[param] + offset
        total = int(numels.sum())
        counts = torch.bincount(flat_index, minlength=total)
        flat = torch.empty(total, dtype=vals.dtype)
        for i, info in enumerate(self.params):
            if info.fill is not None:  # entries no edge carries keep their source value
                flat[int(base[i]):int(base[i]) + int(numels[i])] = info.fill.reshape(-1).to(vals.dtype)
        flat[flat_index] = vals
        if bool((counts > 1).any()):
            low = torch.full((total,), float("inf"), dtype=vals.dtype).scatter_reduce(0, flat_index, vals, "amin")
            high = torch.full((total,), float("-inf"), dtype=vals.dtype).scatter_reduce(0, flat_index, vals, "amax")
            disagree = (counts > 1) & (low != high) & ~(torch.isnan(low) & torch.isnan(high))
            if bool(disagree.any()):
                bad = self._param_at(int(torch.nonzero(disagree)[0]), base)
                raise DecompileError(f"copies of parameter {bad!r} disagree ({int(disagree.sum())} "
                                     "entries): a parameter used several times must get one value "
                                     "per entry; average the copies first if that is intended")
        out: dict[str, torch.Tensor] = {}
        for i, info in enumerate(self.params):
            if info.kind == "constant" and not include_constants:
                continue
            start, n = int(base[i]), int(numels[i])
            if info.fill is None and bool((counts[start:start + n] == 0).any()):
                raise DecompileError(f"parameter {info.name!r} is only partly represented in the graph")
            out[info.name] = flat[start:start + n].view(info.shape).to(info.dtype).clone()
            for alias in info.aliases:  # tied weights: every name of the tensor
                out[alias] = out[info.name]
        return out

    def _param_at(self, flat: int, base: torch.Tensor) -> str:
        index = int(torch.searchsorted(base, torch.tensor(flat), right=True)) - 1
        return self.params[index].name

    def to_onnx_model(self, edge_values: torch.Tensor):
        """The source ONNX model with its initializers (and the constant tensors the graph
        represents) replaced by the decompiled ``edge_values``; transposed, sliced and shared
        initializers are written back in their own layout. Only for graphs compiled from
        ONNX in this process. Returns an ``onnx.ModelProto`` that passed ``onnx.checker``."""
        import onnx
        from onnx import numpy_helper

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
        onnx.checker.check_model(model)
        return model

    def _check_unwritten_constants(self, state: dict[str, torch.Tensor], unwritten: set[str]) -> None:
        """A constant the ONNX graph computes from other constants (not an initializer, not a
        ``Constant`` node) has nowhere to be written: refuse an edit of it rather than drop it."""
        if not unwritten:
            return
        original = self.to_state_dict(self.data.edge_attr[:, 0], include_constants=True)
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
        """Plain tensors, strings and numbers only (loads with ``weights_only=True``)."""
        d = self.data
        return {
            "format": FORMAT,
            "schema": schema.describe(self.vocabulary),
            "source": self.source,
            "x": d.x, "edge_index": d.edge_index, "edge_attr": d.edge_attr,
            "edge_param": d.edge_param, "edge_offset": d.edge_offset, "num_nodes": int(d.num_nodes),
            "params": [{"name": p.name, "shape": list(p.shape), "dtype": _dtype_name(p.dtype),
                        "kind": p.kind, "aliases": list(p.aliases), "fill": p.fill}
                       for p in self.params],
            "summary": self.summary,
        }

    def save(self, path: str | os.PathLike) -> None:
        """Write the graph atomically (temporary file + rename: no partial file on failure)."""
        payload = self.to_dict()
        write_atomically(path, lambda tmp: torch.save(payload, tmp))

    @classmethod
    def from_dict(cls, d: dict) -> "ParameterGraph":
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise CompileError("not a gmn-compiler graph file (missing format marker)")
        version = d["schema"]["version"]
        if version != schema.SCHEMA_VERSION:
            raise CompileError(f"graph uses schema v{version}; this gmn-compiler reads v{schema.SCHEMA_VERSION}")
        data = Data(x=d["x"], edge_index=d["edge_index"], edge_attr=d["edge_attr"],
                    edge_param=d["edge_param"], edge_offset=d["edge_offset"], num_nodes=d["num_nodes"])
        params = [ParamInfo(p["name"], tuple(p["shape"]), getattr(torch, p["dtype"]), p["kind"],
                            tuple(p.get("aliases", ())), p.get("fill")) for p in d["params"]]
        try:
            vocabulary = schema.Vocabulary.from_dict(d["schema"])
        except (TypeError, ValueError) as exc:
            raise CompileError(f"graph file has an invalid vocabulary: {exc}") from None
        return cls(data, params, d.get("summary", {}), d.get("source", "torch"), vocabulary=vocabulary)

    def translated(self, vocabulary: schema.Vocabulary) -> Data:
        """A copy of :attr:`data` whose categorical codes are those of ``vocabulary`` (matched
        by name; names ``vocabulary`` lacks become -1, the "unknown" code)."""
        translated = self.vocabulary.translate(self.data, vocabulary)
        return translated.clone() if translated is self.data else translated

    def __repr__(self) -> str:
        return (f"ParameterGraph(nodes={int(self.data.num_nodes)}, edges={self.data.edge_index.shape[1]}, "
                f"params={len(self.params)})")


def load(path: str | os.PathLike) -> ParameterGraph:
    """Load a graph written by :meth:`ParameterGraph.save` (never unpickles arbitrary objects)."""
    if not os.path.exists(path):
        raise CompileError(f"{path}: no such file")
    try:
        d = torch.load(path, weights_only=True)
    except Exception as exc:
        raise CompileError(f"{path}: not a readable graph file ({type(exc).__name__})") from exc
    return ParameterGraph.from_dict(d)


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n
