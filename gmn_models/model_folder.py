"""The *model folder* format: the one module that knows it (read, write, build).

A model folder is::

    <folder>/models.csv
    <folder>/<any relative path>.safetensors | .pt2 | .onnx

``models.csv`` has a header and one row per model. Its first four columns
(:data:`RESERVED_COLUMNS`) are

- ``path``: the model file relative to ``<folder>``: a ``.safetensors`` state dict, a ``.pt2``
  file written by ``torch.export.save``, or an ``.onnx`` file. It must lie inside the folder
  (symbolic links followed): an absolute path, ``..`` out of it or a link pointing outside is a
  bad row;
- ``builder``: for ``.safetensors``, ``"package.module:function"``, the name of a *registered*
  builder (:mod:`gmn_models.builders`: the project's architectures, the ``gmn_models.builders``
  entry points, :func:`~gmn_models.builders.register_builder`) that returns the ``nn.Module``
  whose ``load_state_dict(state, strict=True)`` accepts the file; empty for ``.pt2`` / ``.onnx``.
  The name is looked up, never imported: a folder cannot choose code to run;
- ``builder_kwargs``: a JSON object, the keyword arguments of ``builder`` (``{}`` if none);
- ``input_shape``: a JSON list, the shape of one example input used for tracing, e.g.
  ``[1, 64]`` (required for ``.safetensors``);

then any number of label / metadata columns (``test_acc``, ``train_acc``, ``family``, ``width``,
``lr``, ...; empty cell: no value). A column whose non-empty cells all parse as numbers is
numeric (floats, an empty cell is ``None``); any other column stays strings.

Reading (:func:`read_model_table`): a missing ``models.csv`` or a missing reserved column is a
:class:`ModelFolderError` (one line); a bad *row* (missing file, malformed JSON, unknown file
type, a path outside the folder) is kept with its ``problem`` set. Writing
(:func:`write_model_folder`, :func:`reserved_cells` for writers of their own): ``models.csv``
is written last and atomically, so a folder that has one is complete.

Users: :mod:`gmn_models.compile_folder` and :mod:`gmn_models.datasets` (compiled graphs),
:mod:`gmn_models.zoo.folder` (the generated zoos' typed rows and manifest),
:mod:`gmn_models.public_zoos` (converters from published zoos).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from safetensors.torch import save_file
from torch import nn

import gmn_compiler
from gmn_compiler import schema
from gmn_compiler.fileio import write_atomically

from .builders import get_builder, is_builder_name
from .paths import ModelFolderError, confined_path

__all__ = ["TABLE", "RESERVED_COLUMNS", "JSON_COLUMNS", "MODEL_SUFFIXES", "ModelFolderError", "ModelRow",
           "table_path", "read_model_table", "model_file", "build_module", "example_input", "parse_metadata",
           "reserved_cells", "ModelEntry", "write_model_folder", "json_digest"]

TABLE = "models.csv"
RESERVED_COLUMNS: tuple[str, ...] = ("path", "builder", "builder_kwargs", "input_shape")
JSON_COLUMNS: tuple[str, ...] = ("builder_kwargs", "input_shape")
"""The reserved columns whose cells are JSON (an object, a list of positive ints)."""
MODEL_SUFFIXES: tuple[str, ...] = (".safetensors", ".pt2", ".onnx")
_COMPILER = [schema.SCHEMA_VERSION, gmn_compiler.__version__]  # compiled files depend on these


def json_digest(obj: Any) -> str:
    """SHA-1 (hex) of ``obj``'s JSON with sorted keys: a stable id of plain data."""
    return hashlib.sha1(json.dumps(obj, sort_keys=True).encode()).hexdigest()


@dataclass(eq=False)
class ModelRow:
    """One row of ``models.csv``. ``problem`` is set when the row itself is unusable."""

    index: int
    path: str
    builder: str = ""
    builder_kwargs: dict[str, Any] = field(default_factory=dict)
    input_shape: tuple[int, ...] | None = None
    columns: dict[str, str] = field(default_factory=dict)
    stat: tuple[int, int] | None = None  # (size, mtime_ns) of the model file
    problem: str | None = None

    @property
    def kind(self) -> str:
        """``"safetensors"``, ``"pt2"`` or ``"onnx"``."""
        return Path(self.path).suffix.lstrip(".")

    def arch(self) -> str:
        """Id of the compiled structure: shared by rows with the same builder, kwargs and input
        shape; one per file for ``.pt2`` / ``.onnx``."""
        if self.kind != "safetensors":
            return "f" + self.key()
        return "a" + json_digest([_COMPILER, self.builder, self.builder_kwargs, list(self.input_shape or ())])[:24]

    def key(self) -> str:
        """Id of this model's compiled values; changes when the file changes (size, mtime) and
        with the compiler's version."""
        return json_digest([_COMPILER, self.path, list(self.stat or ()), self.builder, self.builder_kwargs,
                            list(self.input_shape or ())])[:24]


