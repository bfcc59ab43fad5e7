"""Shrinking a failing fuzz program (:mod:`gmn_compiler.fuzz`) to a minimal one.

:func:`shrink` is greedy: it tries the smaller :func:`candidates` of the current program in
order (a step removed, its output replaced by one of its inputs; then narrower inputs and
layers; then no bias or affine parameters), keeps the first one that still builds, runs and
fails the same way, and repeats until none does.
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch

from .fuzz_program import Program, Step, build, pruned


def _without_step(program: Program, i: int, replacement: str) -> Program:
    step = program.steps[i]
    rename = {o: replacement for o in step.outs}
    steps = [Step(s.op, [rename.get(n, n) for n in s.ins], list(s.outs), dict(s.args))
             for k, s in enumerate(program.steps) if k != i]
    return pruned(Program(program.inputs, steps, [rename.get(n, n) for n in program.outputs], program.families))


def candidates(program: Program) -> Iterator[Program]:
    """Smaller variants of ``program``: a step removed (its output replaced by one of its
    inputs), then narrower widths and sizes, then simpler arguments (no bias, no affine)."""
    for i in reversed(range(len(program.steps))):
        for replacement in dict.fromkeys(program.steps[i].ins):
            yield _without_step(program, i, replacement)
    for j, spec in enumerate(program.inputs):
        for axis in range(1, len(spec["shape"])):
            if spec["shape"][axis] > 1:
                d = program.to_dict()
                d["inputs"][j]["shape"][axis] -= 1
                yield Program.from_dict(d)
    for i, step in enumerate(program.steps):
        for key, smaller in (("out", lambda v: v - 1), ("dim", lambda v: v - 1), ("vocab", lambda v: v - 1),
                             ("bias", lambda v: False), ("affine", lambda v: False)):
            value = step.args.get(key)
            if value is not None and value is not False and (not isinstance(value, int) or value is True or value > 1):
                d = program.to_dict()
                d["steps"][i]["args"][key] = smaller(value)
                yield Program.from_dict(d)


def runs(program: Program) -> bool:
    """Whether ``program`` builds and runs to finite outputs."""
    try:
        model, inputs = build(program)
        with torch.no_grad():
            out = model(*inputs)
        outs = out if isinstance(out, tuple) else (out,)
        return all(t.is_floating_point() and bool(torch.isfinite(t).all()) for t in outs)
    except Exception:
        return False


def shrink(program: Program, fails: Callable[[Program], bool], max_checks: int = 80) -> Program:
    """A locally minimal variant of ``program`` for which ``fails`` still holds (greedy: take
    the first smaller candidate that fails, repeat), calling ``fails`` at most ``max_checks``
    times."""
    current, checks, seen = pruned(program), 0, {program.to_json()}
    improved = True
    while improved and checks < max_checks:
        improved = False
        for cand in candidates(current):
            text = cand.to_json()
            if text in seen or not runs(cand):
                continue
            seen.add(text)
            checks += 1
            if fails(cand):
                current, improved = cand, True
                break
            if checks >= max_checks:
                break
    return current
