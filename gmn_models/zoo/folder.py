"""The generated zoos' view of the model folder format: typed rows, CSV text, manifest.

The format itself (the reserved columns ``path``, ``builder``, ``builder_kwargs``,
``input_shape``, where model files may lie, how builders are looked up) is defined in
:mod:`gmn_models.model_folder`. A generated zoo's ``<folder>/models.csv`` has the columns
:data:`COLUMNS`: the reserved ones (``path`` a ``.safetensors`` file; the zoo's builders are
``gmn_models.zoo.families:<family>``; ``input_shape`` with batch 1), then

* labels and metadata: ``test_acc``, ``train_acc``, ``family``, ``dataset``, ``layout``,
  the architecture columns (``width``, ``depth``, ``kernel_size``, ``activation``, ``norm``,
  ``heads``, ``patch``, ``widen``; empty where a family has no such choice), the training
  hyperparameters (``lr``, ``epochs``, ``init_scale``, ``weight_decay``, ``label_noise``,
  ``batch_size``, ``seed``), ``n_params`` and the ``chunk``/``member`` it came from.

``<folder>/manifest.sha256`` lists ``<sha256>  <relative path>`` (``sha256sum -c`` format)
for every file of the zoo except itself. State dicts are read with ``safetensors`` only
(nothing is unpickled), and only from inside the folder (:func:`gmn_models.paths.confined_path`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from pathlib import Path
from typing import Iterable

import torch
from safetensors.torch import load_file
from torch import nn

from gmn_compiler.fileio import write_atomically

from ..model_folder import JSON_COLUMNS, RESERVED_COLUMNS, table_path
from ..paths import confined_path
from .families import resolve_builder

COLUMNS = RESERVED_COLUMNS + (
    "test_acc", "train_acc", "family", "dataset", "layout", "width", "depth", "kernel_size",
    "activation", "norm", "heads", "patch", "widen", "lr", "epochs", "init_scale", "weight_decay",
    "label_noise", "batch_size", "seed", "n_params", "chunk", "member",
)
INT_COLUMNS = ("width", "depth", "kernel_size", "heads", "patch", "epochs", "batch_size", "seed",
               "n_params", "chunk", "member")
FLOAT_COLUMNS = ("test_acc", "train_acc", "lr", "init_scale", "weight_decay", "label_noise")
MANIFEST = "manifest.sha256"


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` (synced to disk) with
    :func:`gmn_compiler.fileio.write_atomically`: readers see the old file or the new one,
    never a partial one."""

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    write_atomically(path, write)


def rows_to_csv(rows: Iterable[dict], columns: tuple[str, ...] = COLUMNS) -> str:
    """CSV text with header ``columns`` (the classifier zoo's :data:`COLUMNS` by default);
    ``None`` becomes an empty cell."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: "" if r.get(k) is None else r[k] for k in columns})
    return buf.getvalue()


def parse_row(raw: dict) -> dict:
    """Typed row: ints and floats parsed, ``builder_kwargs``/``input_shape`` JSON-decoded,
    ``widen`` a bool, empty cells ``None``."""
    row: dict = {}
    for k, v in raw.items():
        if v == "" or v is None:
            row[k] = None
        elif k in INT_COLUMNS:
            row[k] = int(v)
        elif k in FLOAT_COLUMNS:
            row[k] = float(v)
        elif k in JSON_COLUMNS:
            row[k] = json.loads(v)
        elif k == "widen":
            row[k] = v == "True"
        else:
            row[k] = v
    return row


def read_csv_rows(path: str | os.PathLike) -> list[dict]:
    with open(path, newline="") as f:
        return [parse_row(r) for r in csv.DictReader(f)]


def load_rows(folder: str | os.PathLike) -> list[dict]:
    """Typed rows of ``<folder>/models.csv``, each with ``root`` (the folder, absolute) added
    so that :func:`load_state_dict` can find its file."""
    root = str(Path(folder).resolve())
    return [{**r, "root": root} for r in read_csv_rows(table_path(folder))]


def _own_file(folder: str | os.PathLike, name: str) -> Path:
    """``folder / name``, refused if a symbolic link takes it outside the folder."""
    return confined_path(folder, name, name, rule="it must be a file of the folder")


def load_state_dict(row: dict) -> dict[str, torch.Tensor]:
    """The row's state dict, read with safetensors (no pickle) from ``row["path"]`` inside
    ``row["root"]``; :class:`~gmn_models.paths.ModelFolderError` if the path leaves the folder
    (absolute, ``..``, or a symbolic link pointing outside)."""
    return load_file(str(confined_path(row["root"], row["path"])))


def build_model(row: dict, load_weights: bool = True) -> nn.Module:
    """``builder(**builder_kwargs)``, with the stored weights loaded (strict), in eval mode.
    The builder is the registered one of that name (:func:`gmn_models.builders.get_builder`):
    an unregistered name is a :class:`~gmn_models.paths.ModelFolderError`."""
    model = resolve_builder(row["builder"])(**row["builder_kwargs"])
    if load_weights:
        model.load_state_dict(load_state_dict(row))
    return model.eval()


def write_manifest(folder: str | os.PathLike, entries: dict[str, str]) -> None:
    """Write ``manifest.sha256`` from ``{relative path: sha256}`` (sorted by path)."""
    text = "".join(f"{h}  {p}\n" for p, h in sorted(entries.items()))
    atomic_write_text(Path(folder) / MANIFEST, text)


def read_manifest(folder: str | os.PathLike) -> dict[str, str]:
    entries = {}
    for line in _own_file(folder, MANIFEST).read_text().splitlines():
        h, p = line.split("  ", 1)
        entries[p] = h
    return entries


def _matches(folder: Path, relative: str, digest: str) -> bool:
    try:
        path = confined_path(folder, relative, "manifest entry")
    except ValueError:  # outside the folder: never read
        return False
    return path.is_file() and sha256_file(path) == digest


def verify_manifest(folder: str | os.PathLike) -> list[str]:
    """Paths whose file is missing or outside the folder or whose sha256 differs from the
    manifest (empty: all good), plus ``models.csv`` paths missing from the manifest."""
    folder = Path(folder)
    entries = read_manifest(folder)
    bad = [p for p, h in entries.items() if not _matches(folder, p, h)]
    listed = {r["path"] for r in read_csv_rows(table_path(folder))}
    return bad + sorted(listed - set(entries))
