"""A soundness fuzzer: random small architectures through every oracle (DESIGN §4).

:func:`fuzz` draws programs (:mod:`gmn_compiler.fuzz_grammar`), builds each into an
``nn.Module`` and runs :func:`gmn_compiler.testing.check_all` on it; with ``onnx=True`` it also
exports the model to ONNX (TorchScript exporter), compiles the file, checks the soundness of
its graph through onnxruntime and that it is isomorphic to the torch graph (frontend parity).
Each program ends in one category:

- ``passed``; ``refused``: the compiler raised a :class:`~gmn_compiler.errors.CompileError`
  (acceptable; the first words of the messages are tallied); ``export_failed``: the ONNX
  export itself failed;
- failures: ``unsound`` (a structural automorphism or a swap that changes the function),
  ``over_declared`` (a declared symmetry that is not one), ``parity_failed`` (torch and ONNX
  graphs not isomorphic), ``crashed`` (any other exception: a compiler bug).

Failing programs are shrunk (:func:`shrink`) to a minimal program failing the same way.

Command line::

    python -m gmn_compiler.fuzz --n 5000 --seed 0 [--onnx] [--out DIR] [--workers N]
    python -m gmn_compiler.fuzz --replay DIR/failure-000-unsound.json
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures as cf
import json
import math
import multiprocessing
import os
import re
import signal
import sys
import tempfile
import threading
import time
import traceback
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator

import torch

from .errors import CompileError, SymmetryError
from .fuzz_grammar import draw
from .fuzz_program import Program, build
from .fuzz_shrink import candidates, runs, shrink  # noqa: F401 (public here too)

CATEGORIES = ("passed", "refused", "export_failed", "unsound", "over_declared", "parity_failed", "crashed")
FAILING = ("unsound", "over_declared", "parity_failed", "crashed")


@dataclass
class Outcome:
    """How one program fared: ``category`` (one of :data:`CATEGORIES`), the ``frontend``
    whose graph failed ("torch" or "onnx"), the error's first line and, for crashes, a short
    traceback."""

    category: str
    frontend: str = "torch"
    message: str = ""
    detail: str = ""
    seconds: float = 0.0

    def key(self) -> tuple[str, str, str]:
        """What "fails the same way" compares while shrinking."""
        kind = self.message.split(":", 1)[0] if self.category == "crashed" else ""
        return self.category, self.frontend, kind


@dataclass
class Failure:
    index: int
    outcome: Outcome
    program: dict[str, Any]
    shrunk: dict[str, Any] | None = None


@dataclass
class FuzzReport:
    n: int
    seed: int
    onnx: bool
    families: list[str] | None
    counts: dict[str, int] = field(default_factory=lambda: {c: 0 for c in CATEGORIES})
    refused_reasons: collections.Counter = field(default_factory=collections.Counter)
    failures: list[Failure] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failing(self) -> int:
        return sum(self.counts[c] for c in FAILING)

    def add(self, index: int, outcome: Outcome, program: Program) -> None:
        self.counts[outcome.category] += 1
        if outcome.category in ("refused", "export_failed"):
            self.refused_reasons[("onnx: " if outcome.frontend == "onnx" else "") + headline(outcome.message)] += 1
        elif outcome.category in FAILING:
            self.failures.append(Failure(index, outcome, program.to_dict()))

    def summary(self) -> str:
        lines = [f"fuzz: {self.n} programs, seed {self.seed}{', with ONNX' if self.onnx else ''}"
                 f"{', families ' + ','.join(self.families) if self.families else ''} "
                 f"in {self.seconds:.1f} s"]
        for c in CATEGORIES:
            lines.append(f"  {c:<14} {self.counts[c]:>6}  {100 * self.counts[c] / max(self.n, 1):5.1f} %")
        if self.refused_reasons:
            lines.append("refused / export failed, by reason:")
            lines += [f"  {k:>5}  {reason}" for reason, k in self.refused_reasons.most_common(20)]
        groups: dict[tuple, list[Failure]] = {}
        for f in self.failures:
            key = (f.outcome.category, f.outcome.frontend, tuple(f.program.get("families", [])))
            groups.setdefault(key, []).append(f)
        if groups:
            lines.append("failures, by category and families drawn:")
        for (category, frontend, families), fs in sorted(groups.items(), key=lambda kv: -len(kv[1])):
            lines.append(f"  {len(fs):>5}  {category} ({frontend}) [{', '.join(families)}], "
                         f"e.g. #{fs[0].index}: {fs[0].outcome.message[:160]}")
        for f in (f for f in self.failures if f.shrunk is not None):
            lines.append(f"minimal program of #{f.index}, {f.outcome.category} ({f.outcome.frontend}):")
            lines += ["    " + line for line in Program.from_dict(f.shrunk).describe().splitlines()]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["refused_reasons"] = dict(self.refused_reasons)
        return d


def headline(message: str, words: int = 9) -> str:
    """The first words of an error message, without locations, module names, shapes and
    numbers, to tally."""
    text = re.sub(r"\bat \S+", "", message.splitlines()[0] if message else "")
    text = re.sub(r"Value\((\w+)[^)]*\)", r"<\1>", text)
    text = re.sub(r"\((\w+)\)", "", text)
    return " ".join(re.sub(r"\d+", "#", text).split()[:words])


# ----------------------------------------------------------------------------- one program


class _Timeout(Exception):
    pass


@contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise :class:`_Timeout` after ``seconds`` (main thread of a POSIX process only)."""
    if not seconds or not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_alarm(signum, frame):
        raise _Timeout(f"timed out after {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else "")[:400]


def _classify(exc: BaseException, frontend: str) -> Outcome:
    msg = _first_line(exc)
    if isinstance(exc, CompileError):
        return Outcome("refused", frontend, msg)
    if isinstance(exc, SymmetryError):
        if msg.startswith("missing symmetry"):
            return Outcome("over_declared", frontend, msg)
        if msg.startswith("round trip"):
            return Outcome("crashed", frontend, f"SymmetryError: {msg}")
        return Outcome("unsound", frontend, msg)
    tb = traceback.extract_tb(exc.__traceback__)
    frames = [f"{os.path.basename(f.filename)}:{f.lineno} {f.name}" for f in tb[-4:]]
    return Outcome("crashed", frontend, f"{type(exc).__name__}: {msg}", " <- ".join(reversed(frames)))


def check_program(program: Program, *, onnx: bool = False, seed: int = 0, trials: int = 2,
                  max_pairs: int = 8, timeout: float | None = 120.0) -> Outcome:
    """Run every oracle on ``program`` (and, with ``onnx``, on its ONNX export)."""
    from . import canonical
    from .api import compile as compile_model
    from .symmetry import check_symmetry
    from .testing import check_all, randomized

    started = time.perf_counter()
    model, inputs = build(program)  # an invalid program raises here: it is no compiler failure
    frontend = "torch"
    try:
        with time_limit(timeout):
            base = randomized(model, seed)
            pg = check_all(base, inputs, seed=seed, trials=trials, max_pairs=max_pairs)
            if onnx:
                frontend = "onnx"
                with tempfile.TemporaryDirectory() as tmp:
                    path = os.path.join(tmp, "model.onnx")
                    try:
                        export_onnx(base, inputs, program, path)
                    except Exception as exc:
                        return Outcome("export_failed", "onnx", _first_line(exc) or type(exc).__name__,
                                       seconds=time.perf_counter() - started)
                    opg = compile_model(path)
                    feeds = {i["name"]: t.numpy() for i, t in zip(program.inputs, inputs)}
                    check_symmetry(path, feeds, trials=trials, seed=seed, graph=opg)
                    if _weight_sizes(pg) != _weight_sizes(opg):
                        # the exporter folded a BatchNorm into a conv, or cut a parameter into
                        # new initializers: another program, so no parity to check
                        return Outcome("export_failed", "onnx", "the exporter changed the parameters "
                                       f"(sizes {_weight_sizes(pg)} became {_weight_sizes(opg)})",
                                       seconds=time.perf_counter() - started)
                    if not canonical.isomorphic(pg, opg):
                        return Outcome("parity_failed", "onnx", "the torch and ONNX graphs are not isomorphic",
                                       seconds=time.perf_counter() - started)
    except (Exception, _Timeout) as exc:
        out = _classify(exc, frontend)
        out.seconds = time.perf_counter() - started
        return out
    return Outcome("passed", seconds=time.perf_counter() - started)


def _weight_sizes(pg) -> list[int]:
    """Sizes of the weights a graph represents (lifted constants aside), sorted."""
    return sorted(math.prod(p.shape) for p in pg.params if p.kind != "constant")


def export_onnx(model: torch.nn.Module, inputs: tuple, program: Program, path: str) -> None:
    """TorchScript ONNX export of ``model`` (inputs named as in ``program``); what the
    exporter prints (it dumps its IR on failure, from C++) is silenced."""
    names = [i["name"] for i in program.inputs]
    with warnings.catch_warnings(), _silenced_fds():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, inputs, path, dynamo=False, input_names=names,
                          output_names=[f"out{i}" for i in range(len(program.outputs))])


