"""Compile a model folder (see :mod:`gmn_models.model_folder` for the format) into parameter graphs:
in parallel worker processes, resumable after an interruption, skipping bad models.

Output layout of ``out_dir`` (every file loads with ``torch.load(path, weights_only=True)`` and is
written atomically)::

    structures/<arch>.pt     one compiled graph per architecture -- a (builder, builder_kwargs,
                             input_shape) triple -- or per .pt2/.onnx file:
                             {"format", "graph": ParameterGraph.to_dict(), "state_shapes"}
    values/<kk>/<key>.pt     one per model: {"format", "path", "structure", "num_edges",
                             "values": Tensor[E]} -- the model's edge_attr[:, 0]
    failures.json            [[path, one-line reason], ...] of the last run

Speed trick: models of one architecture share one compiled structure. The structure is compiled
once from a freshly built module; each model's edge values are then gathered from its state dict
through ``edge_param`` / ``edge_offset`` (one vectorised gather per model), which is bit-identical
to compiling the model itself. A model's values file is its "done" marker: a rerun with
``resume=True`` skips it. File ids include the model file's size and mtime and the compiler's
schema and package version (after editing the compiler without a version bump, rerun with
``resume=False``). Model files are read with safetensors, the compiler's .pt2 loader or onnx.
The compiler reads .pt2 archives without unpickling (:mod:`gmn_compiler.frontends.pt2_safe`); as a
second layer, .pt2 and .onnx files compile with ``TORCH_FORCE_WEIGHTS_ONLY_LOAD=1``, so no
``torch.load`` in the process can run code either.

Model folders come from strangers: a row's file must lie inside the folder
(:func:`gmn_models.model_folder.model_file`) and its builder is looked up in
:mod:`gmn_models.builders` (never imported from the name), in this process; a worker receives the
registered callable itself (pickled by reference; one that does not pickle, e.g. a lambda,
compiles its structure in this process).

Command line: ``python -m gmn_models.compile_folder SOURCE OUT_DIR [--workers N] [--no-resume]``.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import json
import multiprocessing
import os
import pickle
import sys
from collections import OrderedDict, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch_geometric.data import Data

from gmn_compiler import schema
from gmn_compiler.fileio import write_atomically
from gmn_compiler.graph import ParameterGraph

from .builders import get_builder
from .model_folder import ModelFolderError, ModelRow, build_module, example_input, model_file, read_model_table
from .workers import usable_workers

__all__ = ["compile_folder", "CompileReport", "CompiledFolder", "compile_row", "read_model_table",
           "ModelRow", "ModelFolderError", "build_module", "example_input"]

_STRUCTURE_FORMAT = "gmn-models-structure"
_VALUES_FORMAT = "gmn-models-values"


@dataclass
class CompileReport:
    """What :func:`compile_folder` did. ``failures``: ``(path, one-line reason)`` per model that
    could not be compiled, in table order; ``compiled``: models compiled in this run;
    ``reused``: models found already compiled (resume)."""

    out_dir: Path
    total: int
    compiled: int = 0
    reused: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> int:
        return self.total - len(self.failures)


# ------------------------------------------------------------------ paths
def structure_path(out_dir: Path, arch: str) -> Path:
    return Path(out_dir) / "structures" / f"{arch}.pt"


def values_path(out_dir: Path, row: ModelRow) -> Path:
    key = row.key()
    return Path(out_dir) / "values" / key[:2] / f"{key}.pt"


def _save(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, lambda tmp: torch.save(payload, tmp))


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    message = f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")
    return message if len(message) <= 500 else message[:497] + "..."


# ------------------------------------------------------------------ direct compilation
def compile_row(folder: str | Path, row: ModelRow) -> ParameterGraph:
    """Compile one model of the folder on its own (no structure sharing): ``.safetensors`` rows
    are built with their builder, loaded with ``load_state_dict(strict=True)`` and traced on
    :func:`example_input`; ``.pt2`` / ``.onnx`` files are compiled from the file. This is the
    reference the shared-structure path of :func:`compile_folder` reproduces bit for bit."""
    import gmn_compiler as gc

    path = model_file(folder, row)
    if row.kind == "safetensors":
        from safetensors.torch import load_file

        module = build_module(row)
        module.load_state_dict(load_file(str(path)), strict=True)
        return gc.compile(module, (example_input(row),))
    with _weights_only_loads():
        return gc.compile(str(path))


_FORCE, _FORCE_NO = "TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"


@contextlib.contextmanager
def _weights_only_loads():
    """Every ``torch.load`` inside runs with ``weights_only=True``, even one that asks for
    ``False``: ``torch.export.load`` unpickles archive entries marked ``use_pickle`` (and falls
    back from a refused restricted load) with ``weights_only=False``, which would let a .pt2
    file of a model folder run code. Sets the process environment while it runs."""
    saved = {k: os.environ.get(k) for k in (_FORCE, _FORCE_NO)}
    os.environ[_FORCE] = "1"
    os.environ.pop(_FORCE_NO, None)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class _Structure:
    """A compiled architecture plus the precomputed gather that fills in a model's values."""

    def __init__(self, payload: dict):
        self.graph = ParameterGraph.from_dict(payload["graph"])
        self.state_shapes = {k: tuple(v) for k, v in payload["state_shapes"].items()}
        data = self.graph.data
        names = []
        for info in self.graph.params:  # the state-dict key that holds each table entry
            found = [n for n in (info.name, *info.aliases) if n in self.state_shapes]
            names.append(found[0] if found else None)
        from_state = torch.tensor([n is not None for n in names] + [False], dtype=torch.bool)
        param = data.edge_param.clone()
        param[param < 0] = len(names)  # structural edges -> the trailing "False" slot
        self.mask = from_state[param]
        self.sources = [(n, info.dtype) for n, info in zip(names, self.graph.params) if n is not None]
        numel = torch.tensor([_numel(self.state_shapes[n]) for n, _ in self.sources] or [0])
        base = torch.full((len(names),), -1, dtype=torch.long)
        base[from_state[:-1]] = (torch.cumsum(numel, 0) - numel)[: len(self.sources)]
        self.gather = base[data.edge_param[self.mask]] + data.edge_offset[self.mask]

    @property
    def num_edges(self) -> int:
        return int(self.graph.data.edge_index.shape[1])

    def values(self, state: dict[str, torch.Tensor]) -> torch.Tensor:
        """Edge values ``[E]`` of the model whose state dict is ``state`` (checked like
        ``load_state_dict(strict=True)``)."""
        missing = sorted(set(self.state_shapes) - set(state))
        unexpected = sorted(set(state) - set(self.state_shapes))
        if missing or unexpected:
            raise ModelFolderError(f"state dict does not fit the builder: missing {missing[:4]}, "
                                   f"unexpected {unexpected[:4]}")
        for name, shape in self.state_shapes.items():
            if tuple(state[name].shape) != shape:
                raise ModelFolderError(f"state dict entry {name!r} has shape {list(state[name].shape)}, "
                                       f"the builder's has {list(shape)}")
        template = self.graph.data.edge_attr[:, 0]
        out = template.clone()
        if self.sources:
            flat = torch.cat([state[n].detach().to(dtype).reshape(-1) for n, dtype in self.sources])
            out[self.mask] = flat[self.gather].to(out.dtype)
        return out


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


