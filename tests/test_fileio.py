"""gmn_compiler.fileio.write_atomically: the target appears whole or not at all, and no
temporary file survives a failure, Ctrl-C (SIGINT), SIGTERM or SIGHUP, in the main process or
in a spawned pool worker; handlers a program set are left alone."""

from __future__ import annotations

import multiprocessing
import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from gmn_compiler import fileio
from gmn_compiler.fileio import write_atomically

posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX signals")

# Writes "old" to the target, then starts a slow atomic write of "new" that says "ready" once
# its temporary file holds partial content, and sleeps until a signal ends the process.
SLOW_WRITE = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from gmn_compiler.fileio import write_atomically

    target = Path(sys.argv[1])
    target.write_bytes(b"old contents\\n")

    def slow(tmp):
        Path(tmp).write_bytes(b"new, partial")
        print("ready", flush=True)
        time.sleep(60)

    write_atomically(target, slow)
""")


def _temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".gmn-"))


def test_writes_the_file_with_plain_permissions(tmp_path):
    target = tmp_path / "out.txt"
    write_atomically(target, lambda tmp: Path(tmp).write_text("hello"))
    assert target.read_text() == "hello" and _temporaries(tmp_path) == []
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
    assert not fileio._live


@pytest.mark.parametrize("error", [ValueError("bad"), KeyboardInterrupt()])
def test_a_failed_or_interrupted_write_leaves_the_old_file(tmp_path, error):
    target = tmp_path / "out.txt"
    target.write_bytes(b"old")

    def failing(tmp: str) -> None:
        Path(tmp).write_bytes(b"partial")
        raise error

    with pytest.raises(type(error)):
        write_atomically(target, failing)
    assert target.read_bytes() == b"old" and _temporaries(tmp_path) == [] and not fileio._live


@posix_only
@pytest.mark.timeout(60)
@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT", "SIGHUP"])
def test_a_signal_during_a_write_removes_the_temporary_file(tmp_path, signame):
    target = tmp_path / "out.txt"
    script = tmp_path / "slow.py"
    script.write_text(SLOW_WRITE)
    signum = getattr(signal, signame)
    # the child starts with the default action for the signal even where this run inherited
    # "ignore" (under nohup, SIGHUP is ignored, and write_atomically rightly leaves it so)
    proc = subprocess.Popen([sys.executable, str(script), str(target)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signum, signal.SIG_DFL))
    try:
        assert proc.stdout.readline() == "ready\n", proc.stderr.read()
        assert len(_temporaries(tmp_path)) == 1  # the write is in progress
        proc.send_signal(getattr(signal, signame))
        proc.wait(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signum  # still dies of the signal (KeyboardInterrupt: of SIGINT)
    assert _temporaries(tmp_path) == []
    assert target.read_bytes() == b"old contents\n"


def _slow_write_in_worker(target: str, ready: str) -> None:
    def slow(tmp: str) -> None:
        Path(tmp).write_bytes(b"partial")
        Path(ready).touch()
        time.sleep(60)

    write_atomically(target, slow)


def _quick_write_in_worker(target: str) -> str:
    write_atomically(target, lambda tmp: Path(tmp).write_text("from a worker"))
    return Path(target).read_text()


@posix_only
@pytest.mark.timeout(90)
def test_spawned_pool_workers_write_and_clean_up_when_terminated(tmp_path):
    target, ready = tmp_path / "out.txt", tmp_path / "ready"
    target.write_bytes(b"old")
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        assert pool.apply(_quick_write_in_worker, (str(tmp_path / "quick.txt"),)) == "from a worker"
        pool.apply_async(_slow_write_in_worker, (str(target), str(ready)))
        deadline = time.monotonic() + 60
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.exists() and len(_temporaries(tmp_path)) == 1
        pool.terminate()  # SIGTERM to the worker
        pool.join()
    assert _temporaries(tmp_path) == [] and target.read_bytes() == b"old"


@pytest.fixture
def fresh_signal_state(monkeypatch):
    """The handler installation not yet done; the signal handlers restored afterwards."""
    saved = {s: signal.getsignal(s) for s in fileio._cleanup_signals()}
    monkeypatch.setattr(fileio, "_signals_checked", False)
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


@posix_only
def test_installs_only_over_default_handlers(tmp_path, fresh_signal_state):
    def theirs(signum, frame):
        pass

    signal.signal(signal.SIGTERM, theirs)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    write_atomically(tmp_path / "a", lambda tmp: Path(tmp).write_text("a"))
    assert signal.getsignal(signal.SIGTERM) is theirs  # a program's own handler stays
    assert signal.getsignal(signal.SIGHUP) is fileio._on_signal
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    write_atomically(tmp_path / "b", lambda tmp: Path(tmp).write_text("b"))
    assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN  # considered once only


@posix_only
def test_a_write_from_another_thread_installs_nothing(tmp_path, fresh_signal_state):
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    worker = threading.Thread(target=write_atomically,
                              args=(tmp_path / "t", lambda tmp: Path(tmp).write_text("t")))
    worker.start()
    worker.join()
    assert (tmp_path / "t").read_text() == "t"
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL and not fileio._signals_checked
