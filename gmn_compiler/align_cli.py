"""``gmn-align A B -o OUT``: permute model B's weights onto model A's (weight matching,
:func:`gmn_compiler.alignment.weight_matching`) and write B, aligned, in B's own format.

A and B are two ``.pt2`` archives (``torch.export.save``) or two ``.onnx`` files of the same
architecture; OUT has B's suffix. The aligned model computes B's function (the permutation is
an automorphism of the parameter graph, found with the compiler's exact symmetries). Exit
status 0 on success, 1 on an error (one line ``gmn-align: error: ...``), 2 on bad usage; OUT
is never written partly. ``.pt2`` files are read without unpickling unless ``--trust-pickle``.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Sequence

import click

from . import __version__
from .errors import CompileError, DecompileError, SymmetryError

PROG = "gmn-align"
EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
SUFFIXES = (".pt2", ".onnx")


@click.command(name=PROG, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model_a", metavar="A")
@click.argument("model_b", metavar="B")
@click.option("-o", "--output", required=True, metavar="OUT", help="Where to write B aligned onto A (B's suffix).")
@click.option("--trust-pickle", is_flag=True, help="Allow .pt2 entries that need unpickling (can run code from "
              "the file; only for files you trust).")
@click.option("--debug", is_flag=True, help="Show the traceback of errors.")
@click.version_option(__version__, "--version", prog_name=PROG, message="%(prog)s %(version)s")
def command(model_a: str, model_b: str, output: str, trust_pickle: bool, debug: bool) -> None:
    """Permute the weights of model B onto model A (weight matching) and write B, aligned, to OUT."""
    _check_paths(model_a, model_b, output)
    from .alignment import weight_matching

    a, _ = _load(model_a, trust_pickle)
    b, program = _load(model_b, trust_pickle)
    values, perm = weight_matching(a, b)
    moved = int((perm != perm.new_tensor(range(perm.numel()))).sum())
    _write(b, program, values, output)
    click.echo(f"wrote {output} (B aligned onto A: {moved} of {perm.numel()} graph nodes moved)", err=True)


def _check_paths(model_a: str, model_b: str, output: str) -> None:
    kinds = [os.path.splitext(p)[1].lower() for p in (model_a, model_b, output)]
    for path, kind in zip((model_a, model_b, output), kinds):
        if kind not in SUFFIXES:
            raise click.UsageError(f"{path}: expected a .pt2 or .onnx file")
    if len(set(kinds)) != 1:
        raise click.UsageError("A, B and OUT must have the same suffix (.pt2 or .onnx)")
    for path in (model_a, model_b):
        if os.path.abspath(path) == os.path.abspath(output):
            raise click.UsageError(f"{output}: output would overwrite an input model")
        if not os.path.isfile(path):
            raise CompileError(f"{path}: no such file")
    folder = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(folder):
        raise CompileError(f"{output}: folder {folder} does not exist")


def _load(path: str, trust_pickle: bool):
    """(graph, exported program or None) of the model file ``path``."""
    from .api import compile as compile_model

    if path.lower().endswith(".pt2"):
        from .frontends.torch_export import load_pt2

        program = load_pt2(path, allow_pickle=trust_pickle)
        return compile_model(program), program
    return compile_model(path), None


def _write(b, program, values, output: str) -> None:
    from .fileio import write_atomically

    if program is None:
        b.to_onnx(values, output)
        return
    import torch

    state = b.to_state_dict(values, include_constants=True)
    with torch.no_grad():
        for name, tensor in state.items():
            if name in program.state_dict:
                program.state_dict[name].copy_(tensor)
            elif name in program.constants:
                program.constants[name].copy_(tensor)
            else:
                raise DecompileError(f"{output}: {name} is neither a weight nor a constant of the program")
    write_atomically(output, lambda tmp: torch.export.save(program, tmp))


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``gmn-align`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        command.main(args, prog_name=PROG, standalone_mode=False)
    except click.exceptions.UsageError as exc:
        click.echo(f"{PROG}: error: {exc.format_message()} (see {PROG} --help)", err=True)
        return EXIT_USAGE
    except (CompileError, DecompileError, SymmetryError, OSError) as exc:
        if debug:
            traceback.print_exc()
        text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__
        click.echo(f"{PROG}: error: {text}", err=True)
        return EXIT_ERROR
    return EXIT_OK
