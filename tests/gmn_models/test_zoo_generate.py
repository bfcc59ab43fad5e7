"""Zoo generation: a tiny zoo in the model folder format — valid table, loadable builders,
every stored model compiles and decompiles to its stored state dict, checksums verify;
resuming skips finished chunks and redoes unfinished ones bit for bit."""

from __future__ import annotations

import csv
import json
import subprocess

import pytest
import torch
from safetensors.torch import load_file

import gmn_compiler as gc
from gmn_models.zoo import folder as zfolder
from gmn_models.zoo.generate import finalize, generate, main
from gmn_models.zoo.plan import ZooSpec

SPEC = ZooSpec(seed=7, chunks=2, members=4, epochs=(1,), batch_size=64,
               combos=(("mlp", "digits"), ("resnet", "digits")))


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    path = tmp_path_factory.mktemp("zoo")
    out = generate(path, SPEC)
    assert out["done"] == 2 and out["skipped"] == 0 and out["rows"] == 8
    return path


def test_table_has_the_folder_format(zoo):
    with open(zoo / "models.csv", newline="") as f:
        raw = list(csv.DictReader(f))
    assert len(raw) == 8 and tuple(raw[0]) == zfolder.COLUMNS
    rows = zfolder.load_rows(zoo)
    assert {r["family"] for r in rows} == {"mlp", "resnet"}
    for raw_row, row in zip(raw, rows):
        assert row["builder"].startswith("gmn_models.zoo.families:")
        assert isinstance(json.loads(raw_row["builder_kwargs"]), dict)
        assert json.loads(raw_row["input_shape"])[0] == 1
        assert (zoo / row["path"]).is_file() and row["path"].endswith(".safetensors")
        assert 0.0 <= row["test_acc"] <= 1.0 and 0.0 <= row["train_acc"] <= 1.0
        for key in ("width", "depth", "activation", "lr", "epochs", "init_scale", "weight_decay",
                    "label_noise", "seed", "dataset"):
            assert row[key] is not None, key
    assert rows[0]["norm"] is None and rows[-1]["norm"] in ("batch", "group", "none")


def test_every_model_loads_compiles_and_round_trips(zoo):
    for row in zfolder.load_rows(zoo):
        stored = load_file(str(zoo / row["path"]))
        model = zfolder.build_model(row)  # strict load_state_dict
        pg = gc.compile(model, (torch.randn(*row["input_shape"]),))
        back = pg.to_state_dict(pg.data.edge_attr[:, 0])
        floats = {k: v for k, v in stored.items() if v.is_floating_point()}
        assert set(back) == set(floats)
        for key, value in floats.items():
            assert torch.equal(back[key], value), (row["path"], key)
        assert row["n_params"] == sum(v.numel() for v in floats.values())


def test_manifest_verifies_and_catches_tampering(zoo, tmp_path):
    assert zfolder.verify_manifest(zoo) == []
    listed = zfolder.read_manifest(zoo)
    assert "models.csv" in listed and "zoo.json" in listed
    assert sum(p.endswith(".safetensors") for p in listed) == 8
    check = subprocess.run(["sha256sum", "--check", "--quiet", zfolder.MANIFEST], cwd=zoo,
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(zoo), str(copy)], check=True)
    victim = zfolder.load_rows(copy)[3]["path"]
    (copy / victim).write_bytes((copy / victim).read_bytes()[:-1] + b"\0")
    assert zfolder.verify_manifest(copy) == [victim]


def test_resume_skips_finished_chunks_and_redoes_unfinished_ones_identically(zoo, tmp_path):
    again = generate(zoo, SPEC)
    assert again["done"] == 0 and again["skipped"] == 2 and again["rows"] == 8
    copy = tmp_path / "zoo"
    subprocess.run(["cp", "-r", str(zoo), str(copy)], check=True)
    before = {p: (copy / p).read_bytes() for p in zfolder.read_manifest(copy)}
    (copy / "chunks" / "chunk_00001.csv").unlink()  # chunk 1 was interrupted before its marker
    (copy / "models" / "chunk_00001" / "m002.safetensors").write_bytes(b"partial")
    (copy / "models" / ".chunk_00001.tmp-99999").mkdir()  # a killed worker's temporaries
    (copy / ".models.csv.tmp-99999").write_text("partial")
    finalize(copy, SPEC)
    assert len(zfolder.load_rows(copy)) == 4  # the table lists finished chunks only
    out = generate(copy, SPEC)
    assert out["done"] == 1 and out["skipped"] == 1 and [t["chunk"] for t in out["timings"]] == [1]
    after = {p: (copy / p).read_bytes() for p in zfolder.read_manifest(copy)}
    assert after == before  # deterministic: same bytes, same table, same manifest
    assert not list(copy.glob("**/*.tmp-*")) and not list(copy.glob("**/.*.tmp-*"))
    assert zfolder.verify_manifest(copy) == []


def test_max_chunks_and_other_spec_refused(tmp_path):
    spec = ZooSpec(seed=1, chunks=3, members=2, epochs=(1,), combos=(("mlp", "digits"),))
    first = generate(tmp_path, spec, max_chunks=1)
    assert first["done"] == 1 and first["rows"] == 2 and zfolder.verify_manifest(tmp_path) == []
    with pytest.raises(ValueError, match="different spec"):
        generate(tmp_path, ZooSpec(seed=2, chunks=3, members=2, epochs=(1,), combos=(("mlp", "digits"),)))


def test_cli(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["--out", str(out), "--size", "small", "--chunks", "1", "--members", "2", "--quiet"]) == 0
    assert "2 networks" in capsys.readouterr().out
    assert len(zfolder.load_rows(out)) == 2 and zfolder.verify_manifest(out) == []
    assert main(["--out", str(out), "--size", "small", "--seed", "5", "--chunks", "1", "--quiet"]) == 1
