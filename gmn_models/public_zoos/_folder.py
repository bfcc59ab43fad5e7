"""Writer for the project's *model folder* format (the contract the zoo datasets read).

A model folder is::

    <folder>/models.csv
    <folder>/models/000000.safetensors
    <folder>/models/000001.safetensors
    ...

``models.csv`` has one row per model and, in this order, the columns

- ``path``: the model's state dict, a ``.safetensors`` file, relative to ``<folder>``;
- ``builder``: ``"module:callable"``, the name of a builder registered in
  :mod:`gmn_models.builders` (readers look it up, never import it); ``builder(**kwargs)``
  returns the ``nn.Module`` whose ``load_state_dict(state, strict=True)`` accepts the file;
- ``builder_kwargs``: a JSON object, the keyword arguments of ``builder``;
- ``input_shape``: a JSON list, the shape of one example input with batch size 1;

followed by label and metadata columns (empty cell: no value). ``models.csv`` is written last
and atomically, so a folder that has one is complete.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from gmn_compiler.fileio import write_atomically

from ..builders import is_builder_name

RESERVED_COLUMNS: tuple[str, ...] = ("path", "builder", "builder_kwargs", "input_shape")


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
    table = out / "models.csv"
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
                row = {"path": relative, "builder": entry.builder,
                       "builder_kwargs": json.dumps(dict(entry.builder_kwargs), sort_keys=True),
                       "input_shape": json.dumps([int(d) for d in entry.input_shape])}
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