# ------------------------------------------------------------------ worker tasks
_CACHE: OrderedDict[tuple[str, str], _Structure] = OrderedDict()  # (out_dir, arch) -> structure


def _init_worker(sys_path: list[str]) -> None:
    for entry in reversed(sys_path):  # builders importable in the parent are importable here
        if entry not in sys.path:
            sys.path.insert(0, entry)
    torch.set_num_threads(1)  # parallelism is across processes


def _structure(out_dir: Path, arch: str) -> _Structure:
    key = (str(out_dir), arch)
    if key not in _CACHE:
        _CACHE[key] = _Structure(torch.load(structure_path(out_dir, arch), weights_only=True))
        while len(_CACHE) > 8:
            _CACHE.popitem(last=False)
    _CACHE.move_to_end(key)
    return _CACHE[key]


def _task_structure(out_dir: Path, row: ModelRow, builder: Callable) -> str | None:
    """Compile the architecture of ``row`` from a module freshly built by ``builder`` (the
    registered builder of ``row.builder``, looked up by the caller); None or the reason."""
    import gmn_compiler as gc

    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            module = build_module(row, builder)
        shapes = {k: list(v.shape) for k, v in module.state_dict().items()}
        graph = gc.compile(module, (example_input(row),))
        _CACHE.pop((str(out_dir), row.arch()), None)
        _save(structure_path(out_dir, row.arch()),
              {"format": _STRUCTURE_FORMAT, "graph": graph.to_dict(), "state_shapes": shapes})
        return None
    except Exception as exc:  # one bad architecture must not stop the run
        return _one_line(exc)


