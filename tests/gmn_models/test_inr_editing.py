"""INR editing (issue 13): targets, the identity editor, every editor end to end on a tiny zoo,
the GMN editor's exact decompilation and its equivariance to hidden-unit permutations, NFN's
refusal of mixed architectures, the CLI."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from gmn_models.inr import data as idata
from gmn_models.inr import editing
from gmn_models.inr.edit import apply_edit
from gmn_models.inr.families import permute_hidden_units
from gmn_models.inr.generate import INRZooSpec, generate, load_rows

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def standard(tmp_path_factory):
    path = tmp_path_factory.mktemp("inr_edit_std")
    generate(path, INRZooSpec(setting="standard", dataset="digits", signals=24, members=12, steps=30, psnr_floor=0.0))
    return path


@pytest.fixture(scope="module")
def diverse(tmp_path_factory):
    path = tmp_path_factory.mktemp("inr_edit_div")
    generate(path, INRZooSpec(setting="diverse", dataset="digits", signals=16, members=4, steps=5, psnr_floor=0.0))
    return path


def _sides(folder, edit="dilate", n_train=16):
    rows = load_rows(folder)
    return editing.edit_set(rows[:n_train], edit), editing.edit_set(rows[n_train:], edit)


def test_targets_are_the_edited_dataset_images(standard):
    rows = load_rows(standard)
    data = editing.edit_set(rows, "contrast")
    images = idata.load("digits").targets[[r["signal"] for r in rows], :, 0].reshape(len(rows), 8, 8)
    assert torch.equal(data.targets, apply_edit("contrast", images).reshape(len(rows), 64))
    assert not torch.equal(editing.edit_set(rows, "dilate").targets, data.targets)
    with pytest.raises(ValueError, match="unknown edit"):
        editing.edit_set(rows, "blur")


def test_sine_inrs_are_refused(tmp_path):
    generate(tmp_path, INRZooSpec(setting="standard", dataset="sine", signals=4, members=4, steps=2, psnr_floor=0.0))
    with pytest.raises(ValueError, match="one image dataset"):
        editing.edit_set(load_rows(tmp_path), "dilate")


def test_identity_error_is_the_stored_inrs_error(standard):
    train, test = _sides(standard)
    archs = editing.Architectures()
    mse, drawn = editing._evaluate(editing.identity(train, test, archs, 0, 0), archs, test)
    for i, row in enumerate(test.rows):
        model = archs.module(row)
        model.load_state_dict(test.states[i])
        with torch.no_grad():
            picture = model(test.coords)[:, 0]
        assert torch.allclose(drawn[i], picture)
        assert mse[i] == pytest.approx(float(((picture - test.targets[i]) ** 2).mean()), rel=1e-5)


@pytest.mark.parametrize("method", sorted(editing.METHODS))
def test_every_editor_runs_deterministically(standard, method):
    train, test = _sides(standard)
    archs = editing.Architectures()
    first, pics = editing._evaluate(editing.METHODS[method](train, test, archs, 0, 2), archs, test)
    again, _ = editing._evaluate(editing.METHODS[method](train, test, archs, 0, 2), archs, test)
    assert first.shape == (len(test.rows),) and np.isfinite(first).all()
    assert np.array_equal(first, again) and pics.shape == test.targets.shape


@pytest.mark.parametrize("method", ["mlp", "nfn_np", "gmn"])
def test_training_lowers_the_training_error(standard, method):
    train, _ = _sides(standard, n_train=20)
    archs = editing.Architectures()
    before, _ = editing._evaluate(editing.identity(train, train, archs, 0, 0), archs, train)
    editor = editing.METHODS[method](train, train, archs, 0, 80)
    after, _ = editing._evaluate(lambda idx, _: editor(idx, True), archs, train)
    assert after.mean() < 0.85 * before.mean(), (after.mean(), before.mean())


def test_gmn_editor_with_zero_step_rebuilds_the_stored_parameters_exactly(standard):
    train, test = _sides(standard)
    archs = editing.Architectures()
    editor = editing.gmn(train, test, archs, 0, 0)
    # the editor's closure holds the EditGMN: set its step to zero
    model = next(c.cell_contents for c in editor.__closure__ if isinstance(c.cell_contents, torch.nn.Module))
    with torch.no_grad():
        model.gamma.zero_()
        for i, state in enumerate(editor(list(range(len(test.rows))), False)):
            assert state.keys() == test.states[i].keys()
            assert all(torch.equal(state[k], test.states[i][k]) for k in state)


def _with_permuted_copies(folder, tmp_path, count):
    """A copy of the zoo in which the first ``count`` INRs also appear with their first hidden
    layer's units permuted (listed in models.csv, so their graphs are compiled too)."""
    copy = tmp_path / "z"
    shutil.copytree(folder, copy)
    rows = load_rows(copy)
    lines = (copy / "models.csv").read_text().splitlines(keepends=True)
    extra = []
    for line, row in zip(lines[1:count + 1], rows):
        state = load_file(str(copy / row["path"]))
        perm = torch.randperm(state["hidden.0.bias"].numel(), generator=torch.Generator().manual_seed(0))
        path = row["path"].replace(".safetensors", "_perm.safetensors")
        save_file(permute_hidden_units(state, 0, perm), str(copy / path))
        extra.append(line.replace(row["path"], path, 1))
    (copy / "models.csv").write_text("".join(lines + extra))
    return load_rows(copy)


@pytest.mark.parametrize("method,equivariant", [("gmn", True), ("nfn_hnp", True), ("mlp", False)])
def test_equivariant_editors_edit_a_permuted_inr_into_the_same_function(standard, tmp_path, method, equivariant):
    rows = _with_permuted_copies(standard, tmp_path, 4)
    train = editing.edit_set(rows[4:-4], "dilate")
    test = editing.edit_set(rows[:4] + rows[-4:], "dilate")
    archs = editing.Architectures()
    _, drawn = editing._evaluate(editing.METHODS[method](train, test, archs, 0, 3), archs, test)
    assert torch.allclose(drawn[:4], drawn[4:], atol=1e-4) == equivariant


def test_gmn_and_mlp_edit_a_zoo_of_several_architectures_nfn_refuses(diverse):
    train, test = _sides(diverse, n_train=12)
    assert len({editing.Architectures.key(r) for r in train.rows + test.rows}) > 1
    archs = editing.Architectures()
    for method in ("gmn", "mlp"):
        mse, _ = editing._evaluate(editing.METHODS[method](train, test, archs, 0, 1), archs, test)
        assert np.isfinite(mse).all()
    with pytest.raises(ValueError, match="one MLP shape"):
        editing.METHODS["nfn_np"](train, test, archs, 0, 1)


def test_cli_writes_records_table_and_pictures(standard, tmp_path, capsys):
    out, pictures = tmp_path / "edit.json", tmp_path / "edit.png"
    assert editing.main(["--zoo", str(standard), "--edit", "contrast", "--methods", "identity,mlp", "--seeds", "2",
                         "--epochs", "1", "--out", str(out), "--pictures", str(pictures)]) == 0
    records = json.loads(out.read_text())
    assert [(r["method"], r["seed"]) for r in records] == [("identity", 0), ("mlp", 0), ("identity", 1), ("mlp", 1)]
    assert all(r["edit"] == "contrast" and r["mse"] > 0 for r in records)
    assert pictures.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| identity |" in capsys.readouterr().out
    assert editing.main(["--zoo", str(tmp_path / "missing"), "--methods", "identity"]) == 1
    assert "error:" in capsys.readouterr().err
