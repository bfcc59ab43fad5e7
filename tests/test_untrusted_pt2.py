"""Reading untrusted .pt2 archives: gmn_compiler.frontends.pt2_safe.load_exported_program.

Hostile archives are built here from real ones (torch.export.save, then zipfile). Their
payloads create a marker file when run; the safe reader must refuse or ignore them and the
marker must never appear.
"""

from __future__ import annotations

import io
import json
import pickle
import zipfile

import pytest
import torch
from torch import nn

import gmn_compiler
from gmn_compiler.errors import CompileError
from gmn_compiler.frontends.pt2_safe import check_expression, check_target, load_exported_program


# ----------------------------------------------------------------------------- models
class _MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))

    def forward(self, x):
        return self.net(x)


class _CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x)))
        return self.fc(h.mean(dim=(2, 3)))


class _Constants(nn.Module):
    """A non-persistent buffer and a tensor attribute (a lifted tensor constant)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.register_buffer("scale", torch.full((4,), 0.5), persistent=False)
        self.offset = torch.arange(4.0)

    def forward(self, x):
        return self.fc(x) * self.scale + self.offset


class _Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)
        self.b.weight = self.a.weight

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


_MODELS = {
    "mlp": (_MLP, (torch.randn(2, 4),)),
    "cnn": (_CNN, (torch.randn(1, 3, 6, 6),)),
    "constants": (_Constants, (torch.randn(2, 4),)),
    "tied": (_Tied, (torch.randn(2, 4),)),
}


def _save(tmp_path, name: str) -> str:
    cls, inputs = _MODELS[name]
    torch.manual_seed(0)
    model = cls().eval()
    path = str(tmp_path / f"{name}.pt2")
    torch.export.save(torch.export.export(model, inputs), path)
    return path


# ----------------------------------------------------------------------------- archive editing
def _root(path: str) -> str:
    with zipfile.ZipFile(path) as z:
        return z.namelist()[0].split("/", 1)[0] + "/"


def _read(path: str, name: str) -> bytes:
    with zipfile.ZipFile(path) as z:
        return z.read(_root(path) + name)


def _rewrite(src: str, dst: str, changes: dict[str, bytes | None]) -> str:
    """Copy archive ``src`` to ``dst``, replacing, adding (bytes) or removing (None) entries
    named relative to the archive's root folder."""
    root = _root(src)
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            name = info.filename[len(root):]
            if name not in changes:
                zout.writestr(info, zin.read(info))
        for name, data in changes.items():
            if data is not None:
                zout.writestr(root + name, data)
    return dst


def _edit_json(path: str, name: str, edit) -> bytes:
    obj = json.loads(_read(path, name))
    edit(obj)
    return json.dumps(obj).encode()


