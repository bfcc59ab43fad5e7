"""Model folders -> compiled graphs (gmn_models.compile_folder, gmn_models.datasets).

The shared-structure compile must be bit-identical to compiling each model on its own; bad
models are skipped and reported; runs resume; the datasets cache without pickles.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from gmn_compiler import registry as registry_module
from gmn_compiler import schema
from gmn_compiler.graph import ParameterGraph
from gmn_compiler.registry import hookimpl, load_registry
from gmn_models.model import GMN
from gmn_models import compile_folder as cf_module
from gmn_models.builders import register_builder
from gmn_models.compile_folder import CompiledFolder, compile_folder, compile_row, values_path
from gmn_models.datasets import (ModelFolderError, ModelGraphDataset, OnDiskModelGraphDataset,
                                 parse_metadata, read_model_table)
from gmn_models.zoo.families import cnn2d, mlp

MLP = "gmn_models.zoo.families:mlp"
CNN = "gmn_models.zoo.families:cnn2d"
UNSUPPORTED = f"{__name__}:running_sum"  # a builder of this module: registered explicitly below
GRAPH_KEYS = ("x", "edge_index", "edge_attr", "edge_param", "edge_offset")
HEADER = ["path", "builder", "builder_kwargs", "input_shape"]


pytestmark = pytest.mark.usefixtures("one_thread")


class RunningSum(nn.Module):
    """A module whose op the compiler does not support (``cumsum``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.cumsum(-1)


def running_sum() -> nn.Module:
    return RunningSum()


register_builder(UNSUPPORTED, running_sum, override=True)  # override: the module may be imported twice


def write_table(folder: Path, rows: list[dict]) -> None:
    columns = HEADER + [k for k in dict.fromkeys(k for r in rows for k in r) if k not in HEADER]
    with open(folder / "models.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)


def make_model_folder(folder: Path, n_mlp: int = 4, n_cnn: int = 2, seed: int = 0) -> Path:
    """MLPs of two widths and BatchNorm CNNs (random running statistics); every model's
    weights are scaled by a random factor, its label ``scale`` (learnable from the weights)."""
    (folder / "models").mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n_mlp + n_cnn):
        torch.manual_seed(1000 * seed + i)
        if i < n_mlp:
            kwargs = {"in_features": 5, "num_classes": 3, "width": (4, 6)[i % 2], "depth": 1}
            model, builder, shape = mlp(**kwargs), MLP, [1, 5]
        else:
            kwargs = {"in_channels": 1, "num_classes": 2, "width": 3, "depth": 1, "norm": "batch"}
            model, builder, shape = cnn2d(**kwargs), CNN, [1, 1, 6, 6]
        scale = 0.5 + 1.5 * float(torch.rand(1, generator=gen))
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(scale)
            for m in model.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.normal_()
                    m.running_var.uniform_(0.5, 2.0)
        path = f"models/{i:03d}.safetensors"
        save_file(model.state_dict(), str(folder / path))
        rows.append({"path": path, "builder": builder, "builder_kwargs": json.dumps(kwargs),
                     "input_shape": json.dumps(shape), "scale": scale, "test_acc": round(0.5 + 0.05 * i, 4),
                     "family": "mlp" if i < n_mlp else "cnn", "width": kwargs["width"]})
    write_table(folder, rows)
    return folder


def _onnx_mlp(path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
             for n, s in (("W1", (4, 5)), ("B1", (4,)), ("W2", (3, 4)), ("B2", (3,)))]
    nodes = [helper.make_node("Gemm", ["x", "W1", "B1"], ["h"], transB=1), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "W2", "B2"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Six safetensors models (three architectures) plus a .pt2 and an .onnx file."""
    root = make_model_folder(tmp_path_factory.mktemp("zoo"))
    torch.manual_seed(7)
    exported = torch.export.export(mlp(in_features=5, num_classes=3, width=5, depth=1), (torch.randn(1, 5),))
    torch.export.save(exported, str(root / "models" / "exported.pt2"))
    _onnx_mlp(root / "models" / "gemm.onnx")
    with open(root / "models.csv") as handle:
        rows = list(csv.DictReader(handle))
    rows += [{"path": "models/exported.pt2", "builder": "", "builder_kwargs": "{}", "input_shape": "",
              "scale": 1.0, "test_acc": 0.9, "family": "pt2", "width": 5},
             {"path": "models/gemm.onnx", "builder": "", "builder_kwargs": "{}", "input_shape": "",
              "scale": 1.0, "test_acc": 0.8, "family": "onnx", "width": 4}]
    write_table(root, rows)
    return root


@pytest.fixture(scope="module")
def compiled(folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("compiled")
    report = compile_folder(folder, out, workers=0)
    assert report.failures == [] and report.compiled == 8
    return out


def _assert_same_graph(a, b) -> None:
    for key in GRAPH_KEYS:
        assert torch.equal(getattr(a, key), getattr(b, key)), key
    assert int(a.num_nodes) == int(b.num_nodes)


def test_shared_structure_is_bit_identical_to_direct_compile(folder, compiled):
    rows = read_model_table(folder)
    reader = CompiledFolder(compiled)
    for row in rows:
        direct = compile_row(folder, row)
        _assert_same_graph(reader.graph(row), direct.data)
    # three architectures among the safetensors rows + one structure per .pt2/.onnx file
    assert len(list((compiled / "structures").iterdir())) == 5
    # the shared structure really carries per-model values (same architecture, other weights)
    a, b = reader.graph(rows[0]), reader.graph(rows[2])
    assert torch.equal(a.edge_index, b.edge_index) and not torch.equal(a.edge_attr, b.edge_attr)


def test_buffers_are_filled_per_model(folder, compiled):
    from safetensors.torch import load_file

    row = read_model_table(folder)[4]  # a BatchNorm CNN
    graph = CompiledFolder(compiled).graph(row)
    structure = compile_row(folder, row)
    state = structure.to_state_dict(graph.edge_attr[:, 0])
    saved = load_file(str(folder / row.path))
    assert "1.running_mean" in state and "1.running_var" in state
    for name, tensor in state.items():
        assert torch.equal(tensor, saved[name]), name


def test_bad_models_are_skipped_and_reported(tmp_path, capsys):
    root = make_model_folder(tmp_path / "zoo", n_mlp=2, n_cnn=0)
    (root / "models" / "corrupt.safetensors").write_bytes(b"not a safetensors file")
    save_file({}, str(root / "models" / "empty.safetensors"))
    good = {"builder": MLP, "builder_kwargs": json.dumps({"in_features": 5, "num_classes": 3, "width": 4,
                                                          "depth": 1}), "input_shape": "[1, 5]"}
    with open(root / "models.csv") as handle:
        rows = list(csv.DictReader(handle))
    rows += [{**good, "path": "models/corrupt.safetensors"},
             {**good, "path": "models/missing.safetensors"},
             {**good, "path": "models/000.safetensors", "builder": "no_such_module:mlp"},
             {**good, "path": "models/000.safetensors", "builder_kwargs": "{not json"},
             {**good, "path": "models/000.safetensors", "builder_kwargs": json.dumps(
                 {"in_features": 5, "num_classes": 3, "width": 9, "depth": 1})},
             {**good, "path": "models/empty.safetensors", "builder": UNSUPPORTED,
              "builder_kwargs": "{}", "input_shape": "[1, 4]"},
             {**good, "path": "models/model.pkl"}]
    write_table(root, rows)
    report = compile_folder(root, tmp_path / "out", workers=0)
    assert report.compiled == 2 and report.total == 9 and len(report.failures) == 7
    assert [p for p, _ in report.failures] == [r["path"] for r in rows[2:]]  # table order
    reasons = [r for _, r in report.failures]
    assert all(r and "\n" not in r for r in reasons)
    assert "SafetensorError" in reasons[0]
    assert "no such file" in reasons[1]
    assert "builder 'no_such_module:mlp' is not registered" in reasons[2]  # looked up, not imported
    assert "Expecting property name" in reasons[3]  # malformed builder_kwargs
    assert "'0.weight' has shape [4, 5], the builder's has [9, 5]" in reasons[4]
    assert "unsupported op" in reasons[5]
    assert "unknown model file type" in reasons[6]
    err = capsys.readouterr().err
    assert "7 of 9 models skipped" in err and "models/corrupt.safetensors:" in err
    assert json.loads((tmp_path / "out" / "failures.json").read_text())[0][0] == "models/corrupt.safetensors"
    assert len(list((tmp_path / "out" / "values").rglob("*.pt"))) == 2


def test_interrupted_run_resumes(tmp_path, monkeypatch):
    root = make_model_folder(tmp_path / "zoo", n_mlp=4, n_cnn=1)
    out = tmp_path / "out"
    real_save, saved = cf_module._save, []

    def interrupting_save(path, payload):
        if payload["format"] == cf_module._VALUES_FORMAT:
            if len(saved) == 2:
                raise KeyboardInterrupt
            saved.append(path)
        real_save(path, payload)

    monkeypatch.setattr(cf_module, "_save", interrupting_save)
    with pytest.raises(KeyboardInterrupt):
        compile_folder(root, out, workers=0)
    monkeypatch.setattr(cf_module, "_save", real_save)
    assert not [p for p in out.rglob("*") if p.name.startswith(".gmn-")]  # no partial files
    report = compile_folder(root, out, workers=0)
    assert (report.reused, report.compiled) == (2, 3)  # two values files were written before
    fresh = compile_folder(root, tmp_path / "fresh", workers=0)
    rows = read_model_table(root)
    for row in rows:
        _assert_same_graph(CompiledFolder(out).graph(row), CompiledFolder(fresh.out_dir).graph(row))
    values_path(out, rows[3]).unlink()
    again = compile_folder(root, out, workers=0)
    assert (again.reused, again.compiled) == (4, 1)
    assert compile_folder(root, out, workers=0, resume=False).compiled == 5


def test_worker_processes_give_the_same_files(folder, compiled, tmp_path):
    out = tmp_path / "parallel"
    report = compile_folder(folder, out, workers=2, progress=False)
    assert report.failures == [] and report.compiled == 8
    files = sorted(p.relative_to(out) for p in out.rglob("*.pt"))
    assert files == sorted(p.relative_to(compiled) for p in compiled.rglob("*.pt"))
    for rel in files:
        a, b = torch.load(out / rel, weights_only=True), torch.load(compiled / rel, weights_only=True)
        tensor_a = a["values"] if "values" in a else ParameterGraph.from_dict(a["graph"]).data.edge_attr
        tensor_b = b["values"] if "values" in b else ParameterGraph.from_dict(b["graph"]).data.edge_attr
        assert torch.equal(tensor_a, tensor_b), rel


def _first_four(data) -> bool:
    return int(data.model_id) < 4


def test_in_memory_dataset(folder, tmp_path, monkeypatch):
    ds = ModelGraphDataset(tmp_path / "cache", folder, label_columns=("scale", "test_acc"), workers=0)
    rows = read_model_table(folder)
    assert len(ds) == 8 and ds.failures == [] and ds.model_ids == list(range(8))
    reader = CompiledFolder(next((tmp_path / "cache").glob("compiled-*")))
    for i, row in enumerate(rows):
        graph = ds[i]
        _assert_same_graph(graph, reader.graph(row))
        assert graph.y.shape == (1, 2) and int(graph.model_id) == i
        meta = ds.metadata[i]
        assert graph.y.tolist() == [[pytest.approx(meta["scale"]), pytest.approx(meta["test_acc"])]]
    meta = ds.metadata[0]
    assert isinstance(meta["width"], float) and meta["family"] == "mlp" and meta["input_shape"] == [1, 5]
    assert meta["builder_kwargs"]["width"] == 4 and ds.metadata[6]["input_shape"] is None

    # a pre_filter is part of the cache key: its own cache, the unfiltered one stays
    small = ModelGraphDataset(tmp_path / "cache", folder, label_columns=("scale", "test_acc"), workers=0,
                              pre_filter=_first_four)
    assert len(small) == 4 and small.model_ids == [0, 1, 2, 3] and len(small.metadata) == 8
    assert not (tmp_path / "cache" / "processed" / "pre_filter.pt").exists()  # PyG's pickle: removed

    # a second instance loads the cache: nothing is compiled again, metadata round-trips
    def no_compile(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(cf_module, "compile_folder", no_compile)
    again = ModelGraphDataset(tmp_path / "cache", folder, label_columns=("scale", "test_acc"), workers=0)
    assert again.metadata == ds.metadata and len(again) == 8
    _assert_same_graph(again[5], ds[5])
    cache_files = list((tmp_path / "cache" / "processed").glob("graphs-*.pt"))
    assert len(cache_files) == 2  # unfiltered and filtered
    assert all(torch.load(f, weights_only=True)["slices"] for f in cache_files)


def test_cache_follows_label_changes(tmp_path):
    root = make_model_folder(tmp_path / "zoo", n_mlp=2, n_cnn=0)
    ds = ModelGraphDataset(tmp_path / "cache", root, label_columns="test_acc", workers=0)
    with open(root / "models.csv") as handle:
        rows = list(csv.DictReader(handle))
    rows[1]["test_acc"] = "0.125"
    write_table(root, rows)
    changed = ModelGraphDataset(tmp_path / "cache", root, label_columns="test_acc", workers=0)
    assert float(ds[1].y) != 0.125 and float(changed[1].y) == 0.125


def test_on_disk_dataset_matches_in_memory(folder, tmp_path):
    memory = ModelGraphDataset(tmp_path / "mem", folder, label_columns="scale", workers=0)
    disk = OnDiskModelGraphDataset(tmp_path / "disk", folder, label_columns="scale", workers=0)
    assert len(disk) == len(memory) == 8 and disk.metadata == memory.metadata
    for i in range(len(disk)):
        a, b = memory[i], disk[i]
        _assert_same_graph(a, b)
        assert torch.equal(a.y, b.y) and torch.equal(a.model_id, b.model_id)
    from torch_geometric.loader import DataLoader

    subset = disk[torch.tensor([5, 1, 6])]
    batch = next(iter(DataLoader(subset, batch_size=3)))
    assert batch.model_id.tolist() == [5, 1, 6] and batch.num_graphs == 3
    # every column is raw tensor bytes or an integer: no pickled objects in the database
    db = next((tmp_path / "disk" / "processed").glob("graphs-*.db"))
    from torch_geometric.data.database import TensorInfo

    assert all(isinstance(t, TensorInfo) or t is int for t in disk.db.schema.values())
    disk.close()
    with sqlite3.connect(db) as conn:
        blob, nodes = conn.execute("SELECT COL_x, COL_num_nodes FROM OnDiskModelGraphDataset WHERE id = 0").fetchone()
    assert len(blob) == nodes * 4 * len(schema.NODE_COLUMNS)  # float32 [N, 5]


def test_folder_errors_are_one_line(tmp_path):
    with pytest.raises(ModelFolderError, match="no models.csv") as missing:
        read_model_table(tmp_path)
    assert "\n" not in str(missing.value)
    (tmp_path / "models.csv").write_text("path,builder,input_shape,test_acc\nm.safetensors,a:b,[1],1\n")
    with pytest.raises(ModelFolderError, match=r"missing column\(s\) \['builder_kwargs'\]"):
        read_model_table(tmp_path)
    root = make_model_folder(tmp_path / "zoo", n_mlp=1, n_cnn=0)
    with pytest.raises(ModelFolderError, match="label column 'accuracy' is not in .*'test_acc'"):
        ModelGraphDataset(tmp_path / "cache", root, label_columns="accuracy", workers=0)
    with pytest.raises(ModelFolderError, match="'family'.* not a number"):
        ModelGraphDataset(tmp_path / "cache", root, label_columns="family", workers=0)
    assert not (tmp_path / "cache" / "processed").exists()


def test_metadata_parsing_keeps_strings_and_empty_cells(tmp_path):
    (tmp_path / "m.pt2").write_bytes(b"")
    (tmp_path / "models.csv").write_text(
        "path,builder,builder_kwargs,input_shape,acc,tag,mixed\n"
        "m.pt2,,{},,0.5,a,1\n"
        "m.pt2,,{},,,b,x\n")
    meta = parse_metadata(read_model_table(tmp_path))
    assert [m["acc"] for m in meta] == [0.5, None]
    assert [m["tag"] for m in meta] == ["a", "b"] and [m["mixed"] for m in meta] == ["1", "x"]


def test_compile_folder_command(folder, tmp_path):
    from click.testing import CliRunner

    small = tmp_path / "small"
    shutil.copytree(folder, small)
    with open(small / "models.csv") as handle:
        rows = list(csv.DictReader(handle))[:2]
    write_table(small, rows)
    result = CliRunner().invoke(cf_module.main_command(), [str(small), str(tmp_path / "o"), "--workers", "0"])
    assert result.exit_code == 0, result.output
    assert "2 of 2 models compiled" in result.output
    bad = CliRunner().invoke(cf_module.main_command(), [str(tmp_path), str(tmp_path / "o")])
    assert bad.exit_code == 1 and "no models.csv" in bad.output
    assert os.path.exists(tmp_path / "o" / "failures.json")


class _ExtraRole:
    __name__ = "extra_role_plugin"

    @hookimpl
    def gmn_register(self, registry) -> None:
        registry.add_node_role("my_role")


def test_dataset_records_the_vocabulary_its_graphs_use(folder, tmp_path, monkeypatch):
    """Graphs are mapped into ``dataset.vocabulary`` (the loaded plugins' names included); the
    vocabulary is part of the cache key and survives reloading the cache."""
    plain = ModelGraphDataset(tmp_path / "cache", folder, workers=0)
    assert plain.vocabulary == registry_module.default_registry().vocabulary
    monkeypatch.setattr(registry_module, "_DEFAULT", load_registry([_ExtraRole()], entry_points=False))
    ds = ModelGraphDataset(tmp_path / "cache", folder, workers=0)
    builtin = plain.vocabulary.extensions()["node_roles"]  # roles the built-in plugins register
    assert ds.vocabulary.extensions()["node_roles"] == builtin + ["my_role"]
    assert len(list((tmp_path / "cache" / "processed").glob("meta-*.json"))) == 2  # its own cache
    _assert_same_graph(ds[3], plain[3])  # built-in codes are stable
    again = ModelGraphDataset(tmp_path / "cache", folder, workers=0)
    assert again.vocabulary == ds.vocabulary
    model = GMN(hidden=8, num_blocks=1, graph_out=1, vocabulary=ds.vocabulary)
    # the built-in names, the built-in plugins' roles, my_role, unknown
    assert model.node_encoder.role.embedding.num_embeddings == len(schema.NODE_ROLES) + len(builtin) + 2
