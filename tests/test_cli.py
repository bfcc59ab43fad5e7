"""The ``gmn-compile`` command: exit codes, outputs, reports, one-line errors, no partial files."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from torch import nn

import gmn_compiler as gc
from gmn_compiler import api, cli, graph_file
from oracles import randomize_buffers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- models
def _cnn() -> nn.Module:
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(4 * 4 * 4, 5))
    return randomize_buffers(model).eval()


class _Unsupported(nn.Module):
    """Linear layers around ops no plugin lowers; each unsupported call on its own line."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 3)

    def forward(self, x):
        h = self.a(x)
        h = torch.cumsum(h, -1)  # LINE:cumsum-1
        h = torch.sort(h, -1).values  # LINE:sort
        h = torch.cumsum(h, -1)  # LINE:cumsum-2
        return self.b(h)


def _marked_line(tag: str) -> int:
    with open(__file__) as f:
        return next(i for i, line in enumerate(f, 1) if f"# LINE:{tag}" in line)


def _export(model: nn.Module, inputs: tuple, path) -> str:
    torch.export.save(torch.export.export(model.eval(), inputs), str(path))
    return str(path)


@pytest.fixture
def cnn(tmp_path):
    model = _cnn()
    return model, _export(model, (torch.randn(1, 3, 8, 8),), tmp_path / "cnn.pt2")


@pytest.fixture
def unsupported(tmp_path):
    return _export(_Unsupported(), (torch.randn(2, 4),), tmp_path / "bad_ops.pt2")


def run(capfd, *args: str) -> tuple[int, str, str]:
    """main(args) -> (exit code, stdout, stderr), captured at the file-descriptor level.
    (Loggers that hold pytest's own stderr escape capfd: the console-script test, which runs
    a real process, is the one that proves a bad archive prints nothing but the error.)"""
    capfd.readouterr()
    code = cli.main([str(a) for a in args])
    out, err = capfd.readouterr()
    return code, out, err


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("gmn-compile: error:")]


