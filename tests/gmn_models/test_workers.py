"""gmn_models/workers.py: a script read from standard input cannot start worker processes
(spawn/forkserver children re-run the main script); the callers work in-process instead."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from conftest import make_synthetic_zoo


def test_compile_folder_from_stdin_falls_back_to_this_process(tmp_path):
    make_synthetic_zoo(tmp_path / "zoo", n=4)
    script = textwrap.dedent(f"""
        from gmn_models.compile_folder import compile_folder
        report = compile_folder({str(tmp_path / "zoo")!r}, {str(tmp_path / "out")!r}, workers=2, progress=False)
        print("compiled", report.compiled, "failures", len(report.failures))
    """)
    done = subprocess.run([sys.executable, "-"], input=script, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "compiled 4 failures 0" in done.stdout
    assert "cannot start when the main script is read from standard input" in done.stderr
    assert len(list((tmp_path / "out").rglob("*.pt"))) >= 4


def test_a_script_file_still_uses_worker_processes(tmp_path):
    """The fallback is only for stdin: from a file the workers start (no warning)."""
    make_synthetic_zoo(tmp_path / "zoo", n=4)
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(f"""
        from gmn_models.compile_folder import compile_folder
        if __name__ == "__main__":
            report = compile_folder({str(tmp_path / "zoo")!r}, {str(tmp_path / "out")!r}, workers=2, progress=False)
            print("compiled", report.compiled, "failures", len(report.failures))
    """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "compiled 4 failures 0" in done.stdout
    assert "standard input" not in done.stderr