# ------------------------------------------------------------------ reading
def table_path(folder: str | os.PathLike) -> Path:
    """``<folder>/models.csv``, refused (:class:`ModelFolderError`) if a symbolic link takes it
    outside the folder; whether it exists is not checked."""
    return confined_path(folder, TABLE, TABLE, rule="it must be a file of the folder")


def read_model_table(folder: str | os.PathLike) -> list[ModelRow]:
    """Parse ``<folder>/models.csv`` into rows (row problems recorded, not raised)."""
    folder = Path(folder)
    table = table_path(folder)
    if not table.is_file():
        raise ModelFolderError(f"{folder}: no models.csv (a model folder needs one; see "
                               "gmn_models.model_folder for the format)")
    with open(table, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = list(reader.fieldnames or [])
        missing = [c for c in RESERVED_COLUMNS if c not in header]
        if missing:
            raise ModelFolderError(f"{table}: missing column(s) {missing}; the first columns must be "
                                   f"{', '.join(RESERVED_COLUMNS)}")
        if len(set(header)) != len(header):
            raise ModelFolderError(f"{table}: duplicate column names in the header {header}")
        rows = [_parse_row(folder, i, cells) for i, cells in enumerate(reader)]
    if not rows:
        raise ModelFolderError(f"{table}: no models listed")
    return rows


def _parse_row(folder: Path, index: int, cells: dict) -> ModelRow:
    text = {k: (v or "").strip() for k, v in cells.items() if k is not None}
    row = ModelRow(index, text["path"], text["builder"],
                   columns={k: v for k, v in text.items() if k not in RESERVED_COLUMNS})
    try:
        if None in cells:
            raise ValueError("the row has more cells than the header")
        file = model_file(folder, row)
        if Path(row.path).suffix not in MODEL_SUFFIXES:
            raise ValueError(f"unknown model file type {row.path!r}; expected one of {MODEL_SUFFIXES}")
        kwargs = json.loads(text["builder_kwargs"] or "{}")
        if not isinstance(kwargs, dict):
            raise ValueError("builder_kwargs is not a JSON object")
        row.builder_kwargs = kwargs
        if text["input_shape"]:
            shape = json.loads(text["input_shape"])
            if not (isinstance(shape, list) and all(isinstance(s, int) and s > 0 for s in shape)):
                raise ValueError(f"input_shape {text['input_shape']!r} is not a JSON list of positive ints")
            row.input_shape = tuple(shape)
        if row.kind == "safetensors" and (not row.builder or row.input_shape is None):
            raise ValueError("a .safetensors model needs a builder and an input_shape")
        if not file.is_file():
            raise ValueError(f"no such file {folder / row.path}")
        st = file.stat()
        row.stat = (st.st_size, st.st_mtime_ns)
    except ValueError as exc:  # json.JSONDecodeError is a ValueError
        row.problem = str(exc).splitlines()[0]
    return row


def model_file(folder: str | os.PathLike, row: ModelRow) -> Path:
    """The row's model file, resolved and checked to lie inside ``folder``
    (:func:`gmn_models.paths.confined_path`); open this path, not ``folder / row.path``."""
    return confined_path(folder, row.path, f"row {row.index}: path")


def build_module(row: ModelRow, builder: Callable[..., nn.Module] | None = None) -> nn.Module:
    """Call the row's builder with its kwargs: ``builder`` if given (the caller looked it up),
    else :func:`gmn_models.builders.get_builder` of the row's ``builder`` name. ModelFolderError
    if that name is not registered (nothing is imported) or the result is not an ``nn.Module``."""
    target = get_builder(row.builder) if builder is None else builder
    model = target(**row.builder_kwargs)
    if not isinstance(model, nn.Module):
        raise ModelFolderError(f"builder {row.builder!r} returned a {type(model).__name__}, not an nn.Module")
    return model


def example_input(row: ModelRow) -> torch.Tensor:
    """The tracing input of a ``.safetensors`` row: ``randn(input_shape)`` from seed 0."""
    return torch.randn(*row.input_shape, generator=torch.Generator().manual_seed(0))


def parse_metadata(rows: Sequence[ModelRow]) -> list[dict[str, Any]]:
    """One dict per row: ``model_id``, the reserved columns (kwargs as a dict, input shape as a
    list) and every other column, numeric columns as floats (empty cell: None)."""
    names = list(rows[0].columns) if rows else []
    numeric = {n for n in names if all(_is_number(r.columns.get(n, "")) for r in rows)
               and any(r.columns.get(n, "") for r in rows)}
    out = []
    for row in rows:
        meta: dict[str, Any] = {"model_id": row.index, "path": row.path, "builder": row.builder,
                                "builder_kwargs": row.builder_kwargs,
                                "input_shape": list(row.input_shape) if row.input_shape else None}
        for n in names:
            cell = row.columns.get(n, "")
            meta[n] = (float(cell) if cell else None) if n in numeric else cell
        out.append(meta)
    return out


def _is_number(cell: str) -> bool:
    if not cell:
        return True
    try:
        float(cell)
        return True
    except ValueError:
        return False


# ------------------------------------------------------------------ writing
def reserved_cells(path: str, builder: str, builder_kwargs: Mapping[str, Any],
                   input_shape: Sequence[int]) -> dict[str, str]:
    """The :data:`RESERVED_COLUMNS` cells of one row, in column order: ``builder_kwargs`` as
    JSON with sorted keys, ``input_shape`` as a JSON list of ints."""
    return {"path": path, "builder": builder,
            "builder_kwargs": json.dumps(dict(builder_kwargs), sort_keys=True),
            "input_shape": json.dumps([int(d) for d in input_shape])}


@dataclass
class ModelEntry:
    """One model to write: its tensors, how to build the module, and its table columns."""

    state_dict: Mapping[str, torch.Tensor]
    builder: str
    builder_kwargs: Mapping[str, Any]
    input_shape: list[int]
    columns: Mapping[str, Any] = field(default_factory=dict)


def write_model_folder(out: str | os.PathLike, entries: Iterable[ModelEntry], *,
                       overwrite: bool = False) -> Path:
    """Write ``entries`` as a model folder at ``out``; return the path of ``models.csv``.

    State dicts go to ``out/models/NNNNNN.safetensors`` in entry order. Extra columns are the
    union of every entry's ``columns`` keys, in first-seen order. Raises ``FileExistsError``
    if ``out/models.csv`` exists and ``overwrite`` is false, ``ValueError`` if an extra column
    reuses a reserved name, a builder is not a ``"package.module:function"`` name (readers need
    it registered in :mod:`gmn_models.builders`) or no entry is given.
    """
    out = Path(out)
    table = out / TABLE
    if table.exists() and not overwrite:
        raise FileExistsError(f"{table} already exists; pass overwrite=True to replace the model folder")
    (out / "models").mkdir(parents=True, exist_ok=True)
    extra: dict[str, None] = {}
    count = 0
    # rows are spooled to a JSON-lines file: the extra columns are known only at the end,
    # and a zoo of 270k models should not sit in memory as dicts
    spool = out / ".models.csv.rows"
    try:
        with open(spool, "w", encoding="utf-8") as rows:
            for index, entry in enumerate(entries):
                if not is_builder_name(entry.builder):
                    raise ValueError(f"model {index}: builder {entry.builder!r} is not of the form "
                                     "'package.module:function' (a name registered in gmn_models.builders)")
                clash = set(entry.columns) & set(RESERVED_COLUMNS)
                if clash:
                    raise ValueError(f"model {index}: column(s) {sorted(clash)} clash with the model "
                                     f"folder's reserved columns {list(RESERVED_COLUMNS)}; rename them")
                relative = f"models/{index:06d}.safetensors"
                tensors = {k: v.detach().contiguous() for k, v in entry.state_dict.items()}
                save_file(tensors, str(out / relative))
                row = reserved_cells(relative, entry.builder, entry.builder_kwargs, entry.input_shape)
                for key, value in entry.columns.items():
                    extra.setdefault(key, None)
                    row[key] = "" if value is None else _plain(value)
                rows.write(json.dumps(row) + "\n")
                count += 1
        if not count:
            raise ValueError(f"no models to write to {out}: the source held none (check its filters)")
        columns = list(RESERVED_COLUMNS) + list(extra)

        def write(tmp: str) -> None:
            with open(tmp, "w", newline="", encoding="utf-8") as handle, \
                    open(spool, encoding="utf-8") as rows:
                writer = csv.DictWriter(handle, fieldnames=columns, restval="")
                writer.writeheader()
                for line in rows:
                    writer.writerow(json.loads(line))

        write_atomically(table, write)
    finally:
        if spool.exists():
            spool.unlink()
    return table


def _plain(value: Any) -> Any:
    """A JSON-serialisable scalar for a table cell (numpy and torch scalars become Python ones)."""
    if isinstance(value, (str, bool, int, float)):
        return value
    if hasattr(value, "item"):
        return value.item()
    return str(value)