def _task_fill(folder: Path, out_dir: Path, rows: list[ModelRow]) -> list[tuple[int, str | None]]:
    """Values of every model in ``rows`` (one architecture) from their state dicts."""
    from safetensors.torch import load_file

    results = []
    for row in rows:
        try:
            structure = _structure(out_dir, row.arch())
            values = structure.values(load_file(str(model_file(folder, row))))
            _save(values_path(out_dir, row), {"format": _VALUES_FORMAT, "path": row.path,
                                              "structure": row.arch(), "num_edges": structure.num_edges,
                                              "values": values})
            results.append((row.index, None))
        except Exception as exc:
            results.append((row.index, _one_line(exc)))
    return results


def _task_file(folder: Path, out_dir: Path, row: ModelRow) -> list[tuple[int, str | None]]:
    """Compile a .pt2 / .onnx model: its own structure plus its values."""
    try:
        graph = compile_row(folder, row)
        _save(structure_path(out_dir, row.arch()),
              {"format": _STRUCTURE_FORMAT, "graph": graph.to_dict(), "state_shapes": {}})
        values = graph.edge_values().clone()
        _save(values_path(out_dir, row), {"format": _VALUES_FORMAT, "path": row.path,
                                          "structure": row.arch(), "num_edges": values.numel(),
                                          "values": values})
        return [(row.index, None)]
    except Exception as exc:
        return [(row.index, _one_line(exc))]


# ------------------------------------------------------------------ orchestration
class _InlineExecutor(cf.Executor):
    """Runs each task at submission, in this process (``workers=0``)."""

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> cf.Future:
        future: cf.Future = cf.Future()
        try:  # a KeyboardInterrupt propagates: an interrupted run stops
            future.set_result(fn(*args, **kwargs))
        except Exception as exc:  # pragma: no cover - tasks catch their own errors
            future.set_exception(exc)
        return future


def _executor(workers: int) -> cf.Executor:
    if workers <= 0:
        return _InlineExecutor()
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        main_spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        if getattr(main_spec, "name", None) != __name__:  # preloading the -m module makes runpy warn
            ctx.set_forkserver_preload([__name__])  # workers start with torch imported
    else:
        ctx = multiprocessing.get_context("spawn")
    return cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                                  initargs=(list(sys.path),))


def _progress_bar(total: int, progress: bool | None):
    from tqdm.auto import tqdm

    enabled = sys.stderr.isatty() if progress is None else progress
    return tqdm(total=total, desc="compiling models", unit="model", file=sys.stderr,
                disable=not enabled, dynamic_ncols=True)