class _Touch:
    """Unpickling this creates the marker file (``open(marker, "w")``)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _torch_payload(marker) -> bytes:
    buffer = io.BytesIO()
    torch.save(_Touch(marker), buffer)
    return buffer.getvalue()


def test_the_payloads_are_live(tmp_path):
    """The payloads do run code when unpickled without weights_only (so the tests below mean something)."""
    marker = tmp_path / "marker"
    torch.load(io.BytesIO(_torch_payload(marker)), weights_only=False).close()
    assert marker.exists()
    marker.unlink()
    pickle.loads(pickle.dumps(_Touch(marker))).close()
    assert marker.exists()


# ----------------------------------------------------------------------------- round trip
def _same_tensors(mine: dict, theirs: dict) -> None:
    assert list(mine) == list(theirs)
    for key, a in mine.items():
        b = theirs[key]
        assert type(a) is type(b), key
        assert (a.dtype, a.shape, a.stride(), a.requires_grad) == (b.dtype, b.shape, b.stride(), b.requires_grad)
        as_bytes = lambda t: t.detach().contiguous().reshape(-1).view(torch.uint8)
        assert torch.equal(as_bytes(a), as_bytes(b)), key
    # the same aliasing (tied parameters stay one storage)
    ptrs = lambda d: [sorted(k for k in d if d[k].untyped_storage().data_ptr() == d[key].untyped_storage().data_ptr())
                      for key in d]
    assert ptrs(mine) == ptrs(theirs)


@pytest.mark.parametrize("name", sorted(_MODELS))
def test_round_trip_matches_torch_export_load(tmp_path, name):
    path = _save(tmp_path, name)
    mine, theirs = load_exported_program(path), torch.export.load(path)
    _same_tensors(mine.state_dict, theirs.state_dict)
    _same_tensors(mine.constants, theirs.constants)
    assert mine.graph_signature == theirs.graph_signature
    assert str(mine.graph) == str(theirs.graph)
    a, b = gmn_compiler.compile(mine).data, gmn_compiler.compile(theirs).data
    for field in ("x", "edge_index", "edge_attr"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field


def test_dynamic_shapes_round_trip(tmp_path):
    """Symbolic sizes (expressions, range constraints) pass the expression grammar."""
    model = _MLP().eval()
    batch = torch.export.Dim("batch", min=2, max=64)
    ep = torch.export.export(model, (torch.randn(3, 4),), dynamic_shapes=({0: batch},))
    path = str(tmp_path / "dyn.pt2")
    torch.export.save(ep, path)
    assert "expr_str" in _read(path, "models/model.json").decode()
    mine, theirs = load_exported_program(path), torch.export.load(path)
    assert str(mine.graph) == str(theirs.graph)
    assert {str(k): v for k, v in mine.range_constraints.items()} == \
        {str(k): v for k, v in theirs.range_constraints.items()}
    x = torch.randn(5, 4)
    assert torch.equal(mine.module()(x), model(x))


# ----------------------------------------------------------------------------- hostile payloads
def _pickled_weight(path, marker):
    def edit(cfg):
        first = next(iter(cfg["config"].values()))
        first.update(use_pickle=True, path_name="weight_99")
    return {"data/weights/model_weights_config.json": _edit_json(path, "data/weights/model_weights_config.json", edit),
            "data/weights/weight_99": _torch_payload(marker)}


def _pickled_constant(path, marker):
    def edit(cfg):
        first = next(iter(cfg["config"].values()))
        first.update(use_pickle=True, path_name="tensor_99")
    return {"data/constants/model_constants_config.json":
            _edit_json(path, "data/constants/model_constants_config.json", edit),
            "data/constants/tensor_99": _torch_payload(marker)}


def _object_constant(prefix: str, payload: bytes):
    def build(path, marker):
        def edit(cfg):
            cfg["config"]["evil"] = {"path_name": f"{prefix}0", "is_param": False, "use_pickle": True,
                                     "tensor_meta": None}
        return {"data/constants/model_constants_config.json":
                _edit_json(path, "data/constants/model_constants_config.json", edit),
                f"data/constants/{prefix}0": payload}
    return build


_PICKLED_ENTRIES = {
    "pickled weight": _pickled_weight,
    "pickled constant": _pickled_constant,
    "legacy weights file": lambda path, marker: {"data/weights/model.pt": _torch_payload(marker)},
    "legacy constants file": lambda path, marker: {"data/constants/model.pt": _torch_payload(marker)},
    "torchbind object": lambda path, marker: _object_constant("custom_obj_", _torch_payload(marker))(path, marker),
    "opaque object": lambda path, marker: _object_constant("opaque_obj_", pickle.dumps(_Touch(marker)))(path, marker),
}


@pytest.mark.parametrize("kind", sorted(_PICKLED_ENTRIES))
def test_pickled_entries_are_refused(tmp_path, kind):
    marker = tmp_path / "marker"
    src = _save(tmp_path, "constants")
    hostile = _rewrite(src, str(tmp_path / "hostile.pt2"), _PICKLED_ENTRIES[kind](src, marker))
    with pytest.raises(CompileError) as err:
        load_exported_program(hostile)
    message = str(err.value)
    assert "\n" not in message
    assert "needs pickle" in message and "allow_pickle=True" in message and "data/" in message
    assert not marker.exists()


def test_hostile_sample_inputs_are_never_read(tmp_path):
    marker = tmp_path / "marker"
    src = _save(tmp_path, "mlp")
    hostile = _rewrite(src, str(tmp_path / "hostile.pt2"),
                       {"data/sample_inputs/model.pt": _torch_payload(marker)})
    ep = load_exported_program(hostile)
    assert ep.example_inputs is None
    gmn_compiler.compile(ep)
    assert not marker.exists()


def _shell(marker) -> str:
    return f"__import__('os').system('touch {marker}')"


def _chr_style(marker) -> str:
    """No quotes, no dunder: ``eval(chr(95)+chr(95)+…)`` (torch.export.load runs it)."""
    return "eval(" + "+".join(f"chr({ord(c)})" for c in _shell(marker)) + ")"


def _set_expr(expr: str):
    def edit(model):
        values = model["graph_module"]["graph"]["tensor_values"]
        meta = next(iter(values.values()))
        meta["sizes"][0] = {"as_expr": {"expr_str": expr, "hint": {"as_int": 2}}}
    return edit


def _set_target(target: str, marker):
    def edit(model):
        node = model["graph_module"]["graph"]["nodes"][0]
        node["target"] = target
        node["inputs"] = [{"name": "command", "arg": {"as_string": f"touch {marker}"}, "kind": 1}]
    return edit


def _add_range(expr: str):
    def edit(model):
        model["range_constraints"][expr] = {"min_val": 2, "max_val": 8}
    return edit


def _operator_arg(model):
    node = model["graph_module"]["graph"]["nodes"][0]
    node["inputs"].append({"name": "fn", "arg": {"as_operator": "torch.os.system"}, "kind": 1})


_HOSTILE_JSON = {
    "expr __import__": lambda marker: _set_expr(_shell(marker)),
    "expr chr": lambda marker: _set_expr(_chr_style(marker)),
    "expr dunder attribute": lambda marker: _set_expr("Integer(1).__class__.__mro__"),
    "expr quoted non-symbol": lambda marker: _set_expr("Symbol('os')"),
    "range constraint key": lambda marker: _add_range(_shell(marker)),
    "target torch.os.system": lambda marker: _set_target("torch.os.system", marker),
    "target torch.load": lambda marker: _set_target("torch.load", marker),
    "target builtins.eval": lambda marker: _set_target("builtins.eval", marker),
    "target extension op": lambda marker: _set_target("#evil:op", marker),
    "target file-writing aten op": lambda marker: _set_target("torch.ops.aten.from_file.default", marker),
    "target jit prim": lambda marker: _set_target("torch.ops.prim.Print.default", marker),
    "target torch.ops.load_library": lambda marker: _set_target("torch.ops.load_library.x", marker),
    "operator argument": lambda marker: _operator_arg,
}


@pytest.mark.parametrize("kind", sorted(_HOSTILE_JSON))
def test_hostile_model_json_is_refused(tmp_path, kind):
    marker = tmp_path / "marker"
    src = _save(tmp_path, "mlp")
    model = _edit_json(src, "models/model.json", _HOSTILE_JSON[kind](marker))
    hostile = _rewrite(src, str(tmp_path / "hostile.pt2"), {"models/model.json": model})
    with pytest.raises(CompileError) as err:
        load_exported_program(hostile)
    assert "\n" not in str(err.value) and "refused the archive" in str(err.value)
    assert not marker.exists()


def test_guard_code_is_dropped(tmp_path):
    """ep.module() exec-s the archive's guards_code; the safe reader drops it."""
    marker = tmp_path / "marker"
    src = _save(tmp_path, "mlp")
    model = _edit_json(src, "models/model.json", lambda m: m.update(guards_code=[_shell(marker)]))
    ep = load_exported_program(_rewrite(src, str(tmp_path / "hostile.pt2"), {"models/model.json": model}))
    ep.module()(torch.randn(2, 4))
    assert not marker.exists()


