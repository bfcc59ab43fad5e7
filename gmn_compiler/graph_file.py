"""Graph files: the compact form of a :class:`~gmn_compiler.graph.ParameterGraph` on disk.

A graph file is a `safetensors <https://github.com/huggingface/safetensors>`_ file (no pickle:
loading it runs no code, and tensors are read from a memory map) holding

- ``nodes``: int32 ``[N, len(NODE_COLUMNS)]``, the node columns;
- ``param.<i>``: parameter table row ``i``'s tensor, in its own shape and dtype (the stored
  weights: a graph file is about the size of the model's weights);
- ``block.<k>.src`` / ``.dst`` / ``.offsets`` / ``.kernel<j>`` / ``.spatial`` / ``.value``:
  block ``k``'s compact broadcast tensors (int32 where the values fit), each present only when
  the block has it;

and one metadata entry ``graph``, a JSON object: ``schema`` (version, columns, vocabularies),
``source``, ``summary``, ``dtype`` (of the float columns), ``params`` (name, shape, dtype,
kind, aliases per row) and ``blocks`` (per block: ``grid``, ``etype``, ``param``,
``offsets`` -- null for the identity, ``"tensor"``, or ``{"base", "strides"}`` --,
``value_dtype``, ``value`` -- a number or ``"tensor"`` --, the number of ``kernel`` tensors and
whether it has ``spatial``). :func:`to_dict` holds the same content as one dict for
``torch.save`` (``{"format", "meta", "tensors"}``).

Schema-v1 files (``torch.save`` of per-edge tensors) still load: :func:`from_dict` converts
them, rebuilding each parameter from its edges and the blocks from runs of edges of one
parameter and edge type.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from . import schema
from .blocks import Block, EdgeBlocks
from .offsets import Affine, Offsets, affine_of
from .errors import CompileError
from .fileio import write_atomically
from .ir import ParamInfo

FORMAT = "gmn-compiler-graph"
READABLE_VERSIONS = (1, 2)


@dataclass(eq=False)
class StoredGraph:
    """What a graph file holds: the fields a ParameterGraph is built from."""

    blocks: EdgeBlocks
    params: list[ParamInfo]
    summary: dict = field(default_factory=dict)
    source: str = "torch"
    vocabulary: schema.Vocabulary = schema.BUILTIN


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _dtype(name: Any, where: str) -> torch.dtype:
    dtype = getattr(torch, str(name), None)
    if not isinstance(dtype, torch.dtype):
        raise CompileError(f"{where}: unknown dtype {name!r}")
    return dtype


def _small_ints(t: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of an index tensor, as int32 when its values fit."""
    t = t.detach().contiguous().clone()
    if t.numel() and t.dtype == torch.long and int(t.min()) >= -2**31 and int(t.max()) < 2**31:
        t = t.to(torch.int32)
    return t


# --------------------------------------------------------------------------- encode
def encode(graph: StoredGraph) -> tuple[dict[str, torch.Tensor], dict]:
    """``(tensors, meta)`` of ``graph`` (a ParameterGraph or :class:`StoredGraph`), as
    described in the module docstring."""
    blocks: EdgeBlocks = graph.blocks
    tensors: dict[str, torch.Tensor] = {"nodes": _small_ints(blocks.nodes)}
    storages: set[int] = set()
    for i, source in enumerate(blocks.sources):
        t = source.detach().contiguous()
        key = t.untyped_storage().data_ptr()
        if key in storages:  # safetensors refuses tensors that share memory
            t = t.clone()
        storages.add(t.untyped_storage().data_ptr())
        tensors[f"param.{i}"] = t
    described = []
    for k, block in enumerate(blocks.blocks):
        described.append(_encode_block(block, f"block.{k}", tensors))
    meta = {
        "schema": schema.describe(graph.vocabulary),
        "source": graph.source,
        "summary": graph.summary,
        "dtype": _dtype_name(blocks.dtype),
        "params": [{"name": p.name, "shape": list(p.shape), "dtype": _dtype_name(p.dtype),
                    "kind": p.kind, "aliases": list(p.aliases)} for p in graph.params],
        "blocks": described,
    }
    return tensors, meta