def compile_folder(source: str | Path, out_dir: str | Path, workers: int = 2, resume: bool = True,
                   *, progress: bool | None = None, chunk_size: int = 64) -> CompileReport:
    """Compile every model of the folder ``source`` into ``out_dir`` (layout in the module doc).

    ``workers``: worker processes (forkserver, else spawn); 0 compiles in this process.
    ``resume``: skip models whose values file exists (an interrupted run continues where it
    stopped); ``False`` recompiles everything. A bad model (unreadable file, file outside the
    folder, unregistered builder, unsupported op, state dict that does not fit) is skipped and
    reported: ``failures`` of the returned :class:`CompileReport`, also printed on stderr and
    written to ``failures.json``.
    ``progress``: tqdm bar on stderr (default: when stderr is a terminal).
    Raises :class:`ModelFolderError` for a folder without a readable ``models.csv``.
    """
    folder, out = Path(source), Path(out_dir)
    rows = read_model_table(folder)
    out.mkdir(parents=True, exist_ok=True)
    report = CompileReport(out, len(rows))
    errors: dict[int, str] = {r.index: r.problem for r in rows if r.problem}
    todo = [r for r in rows if not r.problem and not (resume and values_path(out, r).exists())]
    report.reused = len(rows) - len(errors) - len(todo)
    workers = usable_workers(workers)
    with _executor(workers if todo else 0) as pool, _progress_bar(len(todo), progress) as bar:
        _run(pool, folder, out, todo, errors, bar, resume, max(1, workers), chunk_size)
    by_index = {r.index: r for r in rows}
    report.failures = [(by_index[i].path, errors[i]) for i in sorted(errors)]
    report.compiled = len(todo) - sum(1 for r in todo if r.index in errors)
    _save_failures(out, report.failures)
    if report.failures:
        print(f"gmn compile_folder: {len(report.failures)} of {len(rows)} models skipped:", file=sys.stderr)
        for path, reason in report.failures:
            print(f"  {path}: {reason}", file=sys.stderr)
    return report