def assert_one_line_error(err: str, *needles: str) -> None:
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("gmn-compile: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, err)


def float_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """What a graph represents: every floating-point parameter and buffer."""
    return {k: v for k, v in model.state_dict().items() if v.is_floating_point()}


def leftovers(folder) -> list[str]:
    return [n for n in os.listdir(folder) if n.startswith(".gmn")]


# ---------------------------------------------------------------- -o
def test_output_loads_both_ways_and_round_trips_bit_exact(cnn, tmp_path, capfd):
    model, path = cnn
    out = tmp_path / "graph.pt"
    code, stdout, err = run(capfd, path, "-o", out)
    assert code == 0, err
    assert f"wrote {out}" in err and stdout == ""
    reference = float_state(model)

    pg = gc.load(out)
    state = pg.to_state_dict(pg.data.edge_attr[:, 0])
    assert state.keys() == reference.keys()
    for name, tensor in reference.items():
        assert state[name].dtype == tensor.dtype and torch.equal(state[name], tensor), name

    # a safetensors file: the weights are in it as they are, no gmn_compiler needed to read them
    with safe_open(str(out), framework="pt") as handle:
        rows = json.loads(handle.metadata()["graph"])["params"]
        for index, info in enumerate(rows):
            assert torch.equal(handle.get_tensor(f"param.{index}"), reference[info["name"]]), info["name"]
    assert len(rows) == len(reference)


def test_no_output_flags_prints_one_result_line(cnn, tmp_path, capfd):
    code, stdout, _ = run(capfd, cnn[1])
    assert code == 0
    pg = gc.compile(cnn[1])
    assert stdout.strip().endswith("for details)") and len(stdout.strip().splitlines()) == 1
    assert f"{int(pg.data.num_nodes)} nodes, {pg.data.edge_index.shape[1]} edges" in stdout
    assert os.listdir(tmp_path) == ["cnn.pt2"]


# ---------------------------------------------------------------- --summary
def test_summary_numbers_match_the_graph(cnn, capfd):
    model, path = cnn
    code, stdout, _ = run(capfd, path, "--summary")
    assert code == 0
    pg = gc.compile(path)
    kinds_table = stdout.split("\n\n")[0]
    rows = {line.split()[0]: line.split()[1:] for line in kinds_table.splitlines()[2:] if line[0] != "-"}
    for kind, numbers in pg.summary.items():
        assert rows[kind] == [str(numbers["ops"]), str(numbers["nodes"]), str(numbers["edges"])], kind
    nodes, edges = int(pg.data.num_nodes), int(pg.data.edge_index.shape[1])
    assert rows["total"] == [str(sum(r["ops"] for r in pg.summary.values())), str(nodes), str(edges)]
    assert rows["(inputs)"] == ["3", "0"]  # three input channels, no edges

    entries = sum(t.numel() for t in float_state(model).values())  # counted from the model
    param_edges = int((pg.data.edge_param >= 0).sum())
    assert param_edges == entries
    assert re.search(rf"parameter entries \(parameters \+ buffers\)\s+{entries}\n", stdout)
    assert re.search(rf"parameter edges\s+{param_edges}\s+ok: one edge per entry", stdout)
    assert re.search(rf"structural edges\s+{edges - param_edges}\n", stdout)
    assert re.search(rf"total edges\s+{edges}\n", stdout) and re.search(rf"total nodes\s+{nodes}", stdout)


class _Shared(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(5, 5)

    def forward(self, x):
        return self.layer(torch.relu(self.layer(x)))  # one Linear called twice


def test_summary_of_a_shared_parameter_counts_its_extra_edges(tmp_path, capfd):
    path = _export(_Shared(), (torch.randn(2, 5),), tmp_path / "shared.pt2")
    code, stdout, _ = run(capfd, path, "--summary")
    assert code == 0
    pg = gc.compile(path)
    kinds_table = stdout.split("\n\n")[0].splitlines()[2:]
    rows = [line.rsplit(None, 2) for line in kinds_table if line[0] != "-"]
    body = [r for r in rows if not r[0].startswith("total")]
    assert sum(int(r[1]) for r in body) == int(pg.data.num_nodes)  # rows add up to the total
    assert sum(int(r[2]) for r in body) == int(pg.data.edge_index.shape[1])
    assert re.search(r"parameter entries \(parameters \+ buffers\)\s+30\n", stdout)
    assert re.search(r"parameter edges\s+60\s+ok: 30 extra edges for parameters used several times", stdout)


def test_summary_columns_are_aligned(cnn, capfd):
    _, stdout, _ = run(capfd, cnn[1], "--summary")
    table = stdout.split("\n\n")[0].splitlines()
    ends = {len(line) for line in table}
    assert len(ends) == 1, table  # right-aligned numbers: every row ends in the same column


# ---------------------------------------------------------------- --check
def test_check_lists_every_unsupported_op_with_location_and_writes_nothing(unsupported, tmp_path, capfd):
    out, picture = tmp_path / "never.pt", tmp_path / "never.png"
    code, stdout, err = run(capfd, unsupported, "--check", "-o", out, "--draw", picture)
    assert code == 1
    assert not out.exists() and not picture.exists() and leftovers(tmp_path) == []
    assert "aten.cumsum.default  (2 ops)" in stdout and "aten.sort.default  (1 op)" in stdout
    for tag in ("cumsum-1", "sort", "cumsum-2"):
        assert f"test_cli.py:{_marked_line(tag)}" in stdout, tag
    assert "3 of" in stdout and "ops unsupported (2 kinds)" in stdout
    assert len(error_lines(err)) == 1 and "compiling" not in err


def test_check_does_not_lower(cnn, capfd, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("--check must not lower")

    monkeypatch.setattr(api, "lower", refuse)
    code, stdout, _ = run(capfd, cnn[1], "--check")
    assert code == 0
    assert stdout.strip() == f"{cnn[1]}: all {len(gc.to_ir(cnn[1]).ops)} ops supported"


def test_check_gates_then_writes(cnn, tmp_path, capfd):
    out = tmp_path / "g.pt"
    code, stdout, _ = run(capfd, cnn[1], "--check", "-o", out)
    assert code == 0 and "ops supported" in stdout and gc.load(out).data.num_nodes > 0


def test_compile_of_unsupported_model_is_one_line_and_writes_nothing(unsupported, tmp_path, capfd):
    out = tmp_path / "never.pt"
    code, _, err = run(capfd, unsupported, "-o", out)
    assert code == 1 and not out.exists() and leftovers(tmp_path) == []
    assert_one_line_error(err, "aten.cumsum.default", "aten.sort.default")


# ---------------------------------------------------------------- --list-rules
def test_list_rules_needs_no_model(capfd):
    code, stdout, _ = run(capfd, "--list-rules")
    assert code == 0
    lines = stdout.splitlines()
    starts = [m.start() for m in re.finditer(r"-+", lines[1])]  # column starts, from the rule line
    rows = {}
    for line in lines[2:-1]:
        cells = [line[a:b].strip() for a, b in zip(starts, starts[1:] + [None])]
        rows[cells[0]] = cells[1:]
    for kind, plugin in [("linear", "gmn_plugins.linear"), ("conv", "gmn_plugins.conv"),
                         ("batch_norm", "gmn_plugins.norms")]:
        assert rows[kind][0] == plugin and "torch" in rows[kind][1].split(", "), rows[kind]
        assert rows[kind][2] == ""
    assert rows["reshape"][2] == "yes, view"  # a rearranging kind is marked, with its view
    assert rows["cat"][2] == "yes" and rows["relu"][3] == "yes" and rows["conv"][4] == "1"
    assert rows["linear"][5] == "x, weight, bias"
    registry = gc.registry.default_registry()
    assert set(registry.rules) <= set(rows)


# ---------------------------------------------------------------- --draw
def test_draw_writes_a_png(cnn, tmp_path, capfd):
    picture, out = tmp_path / "g.png", tmp_path / "g.pt"
    code, _, err = run(capfd, cnn[1], "--draw", picture, "-o", out)
    assert code == 0, err
    data = picture.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 10_000
    assert out.exists() and leftovers(tmp_path) == []


def test_draw_refuses_large_graphs_before_writing_anything(cnn, tmp_path, capfd):
    picture, out = tmp_path / "g.png", tmp_path / "g.pt"
    code, _, err = run(capfd, cnn[1], "--draw", picture, "-o", out, "--draw-max-edges", "10")
    assert code == 1 and not picture.exists() and not out.exists()
    assert_one_line_error(err, "--summary")


def test_draw_of_a_graph_without_edges(tmp_path):
    from gmn_compiler.draw import draw_graph

    pg = gc.compile(nn.ReLU(), (torch.randn(2, 3),))
    assert pg.data.edge_index.shape[1] == 0
    draw_graph(pg, tmp_path / "relu.png")
    assert (tmp_path / "relu.png").read_bytes()[:8] == PNG_SIGNATURE


def test_draw_unknown_format_is_refused_before_compiling(cnn, tmp_path, capfd):
    code, _, err = run(capfd, cnn[1], "--draw", tmp_path / "g.xyz")
    assert code == 1 and "compiling" not in err
    assert_one_line_error(err, ".xyz")


# ---------------------------------------------------------------- errors
def _bad_file(kind: str, tmp_path, good: str) -> str:
    path = tmp_path / f"model-{kind}.pt2"
    if kind == "random":
        path.write_bytes(os.urandom(4096))
    elif kind == "truncated":
        data = open(good, "rb").read()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "directory":
        path.mkdir()
    elif kind == "onnx":
        path = tmp_path / "model.onnx"
        path.write_bytes(b"x")
    elif kind == "unknown-suffix":
        path = tmp_path / "model.bin"
        path.write_bytes(b"x")
    return str(path)


@pytest.mark.parametrize("kind", ["random", "truncated", "empty", "missing", "directory", "onnx",
                                  "unknown-suffix"])
def test_bad_model_file_is_one_line_error_and_no_output(kind, cnn, tmp_path, capfd):
    path = _bad_file(kind, tmp_path, cnn[1])
    out = tmp_path / "out.pt"
    code, stdout, err = run(capfd, path, "-o", out)
    assert code == 1 and stdout == ""
    assert_one_line_error(err, os.path.basename(path))
    assert not out.exists() and leftovers(tmp_path) == []


def test_output_folder_missing_is_one_line(cnn, tmp_path, capfd):
    code, _, err = run(capfd, cnn[1], "-o", tmp_path / "no" / "such" / "g.pt")
    assert code == 1 and "compiling" not in err
    assert_one_line_error(err, "does not exist")


def test_failed_save_leaves_no_file_behind(cnn, tmp_path, capfd, monkeypatch):
    def broken_save(tensors, f, *args, **kwargs):
        with open(f, "wb") as handle:
            handle.write(b"partial")
        raise OSError(28, "No space left on device", f)

    monkeypatch.setattr(graph_file, "save_file", broken_save)
    picture, out = tmp_path / "g.png", tmp_path / "g.pt"
    code, _, err = run(capfd, cnn[1], "-o", out, "--draw", picture)
    assert code == 1
    assert_one_line_error(err, "No space left on device")
    assert sorted(os.listdir(tmp_path)) == ["cnn.pt2"]  # neither the graph, the picture nor temp files


@pytest.mark.parametrize("args", [[], ["--no-such-option"], ["a.pt2", "b.pt2"]])
def test_usage_errors_exit_2(args, capfd):
    code, stdout, err = run(capfd, *args)
    assert code == 2 and stdout == ""
    assert_one_line_error(err, "--help")


def test_help_exits_0(capfd):
    code, stdout, _ = run(capfd, "--help")
    assert code == 0 and "MODEL" in stdout and "--list-rules" in stdout
    help_text = " ".join(stdout.split())  # click wraps the option help
    assert "unpickling a .pt2 entry can run arbitrary code from the file" in help_text
    assert f"[default: {cli.DRAW_MAX_EDGES};" in help_text


def test_version(capfd):
    code, stdout, err = run(capfd, "--version")
    assert code == 0 and stdout == f"gmn-compile {gc.__version__}\n" and err == ""


def test_draw_max_edges_default_agrees_with_the_drawing_module():
    from gmn_compiler.draw import DEFAULT_MAX_EDGES

    assert cli.DRAW_MAX_EDGES == DEFAULT_MAX_EDGES


_HEAVY = ("torch", "torch_geometric", "onnx", "onnxruntime")


@pytest.mark.parametrize("args, code", [(["--help"], 0), (["--version"], 0), ([], 2),
                                        (["--no-such-option"], 2), (["a.pt2", "b.pt2"], 2),
                                        (["missing.onnx"], 1)])
def test_help_version_and_usage_errors_do_not_import_torch(args, code):
    script = ("import sys\nfrom gmn_compiler import cli\n"
              f"code = cli.main({args!r})\n"
              f"loaded = [m for m in {_HEAVY!r} if m in sys.modules]\n"
              f"assert code == {code} and not loaded, (code, loaded)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_package_names_load_lazily_and_work():
    script = """
import sys
import gmn_compiler as gc
assert "torch" not in sys.modules
assert gc.__version__ == "0.1.0" and gc.schema.NODE_ROLES and issubclass(gc.UnsupportedOpsError, gc.CompileError)
assert "torch" not in sys.modules
from gmn_compiler import *
import gmn_compiler
for name in gmn_compiler.__all__:
    assert getattr(gmn_compiler, name) is globals()[name], name
    exec(f"from gmn_compiler import {name}")
import torch
pg = gc.compile(torch.nn.Linear(3, 2), (torch.randn(1, 3),))
assert isinstance(pg, gc.ParameterGraph) and callable(gc.load) and callable(gc.check_symmetry)
assert gc.registry.default_registry().rules and gc.to_ir is gmn_compiler.api.to_ir
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


# ---------------------------------------------------------------- stderr: progress and warnings
def test_progress_line_only_when_verbose(cnn, capfd):
    code, _, err = run(capfd, cnn[1])
    assert code == 0 and err == ""  # stderr is no terminal here
    code, _, err = run(capfd, cnn[1], "--verbose")
    assert code == 0 and err == f"compiling {cnn[1]} ...\n"


def _warning_compile(original):
    """api.compile, but warning once from a third-party module and once from ours first."""
    import warnings

    def compile_with_warnings(*args, **kwargs):
        warnings.warn_explicit("theirs", FutureWarning, "thirdparty.py", 1, module="thirdparty")
        warnings.warn_explicit("ours\nsecond line", UserWarning, "plugins/x.py", 1, module="gmn_plugins.x")
        return original(*args, **kwargs)
    return compile_with_warnings


def test_third_party_warnings_hidden_unless_debug(cnn, capfd, monkeypatch):
    import warnings

    monkeypatch.setattr(api, "compile", _warning_compile(api.compile))
    filters, show = list(warnings.filters), warnings.showwarning
    code, _, err = run(capfd, cnn[1])
    assert code == 0 and err.splitlines() == ["gmn-compile: warning: ours second line"]
    assert warnings.filters == filters and warnings.showwarning is show  # restored: library untouched
    with pytest.warns(FutureWarning, match="theirs"):  # --debug leaves warnings alone
        code, _, _ = run(capfd, cnn[1], "--debug")
    assert code == 0


def test_error_is_exactly_one_line_with_third_party_warnings(cnn, tmp_path, capfd, monkeypatch):
    original = api.compile

    def failing(*args, **kwargs):
        _warning_compile(lambda *a, **k: None)()
        raise gc.CompileError("it broke")

    monkeypatch.setattr(api, "compile", failing)
    code, stdout, err = run(capfd, cnn[1], "-o", tmp_path / "g.pt")
    assert code == 1 and stdout == ""
    assert err.splitlines()[-1] == "gmn-compile: error: it broke"
    assert [line for line in err.splitlines() if "theirs" in line] == []
    assert original is not api.compile


# ---------------------------------------------------------------- --trust-pickle
@pytest.mark.parametrize("flags, allowed", [([], False), (["--trust-pickle"], True),
                                            (["--trust-pickle", "--check"], True), (["--check"], False)])
def test_trust_pickle_reaches_the_loader(flags, allowed, cnn, capfd, monkeypatch):
    from gmn_compiler.frontends import torch_export

    seen = []
    original = torch_export.load_pt2

    def load(path, *, allow_pickle=False):
        seen.append(allow_pickle)
        return original(path, allow_pickle=allow_pickle)

    monkeypatch.setattr(torch_export, "load_pt2", load)
    code, _, err = run(capfd, cnn[1], *flags)
    assert code == 0, err
    assert seen == [allowed]


def test_allow_pickle_compile_option(cnn, monkeypatch):
    from gmn_compiler.frontends import torch_export

    seen = []
    monkeypatch.setattr(torch_export, "load_pt2", lambda path, *, allow_pickle=False:
                        seen.append(allow_pickle) or torch.export.load(path))
    gc.compile(cnn[1])
    gc.compile(cnn[1], allow_pickle=True)
    gc.to_ir(cnn[1], allow_pickle=True)
    assert seen == [False, True, True]


def test_internal_error_is_one_line_unless_debugging(cnn, capfd, monkeypatch):
    def bug(*args, **kwargs):
        raise KeyError("first line\nsecond line")

    monkeypatch.setattr(api, "lower", bug)
    code, _, err = run(capfd, cnn[1])
    assert code == 1
    assert_one_line_error(err, "internal error: KeyError", "--debug")
    code, _, err = run(capfd, cnn[1], "--debug")
    assert code == 1 and "Traceback" in err and "second line" in err


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_shows_the_traceback(how, tmp_path, capfd, monkeypatch):
    path = tmp_path / "junk.pt2"
    path.write_bytes(b"not a zip")
    if how == "env":
        monkeypatch.setenv("GMN_COMPILER_DEBUG", "1")
    code, _, err = run(capfd, path, *(["--debug"] if how == "flag" else []))
    assert code == 1 and "Traceback" in err and "CompileError" in err


# ---------------------------------------------------------------- bundled examples
def _make_examples():
    spec = importlib.util.spec_from_file_location("make_examples", os.path.join(EXAMPLES, "make_examples.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["small_cnn", "mlp"])
def test_bundled_example_matches_its_generator(name, tmp_path, capfd):
    path = os.path.join(EXAMPLES, f"{name}.pt2")
    assert os.path.getsize(path) < 200_000
    out = tmp_path / "g.pt"
    code, _, err = run(capfd, path, "-o", out)
    assert code == 0, err
    pg = gc.load(out)
    state = pg.to_state_dict(pg.data.edge_attr[:, 0])
    reference = float_state(getattr(_make_examples(), name)())
    assert state.keys() == reference.keys()
    assert all(torch.equal(state[k], v) for k, v in reference.items())


def test_console_script_entry_point(tmp_path):
    script = os.path.join(os.path.dirname(sys.executable), "gmn-compile")
    assert os.path.exists(script), "gmn-compile is not installed: pip install -e ."
    done = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "Usage: gmn-compile" in done.stdout
    junk = tmp_path / "junk.pt2"
    junk.write_bytes(os.urandom(512))
    done = subprocess.run([script, str(junk), "-o", str(tmp_path / "g.pt")], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 1 and done.stdout == ""
    lines = done.stderr.splitlines()  # no progress line (no terminal), no third-party warnings
    assert len(lines) == 1 and lines[0].startswith("gmn-compile: error: "), done.stderr
    assert os.listdir(tmp_path) == ["junk.pt2"]


# ---------------------------------------------------------------- ONNX input
def _onnx_cnn(tmp_path) -> tuple[nn.Module, str]:
    import warnings

    model = _cnn()
    path = tmp_path / "cnn.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(1, 3, 8, 8),), str(path), dynamo=False,
                          do_constant_folding=False, input_names=["x"], opset_version=18)
    return model, str(path)


def test_onnx_file_compiles_to_a_graph_that_round_trips(tmp_path, capfd):
    model, path = _onnx_cnn(tmp_path)
    out = tmp_path / "graph.pt"
    code, _, err = run(capfd, path, "-o", out, "--summary")
    assert code == 0, err
    pg = gc.load(out)
    assert pg.source == "onnx"
    state = pg.to_state_dict(pg.data.edge_attr[:, 0])
    for name, tensor in float_state(model).items():
        assert torch.equal(state[name], tensor), name


def _bad_onnx(kind: str, tmp_path, good: str) -> str:
    import onnx
    from onnx import helper

    path = tmp_path / f"{kind}.onnx"
    if kind == "truncated":
        data = open(good, "rb").read()
        path.write_bytes(data[: len(data) // 3])
    elif kind == "not-onnx":
        path.write_bytes(b"PK\x03\x04" + os.urandom(2048))
    elif kind in ("unsupported", "cycle", "old-opset"):
        x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3])
        y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 3])
        nodes = {"unsupported": [helper.make_node("Hardmax", ["x"], ["h"], name="hard"),
                                 helper.make_node("Relu", ["h"], ["y"])],
                 "cycle": [helper.make_node("Relu", ["y"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
                 "old-opset": [helper.make_node("Relu", ["x"], ["y"])]}[kind]
        opset = 7 if kind == "old-opset" else 18
        model = helper.make_model(helper.make_graph(nodes, "g", [x], [y]),
                                  opset_imports=[helper.make_opsetid("", opset)])
        model.ir_version = 8
        onnx.save(model, path)
    elif kind == "missing-external-data":
        model = onnx.load(good)
        onnx.save(model, path, save_as_external_data=True, location="w.bin", size_threshold=0)
        os.unlink(tmp_path / "w.bin")
    return str(path)


@pytest.mark.parametrize("kind, needle", [("truncated", "not a readable ONNX model"),
                                          ("not-onnx", "ONNX"),
                                          ("unsupported", "hard"),
                                          ("cycle", "cycle"),
                                          ("old-opset", "opset 7"),
                                          ("missing-external-data", "w.bin")])
def test_bad_onnx_is_one_line_error_and_no_output(kind, needle, tmp_path, capfd):
    _, good = _onnx_cnn(tmp_path)
    path = _bad_onnx(kind, tmp_path, good)
    out = tmp_path / "out.pt"
    code, stdout, err = run(capfd, path, "-o", out)
    assert code == 1 and stdout == ""
    assert_one_line_error(err, needle)
    assert not out.exists() and leftovers(tmp_path) == []
