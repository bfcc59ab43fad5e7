"""Model folders come from strangers: a data file must not choose code to run, nor make the
project read outside its folder.

- ``builder`` names are looked up in gmn_models.builders, never imported: ``os:system`` and
  friends fail as unregistered rows (nothing runs, nothing is imported) while the other rows
  compile;
- paths that leave the folder (``..``, absolute, symbolic links) are row failures; the zoo and
  public-zoo readers refuse them too;
- builders come from the registry's three sources (built-ins, entry points, register_builder);
- a .pt2 archive cannot unpickle objects (torch.export.load runs under forced weights_only).
"""

from __future__ import annotations

import csv
import importlib.metadata
import io
import json
import os
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from test_gmn_datasets import MLP, make_model_folder, write_table
from torch import nn

from gmn_models import builders
from gmn_models.builders import (BuilderRegistrationError, get_builder, register_builder,
                                 registered_builders, unregister_builder)
from gmn_models.compile_folder import CompiledFolder, compile_folder, compile_row
from gmn_models.datasets import ModelFolderError, ModelGraphDataset, read_model_table
from gmn_models.paths import confined_path
from gmn_models.zoo import families
from gmn_models.zoo import folder as zfolder

pytestmark = pytest.mark.usefixtures("one_thread")

KWARGS = {"in_features": 5, "num_classes": 3, "width": 4, "depth": 1}
GOOD = {"builder": MLP, "builder_kwargs": json.dumps(KWARGS), "input_shape": "[1, 5]", "scale": 1.0}
HOW = "register yours with gmn_models.builders.register_builder or the 'gmn_models.builders' entry-point group"


def tiny_mlp(width: int = 4) -> nn.Module:
    """A builder of this test module (registered by the ``custom`` fixture)."""
    return nn.Sequential(nn.Linear(5, width), nn.ReLU(), nn.Linear(width, 3))


def entry_point_net(width: int = 3) -> nn.Module:
    """The object a fake ``gmn_models.builders`` entry point refers to."""
    return nn.Sequential(nn.Linear(5, width), nn.Tanh(), nn.Linear(width, 2))


@pytest.fixture
def custom():
    """``tiny_mlp`` registered under its own name; unregistered afterwards."""
    name = f"{__name__}:tiny_mlp"
    register_builder(name, tiny_mlp, override=True)
    yield name
    unregister_builder(name)


def _rows(folder: Path) -> list[dict]:
    with open(folder / "models.csv", newline="") as handle:
        return list(csv.DictReader(handle))


