"""Atomic file output: every file the package writes appears whole or not at all."""

from __future__ import annotations

import os
import tempfile
from typing import Callable


def write_atomically(path: str | os.PathLike, write: Callable[[str], None], suffix: str = ".tmp") -> None:
    """Call ``write(tmp)`` on a temporary file next to ``path``, then rename it over ``path``.

    On any failure the temporary file is removed and ``path`` is left untouched. The file
    gets the permissions a plain ``open(path, "w")`` would give (mode 0666 less the umask),
    not the private 0600 of a temporary file.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".gmn-", suffix=suffix, dir=folder)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
