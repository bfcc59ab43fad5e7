"""INR zoo (issue 13): the signals, the INR architectures (every variant through the
compiler's oracles), vectorised fitting against a plain loop, and the generated folder."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import gmn_compiler as gc
from gmn_compiler.testing import check_all
from gmn_models.inr import data as idata
from gmn_models.inr.families import FROZEN, INR, inr, linear_weights, permute_hidden_units
from gmn_models.inr.fit import fit_alone, fit_group, init_inr
from gmn_models.inr.generate import COLUMNS, INRZooSpec, chunk_arch, generate, main
from gmn_models.zoo import folder as zfolder

pytestmark = pytest.mark.usefixtures("one_thread")


def test_mnist_is_real_and_any_prefix_is_class_balanced():
    s = idata.load("mnist", 100)
    assert s.targets.shape == (100, 784, 1) and s.coords.shape == (784, 2) and s.shape == (28, 28)
    assert float(s.targets.min()) == 0.0 and float(s.targets.max()) == 1.0
    counts = np.bincount(s.labels["label"], minlength=10)
    assert counts.min() >= 4, counts  # the file is sorted by class; the prefix is not
    full = idata.load("mnist")
    assert len(full) == 5000 and np.bincount(full.labels["label"]).tolist() == [500] * 10


def test_sine_waves_follow_their_labels():
    s = idata.load("sine", 50, seed=3)
    x = torch.linspace(-math.pi, math.pi, idata.SINE_POINTS)
    a, c = torch.tensor(s.labels["amplitude"]), torch.tensor(s.labels["phase"])
    expected = a[:, None] * torch.sin(x[None] + c[:, None])
    assert torch.allclose(s.targets[..., 0], expected.float(), atol=1e-5)
    assert a.min() >= idata.SINE_AMPLITUDE[0] and a.max() <= idata.SINE_AMPLITUDE[1]


def test_unknown_dataset_is_refused():
    with pytest.raises(ValueError, match="unknown INR dataset 'cifar'"):
        idata.load("cifar")


VARIANTS = {
    "standard": {},
    "sine_ln": {"width": 6, "depth": 3, "w0": 10.0, "layer_norm": True},
    "relu_fourier": {"width": 6, "depth": 2, "activation": "relu", "fourier": True},
    "gelu_fourier_ln": {"width": 8, "depth": 2, "activation": "gelu", "fourier": True, "layer_norm": True},
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_inr_variant_passes_the_oracles(name):
    """Round trip, automorphisms function-preserving, swapped blocks, known symmetries."""
    model = inr(**VARIANTS[name])
    check_all(model, (torch.rand(3, 2) * 2 - 1,))


def test_inrs_differing_only_in_w0_or_in_the_activation_get_different_graphs():
    """The diverse setting mixes ω0 and activations: with the same weights, the graphs must
    still tell the functions apart."""
    from gmn_compiler import canonical

    x = (torch.rand(3, 2),)
    base = inr(width=4, depth=2, w0=30.0)
    graphs = {}
    for name, kwargs in {"w0=30": {"w0": 30.0}, "w0=10": {"w0": 10.0}}.items():
        model = inr(width=4, depth=2, **kwargs)
        model.load_state_dict(base.state_dict())
        graphs[name] = gc.compile(model, x)
    assert not canonical.isomorphic(graphs["w0=30"], graphs["w0=10"])
    relu, gelu = inr(width=4, depth=2, activation="relu", fourier=True), inr(width=4, depth=2, activation="gelu", fourier=True)
    gelu.load_state_dict(relu.state_dict())
    assert not canonical.isomorphic(gc.compile(relu, x), gc.compile(gelu, x))


def test_linear_weights_are_in_order_and_refuse_other_layers():
    model = inr(width=5, depth=3)
    weights, biases = linear_weights(model.state_dict())
    assert [tuple(w.shape) for w in weights] == [(5, 2), (5, 5), (5, 5), (1, 5)]
    assert [tuple(b.shape) for b in biases] == [(5,), (5,), (5,), (1,)]
    with pytest.raises(ValueError, match="not a plain MLP INR"):
        linear_weights(inr(width=4, depth=2, layer_norm=True).state_dict())


@pytest.mark.parametrize("kwargs", [dict(depth=3, layer_norm=True), dict(activation="relu", fourier=True, depth=2)])
@pytest.mark.parametrize("layer", [0, 1])
def test_permuting_hidden_units_keeps_the_function_and_changes_the_weights(kwargs, layer):
    torch.manual_seed(0)
    model = inr(width=8, **kwargs).eval()
    with torch.no_grad():  # LayerNorm's affine parameters start at 1 and 0: make them unit-specific
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    state = model.state_dict()
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(1))
    permuted = permute_hidden_units(state, layer, perm)
    assert any(not torch.equal(state[k], permuted[k]) for k in state)
    x = torch.rand(50, 2) * 2 - 1
    with torch.no_grad():
        before = model(x)
        model.load_state_dict(permuted)
        assert torch.allclose(model(x), before, atol=1e-5)


def test_bad_architectures_are_refused():
    with pytest.raises(ValueError, match="unknown activation 'tanh'"):
        INR(activation="tanh")
    with pytest.raises(ValueError, match="even with Fourier features"):
        INR(width=5, activation="relu", fourier=True)


@pytest.mark.parametrize("kwargs", [{"width": 8, "depth": 2}, {"width": 6, "depth": 2, "activation": "gelu",
                                                                "fourier": True, "layer_norm": True}])
def test_vectorised_fit_matches_a_plain_adam_loop(kwargs):
    s = idata.load("digits", 3)
    kwargs = {**kwargs, "in_features": 2}
    group = fit_group(kwargs, [5, 6, 7], s.coords, s.targets, steps=15, lr=1e-3)
    for j, seed in enumerate([5, 6, 7]):
        alone = fit_alone(kwargs, seed, s.coords, s.targets[j], steps=15, lr=1e-3)
        for key, value in alone.state_dict.items():
            torch.testing.assert_close(group[j].state_dict[key], value, rtol=1e-4, atol=1e-5)
        assert group[j].psnr == pytest.approx(alone.psnr, abs=1e-3)


def test_fitting_improves_the_reconstruction_and_keeps_fourier_features_frozen():
    s = idata.load("digits", 2)
    kwargs = {"width": 16, "depth": 2, "activation": "relu", "fourier": True, "in_features": 2}
    short, long = (fit_group(kwargs, [1, 2], s.coords, s.targets, steps, 3e-3) for steps in (2, 150))
    assert all(b.psnr > a.psnr + 3 for a, b in zip(short, long))
    start = init_inr(kwargs, 1).state_dict()
    for key in FROZEN:
        assert torch.equal(long[0].state_dict[key], start[key])


def test_diverse_architectures_vary_and_the_standard_one_is_the_literatures():
    standard = INRZooSpec(setting="standard")
    assert chunk_arch(standard, 3, 2) == {"in_features": 2, "out_features": 1, "width": 32, "depth": 2,
                                          "activation": "sine", "w0": 30.0}
    diverse = INRZooSpec(setting="diverse")
    archs = [chunk_arch(diverse, i, 2) for i in range(40)]
    assert {a["activation"] for a in archs} == {"sine", "relu", "gelu"}
    assert {a["layer_norm"] for a in archs} == {False, True}
    assert {a["width"] for a in archs} <= {16, 24, 32, 48, 64} and len({a["width"] for a in archs}) >= 4
    assert {a["depth"] for a in archs} == {2, 3, 4, 5}


SPEC = INRZooSpec(setting="diverse", dataset="digits", signals=10, members=4, steps=40, psnr_floor=10.0, seed=2)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    path = tmp_path_factory.mktemp("inr_zoo")
    out = generate(path, SPEC)
    assert out["done"] == 3 and out["skipped"] == 0
    return path


def test_zoo_folder_is_complete_and_verifiable(zoo):
    rows = zfolder.read_csv_rows(zoo / "models.csv")
    assert tuple(rows[0]) == COLUMNS and len(rows) == 10  # a low floor: every INR kept
    assert zfolder.verify_manifest(zoo) == []
    assert sorted(int(r["signal"]) for r in rows) == list(range(10))


def test_stored_inrs_reproduce_their_psnr_and_labels(zoo):
    s = idata.load("digits", 10)
    for row in zfolder.read_csv_rows(zoo / "models.csv")[:4]:
        model = inr(**row["builder_kwargs"])
        model.load_state_dict(load_file(str(zoo / row["path"])))
        with torch.no_grad():
            mse = ((model(s.coords) - s.targets[int(row["signal"])]) ** 2).mean()
        assert 10 * math.log10(1 / float(mse)) == pytest.approx(float(row["psnr"]), abs=1e-2)
        assert int(row["label"]) == int(s.labels["label"][int(row["signal"])])


def test_every_stored_inr_compiles_through_the_model_folder(zoo, tmp_path):
    from gmn_models.datasets import ModelGraphDataset

    ds = ModelGraphDataset(str(tmp_path / "graphs"), str(zoo), ["label"], workers=0, progress=False)
    assert len(ds) == 10 and ds.failures == []


def test_resume_skips_finished_chunks_and_a_different_spec_is_refused(zoo):
    again = generate(zoo, SPEC)
    assert again["done"] == 0 and again["skipped"] == 3
    assert main(["--out", str(zoo), "--setting", "standard", "--dataset", "digits", "--signals", "10"]) == 1


def test_inrs_below_the_psnr_floor_are_not_saved(tmp_path):
    strict = INRZooSpec(setting="standard", dataset="digits", signals=4, members=4, steps=3, psnr_floor=60.0)
    out = generate(tmp_path / "z", strict)
    assert out["rows"] == 0 and out["timings"][0]["refused"] == 4
    assert not list((tmp_path / "z" / "models").rglob("*.safetensors"))


def test_dilation_grows_a_bright_pixel_into_a_square_and_contrast_clips():
    from gmn_models.inr.edit import apply_edit

    image = torch.zeros(1, 5, 5)
    image[0, 2, 2] = 0.7
    grown = apply_edit("dilate", image)[0]
    assert torch.equal(grown[1:4, 1:4], torch.full((3, 3), 0.7)) and float(grown.sum()) == pytest.approx(6.3)
    assert torch.equal(apply_edit("contrast", torch.tensor([[[0.1, 0.5, 0.8]]])), torch.tensor([[[0.0, 0.5, 1.0]]]))
    with pytest.raises(ValueError, match="unknown edit 'blur'"):
        apply_edit("blur", image)


def _render_and_check(render, graph, model, coords, target):
    """The renderer draws what ``model`` draws from ``graph``'s edge values, and the picture's
    loss has gradients on parameter edges only (what an editing metanetwork trains on)."""
    from gmn_compiler import schema

    values = graph.edge_attr[:, schema.EDGE_COLUMNS.index("value")].clone().requires_grad_(True)
    with torch.no_grad():
        expected = model(coords)
    picture = render(values)
    torch.testing.assert_close(picture, expected[:, 0], rtol=1e-5, atol=1e-6)
    ((picture - target) ** 2).mean().backward()
    is_param = graph.edge_param >= 0
    assert bool((values.grad[~is_param] == 0).all()) and float(values.grad[is_param].abs().sum()) > 0


def test_renderer_draws_a_stored_inr_from_its_folder_graph(tmp_path):
    from gmn_models.datasets import ModelGraphDataset
    from gmn_models.inr.edit import Architectures

    folder = tmp_path / "z"
    generate(folder, INRZooSpec(setting="standard", dataset="digits", signals=2, members=2, steps=5, psnr_floor=0.0))
    row = zfolder.read_csv_rows(folder / "models.csv")[0]
    graph = ModelGraphDataset(str(tmp_path / "g"), str(folder), ["label"], workers=0, progress=False)[0]
    model = inr(**row["builder_kwargs"])
    model.load_state_dict(load_file(str(folder / row["path"])))
    s = idata.load("digits", 1)
    render = functools.partial(Architectures().render_values, row, coords=s.coords)
    _render_and_check(render, graph, model, s.coords, s.targets[0, :, 0])


def test_renderer_draws_a_fourier_layer_norm_inr():
    from gmn_models.inr.edit import Architectures

    kwargs = {"in_features": 2, "width": 6, "depth": 2, "activation": "gelu", "fourier": True, "layer_norm": True}
    model = inr(**kwargs)
    with torch.no_grad():  # LayerNorm affine away from its init, so that it matters
        for norm in model.norms:
            norm.weight.normal_(1.0, 0.5)
            norm.bias.normal_(0.0, 0.5)
    s = idata.load("digits", 1)
    row = {"builder_kwargs": kwargs, "input_shape": [2, 2]}
    render = functools.partial(Architectures().render_values, row, coords=s.coords)
    graph = gc.compile(model, (torch.zeros(2, 2),)).data
    _render_and_check(render, graph, model, s.coords, s.targets[0, :, 0])
