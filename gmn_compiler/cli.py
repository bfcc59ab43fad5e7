"""``gmn-compile``: compile a ``.pt2`` (torch.export archive) or ``.onnx`` model into a parameter graph.

Contract: results go to stdout, progress and warnings to stderr. Exit status 0 on success,
1 on an error (one line ``gmn-compile: error: <message>`` on stderr; ``--debug`` or
``GMN_COMPILER_DEBUG=1`` prints the traceback instead), 2 on bad usage. No output file
(``-o``, ``--draw``) is created, not even partly, when the command fails.

Start-up: torch, PyG, onnx and the compiler modules that import them are imported inside the
command, only when it needs them; ``--help``, ``--version`` and usage errors import none of
them. Warnings: unless ``--debug``, only those raised from ``gmn_compiler``/``gmn_plugins``
code are shown (one line each, ``gmn-compile: warning: ...``); third-party warnings are
hidden. This applies to this command's process only, never to the library. The
``compiling MODEL ...`` progress line is printed when stderr is a terminal or with ``--verbose``.
"""

from __future__ import annotations

import math
import os
import sys
import traceback
import warnings
from typing import Sequence

import click

from . import __version__, schema
from .errors import CompileError, DecompileError, UnsupportedOpsError
from .frontends.checks import model_file_kind

PROG = "gmn-compile"
EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
DRAW_MAX_EDGES = 2000
"""Default of --draw-max-edges: ``gmn_compiler.draw.DEFAULT_MAX_EDGES``, repeated here so that
--help needs no torch (a test checks the two agree)."""
FIRST_PARTY_MODULES = r"(gmn_compiler|gmn_plugins)(\.|$)"
"""Modules whose warnings the command shows without --debug (a regex on the module name)."""
TRUST_PICKLE_HELP = ("Allow .pt2 entries that need unpickling. Risky: unpickling a .pt2 entry "
                     "can run arbitrary code from the file; use only for files you trust.")