def _run(pool: cf.Executor, folder: Path, out: Path, todo: list[ModelRow], errors: dict[int, str],
         bar, resume: bool, workers: int, chunk_size: int) -> None:
    groups: dict[str, list[ModelRow]] = defaultdict(list)
    pending: dict[cf.Future, tuple[str, Any]] = {}

    def submit(what: str, rows: list[ModelRow], fn: Callable, *args: Any) -> None:
        try:
            pending[pool.submit(fn, *args)] = (what, rows)
        except cf.BrokenExecutor as exc:  # a worker died (e.g. killed for memory): skip, rerun resumes
            for row in rows:
                errors[row.index] = _one_line(exc)
            bar.update(len(rows))

    def submit_fills(rows: list[ModelRow]) -> None:
        size = max(1, min(chunk_size, -(-len(rows) // workers)))
        for start in range(0, len(rows), size):
            chunk = rows[start:start + size]
            submit("models", chunk, _task_fill, folder, out, chunk)

    for row in todo:
        if row.kind == "safetensors":
            groups[row.arch()].append(row)
        else:
            submit("models", [row], _task_file, folder, out, row)
    for arch, rows in groups.items():
        if resume and structure_path(out, arch).exists():
            submit_fills(rows)
            continue
        try:  # looked up here: workers never consult a registry, nor import a name from a row
            builder = get_builder(rows[0].builder)
        except ModelFolderError as exc:
            for row in rows:
                errors[row.index] = _one_line(exc)
            bar.update(len(rows))
            continue
        if isinstance(pool, _InlineExecutor) or _pickles(builder):
            submit("structure", rows, _task_structure, out, rows[0], builder)
            continue
        problem = _task_structure(out, rows[0], builder)  # a lambda or local function: here
        if problem is None:
            submit_fills(rows)
        else:
            for row in rows:
                errors[row.index] = problem
            bar.update(len(rows))
    while pending:
        done, _ = cf.wait(list(pending), return_when=cf.FIRST_COMPLETED)
        for future in done:
            what, rows = pending.pop(future)
            error = _one_line(future.exception()) if future.exception() else None
            if what == "structure" and error is None and future.result() is None:
                submit_fills(rows)
                continue
            if what == "structure" or error is not None:
                for row in rows:
                    errors[row.index] = error or future.result()
                bar.update(len(rows))
                continue
            for index, problem in future.result():
                if problem is not None:
                    errors[index] = problem
            bar.update(len(rows))


def _pickles(fn: Callable) -> bool:
    """Whether ``fn`` can be sent to a worker process (pickled by reference)."""
    try:
        pickle.dumps(fn)
        return True
    except Exception:
        return False


def _save_failures(out: Path, failures: list[tuple[str, str]]) -> None:
    text = json.dumps([list(f) for f in failures], indent=1)

    def write(tmp: str) -> None:
        Path(tmp).write_text(text, encoding="utf-8")

    write_atomically(out / "failures.json", write)


# ------------------------------------------------------------------ reading results back
class CompiledFolder:
    """Read access to the output of :func:`compile_folder`: ``graph(row)`` is the model's
    ``Data`` (schema v1: ``x``, ``edge_index``, ``edge_attr``, ``edge_param``, ``edge_offset``,
    ``num_nodes``; tensors of its own), exactly what compiling that model directly gives, or
    None when the model was not compiled. Structures are cached (``cache_size`` most recent)."""

    def __init__(self, out_dir: str | Path, cache_size: int = 16):
        self.out_dir = Path(out_dir)
        self.cache_size = cache_size
        self._graphs: OrderedDict[str, ParameterGraph] = OrderedDict()

    def structure(self, arch: str) -> ParameterGraph:
        if arch not in self._graphs:
            payload = torch.load(structure_path(self.out_dir, arch), weights_only=True)
            if payload.get("format") != _STRUCTURE_FORMAT:
                raise ModelFolderError(f"{structure_path(self.out_dir, arch)}: not a compiled structure")
            self._graphs[arch] = ParameterGraph.from_dict(payload["graph"])
            while len(self._graphs) > self.cache_size:
                self._graphs.popitem(last=False)
        self._graphs.move_to_end(arch)
        return self._graphs[arch]

    def graph(self, row: ModelRow, vocabulary: schema.Vocabulary | None = None) -> Data | None:
        """The model's graph; with ``vocabulary``, its categorical codes mapped into it by name
        (names it lacks: -1, "unknown")."""
        path = values_path(self.out_dir, row)
        if row.problem or not path.exists():
            return None
        payload = torch.load(path, weights_only=True)
        structure = self.structure(payload["structure"])
        data = structure.data
        if payload.get("format") != _VALUES_FORMAT or int(payload["num_edges"]) != data.edge_index.shape[1]:
            raise ModelFolderError(f"{path}: values do not fit structure {payload.get('structure')}; "
                                   "recompile with resume=False")
        edge_attr = data.edge_attr.clone()
        edge_attr[:, 0] = payload["values"]
        x = data.x.clone()
        if vocabulary is not None:
            x, edge_attr = structure.vocabulary.translate_columns(x, edge_attr, vocabulary)
        return Data(x=x, edge_index=data.edge_index.clone(), edge_attr=edge_attr,
                    edge_param=data.edge_param.clone(), edge_offset=data.edge_offset.clone(),
                    num_nodes=int(data.num_nodes))


def main_command():
    """The click command behind ``python -m gmn_models.compile_folder``."""
    import click

    @click.command(help="Compile every model of a model folder (SOURCE, with models.csv) into "
                        "parameter graphs under OUT_DIR; resumable, bad models are skipped.")
    @click.argument("source", type=click.Path(exists=True, file_okay=False))
    @click.argument("out_dir", type=click.Path(file_okay=False))
    @click.option("--workers", type=int, default=2, show_default=True, help="worker processes (0: inline)")
    @click.option("--resume/--no-resume", default=True, show_default=True,
                  help="skip models compiled by an earlier run")
    def command(source: str, out_dir: str, workers: int, resume: bool) -> None:
        try:
            report = compile_folder(source, out_dir, workers=workers, resume=resume)
        except ModelFolderError as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(f"{report.ok} of {report.total} models compiled into {out_dir} "
                   f"({report.compiled} now, {report.reused} reused, {len(report.failures)} skipped)")

    return command


def main() -> None:
    """``python -m gmn_models.compile_folder SOURCE OUT_DIR [--workers N] [--no-resume]``."""
    main_command().main(prog_name="python -m gmn_models.compile_folder")


if __name__ == "__main__":
    from gmn_models.compile_folder import main as _main  # the importable module's functions pickle

    _main()