def test_expression_and_target_grammar():
    assert check_expression("Symbol('s77', positive=True, integer=True)")
    assert check_expression("Add(Mul(Integer(-1), Symbol('s17')), Max(Integer(3), s77), Integer(1))")
    assert check_expression("FloorDiv(s0 + 2*s1, 2) >= 2")
    assert check_expression("Float('1.5', precision=53)")
    assert check_expression("Eq(PythonMod(u3, 2), 0) & (s0 != 1)")
    for bad in ["__import__('os')", "s0.real", "open('x')", "Symbol(\"s0\")", "x=1", "Max(s0",
                "lambda: 0", "factorial2(5)", "Symbol('s0\\x27')", "getattr(s0, 'x')", 7]:
        assert not check_expression(bad), bad
    for good in ["torch.ops.aten.linear.default", "torch.ops.aten.add", "torch.ops.higher_order.cond",
                 "_operator.getitem", "_operator.floordiv", "torch.sym_max", "math.trunc"]:
        assert check_target(good), good
    for bad in ["torch.os.system", "torch.ops.aten.__class__.x", "torch.ops.aten.save.default",
                "torch.ops.import_module.x", "operator.getitem", "math.__loader__", None]:
        assert not check_target(bad), bad


# ----------------------------------------------------------------------------- opt-in pickle
class _Tagged(torch.Tensor):
    """A benign tensor subclass: weights_only refuses it, full pickle loads it."""


def test_allow_pickle_loads_a_benign_pickled_weight(tmp_path):
    src = _save(tmp_path, "mlp")
    key = next(iter(json.loads(_read(src, "data/weights/model_weights_config.json"))["config"]))
    weight = torch.export.load(src).state_dict[key].detach()
    buffer = io.BytesIO()
    torch.save(nn.Parameter(weight.as_subclass(_Tagged)), buffer)

    def edit(cfg):
        cfg["config"][key].update(use_pickle=True, path_name="weight_99")
    path = _rewrite(src, str(tmp_path / "pickled.pt2"), {
        "data/weights/model_weights_config.json": _edit_json(src, "data/weights/model_weights_config.json", edit),
        "data/weights/weight_99": buffer.getvalue()})
    with pytest.raises(CompileError, match="weight_99 needs pickle"):
        load_exported_program(path)
    ep = load_exported_program(path, allow_pickle=True)
    assert isinstance(ep.state_dict[key], _Tagged) and torch.equal(ep.state_dict[key], weight)


