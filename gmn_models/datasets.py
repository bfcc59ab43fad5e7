"""Datasets of compiled parameter graphs, one graph per model of a *model folder*.

The model folder format (``models.csv`` with the columns ``path``, ``builder``,
``builder_kwargs``, ``input_shape``, then label / metadata columns, next to the model files)
is defined in :mod:`gmn_models.model_folder`, whose reading names (:class:`ModelRow`,
:func:`read_model_table`, :func:`parse_metadata`, :func:`build_module`, :func:`model_file`,
:func:`example_input`, :data:`RESERVED_COLUMNS`) this module re-exports. An unknown label
column is a :class:`ModelFolderError` (one line), as is a folder the format refuses. A bad
*row* (missing file, malformed JSON, unknown file type, a path outside the folder) and a bad
*model* (corrupt file, unsupported op, unregistered builder) are skipped and listed in
``dataset.failures`` as ``(path, reason)``.

Each graph is a schema-v1 ``Data`` (``x``, ``edge_index``, ``edge_attr``, ``edge_param``,
``edge_offset``, ``num_nodes``; float tensors stored as float32) plus ``y`` float ``[1, L]``
(the label columns) and ``model_id`` long ``[1]``, the model's row in ``models.csv`` (0-based).
``dataset.metadata[model_id]`` is that row as a dict (every row, compiled or not);
``dataset.model_ids[i]`` is the ``model_id`` of the i-th stored graph. The categorical codes
of every graph are those of ``dataset.vocabulary`` (the built-ins plus the names the loaded
plugins registered; graphs are mapped into it by name), which a model is built with
(``GMN(vocabulary=dataset.vocabulary)``; ``gmn-train`` does this).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from torch_geometric.data import Data, InMemoryDataset, OnDiskDataset

from gmn_compiler import schema
from gmn_compiler.fileio import write_atomically
from gmn_compiler.registry import default_registry

from .model_folder import (MODEL_SUFFIXES, RESERVED_COLUMNS, ModelFolderError, ModelRow,  # noqa: F401
                           build_module, example_input, model_file, parse_metadata, read_model_table)
from .model_folder import json_digest as _digest

__all__ = ["ModelGraphDataset", "OnDiskModelGraphDataset", "ModelFolderError", "ModelRow",
           "read_model_table", "parse_metadata", "build_module", "model_file", "example_input",
           "RESERVED_COLUMNS"]

_CACHE_FORMAT = "gmn-models-dataset-v1"


def _describe(fn: Any) -> str:
    """A stable description of a transform / filter (no memory addresses)."""
    return "" if fn is None else re.sub(r" at 0x[0-9a-fA-F]+", "", repr(fn))


# ------------------------------------------------------------------ shared dataset logic
class _FolderDataset:
    """Reads the table, checks the labels, compiles and yields labelled graphs; names the
    cache files (graphs with ``graphs_suffix``, then the metadata written last)."""

    graphs_suffix = ".pt"

    @property
    def raw_file_names(self) -> list[str]:
        return []

    @property
    def processed_file_names(self) -> list[str]:
        return [f"graphs-{self._key}{self.graphs_suffix}", f"meta-{self._key}.json"]

    def _setup(self, source: str | os.PathLike, label_columns: Sequence[str] | str, workers: int,
               progress: bool | None) -> None:
        self.source = Path(source)
        self.label_columns = (label_columns,) if isinstance(label_columns, str) else tuple(label_columns)
        self.workers, self.progress = workers, progress
        self.rows = read_model_table(self.source)
        self.metadata = parse_metadata(self.rows)
        self.failures: list[tuple[str, str]] = []
        self.model_ids: list[int] = []  # model_id of each stored graph, in dataset order
        # every graph's categorical codes are mapped into this one by name (plugins may
        # register names; their codes depend on the plugins loaded)
        self.vocabulary = default_registry().vocabulary
        self._check_labels()
        table = hashlib.sha1((self.source / "models.csv").read_bytes()).hexdigest()
        self._key = _digest([_CACHE_FORMAT, schema.SCHEMA_VERSION, os.fspath(self.source.resolve()), table,
                             list(self.label_columns), [r.key() for r in self.rows], self.vocabulary.to_dict(),
                             _describe(getattr(self, "pre_transform", None)),
                             _describe(getattr(self, "pre_filter", None))])[:16]

    @staticmethod
    def _drop_pyg_markers(root: str | os.PathLike) -> None:
        """PyG records pre_transform / pre_filter in pickles it later loads with
        ``weights_only=False``; the cache key covers them instead, so the files go."""
        for name in ("pre_transform.pt", "pre_filter.pt"):
            Path(os.path.expanduser(os.fspath(root)), "processed", name).unlink(missing_ok=True)

    def _check_labels(self) -> None:
        if not self.label_columns:
            raise ModelFolderError("label_columns is empty: name at least one column of models.csv")
        known = list(self.rows[0].columns)
        for name in self.label_columns:
            if name not in known:
                raise ModelFolderError(f"label column {name!r} is not in {self.source / 'models.csv'}; "
                                       f"label/metadata columns: {known}")
            for meta, row in zip(self.metadata, self.rows):
                value = meta[name]
                if not row.problem and not isinstance(value, float):
                    raise ModelFolderError(f"label column {name!r}: row {row.index} ({row.path}) holds "
                                           f"{value!r}, not a number")

    def _compiled_dir(self, root: str) -> Path:
        return Path(root) / f"compiled-{_digest(os.fspath(self.source.resolve()))[:10]}"

    def _labelled_graphs(self, root: str) -> Iterator[Data]:
        from .compile_folder import CompiledFolder, compile_folder

        report = compile_folder(self.source, self._compiled_dir(root), workers=self.workers,
                                resume=True, progress=self.progress)
        self.failures = list(report.failures)
        reader = CompiledFolder(report.out_dir)
        for row, meta in zip(self.rows, self.metadata):
            data = reader.graph(row, self.vocabulary)
            if data is None:
                continue
            data.x = data.x.float()
            data.edge_attr = data.edge_attr.float()
            data.y = torch.tensor([[meta[c] for c in self.label_columns]], dtype=torch.float32)
            data.model_id = torch.tensor([row.index], dtype=torch.long)
            yield data

    def _meta_payload(self) -> dict:
        return {"format": _CACHE_FORMAT, "key": self._key, "label_columns": list(self.label_columns),
                "metadata": self.metadata, "failures": [list(f) for f in self.failures],
                "model_ids": self.model_ids, "vocabulary": self.vocabulary.to_dict()}

    def _load_meta(self, path: str) -> None:
        payload = json.loads(Path(path).read_text(encoding="utf-8"))
        self.metadata = payload["metadata"]
        self.failures = [tuple(f) for f in payload["failures"]]
        self.model_ids = list(payload["model_ids"])
        self.vocabulary = schema.Vocabulary.from_dict(payload.get("vocabulary", {}))


def _write_json(path: str, payload: dict) -> None:
    text = json.dumps(payload)
    write_atomically(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def _no_graphs(source: Path, failures: list[tuple[str, str]]) -> ModelFolderError:
    first = f"; first failure: {failures[0][0]}: {failures[0][1]}" if failures else ""
    return ModelFolderError(f"{source}: no model could be compiled ({len(failures)} failed){first}")


class ModelGraphDataset(_FolderDataset, InMemoryDataset):
    """In-memory PyG dataset of the compiled models of the folder ``source``.

    ``root``: cache directory; the folder is compiled once (:func:`compile_folder` into
    ``root/compiled-*``, resumable) and the collated graphs and metadata are cached in
    ``root/processed`` (plain tensors loaded with ``weights_only=True`` and JSON). The cache is
    keyed by the folder, the content of ``models.csv``, the label columns, the schema version and
    each model file's size and mtime, so any change reprocesses (and recompiles only the models
    that changed). ``label_columns``: numeric columns
    of ``models.csv`` that become ``y``. ``workers``: compile processes. ``transform`` /
    ``pre_transform`` / ``pre_filter`` as in PyG (the last two are part of the cache key).
    ``force_reload`` rebuilds the collated cache but reuses compiled models (delete ``root`` to
    recompile them).
    """

    def __init__(self, root: str | os.PathLike, source: str | os.PathLike,
                 label_columns: Sequence[str] | str = ("test_acc",), transform: Callable | None = None,
                 pre_transform: Callable | None = None, pre_filter: Callable | None = None, *,
                 workers: int = 2, progress: bool | None = None, force_reload: bool = False,
                 log: bool = False) -> None:
        self.pre_transform, self.pre_filter = pre_transform, pre_filter  # part of the cache key
        self._setup(source, label_columns, workers, progress)
        self._drop_pyg_markers(root)
        super().__init__(os.fspath(root), transform, pre_transform, pre_filter, log=log,
                         force_reload=force_reload)
        self._drop_pyg_markers(root)
        payload = torch.load(self.processed_paths[0], weights_only=True)
        self._data = Data.from_dict(payload["data"])
        self.slices = payload["slices"]
        self._load_meta(self.processed_paths[1])

    def process(self) -> None:
        graphs = list(self._labelled_graphs(self.root))
        if self.pre_filter is not None:
            graphs = [g for g in graphs if self.pre_filter(g)]
        if self.pre_transform is not None:
            graphs = [self.pre_transform(g) for g in graphs]
        if not graphs:
            raise _no_graphs(self.source, self.failures)
        self.model_ids = [int(g.model_id) for g in graphs]
        data, slices = self.collate(graphs)
        payload = {"format": _CACHE_FORMAT, "data": data.to_dict(), "slices": slices}
        write_atomically(self.processed_paths[0], lambda tmp: torch.save(payload, tmp))
        _write_json(self.processed_paths[1], self._meta_payload())  # written last: the "done" mark


def _sqlite_schema(num_labels: int) -> dict[str, Any]:
    """Column types of the SQLite table: raw tensor bytes and ints, never pickles."""
    f, i = torch.float32, torch.long
    return {"x": dict(dtype=f, size=(-1, len(schema.NODE_COLUMNS))), "edge_index": dict(dtype=i, size=(2, -1)),
            "edge_attr": dict(dtype=f, size=(-1, len(schema.EDGE_COLUMNS))),
            "edge_param": dict(dtype=i, size=(-1,)), "edge_offset": dict(dtype=i, size=(-1,)),
            "y": dict(dtype=f, size=(1, num_labels)), "num_nodes": int, "model_id": int}


class OnDiskModelGraphDataset(_FolderDataset, OnDiskDataset):
    """The same graphs as :class:`ModelGraphDataset`, stored in a SQLite database under
    ``root/processed`` and read on access, for collections larger than memory. Rows are raw
    tensor bytes (a fixed schema), never pickles. Same arguments, minus ``pre_transform``."""

    graphs_suffix = ".db"

    def __init__(self, root: str | os.PathLike, source: str | os.PathLike,
                 label_columns: Sequence[str] | str = ("test_acc",), transform: Callable | None = None,
                 pre_filter: Callable | None = None, *, workers: int = 2, progress: bool | None = None,
                 log: bool = False) -> None:
        self.pre_filter = pre_filter  # part of the cache key
        self._setup(source, label_columns, workers, progress)
        self._drop_pyg_markers(root)
        super().__init__(os.fspath(root), transform, pre_filter=pre_filter, backend="sqlite",
                         schema=_sqlite_schema(len(self.label_columns)), log=log)
        self._drop_pyg_markers(root)
        self._load_meta(self.processed_paths[1])

    def process(self) -> None:
        if os.path.exists(self.processed_paths[0]):  # left by an interrupted run
            self.close()
            self._db = None
            os.remove(self.processed_paths[0])
        self.model_ids = []
        chunk: list[Data] = []
        count = 0
        for graph in self._labelled_graphs(self.root):
            if self.pre_filter is None or self.pre_filter(graph):
                chunk.append(graph)
                self.model_ids.append(int(graph.model_id))
            if len(chunk) >= 256:
                count += len(chunk)
                self.extend(chunk)
                chunk = []
        if chunk:
            count += len(chunk)
            self.extend(chunk)
        if not count:
            raise _no_graphs(self.source, self.failures)
        _write_json(self.processed_paths[1], self._meta_payload())

    def serialize(self, data: Data) -> dict[str, Any]:
        return {"x": data.x.float().contiguous(), "edge_index": data.edge_index.contiguous(),
                "edge_attr": data.edge_attr.float().contiguous(), "edge_param": data.edge_param.contiguous(),
                "edge_offset": data.edge_offset.contiguous(), "y": data.y.float().contiguous(),
                "num_nodes": int(data.num_nodes), "model_id": int(data.model_id)}

    def deserialize(self, row: dict[str, Any]) -> Data:
        return Data(x=row["x"], edge_index=row["edge_index"], edge_attr=row["edge_attr"],
                    edge_param=row["edge_param"], edge_offset=row["edge_offset"], y=row["y"],
                    model_id=torch.tensor([row["model_id"]]), num_nodes=row["num_nodes"])

    def __getitems__(self, indices: list[int]) -> list[Data]:
        # PyG's version ignores the indices of a subset (dataset[idx]); map them first
        own = self.indices()
        return self.multi_get([int(own[i]) for i in indices])