@contextmanager
def _silenced_fds() -> Iterator[None]:
    """File descriptors 1 and 2 to /dev/null for the duration."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved + [devnull]:
            os.close(fd)


# ----------------------------------------------------------------------------- the run


def _init_worker() -> None:
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")


def _check_job(index: int, seed: int, families: list[str] | None, require: str | None,
               options: dict) -> tuple[int, dict, Outcome]:
    program = draw(seed * 1_000_003 + index, families, require=require)
    return index, program.to_dict(), check_program(program, **options)


def _shrink_job(program: dict, key: tuple, options: dict, max_checks: int) -> dict:
    fails = lambda p: check_program(p, **options).key() == tuple(key)
    return shrink(Program.from_dict(program), fails, max_checks).to_dict()


def fuzz(n: int, seed: int = 0, *, onnx: bool = False, families: list[str] | None = None, require: str | None = None,
         start: int = 0,
         workers: int = 1, shrink_failures: int = 12, shrink_checks: int = 60, stop_on_failure: bool = False,
         progress: Callable[[int, FuzzReport], None] | None = None, **options: Any) -> FuzzReport:
    """Draw ``n`` programs from ``seed`` (from ``families`` of the grammar, default all; each
    with a block of family ``require`` when given; programs ``start`` to ``start + n - 1``), run
    every oracle on each and tally the outcomes. Up to ``shrink_failures`` failures (the
    first of each category, frontend and family set) are shrunk. ``options`` go to
    :func:`check_program` (``trials``, ``max_pairs``, ``timeout``). With ``workers`` > 1 a
    spawn process pool (one torch thread each) does the work. ``stop_on_failure``: stop at
    the first failing program (``report.n`` is then the number checked)."""
    report = FuzzReport(n, seed, onnx, sorted(families) if families else None)
    options = {"onnx": onnx, **options}
    started = time.perf_counter()
    pool = cf.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                  initializer=_init_worker) if workers > 1 else None
    try:
        if pool is None:
            results = (_check_job(i, seed, families, require, options) for i in range(start, start + n))
        else:
            futures = [pool.submit(_check_job, i, seed, families, require, options)
                       for i in range(start, start + n)]
            results = (f.result() for f in cf.as_completed(futures))
        for done, (index, program, outcome) in enumerate(results, 1):
            report.add(index, outcome, Program.from_dict(program))
            if progress is not None:
                progress(done, report)
            if stop_on_failure and report.failing:
                report.n = done
                break
        report.failures.sort(key=lambda f: f.index)
        chosen, groups = [], set()
        for f in report.failures:
            group = (f.outcome.key(), tuple(f.program.get("families", [])))
            if group not in groups and len(chosen) < shrink_failures:
                groups.add(group)
                chosen.append(f)
        jobs = [(f.program, f.outcome.key(), options, shrink_checks) for f in chosen]
        if pool is None or not jobs:
            shrunk = [_shrink_job(*job) for job in jobs]
        else:
            shrunk = list(pool.map(_shrink_job, *zip(*jobs)))
        for f, program in zip(chosen, shrunk):
            f.shrunk = program
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    report.seconds = time.perf_counter() - started
    return report


def write_failures(report: FuzzReport, out: str) -> list[str]:
    """One JSON file per failure in ``out`` (the shrunk program when there is one, the
    original too) with its replay command; and ``report.json``. Returns the files."""
    os.makedirs(out, exist_ok=True)
    paths = []
    for k, f in enumerate(report.failures):
        path = os.path.join(out, f"failure-{k:03d}-{f.outcome.category}.json")
        program = f.shrunk or f.program
        record = {"description": Program.from_dict(program).describe().splitlines(), "program": program,
                  "original": f.program, "index": f.index,
                  "seed": report.seed, "onnx": report.onnx, **asdict(f.outcome),
                  "replay": f"python -m gmn_compiler.fuzz --replay {path}"}
        with open(path, "w") as fh:
            json.dump(record, fh, indent=1)
        paths.append(path)
    with open(os.path.join(out, "report.json"), "w") as fh:
        json.dump(report.to_dict(), fh, indent=1, default=str)
    return paths


def replay(path: str, *, onnx: bool | None = None) -> Outcome:
    """Run the oracles on the program of a failure file (or a bare program JSON)."""
    with open(path) as fh:
        record = json.load(fh)
    program = Program.from_dict(record.get("program", record))
    print(program.describe())
    outcome = check_program(program, onnx=record.get("onnx", False) if onnx is None else onnx)
    print(f"-> {outcome.category} ({outcome.frontend}) {outcome.message}")
    if outcome.detail:
        print(f"   {outcome.detail}")
    return outcome


def main(argv: list[str] | None = None) -> int:
    from .fuzz_families import FAMILIES

    parser = argparse.ArgumentParser(prog="python -m gmn_compiler.fuzz", description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="programs to draw")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--onnx", action="store_true", help="also check each program's ONNX export")
    parser.add_argument("--out", help="folder for the failing (shrunk) programs and report.json")
    parser.add_argument("--workers", type=int, default=1, help="processes (spawn; one torch thread each)")
    parser.add_argument("--families", help="comma-separated grammar families (default all): "
                        + ",".join(sorted(FAMILIES)))
    parser.add_argument("--shrink", type=int, default=12, help="failures to shrink (default 12)")
    parser.add_argument("--replay", metavar="FILE", help="re-run the program of a failure file and exit")
    args = parser.parse_args(argv)
    if args.replay:
        return 1 if replay(args.replay, onnx=args.onnx or None).category in FAILING else 0
    families = args.families.split(",") if args.families else None
    tty = sys.stderr.isatty()

    def progress(done: int, report: FuzzReport) -> None:
        if tty:
            c = report.counts
            print(f"\r{done}/{report.n} passed {c['passed']} refused {c['refused']} failing {report.failing}",
                  end="", file=sys.stderr, flush=True)

    report = fuzz(args.n, args.seed, onnx=args.onnx, families=families, workers=max(1, args.workers),
                  shrink_failures=args.shrink, progress=progress)
    if tty:
        print(file=sys.stderr)
    print(report.summary())
    if args.out:
        for path in write_failures(report, args.out):
            print(f"replay: python -m gmn_compiler.fuzz --replay {path}")
    return 1 if report.failing else 0


if __name__ == "__main__":
    sys.exit(main())
