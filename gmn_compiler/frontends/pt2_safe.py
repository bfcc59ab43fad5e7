"""Read a ``.pt2`` archive (``torch.export.save``) without running code from the file.

``torch.export.load`` unpickles archive entries (``weights_only=False``), ``sympify``s (an
``eval``) expression strings from the JSON, resolves any ``torch.…`` attribute path as a node
target and, on ``ep.module()``, ``exec``s the archive's guard code. This reader instead:

* parses the model JSON with torch's pure JSON→dataclass helper and refuses it unless every
  symbolic expression and range-constraint key passes a strict token grammar and every node
  target (and operator argument) is an op path ``torch.ops.<ns>.<op>[.<overload>]`` or one
  of a few pure builtins torch uses for symbolic-size arithmetic;
* builds weights and tensor constants itself, from raw bytes, or through
  ``torch.load(..., weights_only=True)`` for pickled tensors; torchbind and opaque objects
  (which need full pickle) are refused; sample inputs are never read;
* drops the guard code and ``source_fn_stack`` node metadata (not needed by the compiler);
* after deserialising, checks again that every call target is a torch op or allowed builtin.

``allow_pickle=True`` means the caller trusts the file: it is then read by
``torch.export.load``, which CAN RUN ARBITRARY CODE from it.

Every failure is a one-line :class:`~gmn_compiler.errors.CompileError`.
"""

from __future__ import annotations

import builtins
import io
import json
import logging
import math
import operator
import os
import re
import types
import zipfile
from contextlib import contextmanager
from typing import Any, Iterator

import sympy
import torch
import torch.utils._sympy.functions as _sympy_functions
from torch._export.serde import schema
from torch._export.serde.serialize import (_SYM_OPS, ExportedProgramDeserializer, _dict_to_dataclass,
                                           deserialize_scalar_type, deserialize_size,
                                           deserialize_storage_offset, deserialize_stride)
from torch.export.pt2_archive import constants as pt2

from ..errors import CompileError

_TRUST_HINT = ("re-run with --trust-pickle (API: allow_pickle=True) only if you trust its author")
_MAX_EXPR = 10_000  # characters in one symbolic expression

# --- symbolic expressions -------------------------------------------------------------------
# Functions an expression may call: the deserializer's own table (the public names of
# torch.utils._sympy.functions) and the sympy classes ``srepr`` writes for shape arithmetic.
_SYMPY_CLASSES = {"Symbol", "Integer", "Float", "Rational", "Add", "Mul", "Pow", "Max", "Min", "Abs",
                  "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "Equality", "Unequality", "StrictLessThan",
                  "StrictGreaterThan", "LessThan", "GreaterThan", "And", "Or", "Not"}
_FUNCTIONS = frozenset(n for n in (*_sympy_functions.__all__, *_SYMPY_CLASSES)
                       if re.fullmatch(r"[A-Z][A-Za-z]*", n) and not hasattr(builtins, n))