def _encode_block(block: Block, prefix: str, tensors: dict[str, torch.Tensor]) -> dict:
    tensors[f"{prefix}.src"] = _small_ints(block.src)
    tensors[f"{prefix}.dst"] = _small_ints(block.dst)
    for j, kernel in enumerate(block.kernel):
        tensors[f"{prefix}.kernel{j}"] = _small_ints(kernel)
    if block.spatial is not None:
        tensors[f"{prefix}.spatial"] = _small_ints(block.spatial)
    offsets: Any = None
    if isinstance(block.offsets, Affine):
        offsets = {"base": block.offsets.base, "strides": list(block.offsets.strides)}
    elif isinstance(block.offsets, torch.Tensor):
        offsets = "tensor"
        tensors[f"{prefix}.offsets"] = _small_ints(block.offsets)
    value: Any = block.value
    if isinstance(value, torch.Tensor):
        tensors[f"{prefix}.value"] = value.detach().contiguous().clone()
        value = "tensor"
    return {"grid": list(block.grid), "etype": block.etype, "param": block.param, "offsets": offsets,
            "value_dtype": None if block.value_dtype is None else _dtype_name(block.value_dtype),
            "value": None if block.param >= 0 else value if value == "tensor" else float(value),
            "kernel": len(block.kernel), "spatial": block.spatial is not None}


def to_dict(graph: StoredGraph) -> dict:
    tensors, meta = encode(graph)
    return {"format": FORMAT, "meta": meta, "tensors": tensors}


