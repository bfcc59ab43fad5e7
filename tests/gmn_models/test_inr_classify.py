"""INR classification (issue 13): splits, every method end to end on a tiny zoo, NFN's refusal
of mixed architectures, invariance of the equivariant methods to hidden-unit permutations, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from gmn_models.inr import classify
from gmn_models.inr.families import permute_hidden_units
from gmn_models.inr.generate import INRZooSpec, generate, load_rows

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def standard(tmp_path_factory):
    path = tmp_path_factory.mktemp("inr_std")
    generate(path, INRZooSpec(setting="standard", dataset="digits", signals=24, members=12, steps=20, psnr_floor=0.0))
    return path


@pytest.fixture(scope="module")
def diverse(tmp_path_factory):
    path = tmp_path_factory.mktemp("inr_div")
    generate(path, INRZooSpec(setting="diverse", dataset="digits", signals=32, members=4, steps=5, psnr_floor=0.0))
    return path


def test_random_split_is_seeded_and_disjoint(standard):
    rows = load_rows(standard)
    train, test = classify.split(rows, "random", 0)
    assert sorted(train + test) == list(range(len(rows))) and len(test) == round(0.2 * len(rows))
    assert classify.split(rows, "random", 0) == (train, test) and classify.split(rows, "random", 1) != (train, test)


def test_ood_split_holds_out_whole_architectures(diverse, standard):
    rows = load_rows(diverse)
    train, test = classify.split(rows, "ood", 0)
    arch = [json.dumps(r["builder_kwargs"], sort_keys=True) for r in rows]
    assert test and not {arch[i] for i in train} & {arch[i] for i in test}
    with pytest.raises(ValueError, match="at least 4 architectures"):
        classify.split(load_rows(standard), "ood", 0)


@pytest.mark.parametrize("method", sorted(classify.METHODS))
def test_every_method_predicts_classes_deterministically(standard, method):
    rows = load_rows(standard)
    train, test = classify.split(rows, "random", 0)
    tr, te = [rows[i] for i in train], [rows[i] for i in test]
    first = classify.METHODS[method](tr, te, 0, epochs=2)
    assert first.shape == (len(te),) and set(first.tolist()) <= set(range(10))
    assert np.array_equal(first, classify.METHODS[method](tr, te, 0, epochs=2))


@pytest.mark.parametrize("method", ["nfn_np", "nfn_hnp"])
def test_nfn_refuses_a_zoo_of_several_architectures(diverse, method):
    rows = load_rows(diverse)
    with pytest.raises(ValueError, match="one MLP shape"):
        classify.METHODS[method](rows[:20], rows[20:], 0, epochs=1)


def _permuted_copy(row: dict, folder) -> dict:
    """The row's INR with the hidden units of its first hidden layer permuted (same function)."""
    state = load_file(str(folder / row["path"]))
    perm = torch.randperm(state["hidden.0.bias"].numel(), generator=torch.Generator().manual_seed(0))
    path = row["path"].replace(".safetensors", "_perm.safetensors")
    save_file(permute_hidden_units(state, 0, perm), str(folder / path))
    return {**row, "path": path}


@pytest.mark.parametrize("method,invariant", [("nfn_hnp", True), ("nfn_np", True), ("gmn", True), ("mlp", False)])
def test_equivariant_methods_give_a_permuted_inr_the_same_class(standard, tmp_path, method, invariant):
    """NFN and the GMN are invariant to hidden-unit permutations by construction (so NFN's
    input conversion must keep units aligned across weights and biases, and the compiled
    graphs of the two INRs must be isomorphic); a flat MLP is not."""
    import shutil

    folder = tmp_path / "z"
    shutil.copytree(standard, folder)
    rows = load_rows(folder)
    permuted = [_permuted_copy(r, folder) for r in rows[:6]]
    lines = (folder / "models.csv").read_text().splitlines(keepends=True)
    extra = [line.replace(r["path"], p["path"], 1) for line, r, p in zip(lines[1:7], rows, permuted)]
    (folder / "models.csv").write_text("".join(lines + extra))  # the GMN reads graphs of listed models
    rows = load_rows(folder)
    tests = rows[:6] + rows[-6:]
    logits = {}
    original = classify._predict

    def capture(fn, n, batch_size=256):  # keep the logits, not only the argmax
        with torch.no_grad():
            logits["out"] = fn(torch.arange(n))
        return original(fn, n, batch_size)

    classify._predict = capture
    try:
        classify.METHODS[method](rows[6:-6], tests, 0, epochs=3)
    finally:
        classify._predict = original
    same = torch.allclose(logits["out"][:6], logits["out"][6:], atol=1e-4)
    assert same == invariant


def test_cli_prints_a_table_and_writes_records(standard, tmp_path, capsys):
    out = tmp_path / "records.json"
    assert classify.main(["--zoo", str(standard), "--methods", "mlp,statnn", "--seeds", "2", "--epochs", "1",
                          "--out", str(out)]) == 0
    records = json.loads(out.read_text())
    assert [(r["method"], r["seed"]) for r in records] == [("mlp", 0), ("statnn", 0), ("mlp", 1), ("statnn", 1)]
    assert all(0 <= r["accuracy"] <= 1 for r in records)
    table = capsys.readouterr().out
    assert "| mlp |" in table and "(2)" in table
    assert classify.main(["--zoo", str(standard), "--methods", "nope"]) == 1