def test_plain_pickled_tensor_loads_with_weights_only(tmp_path):
    src = _save(tmp_path, "mlp")
    key = next(iter(json.loads(_read(src, "data/weights/model_weights_config.json"))["config"]))
    weight = torch.export.load(src).state_dict[key].detach()
    buffer = io.BytesIO()
    torch.save(nn.Parameter(weight.clone()), buffer)

    def edit(cfg):
        cfg["config"][key].update(use_pickle=True, path_name="weight_99")
    path = _rewrite(src, str(tmp_path / "pickled.pt2"), {
        "data/weights/model_weights_config.json": _edit_json(src, "data/weights/model_weights_config.json", edit),
        "data/weights/weight_99": buffer.getvalue()})
    assert torch.equal(load_exported_program(path).state_dict[key], weight)


# ----------------------------------------------------------------------------- broken files
def _one_line_error(path, match: str | None = None) -> str:
    with pytest.raises(CompileError) as err:
        load_exported_program(path)
    message = str(err.value)
    assert "\n" not in message and "Traceback" not in message
    if match:
        assert match in message, message
    return message


def test_broken_files(tmp_path):
    src = _save(tmp_path, "mlp")
    data = open(src, "rb").read()
    cases = {"truncated.pt2": data[: len(data) // 2], "tail_cut.pt2": data[:-10],
             "text.pt2": b"this is not a zip file", "empty.pt2": b""}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        _one_line_error(str(tmp_path / name), "not a readable torch.export (.pt2) archive")
    _one_line_error(str(tmp_path / "missing.pt2"), "no such file")
    _one_line_error(str(tmp_path), "no such file")


def test_wrong_version_format_and_model_count(tmp_path):
    src = _save(tmp_path, "mlp")
    model = _read(src, "models/model.json")
    cases = {
        "version": ({"archive_version": b"1"}, "archive version '1'"),
        "no_version": ({"archive_version": None}, "archive_version is missing"),
        "format": ({"archive_format": b"zip"}, "not a torch.export (.pt2) archive"),
        "no_models": ({"models/model.json": None}, "expected one model"),
        "two_models": ({"models/model.json": None, "models/a.json": model, "models/b.json": model},
                       "found a, b"),
        "no_weights_config": ({"data/weights/model_weights_config.json": None}, "is missing"),
        "bad_json": ({"models/model.json": b"{not json"}, "JSONDecodeError"),
        "bad_payload": ({"data/weights/weight_0": b"123"}, "not a multiple"),
        "out_of_bounds_view": ({"data/weights/model_weights_config.json": _edit_json(
            src, "data/weights/model_weights_config.json",
            lambda cfg: next(iter(cfg["config"].values()))["tensor_meta"]["sizes"].__setitem__(0, {"as_int": 10**6}))},
            "setStorage"),
    }
    for name, (changes, match) in cases.items():
        _one_line_error(_rewrite(src, str(tmp_path / f"{name}.pt2"), changes), match)


def test_several_models_with_one_named_model(tmp_path):
    """torch.export.load returns the program named "model"; so does this reader."""
    src = _save(tmp_path, "mlp")
    other = _save(tmp_path, "tied")
    path = _rewrite(src, str(tmp_path / "two.pt2"), {"models/other.json": _read(other, "models/model.json")})
    assert str(load_exported_program(path).graph) == str(torch.export.load(src).graph)


@pytest.mark.parametrize("kind", sorted(_PICKLED_ENTRIES))
def test_compile_and_cli_never_unpickle(tmp_path, kind):
    """The public entry points (``gmn_compiler.compile(path)`` and ``gmn-compile``) go through
    the safe reader: one-line error naming the opt-in, no marker, no output file."""
    from gmn_compiler.cli import main

    marker = tmp_path / "marker"
    src = _save(tmp_path, "constants")
    hostile = _rewrite(src, str(tmp_path / "hostile.pt2"), _PICKLED_ENTRIES[kind](src, marker))
    with pytest.raises(CompileError, match="needs pickle"):
        gmn_compiler.compile(hostile)
    out = tmp_path / "graph.pt"
    assert main([hostile, "-o", str(out)]) == 1
    assert not marker.exists() and not out.exists()
