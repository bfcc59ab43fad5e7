"""Atomic file output: every file the package writes appears whole or not at all.

:func:`write_atomically` writes to a temporary ``.gmn-*`` file next to the target and renames
it over the target. The temporary file is removed when ``write`` fails, on Ctrl-C (SIGINT
raises ``KeyboardInterrupt``, a ``BaseException``) and on SIGTERM / SIGHUP: the first call
from the main thread installs a handler for each of those signals whose handler is still the
default (never replacing one a program set); it removes the temporary files of writes in
progress, then restores the default and re-sends the signal, so the process still dies of it.
A target that existed before stays unchanged in every case. SIGKILL cannot be caught: a
``.gmn-*`` file it leaves is garbage and may be deleted.
"""

from __future__ import annotations

import os
import secrets
import signal
import threading
from typing import Any, Callable

__all__ = ["write_atomically"]

_live: set[str] = set()  # temporary files of writes in progress in this process
_signals_checked = False  # the handlers were considered (from the main thread)


def write_atomically(path: str | os.PathLike, write: Callable[[str], None], suffix: str = ".tmp") -> None:
    """Call ``write(tmp)`` on a temporary file next to ``path``, then rename it over ``path``.

    On any failure or interruption (exception, Ctrl-C, SIGTERM, SIGHUP) the temporary file is
    removed and ``path`` is left untouched. The file gets the permissions a plain
    ``open(path, "w")`` would give (mode 0666 less the umask), not the private 0600 of a
    temporary file.
    """
    _install_signal_cleanup()
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    tmp = ""
    try:
        tmp = _create_temporary(folder, suffix)
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if tmp:
            _remove(tmp)
        raise
    finally:
        _live.discard(tmp)


def _create_temporary(folder: str, suffix: str) -> str:
    """Create an empty private file ``folder/.gmn-<random><suffix>``, registered in
    :data:`_live` before it exists (a signal arriving in between finds it or finds nothing)."""
    for _ in range(100):
        tmp = os.path.join(folder, f".gmn-{secrets.token_hex(8)}{suffix}")
        _live.add(tmp)
        try:
            os.close(os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o600))
            return tmp
        except FileExistsError:
            _live.discard(tmp)
        except BaseException:
            _live.discard(tmp)
            raise
    raise FileExistsError(f"no free temporary file name in {folder}")


def _remove(tmp: str) -> None:
    try:
        os.unlink(tmp)
    except OSError:
        pass


def _remove_live_temporaries() -> None:
    """Remove the temporary files of the writes in progress (no locks: runs in a signal handler)."""
    for tmp in tuple(_live):
        _remove(tmp)


def _on_signal(signum: int, frame: Any) -> None:
    """Remove the live temporary files, then die of ``signum`` as the default action would."""
    _remove_live_temporaries()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _cleanup_signals() -> list[int]:
    return [getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)]


def _install_signal_cleanup() -> None:
    """Install :func:`_on_signal` for each signal of :func:`_cleanup_signals` whose handler
    is the default, once, from the main thread (the only one that may set handlers); a call
    from another thread leaves it to a later call from the main thread."""
    global _signals_checked
    if _signals_checked or threading.current_thread() is not threading.main_thread():
        return
    _signals_checked = True
    for signum in _cleanup_signals():
        try:
            if signal.getsignal(signum) == signal.SIG_DFL:
                signal.signal(signum, _on_signal)
        except (ValueError, OSError):  # not the main interpreter, or a platform limit
            pass


def _forget_in_child() -> None:
    """A forked child does not own its parent's writes in progress (it must not remove them)."""
    _live.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)
