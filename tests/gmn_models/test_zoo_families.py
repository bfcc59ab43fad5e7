"""Zoo architecture builders: every family compiles with gmn_compiler, decompiles back to its
own state dict, and every architecture the zoo plan can sample builds and runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gmn_compiler as gc
from gmn_models.zoo import families
from gmn_models.zoo.plan import COMBOS, ZooSpec, chunk_plan, sample_arch

CASES = [
    ("mlp", dict(in_features=64, width=8, depth=2, activation="tanh"), [1, 64]),
    ("cnn2d", dict(width=4, depth=2, norm="batch"), [1, 1, 8, 8]),
    ("cnn2d", dict(width=6, depth=1, kernel_size=5, norm="group", activation="gelu"), [1, 1, 8, 8]),
    ("cnn2d", dict(width=4, depth=3, norm="none"), [1, 1, 8, 8]),
    ("cnn1d", dict(width=4, depth=3, kernel_size=7, norm="batch"), [1, 1, 40]),
    ("resnet", dict(width=4, depth=1, widen=True, norm="batch"), [1, 1, 8, 8]),
    ("resnet", dict(width=4, depth=2, norm="group", activation="gelu"), [1, 1, 8, 8]),
    ("deepsets", dict(set_size=40, width=8, depth=2), [1, 40, 1]),
    ("vit", dict(in_shape=[1, 8, 8], patch=4, width=8, depth=2, heads=2), [1, 1, 8, 8]),
    ("vit", dict(in_shape=[1, 40], patch=8, width=8, depth=1, heads=1), [1, 1, 40]),
]


pytestmark = pytest.mark.usefixtures("one_thread")


def _perturb_buffers(model: torch.nn.Module) -> None:
    """Give BatchNorm non-trivial running statistics, as a trained member has."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)


@pytest.mark.parametrize("name,kwargs,shape", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_family_compiles_and_round_trips(name, kwargs, shape):
    model = families.BUILDERS[name](**kwargs)
    _perturb_buffers(model)
    assert model(torch.randn(*shape)).shape == (1, 10)
    pg = gc.compile(model, (torch.randn(*shape),))
    back = pg.to_state_dict(pg.data.edge_attr[:, 0])
    expected = {k: v for k, v in model.state_dict().items() if v.is_floating_point()}
    assert set(back) == set(expected)
    for key, value in expected.items():
        assert torch.equal(back[key], value), key
    assert 100 <= sum(p.numel() for p in model.parameters()) <= 20_000  # tiny networks


def test_deepsets_is_a_set_function_given_positions():
    """DeepSets pools over elements: permuting the elements together with their position
    encodings leaves the output unchanged (the encoding is what pins positions)."""
    model = families.deepsets(set_size=10, width=8).eval()
    x = torch.randn(3, 10, 1)
    perm = torch.randperm(10)
    out = model(x)
    model.pos = model.pos[perm]
    assert torch.allclose(model(x[:, perm]), out, atol=1e-6)


def test_deepsets_and_vit_symmetry_oracles():
    for model, shape in ((families.deepsets(set_size=6, width=4), (2, 6, 1)),
                         (families.vit(in_shape=[1, 8], patch=4, width=4, heads=2), (2, 1, 8))):
        gc.check_symmetry(model, (torch.randn(*shape),), trials=2)


def test_resolve_builder():
    assert families.resolve_builder("gmn_models.zoo.families:resnet") is families.resnet
    assert families.builder_name(families.mlp) == "gmn_models.zoo.families:mlp"
    with pytest.raises(ValueError):
        families.resolve_builder("no_colon")


def test_bad_options_are_errors():
    with pytest.raises(ValueError):
        families.cnn2d(norm="layer")
    with pytest.raises(ValueError):
        families.mlp(activation="swish")
    with pytest.raises(ValueError):
        families.vit(in_shape=[1, 8, 8], patch=3)


@pytest.mark.parametrize("family,dataset", COMBOS)
def test_every_sampled_architecture_builds_and_runs(family, dataset):
    for seed in range(4):
        layout, kwargs, arch = sample_arch(family, dataset, np.random.default_rng(seed))
        from gmn_models.zoo import data as zdata

        shape = [2, *zdata.sample_shape(dataset, layout)]
        model = families.BUILDERS[family](**kwargs)
        assert model(torch.randn(*shape)).shape == (2, 10)
        assert arch["width"] is not None and arch["activation"] is not None


def test_plan_is_deterministic_and_balanced():
    spec = ZooSpec(seed=3, chunks=20, members=3)
    plans = [chunk_plan(spec, i) for i in range(20)]
    assert [p.builder_kwargs for p in plans] == [chunk_plan(spec, i).builder_kwargs for i in range(20)]
    for block in (plans[:10], plans[10:]):  # every (family, dataset) once per block of 10
        assert sorted((p.family, p.dataset) for p in block) == sorted(COMBOS)
    seeds = [m.seed for p in plans for m in p.members]
    assert len(set(seeds)) == len(seeds)
    assert chunk_plan(ZooSpec(seed=4, chunks=20, members=3), 0).members != plans[0].members