# ----------------------------------------------------------------------------- builders
def test_builders_named_by_rows_are_looked_up_never_imported(tmp_path, monkeypatch):
    root = make_model_folder(tmp_path / "zoo", n_mlp=2, n_cnn=0)
    marker = tmp_path / "marker"
    # an importable module whose mere import would leave the marker
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "gmn_evil_builder.py").write_text(
        f"open({str(marker)!r}, 'w').close()\ndef build(**kw):\n    open({str(marker)!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    (tmp_path / "source.txt").write_text("x")
    attacks = [
        ("os:system", {"command": f"touch {marker}"}),
        ("subprocess:call", {"args": ["touch", str(marker)]}),
        ("builtins:eval", {"source": f"open({str(marker)!r}, 'w')"}),
        ("builtins:exec", {"source": f"open({str(marker)!r}, 'w')"}),
        ("shutil:copyfile", {"src": str(tmp_path / "source.txt"), "dst": str(marker)}),
        ("gmn_models.datasets:build_module", {"row": None}),  # importable, not registered
        ("gmn_evil_builder:build", {}),
        ("os.system", {"command": f"touch {marker}"}),  # not even of the form module:function
    ]
    rows = _rows(root) + [{**GOOD, "path": "models/000.safetensors", "builder": name,
                           "builder_kwargs": json.dumps(kw)} for name, kw in attacks]
    write_table(root, rows)

    report = compile_folder(root, tmp_path / "out", workers=0)
    assert report.compiled == 2 and [p for p, _ in report.failures] == ["models/000.safetensors"] * len(attacks)
    for (name, _), (_, reason) in zip(attacks, report.failures):
        assert reason.startswith(f"ModelFolderError: builder {name!r} is not registered (known: ")
        assert " in all); " in reason  # a few known names, then how many
        assert reason.endswith(HOW) and "\n" not in reason
    assert not marker.exists()
    assert "gmn_evil_builder" not in sys.modules
    reader = CompiledFolder(report.out_dir)
    table = read_model_table(root)
    assert [reader.graph(r) is not None for r in table] == [True, True] + [False] * len(attacks)
    # the direct path refuses the same way
    with pytest.raises(ModelFolderError, match="builder 'os:system' is not registered"):
        compile_row(root, table[2])
    # and so do the dataset and the zoo readers
    ds = ModelGraphDataset(tmp_path / "cache", root, label_columns="scale", workers=0)
    assert len(ds) == 2 and len(ds.failures) == len(attacks)
    row = {**zfolder.parse_row({**GOOD, "path": "models/000.safetensors", "builder": "os:system",
                                "builder_kwargs": json.dumps({"command": f"touch {marker}"})}),
           "root": str(root)}
    with pytest.raises(ValueError, match="'os:system' is not registered"):
        zfolder.build_model(row)
    with pytest.raises(ValueError, match="not registered"):
        families.resolve_builder("gmn_evil_builder:build")
    assert not marker.exists() and "gmn_evil_builder" not in sys.modules


def test_every_builder_the_project_writes_is_registered():
    names = registered_builders()
    for family, fn in families.BUILDERS.items():
        assert get_builder(f"gmn_models.zoo.families:{family}") is fn
        assert families.builder_name(fn) in names
    from gmn_models import architectures, public_zoos
    from gmn_models.public_zoos import siren, small_cnn_zoo

    assert get_builder(small_cnn_zoo.BUILDER) is public_zoos.SmallCNN
    assert get_builder(siren.BUILDER) is public_zoos.Siren
    assert get_builder(families.builder_name(public_zoos.SmallCNN)) is public_zoos.SmallCNN
    assert get_builder(families.builder_name(public_zoos.Siren)) is public_zoos.Siren
    assert get_builder("gmn_models.architectures:resnet") is architectures.resnet


def test_registered_builder_compiles_inline_and_in_workers(tmp_path, custom):
    root = tmp_path / "zoo"
    (root / "models").mkdir(parents=True)
    local = f"{__name__}:local_lambda"
    register_builder(local, lambda width: nn.Sequential(nn.Linear(5, width), nn.Linear(width, 2)),
                     override=True)
    try:
        rows = []
        for i, (name, width) in enumerate([(custom, 4), (custom, 4), (custom, 6), (local, 3)]):
            torch.manual_seed(i)
            save_file(get_builder(name)(width=width).state_dict(), str(root / "models" / f"{i}.safetensors"))
            rows.append({"path": f"models/{i}.safetensors", "builder": name,
                         "builder_kwargs": json.dumps({"width": width}), "input_shape": "[1, 5]", "acc": i})
        write_table(root, rows)
        inline = compile_folder(root, tmp_path / "inline", workers=0)
        # workers get the registered callable by reference; the lambda's structure compiles here
        parallel = compile_folder(root, tmp_path / "parallel", workers=2, progress=False)
        assert inline.failures == [] == parallel.failures and inline.compiled == parallel.compiled == 4
        for row in read_model_table(root):
            a, b = CompiledFolder(inline.out_dir).graph(row), CompiledFolder(parallel.out_dir).graph(row)
            assert torch.equal(a.edge_attr, b.edge_attr) and torch.equal(a.edge_index, b.edge_index)
            assert torch.equal(a.edge_attr, compile_row(root, row).data.edge_attr)
    finally:
        unregister_builder(local)
    # once unregistered, the same folder's rows fail (structures are compiled afresh)
    unregister_builder(custom)
    try:
        report = compile_folder(root, tmp_path / "after", workers=0)
        assert report.compiled == 0 and all("is not registered" in r for _, r in report.failures)
    finally:
        register_builder(custom, tiny_mlp)


def test_entry_point_builders(tmp_path, monkeypatch):
    group = "gmn_models.builders"
    fake = [
        importlib.metadata.EntryPoint("third_party.nets:net", f"{__name__}:entry_point_net", group),
        importlib.metadata.EntryPoint("third_party.nets:broken", "no_such_package_xyz:net", group),
        importlib.metadata.EntryPoint("gmn_models.zoo.families:mlp", f"{__name__}:entry_point_net", group),
        importlib.metadata.EntryPoint("not a builder name", f"{__name__}:entry_point_net", group),
    ]
    seen_groups = []

    def entry_points(**kwargs):
        seen_groups.append(kwargs.get("group"))
        return fake

    root = tmp_path / "zoo"
    (root / "models").mkdir(parents=True)
    save_file(entry_point_net(width=3).state_dict(), str(root / "models" / "a.safetensors"))
    write_table(root, [{"path": "models/a.safetensors", "builder": "third_party.nets:net",
                        "builder_kwargs": '{"width": 3}', "input_shape": "[1, 5]", "acc": 1}])
    assert "not registered" in compile_folder(root, tmp_path / "before", workers=0).failures[0][1]
    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    try:
        with pytest.warns(RuntimeWarning, match="ignoring .*'not a builder name'"):
            builders.reload()
        assert seen_groups == [group]
        assert get_builder("third_party.nets:net") is entry_point_net
        assert "third_party.nets:net" in registered_builders()
        report = compile_folder(root, tmp_path / "out", workers=0)
        assert report.failures == [] and report.compiled == 1
        with pytest.raises(ModelFolderError, match=r"'third_party.nets:broken' \(no_such_package_xyz:net "
                                                   r"\(entry point of .*\)\) failed to load: ModuleNotFoundError"):
            get_builder("third_party.nets:broken")
        # a name two sources provide is refused (naming both) until one is chosen explicitly
        with pytest.raises(ModelFolderError, match=r"provided twice \(gmn_models.zoo.families:mlp \(built in\); "
                                                   rf"{__name__}:entry_point_net"):
            get_builder(MLP)
        assert MLP not in registered_builders()
        register_builder(MLP, families.mlp, override=True)
        assert get_builder(MLP) is families.mlp
        unregister_builder(MLP)
    finally:
        monkeypatch.undo()
        builders.reload()
    assert get_builder(MLP) is families.mlp and "third_party.nets:net" not in registered_builders()


def test_registration_errors(custom):
    def other(width: int = 4) -> nn.Module:
        return tiny_mlp(width)

    with pytest.raises(BuilderRegistrationError, match=rf"builder '{custom}' is already registered to "
                                                       rf"{__name__}:tiny_mlp \(register_builder\); registering "
                                                       rf"{__name__}:test_registration_errors.<locals>.other .*"
                                                       "override=True"):
        register_builder(custom, other)
    with pytest.raises(BuilderRegistrationError, match=r"'gmn_models.zoo.families:mlp' is already registered to "
                                                       r"gmn_models.zoo.families:mlp \(built in\)"):
        register_builder(MLP, other)
    register_builder(custom, tiny_mlp)  # the same callable again: fine
    register_builder(MLP, families.mlp)  # ditto for a built-in (now an explicit registration)
    unregister_builder(MLP)
    register_builder(custom, other, override=True)
    assert get_builder(custom) is other
    for bad in ("no_colon", "os:", ":system", "a b:c", "pkg.mod:fn;rm", 42):
        with pytest.raises(BuilderRegistrationError, match="is not of the form 'package.module:function'"):
            register_builder(bad, other)
    with pytest.raises(BuilderRegistrationError, match="is not callable"):
        register_builder(f"{__name__}:not_callable", 3)
    with pytest.raises(KeyError):
        unregister_builder(MLP)  # a built-in, not a register_builder registration
    assert get_builder(MLP) is families.mlp


# ----------------------------------------------------------------------------- paths
def test_paths_outside_the_folder_are_row_failures(tmp_path):
    root = make_model_folder(tmp_path / "zoo", n_mlp=2, n_cnn=0)
    outside = tmp_path / "outside"
    outside.mkdir()
    torch.manual_seed(0)
    save_file(families.mlp(**KWARGS).state_dict(), str(outside / "m.safetensors"))  # would compile
    (outside / "x.onnx").write_bytes(b"")
    (root / "models" / "link.safetensors").symlink_to(outside / "m.safetensors")
    (root / "linked_dir").symlink_to(outside, target_is_directory=True)
    (root / "models" / "inner_link.safetensors").symlink_to(root / "models" / "000.safetensors")
    escapes = ["../outside/m.safetensors", "../outside/x.onnx", str(outside / "m.safetensors"),
               "models/link.safetensors", "linked_dir/m.safetensors", "models/../../outside/m.safetensors"]
    rows = _rows(root) + [{**GOOD, "path": p} for p in escapes]
    rows.append({**GOOD, "path": "models/inner_link.safetensors"})  # a link that stays inside: fine
    write_table(root, rows)

    table = read_model_table(root)
    for row, path in zip(table[2:], escapes):
        assert row.problem == (f"row {row.index}: path {path!r} is outside the model folder {root}; "
                               "model files must live inside it" + (" (use a path relative to the folder)"
                                                                    if path.startswith("/") else ""))
    assert table[-1].problem is None
    report = compile_folder(root, tmp_path / "out", workers=0)
    assert report.compiled == 3 and [p for p, _ in report.failures] == escapes
    assert [r.split(":")[0] for _, r in report.failures] == [f"row {i}" for i in range(2, 2 + len(escapes))]
    ds = ModelGraphDataset(tmp_path / "cache", root, label_columns="scale", workers=0)
    assert len(ds) == 3 and [p for p, _ in ds.failures] == escapes


def test_a_link_swapped_in_after_reading_the_table_is_refused(tmp_path):
    root = make_model_folder(tmp_path / "zoo", n_mlp=1, n_cnn=0)
    row = read_model_table(root)[0]
    assert row.problem is None
    torch.manual_seed(0)
    save_file(families.mlp(**KWARGS).state_dict(), str(tmp_path / "elsewhere.safetensors"))
    (root / row.path).unlink()
    (root / row.path).symlink_to(tmp_path / "elsewhere.safetensors")
    with pytest.raises(ModelFolderError, match="is outside the model folder"):
        compile_row(root, row)


def test_confined_path(tmp_path):
    (tmp_path / "a").mkdir()
    assert confined_path(tmp_path, "a/b.safetensors") == tmp_path.resolve() / "a" / "b.safetensors"
    assert confined_path(tmp_path, "a/../c") == tmp_path.resolve() / "c"
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    for bad, message in [("../x", "is outside the model folder"), ("/etc/passwd", "is outside"),
                         ("a/../../x", "is outside"), ("nul\0byte", "cannot be resolved"),
                         ("loop/x", "cannot be resolved")]:
        with pytest.raises(ModelFolderError, match=message) as info:
            confined_path(tmp_path, bad, "row 0: path")
        assert str(info.value).startswith("row 0: path ") and "\n" not in str(info.value)


def test_zoo_folder_readers_stay_inside(tmp_path):
    root = make_model_folder(tmp_path / "zoo", n_mlp=1, n_cnn=0)
    torch.manual_seed(0)
    save_file(families.mlp(**KWARGS).state_dict(), str(tmp_path / "secret.safetensors"))
    base = {"root": str(root.resolve()), "builder": MLP, "builder_kwargs": KWARGS}
    assert zfolder.load_state_dict({**base, "path": "models/000.safetensors"})
    for path in ("../secret.safetensors", str(tmp_path / "secret.safetensors")):
        with pytest.raises(ModelFolderError, match="is outside the model folder"):
            zfolder.load_state_dict({**base, "path": path})
        with pytest.raises(ModelFolderError, match="is outside the model folder"):
            zfolder.build_model({**base, "path": path})
    digest = zfolder.sha256_file(tmp_path / "secret.safetensors")
    zfolder.write_manifest(root, {"models/000.safetensors": zfolder.sha256_file(root / "models" / "000.safetensors"),
                                  "../secret.safetensors": digest})
    assert zfolder.verify_manifest(root) == ["../secret.safetensors"]  # refused, not hashed
    (root / "models.csv").rename(tmp_path / "models.csv")
    (root / "models.csv").symlink_to(tmp_path / "models.csv")
    with pytest.raises(ModelFolderError, match="models.csv 'models.csv' is outside"):
        zfolder.load_rows(root)
    with pytest.raises(ModelFolderError, match="models.csv 'models.csv' is outside"):
        read_model_table(root)


def test_public_zoo_readers_stay_inside(tmp_path):
    from test_public_zoos import reference_cnn, siren_tensors, write_zoo, zoo_metrics

    from gmn_models import public_zoos as pz

    real = write_zoo(tmp_path / "real", [reference_cnn(0)], [zoo_metrics("relu", 86, 0.5)])
    for name in ("weights.npy", "layout.csv", "metrics.csv.gz"):
        zoo = tmp_path / f"zoo_{name}"
        zoo.mkdir()
        for other in ("weights.npy", "layout.csv", "metrics.csv.gz"):
            (zoo / other).write_bytes((real / other).read_bytes())
        (zoo / name).unlink()
        (zoo / name).symlink_to(real / name)
        with pytest.raises(ValueError, match=f"{name} '{name}' is outside the Small CNN Zoo folder"):
            pz.load_small_cnn_zoo(zoo)
    inrs = tmp_path / "inrs"
    (inrs / "a_1s").mkdir(parents=True)
    torch.save(siren_tensors("nfn"), inrs / "a_1s" / "net0.pth")
    torch.save(siren_tensors("nfn", seed=1), tmp_path / "net1.pth")
    assert len(pz.find_checkpoints(inrs)) == 1
    (inrs / "a_1s" / "net1.pth").symlink_to(tmp_path / "net1.pth")
    with pytest.raises(ValueError, match="checkpoint 'a_1s/net1.pth' is outside the checkpoint folder"):
        pz.siren_folder_to_model_folder(inrs, tmp_path / "out")
    entry = pz.ModelEntry({"w": torch.zeros(1)}, "os.system", {}, [1])
    with pytest.raises(ValueError, match="builder 'os.system' is not of the form"):
        pz.write_model_folder(tmp_path / "o", [entry])


# ----------------------------------------------------------------------------- .pt2 archives
def _pickling_pt2(path: Path, marker: Path) -> None:
    """A torch.export archive whose first weight is a pickle that would run ``touch marker``."""
    ep = torch.export.export(nn.Linear(5, 3), (torch.randn(1, 5),))
    good = path.with_name("good.pt2")
    torch.export.save(ep, str(good))
    with zipfile.ZipFile(good) as archive:
        names = archive.namelist()
        configs = [n for n in names if n.endswith("weights_config.json")]
        if not configs:
            pytest.skip("this torch writes .pt2 archives without a weights config")
        config = json.loads(archive.read(configs[0]))
        fqn, meta = next(iter(config["config"].items()))
        meta["use_pickle"] = True
        weight = [n for n in names if n.endswith("/" + meta["path_name"])]
        payload = io.BytesIO()
        torch.save(_Touch(str(marker)), payload)
        with zipfile.ZipFile(path, "w") as out:
            for name in names:
                data = archive.read(name)
                if name == configs[0]:
                    data = json.dumps(config).encode()
                elif name in weight:
                    data = payload.getvalue()
                out.writestr(name, data)


class _Touch:
    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_pt2_archives_cannot_unpickle_objects(tmp_path):
    root = make_model_folder(tmp_path / "zoo", n_mlp=1, n_cnn=0)
    marker = tmp_path / "marker"
    _pickling_pt2(root / "models" / "evil.pt2", marker)
    rows = _rows(root) + [{"path": "models/evil.pt2", "builder": "", "builder_kwargs": "{}",
                           "input_shape": "", "scale": 1.0, "test_acc": 0.5, "family": "pt2", "width": 5}]
    write_table(root, rows)
    before = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    report = compile_folder(root, tmp_path / "out", workers=0)
    assert report.compiled == 1 and [p for p, _ in report.failures] == ["models/evil.pt2"]
    assert not marker.exists()
    assert os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD") == before  # restored
