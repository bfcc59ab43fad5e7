"""When worker processes can start.

``spawn`` and ``forkserver`` children re-run the parent's main script to rebuild its
``__main__``; a script read from standard input (``python - < run.py``) has no file to re-run,
and every child dies at start (``BrokenProcessPool``). The callers that start workers ask
:func:`usable_workers` first and fall back to working in the calling process.
"""

from __future__ import annotations

import os
import sys
import warnings


def main_script_is_rerunnable() -> bool:
    """False when ``__main__`` names a script file that does not exist (``<stdin>``)."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if path is None or getattr(main, "__spec__", None) is not None:
        return True  # interactive / ``python -c`` (nothing to re-run) or ``python -m`` (importable)
    return os.path.isfile(path)


def usable_workers(workers: int) -> int:
    """``workers`` when worker processes can start, else 0 with a warning saying why."""
    if workers > 0 and not main_script_is_rerunnable():
        warnings.warn("worker processes cannot start when the main script is read from standard "
                      "input (python -); working in this process instead. Run the script from a "
                      "file to use workers.", RuntimeWarning, stacklevel=3)
        return 0
    return workers