_CONSTANTS = {"True", "False", "true", "false", "oo", "zoo", "nan"}
_TOKEN = re.compile(r"(?P<space>\s+)|(?P<num>\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)|(?P<str>'[^'\\]*')"
                    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*)|(?P<op>\*\*|//|<=|>=|==|!=|[-+*/%(),<>=&|])")
_SYMBOL = re.compile(r"[a-z]+[0-9]+")  # s0, u3, zuf1 … (torch's symbol prefixes + an index)
_KWARG = re.compile(r"[a-z]+(?:_[a-z]+)*")  # Symbol(…, positive=True), Float(…, precision=53)
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?")

# --- node targets ---------------------------------------------------------------------------
_IDENT = r"(?!__)[A-Za-z_][A-Za-z0-9_]*"
_OP_PATH = re.compile(rf"torch\.ops\.({_IDENT})\.({_IDENT})(?:\.{_IDENT})?")
# Namespaces / ATen ops with effects outside the graph (files, RPC, global state): refused.
# So are attributes of torch.ops that are not op namespaces (load_library, loaded_libraries…).
_DENIED_NAMESPACES = {"prim", "profiler", "c10d", "_c10d_functional", "_c10d_functional_autograd",
                      "symm_mem", *dir(type(torch.ops)),
                      *(n for n in dir(torch.ops) if not isinstance(getattr(torch.ops, n, None), types.ModuleType))}
_DENIED_ATEN = {"save", "from_file", "_print", "manual_seed", "seed"}


# The non-op call targets exported graphs contain: torch's symbolic-size ops (_SYM_OPS, as the
# serializer names them) plus getitem, math rounding and torch._assert / torch.sym_sum.
_BUILTIN_TARGETS: dict[str, Any] = {
    **{f"{op.__module__}.{op.__name__}": op for op in _SYM_OPS},
    "_operator.getitem": operator.getitem, "math.ceil": math.ceil, "math.floor": math.floor,
    "math.sqrt": math.sqrt, "math.trunc": math.trunc,
    **{f"torch.{n}": getattr(torch, n) for n in ("_assert", "sym_sum") if hasattr(torch, n)}}
_BUILTIN_OBJECTS = {id(v) for v in _BUILTIN_TARGETS.values()}


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def _refuse(path: str, what: str, value: Any) -> CompileError:
    return CompileError(f"{path}: refused the archive: {what} {_short(value)} is not allowed "
                        "(this reader accepts only torch ops and plain shape expressions)")


def check_expression(expr: Any) -> bool:
    """Whether ``expr`` is a string the deserializer may ``sympify`` safely: numbers, the
    operators ``+ - * / // ** % ( ) , < > <= >= == != & |``, symbol names (``s0``), quoted
    symbol names or numbers, ``True``/``False``/``oo``, keyword names before ``=`` and calls of
    the functions in ``_FUNCTIONS``. No attribute access, dunders, builtins or other names."""
    if not isinstance(expr, str) or len(expr) > _MAX_EXPR:
        return False
    matches = list(_TOKEN.finditer(expr))
    if sum(len(m.group()) for m in matches) != len(expr):  # a character no token covers
        return False
    tokens = [(m.lastgroup, m.group()) for m in matches if m.lastgroup != "space"]
    depth = 0
    for i, (kind, text) in enumerate(tokens):
        after = tokens[i + 1][1] if i + 1 < len(tokens) else ""
        depth += {"(": 1, ")": -1}.get(text, 0) if kind == "op" else 0
        if kind == "str" and not (_SYMBOL.fullmatch(text[1:-1]) or _NUMBER.fullmatch(text[1:-1])):
            return False
        if kind == "name":
            if after == "(":
                ok = text in _FUNCTIONS
            elif after == "=":
                ok = _KWARG.fullmatch(text) is not None
            else:
                ok = text in _CONSTANTS or (_SYMBOL.fullmatch(text) is not None and not hasattr(sympy, text))
            if not ok:
                return False
        if kind == "op" and text == "=" and (depth < 1 or tokens[i - 1][0] != "name"):
            return False
        if depth < 0:
            return False
    return depth == 0


def check_target(target: Any) -> bool:
    """Whether a serialized node target names a torch op (``torch.ops.<ns>.<op>[.<overload>]``,
    outside the denied namespaces and I/O ops) or one of the allowed pure builtins."""
    if not isinstance(target, str):
        return False
    if target in _BUILTIN_TARGETS:
        return True
    m = _OP_PATH.fullmatch(target)
    if m is None or m.group(1) in _DENIED_NAMESPACES:
        return False
    return not (m.group(1) == "aten" and m.group(2) in _DENIED_ATEN)


def _validate_json(path: str, model: dict) -> None:
    """Refuse the model JSON unless every expression and target passes the checks above;
    drop the guard code (``exec``-ed by ``ep.module()``) and ``source_fn_stack`` metadata."""
    for key in model.get("range_constraints") or {}:
        if not check_expression(key):
            raise _refuse(path, "range-constraint name", key)
    model["guards_code"] = []
    stack: list[Any] = [model]
    while stack:
        obj = stack.pop()
        if isinstance(obj, list):
            stack.extend(obj)
        elif isinstance(obj, dict):
            for key, value in obj.items():
                if key == "expr_str" and not check_expression(value):
                    raise _refuse(path, "symbolic expression", value)
                if key in ("target", "as_operator") and not check_target(value):
                    raise _refuse(path, "call target", value)
                if key == "metadata" and isinstance(value, dict):
                    value.pop("source_fn_stack", None)
                stack.append(value)


def _check_graph(path: str, ep: torch.export.ExportedProgram) -> None:
    """Defence in depth: every call target of the deserialized graphs (and every callable
    argument) is an OpOverload / OpOverloadPacket / HigherOrderOperator or allowed builtin;
    string graph inputs cannot break out of the guard code torch generates for them."""
    allowed = (torch._ops.OpOverload, torch._ops.OpOverloadPacket, torch._ops.HigherOrderOperator)

    def ok(fn: Any) -> bool:
        return isinstance(fn, allowed) or id(fn) in _BUILTIN_OBJECTS

    for module in ep.graph_module.modules():
        if not isinstance(module, torch.fx.GraphModule):
            continue
        for node in module.graph.nodes:
            if node.op in ("call_method", "call_module"):
                raise _refuse(path, f"{node.op} node", node.target)
            if node.op == "call_function" and not ok(node.target):
                raise _refuse(path, "call target", node.target)
            for arg in torch.utils._pytree.tree_leaves((node.args, node.kwargs)):
                if callable(arg) and not isinstance(arg, (torch.fx.Node, torch.Tensor)) and not ok(arg):
                    raise _refuse(path, "operator argument", arg)
            val = node.meta.get("val")
            if node.op == "placeholder" and isinstance(val, str) and re.search(r"['\\\n\r]", val):
                raise _refuse(path, "string input", val)


class _Archive:
    """The entries of a PT2 zip, by name below its single root folder."""

    def __init__(self, path: str):
        self.path = path
        self.zip = zipfile.ZipFile(path)
        names = self.zip.namelist()
        if not names or "/" not in names[0]:
            raise CompileError(f"{path}: not a torch.export (.pt2) archive (no root folder)")
        root = names[0].split("/", 1)[0] + "/"
        self.entries: dict[str, zipfile.ZipInfo] = {}
        for info in self.zip.infolist():
            if info.filename.startswith(root):
                name = info.filename[len(root):]
                if name in self.entries:
                    raise CompileError(f"{path}: refused the archive: entry {name} appears twice")
                self.entries[name] = info

    def read(self, name: str) -> bytes:
        if name not in self.entries:
            raise CompileError(f"{self.path}: entry {name} is missing; the archive is incomplete")
        return self.zip.read(self.entries[name])

    def text(self, name: str) -> str:
        return self.read(name).decode("utf-8")

    def json(self, name: str) -> Any:
        return json.loads(self.text(name))


def _model_name(archive: _Archive) -> str:
    """The one model of the archive (``"model"``, what torch.export.save writes, if several)."""
    prefix, suffix = pt2.MODELS_FILENAME_FORMAT.split("{}")
    models = sorted(n[len(prefix):-len(suffix)] for n in archive.entries
                    if n.startswith(prefix) and n.endswith(suffix))
    if len(models) == 1 or "model" in models:
        return models[0] if len(models) == 1 else "model"
    found = ", ".join(models) if models else "none"
    raise CompileError(f"{archive.path}: expected one model in {prefix}*{suffix}, found {found}; "
                       "save one program with torch.export.save(ep, path)")


def _needs_pickle(archive: _Archive, entry: str, kind: str) -> CompileError:
    return CompileError(f"{archive.path}: entry {entry} needs pickle ({kind}), which can run code "
                        f"from the file; {_TRUST_HINT}")


def _load_pickled_tensors(archive: _Archive, entry: str, *, many: bool) -> Any:
    """``torch.load(weights_only=True)`` of one entry: a tensor, or a dict of them if ``many``."""
    data = archive.read(entry)
    try:
        value = torch.load(io.BytesIO(data), weights_only=True)
    except Exception:
        raise _needs_pickle(archive, entry, "objects other than plain tensors") from None
    tensors = value.values() if many and isinstance(value, dict) else [value]
    if (many and not isinstance(value, dict)) or not all(isinstance(t, torch.Tensor) for t in tensors):
        raise CompileError(f"{archive.path}: entry {entry} does not hold "
                           f"{'a dict of tensors' if many else 'a tensor'}; the archive is malformed")
    return value


def _raw_tensor(archive: _Archive, entry: str, meta: schema.TensorMeta) -> torch.Tensor:
    """The flat tensor of a raw payload (host byte order, CPU), like torch's _build_file_map."""
    dtype = deserialize_scalar_type(meta.dtype)
    data = archive.read(entry)
    if not data:
        flat = torch.zeros(deserialize_size(meta.sizes), dtype=dtype)
    else:
        size = torch._utils._element_size(dtype)
        if len(data) % size:
            raise CompileError(f"{archive.path}: entry {entry} has {len(data)} bytes, not a "
                               f"multiple of the {size}-byte {dtype}; the archive is malformed")
        flat = torch.frombuffer(bytearray(data), dtype=dtype)
    return flat.requires_grad_(True) if meta.requires_grad else flat


def _load_payloads(archive: _Archive, model: str, directory: str, config_format: str,
                   prefix: str) -> dict[str, Any]:
    """Weights or tensor constants of ``model`` by FQN (views of shared flat tensors keep
    their aliasing); refuses anything that needs full pickle."""
    legacy = f"{directory}{model}.pt"
    if legacy in archive.entries:
        return _load_pickled_tensors(archive, legacy, many=True)
    config = _dict_to_dataclass(schema.PayloadConfig, archive.json(config_format.format(model)))
    flats: dict[str, torch.Tensor] = {}
    out: dict[str, Any] = {}
    for fqn, meta in config.config.items():
        name, entry = meta.path_name, f"{directory}{meta.path_name}"
        if name.startswith(pt2.CUSTOM_OBJ_FILENAME_PREFIX):
            raise _needs_pickle(archive, entry, "a torchbind object")
        if name.startswith(pt2.OPAQUE_OBJ_FILENAME_PREFIX):
            raise _needs_pickle(archive, entry, "an opaque Python object")
        if not name.startswith(prefix) or "/" in name:
            raise CompileError(f"{archive.path}: payload {_short(name)} of {fqn} is not a {prefix}* "
                               "entry; the archive is malformed")
        if meta.use_pickle:
            out[fqn] = _load_pickled_tensors(archive, entry, many=False)
            continue
        if meta.tensor_meta is None:
            raise CompileError(f"{archive.path}: {fqn} has no tensor metadata; the archive is malformed")
        if name not in flats:
            flats[name] = _raw_tensor(archive, entry, meta.tensor_meta)
        tm = meta.tensor_meta
        view = torch.as_strided(flats[name], deserialize_size(tm.sizes), deserialize_stride(tm.strides),
                                deserialize_storage_offset(tm.storage_offset))
        out[fqn] = torch.nn.Parameter(view, requires_grad=tm.requires_grad) if meta.is_param else view
    return out


def _load_safely(path: str) -> torch.export.ExportedProgram:
    archive = _Archive(path)
    if pt2.ARCHIVE_FORMAT_PATH not in archive.entries or \
            archive.text(pt2.ARCHIVE_FORMAT_PATH) != pt2.ARCHIVE_FORMAT_VALUE:
        raise CompileError(f"{path}: not a torch.export (.pt2) archive (no '{pt2.ARCHIVE_FORMAT_PATH}' "
                           f"entry saying {pt2.ARCHIVE_FORMAT_VALUE}); save one with torch.export.save")
    version = archive.text(pt2.ARCHIVE_VERSION_PATH).strip()
    if version != pt2.ARCHIVE_VERSION_VALUE:
        raise CompileError(f"{path}: archive version {_short(version)} is not the supported "
                           f"{pt2.ARCHIVE_VERSION_VALUE}; re-save it with this torch version")
    model = _model_name(archive)
    raw = archive.json(pt2.MODELS_FILENAME_FORMAT.format(model))
    _validate_json(path, raw)
    program = _dict_to_dataclass(schema.ExportedProgram, raw)
    state_dict = _load_payloads(archive, model, pt2.WEIGHTS_DIR, pt2.WEIGHTS_CONFIG_FILENAME_FORMAT,
                                pt2.WEIGHT_FILENAME_PREFIX)
    constants = _load_payloads(archive, model, pt2.CONSTANTS_DIR, pt2.CONSTANTS_CONFIG_FILENAME_FORMAT,
                               pt2.TENSOR_CONSTANT_FILENAME_PREFIX)
    ep = ExportedProgramDeserializer().deserialize(program, state_dict, constants, b"")
    _check_graph(path, ep)
    return ep


@contextmanager
def _quiet_torch() -> Iterator[None]:
    """Silence torch.export's loggers (they log tracebacks and warnings before raising)."""
    levels = {lg: lg.level for lg in map(logging.getLogger, ("torch.export", "torch._export"))}
    for lg in levels:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in levels.items():
            lg.setLevel(level)


def load_exported_program(path: str | os.PathLike, *, allow_pickle: bool = False
                          ) -> torch.export.ExportedProgram:
    """Load the ExportedProgram of a ``.pt2`` archive written by ``torch.export.save``.

    By default nothing from the file is unpickled, ``eval``-ed or resolved to arbitrary
    callables (see the module docstring); sample inputs are not loaded and the program's guard
    code is dropped. ``allow_pickle=True`` trusts the file and uses ``torch.export.load``,
    which can run arbitrary code from it. Raises a one-line CompileError on any failure.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CompileError(f"{path}: no such file")
    with _quiet_torch():
        try:
            return torch.export.load(path) if allow_pickle else _load_safely(path)
        except CompileError:
            raise
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise CompileError(f"{path}: not a readable torch.export (.pt2) archive "
                               f"({type(exc).__name__}: {_short(first, 160)}); "
                               "save one with torch.export.save(torch.export.export(model, inputs), path)"
                               ) from exc