def _debug_from_env() -> bool:
    return os.environ.get("GMN_COMPILER_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


def expected_errors() -> tuple[type[BaseException], ...]:
    """Errors reported as one line; anything else is a bug and says how to get the traceback.
    (DrawError counts once the drawing module is loaded: it cannot be raised before.)"""
    found: tuple[type[BaseException], ...] = (CompileError, DecompileError, OSError)
    draw = sys.modules.get("gmn_compiler.draw")
    return found + ((draw.DrawError,) if draw is not None else ())


@click.command(name=PROG, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model", required=False, metavar="MODEL")
@click.option("-o", "--output", metavar="OUT.safetensors", help="Write the graph (ParameterGraph.save: "
              "a safetensors file, about the size of the weights; loads with gmn_compiler.load).")
@click.option("--summary", is_flag=True, help="Print nodes and edges per op kind, totals and the "
              "parameter count check.")
@click.option("--check", is_flag=True, help="List every op without a lowering rule, with its "
              "source location, and exit 1 if there is any. Alone it does not lower the model; "
              "with -o/--summary/--draw it is a gate run before anything is written.")
@click.option("--list-rules", is_flag=True, help="Print every op kind with the plugin providing "
              "its rule and the frontends that reach it (MODEL not needed).")
@click.option("--draw", "draw_path", metavar="GRAPH.png", help="Draw a small graph (layered by "
              "depth; format from the extension).")
@click.option("--draw-max-edges", type=click.IntRange(min=1), default=DRAW_MAX_EDGES,
              show_default=True, help="Refuse to draw graphs with more edges than this.")
@click.option("--trust-pickle", is_flag=True, help=TRUST_PICKLE_HELP)
@click.option("--constant-weights", is_flag=True, help="ONNX: treat the float tensors of Constant nodes "
              "(more than one entry) as parameters, for files that store their weights that way "
              "(Paddle2ONNX); otherwise their values are structure and the graph has no symmetries.")
@click.option("--verbose", is_flag=True, help="Print progress on stderr even when it is not a terminal.")
@click.option("--debug", is_flag=True, help="Show the traceback of errors and every warning, "
              "third-party ones included (also GMN_COMPILER_DEBUG=1).")
@click.version_option(__version__, "--version", prog_name=PROG, message="%(prog)s %(version)s",
                      help="Print the version and exit.")
@click.pass_context
def command(ctx: click.Context, model: str | None, output: str | None, summary: bool, check: bool,
            list_rules: bool, draw_path: str | None, draw_max_edges: int, trust_pickle: bool,
            constant_weights: bool, verbose: bool, debug: bool) -> int:
    """Compile MODEL, a .pt2 file written by torch.export.save or an .onnx file, into a
    parameter graph."""
    ctx.obj["debug"] = ctx.obj["debug"] or debug
    _configure_warnings(ctx.obj["debug"])
    if list_rules:
        from .registry import default_registry

        click.echo(format_rules(default_registry()))
        if model is None:
            return EXIT_OK
    if model is None:
        raise click.UsageError("missing argument MODEL (a .pt2 or .onnx file); only --list-rules runs without one")
    _check_paths(model, output, draw_path)
    model_file_kind(model)  # a missing, unreadable or foreign file fails before torch loads
    if draw_path:
        from .draw import image_format

        image_format(draw_path)
    source = model
    if check:
        source = _run_check(model, trust_pickle, constant_weights)
        if source is None:
            return EXIT_ERROR
        if not (output or summary or draw_path):
            return EXIT_OK
    pg = _compile(model, source, trust_pickle, verbose, constant_weights)
    if draw_path:
        from .draw import check_drawable

        check_drawable(pg, draw_max_edges)  # refuse before anything is written
    _write_outputs(pg, output, draw_path, draw_max_edges)
    if summary:
        click.echo(format_summary(pg))
    elif not (output or draw_path):
        click.echo(_one_line_result(model, pg))
    return EXIT_OK


def _configure_warnings(debug: bool) -> None:
    """Without ``debug``: hide warnings from third-party modules, show ours on one line each.
    Call inside ``warnings.catch_warnings()`` (as :func:`main` does): it changes global state."""
    if debug:
        return
    warnings.filterwarnings("ignore")
    warnings.filterwarnings("default", module=FIRST_PARTY_MODULES)
    warnings.showwarning = _show_warning


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    click.echo(f"{PROG}: warning: {_one_line(str(message))}", err=True)


def _check_paths(model: str, output: str | None, draw_path: str | None) -> None:
    """Fail before compiling when an output could not be written or would clobber MODEL."""
    if output and draw_path and os.path.abspath(output) == os.path.abspath(draw_path):
        raise click.UsageError("-o and --draw name the same file")
    for path in [p for p in (output, draw_path) if p]:
        if os.path.abspath(path) == os.path.abspath(model):
            raise click.UsageError(f"{path}: output would overwrite the input model")
        if os.path.isdir(path):
            raise CompileError(f"{path}: is a directory; give a file name")
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise CompileError(f"{path}: folder {folder} does not exist")


def _run_check(model: str, allow_pickle: bool, constant_weights: bool = False):
    """Print every unsupported op of ``model`` grouped by kind (stdout); returns the IR when
    every op is supported, else ``None``. (An ONNX model's unsupported kinds are found
    before tracing, so its report has no total op count.)"""
    from .api import to_ir
    from .lowering import unsupported_ops
    from .registry import default_registry

    registry = default_registry()
    try:
        ir = to_ir(model, registry=registry, allow_pickle=allow_pickle, constant_weights=constant_weights)
        missing, total = unsupported_ops(ir, registry), len(ir.ops)
    except UnsupportedOpsError as exc:
        ir, missing, total = None, exc.ops, None
    if not missing:
        click.echo(f"{model}: all {total} ops supported")
        return ir
    click.echo(format_unsupported(model, missing, total))
    kinds = len(group_unsupported(missing))
    click.echo(f"{PROG}: error: {len(missing)} unsupported ops of {kinds} kinds in {model}", err=True)
    return None


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


def _compile(model: str, source, allow_pickle: bool, verbose: bool, constant_weights: bool = False):
    from .api import compile as compile_model

    if verbose or _stderr_is_terminal():
        click.echo(f"compiling {model} ...", err=True)
    if not isinstance(source, str):  # the IR of --check: its frontend options are already applied
        return compile_model(source)
    return compile_model(source, allow_pickle=allow_pickle, constant_weights=constant_weights)


def _write_outputs(pg, output: str | None, draw_path: str | None, max_edges: int) -> None:
    """Draw first, then save the graph; if saving fails the fresh drawing is removed, so a
    failed command leaves neither file behind (each is itself written atomically). An
    OSError is reported against the path the user gave, not the temporary file."""
    created = False
    try:
        if draw_path:
            from .draw import draw_graph

            created = not os.path.exists(draw_path)
            _writing(draw_path, "drawing", lambda: draw_graph(pg, draw_path, max_edges=max_edges))
        if output:
            _writing(output, "graph", lambda: pg.save(output))
    except BaseException:
        if created and os.path.exists(draw_path):
            os.unlink(draw_path)
        raise
    if draw_path:
        click.echo(f"drew {draw_path}", err=True)
    if output:
        click.echo(f"wrote {output} ({_size(pg)})", err=True)


def _writing(path: str, what: str, write) -> None:
    try:
        write()
    except OSError as exc:
        raise CompileError(f"{path}: cannot write the {what}: {exc.strerror or exc}") from exc


def _size(pg) -> str:
    return f"{int(pg.data.num_nodes)} nodes, {int(pg.data.edge_index.shape[1])} edges"


def _one_line_result(model: str, pg) -> str:
    return f"{model}: {_size(pg)}, {len(pg.params)} tensors (use -o to save, --summary for details)"


# ---------------------------------------------------------------- text reports
def _table(headers: Sequence[str], rows: list[Sequence[object]], right: Sequence[bool]) -> list[str]:
    """Rows aligned under ``headers``; ``right[i]`` right-aligns column i (numbers)."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(row, widths, right)).rstrip()
             for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def format_summary(pg) -> str:
    """Nodes/edges per op kind, totals, and the parameter count check, as an aligned table.

    ``(inputs)`` counts the model-input nodes, ``(after lowering)`` what the builder adds once
    every op is lowered (ties between the uses of a shared parameter). The check compares
    the entries of the represented parameters and buffers (lifted constants excluded) with
    the edges that carry them: equal unless a parameter is used several times.
    """
    import torch

    data = pg.data
    nodes, edges = int(data.num_nodes), int(data.edge_index.shape[1])
    rows = [[kind, r["ops"], r["nodes"], r["edges"]] for kind, r in pg.summary.items()]
    inputs = int((data.x[:, schema.node_column("role")] == schema.code(schema.NODE_ROLES, "input")).sum())
    rows.append(["(inputs)", "", inputs, 0])
    rest_nodes, rest_edges = nodes - sum(r[2] for r in rows), edges - sum(r[3] for r in rows)
    if rest_nodes or rest_edges:  # e.g. the ties between the uses of a shared parameter
        rows.append(["(after lowering)", "", rest_nodes, rest_edges])
    rows.append(["total", sum(r["ops"] for r in pg.summary.values()), nodes, edges])
    lines = _table(["op kind", "ops", "nodes", "edges"], rows, [False, True, True, True])
    lines.insert(len(lines) - 1, lines[1])
    constant = [p.kind == "constant" for p in pg.params]
    entries = sum(math.prod(p.shape) for p, c in zip(pg.params, constant) if not c)
    on_param = data.edge_param >= 0
    is_const = torch.tensor(constant + [False], dtype=torch.bool)[data.edge_param]  # -1 -> False
    param_edges = int((on_param & ~is_const).sum())
    if param_edges == entries:
        verdict = "ok: one edge per entry"
    elif param_edges > entries:
        verdict = f"ok: {param_edges - entries} extra edges for parameters used several times"
    else:
        verdict = f"MISMATCH: {entries - param_edges} entries have no edge"
    counts = [["parameter entries (parameters + buffers)", entries, ""],
              ["parameter edges", param_edges, verdict],
              ["constant edges (lifted constants)", int((on_param & is_const).sum()), ""],
              ["structural edges", int((~on_param).sum()), ""],
              ["total edges", edges, ""], ["total nodes", nodes, ""]]
    return "\n".join(lines + [""] + _table(["parameter count check", "count", ""], counts,
                                            [False, True, False]))


def format_rules(registry) -> str:
    """Every kind with a rule and what its declaration says (plugin, frontends, whether it only
    rearranges entries — "view" when a parameter can be seen through it —, elementwise, the
    neuron axis of a model input it reads first, its operands), plus kinds a frontend maps to
    that no plugin lowers."""
    rows = [[kind, e.plugin, ", ".join(registry.frontends(kind)) or "-",
             ("yes, view" if e.view else "yes") if e.aliasing else "", "yes" if e.elementwise else "",
             _described_axis(e.input_axis), ", ".join(e.inputs) if e.inputs is not None else "?"]
            for kind, e in sorted(registry.rules.items(), key=lambda kv: (kv[1].plugin, kv[0]))]
    mapped = {m.kind for table in (registry.aten, registry.onnx, registry.leaf_modules)
              for m in table.values()}
    rows += [[kind, "(no rule)", ", ".join(registry.frontends(kind)), "", "", "", ""]
             for kind in sorted(mapped - set(registry.rules))]
    lines = _table(["kind", "plugin", "frontends", "rearranges only", "elementwise", "input axis", "operands"],
                   rows, [False] * 7)
    return "\n".join(lines + [f"{len(registry.rules)} kinds from {len(registry.plugins)} plugins"])


def _described_axis(axis) -> str:
    if axis is None:
        return ""
    return "per op" if callable(axis) else str(axis)


def group_unsupported(missing: list[tuple[str, str]]) -> dict[str, list[str]]:
    """``(kind, location)`` pairs grouped by kind, in first-seen order."""
    groups: dict[str, list[str]] = {}
    for kind, where in missing:
        groups.setdefault(kind, []).append(where)
    return groups


def format_unsupported(model: str, missing: list[tuple[str, str]], total_ops: int | None) -> str:
    """The --check report: every unsupported kind with the location of each of its ops
    (``total_ops``: how many ops the model has, ``None`` when not known)."""
    groups = group_unsupported(missing)
    of = f" of {total_ops}" if total_ops is not None else ""
    lines = [f"{model}: {len(missing)}{of} ops unsupported ({len(groups)} kinds)"]
    for kind, places in groups.items():
        lines.append(f"  {kind}  ({len(places)} op{'s' if len(places) > 1 else ''})")
        lines += [f"      {where}" for where in places]
    lines.append("hint: write a plugin that registers a rule for these kinds (README, 'Writing a "
                 f"plugin'); {PROG} --list-rules shows the kinds already supported")
    return "\n".join(lines)


def _one_line(exc: BaseException | str) -> str:
    """The message of ``exc`` on one line (its type name when it has no message)."""
    text = " ".join(part.strip() for part in str(exc).splitlines() if part.strip())
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        text = f"{exc.filename}: {exc.strerror}"
    return text or type(exc).__name__


def _error(message: str) -> None:
    click.echo(f"{PROG}: error: {message}", err=True)


def _report(exc: Exception, debug: bool) -> None:
    """One line for ``exc`` on stderr (the traceback when ``debug``)."""
    if debug:
        traceback.print_exc()
    elif isinstance(exc, expected_errors()):
        _error(_one_line(exc))
    elif isinstance(exc, MemoryError):
        _error("out of memory: the model or its inputs are too large for this machine")
    else:  # a bug: still one line unless debugging
        _error(f"internal error: {type(exc).__name__}: {_one_line(exc)} (rerun with --debug "
               "or GMN_COMPILER_DEBUG=1 for the traceback, and please report it)")


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``gmn-compile`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status
    (0 ok, 1 error, 2 usage) instead of exiting, so it can be called from tests. The warning
    filters it sets are restored on return."""
    args = list(sys.argv[1:] if argv is None else argv)
    state = {"debug": _debug_from_env()}
    with warnings.catch_warnings():
        try:
            result = command.main(args, prog_name=PROG, standalone_mode=False, obj=state)
        except click.exceptions.UsageError as exc:
            _error(f"{_one_line(exc.format_message())} (see {PROG} --help)")
            return EXIT_USAGE
        except click.ClickException as exc:
            _error(_one_line(exc.format_message()))
            return exc.exit_code
        except click.exceptions.Abort:
            _error("aborted")
            return EXIT_ERROR
        except SystemExit as exc:  # click exits this way on a broken pipe
            return exc.code if isinstance(exc.code, int) else EXIT_ERROR
        except Exception as exc:
            _report(exc, state["debug"])
            return EXIT_ERROR
    return result if isinstance(result, int) else EXIT_OK


if __name__ == "__main__":  # python -m gmn_compiler.cli
    sys.exit(main())