def save(graph: StoredGraph, path: str | os.PathLike) -> None:
    """Write ``graph`` to ``path`` as a safetensors file, atomically."""
    tensors, meta = encode(graph)
    metadata = {"format": FORMAT, "graph": json.dumps(meta)}
    write_atomically(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


# --------------------------------------------------------------------------- decode
def decode(tensors: dict[str, torch.Tensor], meta: dict, where: str = "graph") -> StoredGraph:
    """The graph of ``(tensors, meta)``; a one-line :class:`CompileError` naming what is
    wrong when they do not describe a valid graph."""
    try:
        version = meta["schema"]["version"]
        vocabulary = _vocabulary(meta["schema"], where)
        params = [ParamInfo(str(p["name"]), tuple(int(s) for s in p["shape"]), _dtype(p["dtype"], where),
                            str(p["kind"]), tuple(p.get("aliases", ()))) for p in meta["params"]]
        dtype = _dtype(meta["dtype"], where)
        described = meta["blocks"]
    except CompileError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise CompileError(f"{where}: invalid graph metadata ({type(exc).__name__}: {exc})") from None
    if version != schema.SCHEMA_VERSION:
        raise CompileError(f"{where}: graph uses schema v{version}; this gmn-compiler reads "
                           f"v{schema.SCHEMA_VERSION} (and converts v1 files)")
    nodes = _tensor(tensors, "nodes", where).long()
    if nodes.dim() != 2 or nodes.shape[1] != len(schema.NODE_COLUMNS):
        raise CompileError(f"{where}: nodes must be [N, {len(schema.NODE_COLUMNS)}]")
    sources = []
    for i, info in enumerate(params):
        source = _tensor(tensors, f"param.{i}", where)
        if tuple(source.shape) != info.shape or source.dtype != info.dtype:
            raise CompileError(f"{where}: parameter {info.name!r} is stored as {list(source.shape)} "
                               f"{source.dtype}, the table says {list(info.shape)} {info.dtype}")
        sources.append(source)
    graph = EdgeBlocks(nodes, [], sources, dtype)
    limits = _Limits(graph.num_nodes, [s.numel() for s in sources], vocabulary.size("edge_types"))
    for k, d in enumerate(described):
        graph.blocks.append(_decode_block(d, f"block.{k}", tensors, limits, f"{where}: block {k}"))
    return StoredGraph(graph, params, meta.get("summary", {}), str(meta.get("source", "torch")), vocabulary)


def _vocabulary(described: dict, where: str) -> schema.Vocabulary:
    try:
        return schema.Vocabulary.from_dict(described)
    except (TypeError, ValueError) as exc:
        raise CompileError(f"{where}: graph file has an invalid vocabulary: {exc}") from None


def _tensor(tensors: dict[str, torch.Tensor], key: str, where: str) -> torch.Tensor:
    t = tensors.get(key)
    if not isinstance(t, torch.Tensor):
        raise CompileError(f"{where}: tensor {key!r} is missing")
    return t


class _Limits:
    def __init__(self, num_nodes: int, numels: list[int], num_types: int) -> None:
        self.num_nodes, self.numels, self.num_types = num_nodes, numels, num_types


def _decode_block(d: dict, prefix: str, tensors: dict[str, torch.Tensor], limits: _Limits,
                  where: str) -> Block:
    try:
        grid = tuple(int(g) for g in d["grid"])
        etype, param = int(d["etype"]), int(d["param"])
        kernels, has_spatial = int(d["kernel"]), bool(d["spatial"])
        value_dtype = None if d["value_dtype"] is None else _dtype(d["value_dtype"], where)
        raw_offsets, raw_value = d["offsets"], d["value"]
    except (KeyError, TypeError, ValueError) as exc:
        raise CompileError(f"{where}: invalid description ({type(exc).__name__}: {exc})") from None
    if any(g <= 0 for g in grid) or not 0 <= etype < limits.num_types or not -1 <= param < len(limits.numels):
        raise CompileError(f"{where}: grid {list(grid)}, edge type {etype} or parameter {param} out of range")

    def index(name: str, low: int, high: int) -> torch.Tensor:
        t = _tensor(tensors, f"{prefix}.{name}", where).long()
        _check_broadcast(t, grid, f"{where}: {name}")
        if t.numel() and (int(t.min()) < low or int(t.max()) >= high):
            raise CompileError(f"{where}: {name} has values outside [{low}, {high})")
        return t

    src = index("src", 0, limits.num_nodes)
    dst = index("dst", 0, limits.num_nodes)
    kernel = tuple(index(f"kernel{j}", -1, 2**31) for j in range(kernels))
    spatial = index("spatial", -1, 2**31) if has_spatial else None
    if param < 0:
        value: torch.Tensor | float
        if raw_value == "tensor":
            value = _tensor(tensors, f"{prefix}.value", where)
            _check_broadcast(value, grid, f"{where}: value")
        else:
            value = float(raw_value)
        return Block(grid, etype, src, dst, value=value, kernel=kernel, spatial=spatial)
    numel = limits.numels[param]
    offsets: Offsets = None
    if raw_offsets is None:
        if int(torch.tensor(grid).prod()) != numel:
            raise CompileError(f"{where}: identity offsets need a grid of the parameter's {numel} entries")
    elif raw_offsets == "tensor":
        offsets = index("offsets", 0, numel)
    else:
        offsets = Affine(int(raw_offsets["base"]), tuple(int(s) for s in raw_offsets["strides"]))
        low = offsets.base + sum(s * (g - 1) for s, g in zip(offsets.strides, grid) if s < 0)
        high = offsets.base + sum(s * (g - 1) for s, g in zip(offsets.strides, grid) if s > 0)
        if len(offsets.strides) != len(grid) or low < 0 or high >= numel:
            raise CompileError(f"{where}: affine offsets outside the parameter's {numel} entries")
    return Block(grid, etype, src, dst, param, offsets, value_dtype, kernel=kernel, spatial=spatial)


def _check_broadcast(t: torch.Tensor, grid: tuple[int, ...], where: str) -> None:
    ok = t.dim() <= len(grid) and all(s in (1, g) for s, g in zip(t.shape[::-1], grid[::-1]))
    if not ok:
        raise CompileError(f"{where}: shape {list(t.shape)} does not broadcast to the grid {list(grid)}")


def from_dict(d: Any, where: str = "graph") -> StoredGraph:
    """A ParameterGraph from :func:`to_dict`'s dict, or from a schema-v1 dict (converted)."""
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise CompileError(f"{where}: not a gmn-compiler graph file (missing format marker)")
    if "meta" in d:
        if not isinstance(d.get("tensors"), dict) or not isinstance(d["meta"], dict):
            raise CompileError(f"{where}: not a gmn-compiler graph file (no tensors)")
        return decode(d["tensors"], d["meta"], where)
    version = d.get("schema", {}).get("version") if isinstance(d.get("schema"), dict) else None
    if version != 1:
        raise CompileError(f"{where}: graph uses schema v{version}; this gmn-compiler reads "
                           f"v{schema.SCHEMA_VERSION} (and converts v1 files)")
    return from_v1(d, where)


def from_v1(d: dict, where: str = "graph") -> StoredGraph:
    """Convert a schema-v1 dict (``x``, ``edge_index``, ``edge_attr``, ``edge_param``,
    ``edge_offset``, ``params`` with ``fill``) into a ParameterGraph: each parameter is
    rebuilt from its edges, each maximal run of edges of one parameter and edge type becomes a
    block, so the materialised graph equals the v1 one edge for edge."""
    try:
        x, edge_index, edge_attr = d["x"], d["edge_index"], d["edge_attr"]
        edge_param, edge_offset = d["edge_param"].long(), d["edge_offset"].long()
        params = [ParamInfo(p["name"], tuple(p["shape"]), _dtype(p["dtype"], where), p["kind"],
                            tuple(p.get("aliases", ())), p.get("fill")) for p in d["params"]]
        vocabulary = _vocabulary(d["schema"], where)
    except CompileError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CompileError(f"{where}: invalid schema-v1 graph ({type(exc).__name__}: {exc})") from None
    values = edge_attr[:, 0]
    sources = [_v1_source(info, values[edge_param == i], edge_offset[edge_param == i], where)
               for i, info in enumerate(params)]
    nodes = x.long()
    missing = len(schema.NODE_COLUMNS) - nodes.shape[1]  # v2 added the column "signature"
    if missing > 0:
        nodes = torch.cat([nodes, torch.zeros(nodes.shape[0], missing, dtype=torch.long)], dim=1)
    graph = EdgeBlocks(nodes, [], sources, edge_attr.dtype)
    key = edge_param * (1 << 20) + edge_attr[:, 1].long()
    cuts = torch.nonzero(key[1:] != key[:-1]).reshape(-1) + 1
    bounds = [0, *cuts.tolist(), int(key.numel())] if key.numel() else [0]
    for s, e in zip(bounds[:-1], bounds[1:]):
        graph.blocks.append(_v1_block(s, e, edge_index, edge_attr, int(edge_param[s]), edge_offset))
    return StoredGraph(graph, [ParamInfo(p.name, p.shape, p.dtype, p.kind, p.aliases) for p in params],
                       d.get("summary", {}), d.get("source", "torch"), vocabulary)


def _v1_source(info: ParamInfo, values: torch.Tensor, offsets: torch.Tensor, where: str) -> torch.Tensor:
    numel = int(torch.tensor(info.shape).prod()) if info.shape else 1
    flat = torch.zeros(numel, dtype=values.dtype)
    if info.fill is not None:
        flat.copy_(info.fill.reshape(-1).to(values.dtype))
    elif torch.unique(offsets).numel() != numel:
        raise CompileError(f"{where}: parameter {info.name!r} is only partly represented in the graph")
    flat[offsets] = values
    return flat.view(info.shape).to(info.dtype)


def _v1_block(s: int, e: int, edge_index, edge_attr, param: int, edge_offset) -> Block:
    n = e - s
    columns = [_column(edge_attr[s:e, c].long()) for c in range(2, len(schema.EDGE_COLUMNS))]
    kernel = columns[:3]
    while kernel and kernel[-1] is None:
        kernel.pop()
    kernel_t = tuple(k if k is not None else torch.tensor([-1]) for k in kernel)
    common = dict(grid=(n,), etype=int(edge_attr[s, 1]), src=edge_index[0, s:e].clone(),
                  dst=edge_index[1, s:e].clone(), kernel=kernel_t, spatial=columns[3])
    if param < 0:
        value = edge_attr[s:e, 0]
        same = bool((value == value[0]).all())
        return Block(**common, value=float(value[0]) if same else value.clone())
    offsets = edge_offset[s:e]
    return Block(**common, param=param, offsets=affine_of(offsets, (n,)) or offsets.clone())


def _column(t: torch.Tensor) -> torch.Tensor | None:
    """A per-edge feature column compacted: None when it is -1 throughout, one entry when
    constant."""
    if bool((t == -1).all()):
        return None
    return t[:1].clone() if bool((t == t[0]).all()) else t.clone()


def load(path: str | os.PathLike) -> StoredGraph:
    """Load a graph file (safetensors, or a schema-v1 ``torch.save`` file with
    ``weights_only=True``). Bad input is a one-line :class:`CompileError`."""
    if not os.path.exists(path):
        raise CompileError(f"{path}: no such file")
    with open(path, "rb") as handle:
        head = handle.read(2)
    if head == b"PK":  # a torch.save zip archive: schema v1, or to_dict's form
        try:
            d = torch.load(path, weights_only=True)
        except Exception as exc:
            raise CompileError(f"{path}: not a readable graph file ({type(exc).__name__})") from exc
        return from_dict(d, str(path))
    try:
        with safe_open(os.fspath(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            if metadata.get("format") != FORMAT:
                raise CompileError(f"{path}: not a gmn-compiler graph file (missing format marker)")
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        meta = json.loads(metadata["graph"])
    except CompileError:
        raise
    except Exception as exc:
        raise CompileError(f"{path}: not a readable graph file ({type(exc).__name__})") from exc
    if not isinstance(meta, dict):
        raise CompileError(f"{path}: invalid graph metadata")
    return decode(tensors, meta, str(path))
