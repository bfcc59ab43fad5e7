"""Self-supervised INR representations (issue 13): NT-Xent, the parameter-space augmentations
(graph edges and flat vectors, hidden-unit permutations that keep the function), every encoder
end to end on a tiny sine zoo, the linear probe, NFN's refusal of mixed zoos, the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from gmn_models.inr import data as idata
from gmn_models.inr import represent
from gmn_models.inr.classify import split
from gmn_models.inr.families import inr
from gmn_models.inr.generate import INRZooSpec, generate, load_rows
from gmn_models.zoo.baselines import flat_parameters

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def standard(tmp_path_factory):
    path = tmp_path_factory.mktemp("sine_std")
    generate(path, INRZooSpec(setting="standard", dataset="sine", signals=24, members=12, steps=20, psnr_floor=0.0))
    return path


@pytest.fixture(scope="module")
def diverse(tmp_path_factory):
    path = tmp_path_factory.mktemp("sine_div")
    generate(path, INRZooSpec(setting="diverse", dataset="sine", signals=32, members=4, steps=5, psnr_floor=0.0))
    return path


def _sets(folder, how="random"):
    rows = load_rows(folder)
    train, test = split(rows, how, 0)
    return [rows[i] for i in train], [rows[i] for i in test]


def test_nt_xent_matches_a_hand_computed_case():
    # two orthogonal INRs, identical views: each embedding sees its partner at cosine 1 and the
    # two others at cosine 0, so every term is -log(e^(1/t) / (e^(1/t) + 2))
    z = torch.tensor([[2.0, 0.0], [0.0, 3.0]])  # lengths do not matter (normalised)
    for t in (1.0, 0.5):
        expected = -math.log(math.exp(1 / t) / (math.exp(1 / t) + 2))
        assert represent.nt_xent(z, z.clone(), t).item() == pytest.approx(expected, rel=1e-6)
    swapped = represent.nt_xent(z, z.flip(0), 1.0).item()  # partners now orthogonal: worse
    assert swapped == pytest.approx(-math.log(1 / (2 + math.e)), rel=1e-6)


@pytest.mark.parametrize("folder", ["standard", "diverse"])
def test_graph_augmentation_changes_parameter_edges_only(folder, request):
    """Every parameter of these INRs is exactly one edge, so noise and dropout on parameter
    edges are noise and dropout on the state dict; structural edges never change."""
    from gmn_compiler import schema
    from gmn_models.zoo.gmn_method import zoo_graphs

    root = request.getfixturevalue(folder)
    rows, ds = load_rows(root), zoo_graphs(root, "amplitude")
    by_path = {ds.metadata[mid]["path"]: ds[i] for i, mid in enumerate(ds.model_ids)}
    value = schema.EDGE_COLUMNS.index("value")
    gen = torch.Generator().manual_seed(0)
    for row in rows[::4]:
        graph = by_path[row["path"]]
        is_param = graph.edge_param >= 0
        assert int(is_param.sum()) == row["n_params"] == flat_parameters(row["root"], row["path"])[0].size
        pairs = {(int(p), int(o)) for p, o in zip(graph.edge_param[is_param], graph.edge_offset[is_param])}
        assert len(pairs) == row["n_params"]  # no parameter entry on two edges
        out = represent.augment_graph(graph, gen, noise=0.1, drop=0.0)
        assert torch.equal(out.edge_attr[~is_param], graph.edge_attr[~is_param])
        others = [c for c in range(graph.edge_attr.shape[1]) if c != value]
        assert torch.equal(out.edge_attr[:, others], graph.edge_attr[:, others])
        old, new = graph.edge_attr[is_param, value], out.edge_attr[is_param, value]
        rel = ((new - old).std() / old.pow(2).mean().sqrt()).item()
        assert 0.08 < rel < 0.12
        dropped = represent.augment_graph(graph, gen, noise=0.0, drop=0.3).edge_attr[is_param, value]
        assert 0.2 < float((dropped == 0).float().mean()) < 0.4
        kept = dropped != 0
        assert torch.equal(dropped[kept], old[kept])


def test_unit_permutation_keeps_every_architectures_function(standard, diverse):
    coords = idata.load("sine", 1).coords
    rows = load_rows(standard)[:1] + load_rows(diverse)[::4]  # one INR of each architecture
    assert any(r["builder_kwargs"].get("layer_norm") for r in rows)
    assert any(r["builder_kwargs"].get("fourier") for r in rows)
    rng = np.random.default_rng(0)
    for row, layout in zip(rows, represent.layouts(rows)):
        flat = torch.from_numpy(flat_parameters(row["root"], row["path"])[0])
        index = represent.unit_permutation(layout, rng)
        assert np.array_equal(np.sort(index), np.arange(flat.numel())) and not np.array_equal(index, np.sort(index))
        outputs = []
        for values in (flat, flat[index]):
            model = inr(**row["builder_kwargs"])
            model.load_state_dict(represent.unflatten(values, layout))
            with torch.no_grad():
                outputs.append(model(coords))
        assert not torch.equal(flat, flat[index])
        torch.testing.assert_close(outputs[0], outputs[1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method,invariant", [("mlp", False), ("deepsets", True), ("nfn_np", True)])
def test_only_the_mlp_sees_the_permutation_augmentation(standard, method, invariant):
    train, test = _sets(standard)
    rows = train + test
    torch.manual_seed(0)
    encoder = represent.METHODS[method](rows, len(train), represent.Recipe())
    aug = represent.Augment(represent.Recipe(noise=0.0, drop=0.0), seed=1)  # permutations only
    idx = list(range(8))
    with torch.no_grad():
        same = torch.allclose(encoder.encode(idx, None), encoder.encode(idx, aug), atol=1e-5)
    assert same == invariant


@pytest.mark.parametrize("method", sorted(represent.METHODS))
def test_every_method_embeds_finitely_and_deterministically(standard, method):
    train, test = _sets(standard)
    recipe = represent.Recipe(dim=8, batch_size=8)
    z_tr, z_te, loss = represent.representations(method, train, test, 0, 2, recipe)
    width = idata.SINE_POINTS if method == "rendered" else 8
    assert z_tr.shape == (len(train), width) and z_te.shape == (len(test), width)
    assert np.isfinite(z_tr).all() and np.isfinite(z_te).all()
    assert math.isnan(loss) if method in ("rendered", "random_init") else loss > 0
    again = represent.representations(method, train, test, 0, 2, recipe)
    assert np.array_equal(z_tr, again[0]) and np.array_equal(z_te, again[1])


def test_random_init_is_the_untrained_gmn_and_training_moves_it(standard):
    train, test = _sets(standard)
    recipe = represent.Recipe(dim=8, batch_size=8)
    init = represent.representations("random_init", train, test, 0, 3, recipe)[1]
    assert np.array_equal(init, represent.representations("gmn", train, test, 0, 0, recipe)[1])
    assert not np.allclose(init, represent.representations("gmn", train, test, 0, 1, recipe)[1])


def test_linear_probe_recovers_a_linear_target_and_not_noise():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(300, 6)) * rng.uniform(0.1, 10, 6)  # unequal scales: standardised first
    y = z @ rng.normal(size=(6, 4)) + rng.normal(size=4)
    out = represent.linear_probe(z[:200], y[:200], z[200:], y[200:])
    assert out["mse_amplitude"] < 1e-6 and out["mse_phase"] < 1e-6 and out["mse_phase_sincos"] < 1e-6
    assert out["mse_total"] == pytest.approx(out["mse_amplitude"] + out["mse_phase"])
    noise = rng.normal(size=(300, 4))
    chance = represent.linear_probe(z[:200], noise[:200], z[200:], noise[200:])
    assert chance["mse_amplitude"] > 0.5 and chance["mse_phase"] > 0.5


def test_targets_are_amplitude_phase_and_its_sine_and_cosine(standard):
    rows = load_rows(standard)
    y = represent.targets(rows)
    assert y.shape == (len(rows), 4)
    assert np.allclose(y[:, 0], [r["amplitude"] for r in rows]) and np.allclose(np.sin(y[:, 1]), y[:, 2])
    assert (np.abs(y[:, 1]) <= math.pi).all() and np.allclose(y[:, 2] ** 2 + y[:, 3] ** 2, 1)


def test_nfn_refuses_a_zoo_of_several_architectures(diverse):
    train, test = _sets(diverse)
    with pytest.raises(ValueError, match="one MLP shape"):
        represent.representations("nfn_np", train, test, 0, 1)


def test_run_records_refusals_on_the_ood_split(diverse):
    records = represent.run(str(diverse), ["nfn_np", "mlp"], ["ood"], 1, 1, represent.Recipe(dim=4))
    nfn, mlp = records
    assert nfn["method"] == "nfn_np" and "one MLP shape" in nfn["refused"] and "mse_total" not in nfn
    assert mlp["split"] == "ood" and mlp["n_test"] > 0 and np.isfinite(mlp["mse_total"])
    rows = load_rows(diverse)
    _, test = split(rows, "ood", 0)
    assert mlp["n_test"] == len(test)


def test_cli_prints_a_table_and_writes_records(standard, tmp_path, capsys):
    out = tmp_path / "records.json"
    assert represent.main(["--zoo", str(standard), "--methods", "rendered,mlp", "--seeds", "2", "--epochs", "1",
                           "--dim", "4", "--noise", "0.05", "--drop", "0", "--threads", "1", "--out", str(out)]) == 0
    records = json.loads(out.read_text())
    assert [(r["method"], r["seed"]) for r in records] == [("rendered", 0), ("mlp", 0), ("rendered", 1), ("mlp", 1)]
    keys = {"method", "split", "seed", "n_train", "n_test", "mse_amplitude", "mse_phase", "mse_total", "seconds"}
    assert all(keys <= set(r) and r["mse_total"] >= 0 for r in records)
    table = capsys.readouterr().out
    assert "| mlp |" in table and "| rendered (reference) |" in table and "(2)" in table


@pytest.mark.parametrize("argv", [["--zoo", "{tmp}/missing"], ["--zoo", "{zoo}", "--methods", "nope"],
                                  ["--zoo", "{zoo}", "--splits", "sideways", "--methods", "mlp"]])
def test_cli_reports_a_bad_argument_in_one_line(standard, tmp_path, capsys, argv):
    argv = [a.format(tmp=tmp_path, zoo=standard) for a in argv]
    assert represent.main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:")
