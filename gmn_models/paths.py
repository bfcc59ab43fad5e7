"""Files named by a folder's own data files stay inside that folder.

Model folders (and the public zoo folders converted into them) come from strangers: a row of
``models.csv`` must not make the project read ``../../home/me/.ssh/id_rsa`` or
``/etc/passwd``. Every reader of such a folder turns a path it found in the folder's files (or a
fixed file name it expects there) into a filesystem path with :func:`confined_path`, which
follows symbolic links and refuses anything that does not end up inside the folder.

:class:`ModelFolderError` (re-exported by :mod:`gmn_models.datasets`) lives here so that this
module, :mod:`gmn_models.builders` and the dataset code share it without import cycles.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePath

__all__ = ["ModelFolderError", "confined_path"]


class ModelFolderError(ValueError):
    """The model folder (or its ``models.csv``, or one of its rows) cannot be used; the
    message is one line."""


def confined_path(folder: str | os.PathLike, relative: str | os.PathLike, what: str = "path", *,
                  kind: str = "model folder", rule: str = "model files must live inside it") -> Path:
    """``folder / relative`` resolved (symbolic links followed), required to lie inside
    ``folder`` (itself resolved).

    ``relative`` is a path read from one of the folder's files (or a file name the caller
    expects there). An absolute path (or one with a drive), a path that climbs out with
    ``..``, and a symbolic link (of the file or of any folder on the way) that points outside
    are refused with a one-line :class:`ModelFolderError`:
    ``"{what} '{relative}' is outside the {kind} {folder}; {rule}"``. Whether the file
    exists is not checked. Open the returned path, not ``folder / relative``: it is the file
    that was checked.
    """
    text = os.fspath(relative)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    shown = text if len(text) <= 200 else text[:197] + "..."
    if PurePath(text).anchor or Path(text).is_absolute():
        raise ModelFolderError(f"{what} {shown!r} is outside the {kind} {folder}; {rule} "
                               "(use a path relative to the folder)")
    try:
        root = Path(folder).resolve()
        target = (root / text).resolve()
    except (OSError, RuntimeError, ValueError) as exc:  # a symlink loop, an embedded NUL byte
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelFolderError(f"{what} {shown!r} in the {kind} {folder} cannot be resolved "
                               f"({reason})") from None
    if target != root and root not in target.parents:
        raise ModelFolderError(f"{what} {shown!r} is outside the {kind} {folder}; {rule}")
    return target
