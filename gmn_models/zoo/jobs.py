"""Finished jobs of an accuracy-prediction run kept on disk, so that an interrupted run resumes.

A job is one (method, split, seed). :func:`job_key` names it by what decides its result: the
method, split and seed, the method's options (``repr``, e.g. the GMN's whole config) and the zoo
(the rows' paths and labels). :class:`JobStore` keeps one JSON file per finished job in a folder
(``<out>/jobs`` for the experiment CLI), written atomically, so that a run killed mid-way leaves
only whole records; a rerun with the same options reuses them and runs the rest.

What the key cannot see is the code: each record carries :func:`code_digest` (the source of
``gmn_models``, where the methods live), so that a caller can tell records made by other code
(the experiment marks them in its log and warns once at the end). Delete the folder to rerun
everything.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Sequence

from .folder import atomic_write_text

Job = tuple[str, str, int]  # (method, split, seed)


def zoo_digest(rows: Sequence[dict]) -> str:
    """A digest of the rows a run reads: each row's path and measured accuracies."""
    h = hashlib.sha256()
    for row in sorted(rows, key=lambda r: r["path"]):
        h.update(json.dumps([row["path"], row.get("test_acc"), row.get("train_acc")]).encode())
    return h.hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    """A digest of the ``gmn_models`` package's Python source (every ``.py`` file under it)."""
    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def job_key(job: Job, options: dict, zoo: str) -> str:
    """The file stem of ``job``'s record: readable parts, then a digest of the method's
    ``options`` and of the ``zoo`` digest."""
    name, split, seed = job
    digest = hashlib.sha256(json.dumps([name, split, seed, repr(sorted(options.items())), zoo]).encode())
    readable = f"{name}_{split}_{seed}".replace("%", "pct")
    return f"{readable}_{digest.hexdigest()[:12]}"


class JobStore:
    """Finished job records in ``folder`` (created on the first save)."""

    def __init__(self, folder: str | os.PathLike, zoo: str) -> None:
        self.folder = Path(folder)
        self.zoo = zoo

    def _path(self, job: Job, options: dict) -> Path:
        return self.folder / f"{job_key(job, options, self.zoo)}.json"

    def load(self, job: Job, options: dict) -> dict | None:
        """The stored record of ``job`` run with ``options`` on this zoo, or None."""
        path = self._path(job, options)
        if not path.is_file():
            return None
        try:
            with open(path) as f:
                record = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not a job record ({e}); delete the file to rerun the job") from None
        if not isinstance(record, dict) or (record.get("method"), record.get("split"), record.get("seed")) != job:
            raise ValueError(f"{path}: not the record of job {job}; delete the file to rerun the job")
        return record

    def save(self, record: dict, options: dict) -> None:
        """Write ``record`` (one finished job) with the current :func:`code_digest`."""
        job = (record["method"], record["split"], record["seed"])
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self._path(job, options), json.dumps({**record, "code": code_digest()}))
