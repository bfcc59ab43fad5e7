"""Vectorised zoo training: every member of a vmap-trained group equals the same member
trained alone by an ordinary PyTorch loop (module.train(), autograd, torch.optim.AdamW) —
exactly in float64, closely in float32 — including BatchNorm running statistics, per-member
epochs, learning rates, weight decay, label noise and initialisation scale."""

from __future__ import annotations

import pytest
import torch

from gmn_models.zoo import data as zdata
from gmn_models.zoo import families
from gmn_models.zoo.train_vmap import (MemberConfig, init_model, member_streams, train_alone,
                                       train_group)

# members deliberately out of epoch order, with every hyperparameter varied
MEMBERS = [
    MemberConfig(seed=11, lr=1e-3, epochs=2, weight_decay=0.0, label_noise=0.0, init_scale=1.0),
    MemberConfig(seed=12, lr=1e-2, epochs=1, weight_decay=1e-2, label_noise=0.5, init_scale=0.5),
    MemberConfig(seed=13, lr=3e-3, epochs=3, weight_decay=1e-1, label_noise=0.1, init_scale=2.0),
]
CASES = [
    ("mlp", dict(in_features=64, width=8, depth=2), "flat"),
    ("cnn2d", dict(width=4, depth=2, norm="batch"), "image"),
    ("cnn1d", dict(width=4, depth=2, norm="group"), "seq"),
    ("resnet", dict(width=4, depth=1, widen=True, norm="batch"), "image"),
    ("deepsets", dict(set_size=64, width=8), "set"),
    ("vit", dict(in_shape=[1, 8, 8], patch=4, width=8, heads=2), "image"),
]


pytestmark = pytest.mark.usefixtures("one_thread")


def _data(layout: str, n_train: int = 96, n_test: int = 64):
    split = zdata.load("digits")
    x_tr = zdata.to_layout(split.x_train[:n_train], "digits", layout)
    x_te = zdata.to_layout(split.x_test[:n_test], "digits", layout)
    return x_tr, split.y_train[:n_train], x_te, split.y_test[:n_test]


@pytest.mark.parametrize("family,kwargs,layout", CASES, ids=[c[0] for c in CASES])
def test_group_member_equals_member_trained_alone_float64(family, kwargs, layout):
    builder = families.BUILDERS[family]
    data = _data(layout)
    group = train_group(builder, kwargs, MEMBERS, *data, batch_size=32, dtype=torch.float64)
    for member, res in zip(MEMBERS, group):
        alone = train_alone(builder, kwargs, member, *data, batch_size=32, dtype=torch.float64)
        assert res.state_dict.keys() == alone.state_dict.keys()
        for key, value in alone.state_dict.items():
            assert res.state_dict[key].dtype == value.dtype, key
            torch.testing.assert_close(res.state_dict[key], value, rtol=0, atol=1e-9, msg=key)
        assert res.test_acc == alone.test_acc and res.train_acc == alone.train_acc
    init = init_model(builder, kwargs, MEMBERS[0]).state_dict()
    assert any(not torch.equal(init[k], group[0].state_dict[k]) for k in init)  # it trained


def test_float32_group_matches_alone_closely():
    data = _data("flat")
    kwargs = dict(in_features=64, width=8, depth=2)
    group = train_group(families.mlp, kwargs, MEMBERS, *data, batch_size=32)
    alone = train_alone(families.mlp, kwargs, MEMBERS[2], *data, batch_size=32)
    for key, value in alone.state_dict.items():
        assert group[2].state_dict[key].dtype == torch.float32
        torch.testing.assert_close(group[2].state_dict[key], value, rtol=1e-4, atol=1e-5)


def test_batchnorm_statistics_train_and_are_per_member():
    data = _data("image")
    kwargs = dict(width=4, depth=1, norm="batch")
    res = train_group(families.cnn2d, kwargs, MEMBERS[:2], *data, batch_size=32)
    means = [r.state_dict["1.running_mean"] for r in res]
    assert not torch.equal(means[0], torch.zeros(4)) and not torch.equal(means[0], means[1])
    steps = 96 // 32
    assert [int(r.state_dict["1.num_batches_tracked"]) for r in res] == [2 * steps, 1 * steps]


def test_member_streams_and_init_scale():
    y = torch.arange(1000) % 10
    noisy, _ = member_streams(MemberConfig(seed=1, lr=1e-3, epochs=1, label_noise=0.5), y)
    changed = (noisy != y).float().mean().item()
    assert 0.38 < changed < 0.52  # half replaced, a tenth of those by the same class
    clean, gen = member_streams(MemberConfig(seed=1, lr=1e-3, epochs=1), y)
    assert torch.equal(clean, y)
    assert not torch.equal(torch.randperm(10, generator=gen), torch.arange(10))
    base = init_model(families.mlp, {}, MemberConfig(seed=5, lr=1e-3, epochs=1))
    big = init_model(families.mlp, {}, MemberConfig(seed=5, lr=1e-3, epochs=1, init_scale=2.0))
    assert torch.equal(big[0].weight, 2 * base[0].weight) and torch.equal(big[0].bias, base[0].bias)
    state = torch.random.get_rng_state()
    init_model(families.mlp, {}, MemberConfig(seed=5, lr=1e-3, epochs=1))
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is left alone


def test_accuracies_are_in_range_and_learning_happens():
    data = _data("flat", n_train=640, n_test=200)
    members = [MemberConfig(seed=0, lr=1e-2, epochs=4), MemberConfig(seed=1, lr=1e-5, epochs=1)]
    good, bad = train_group(families.mlp, dict(in_features=64, width=16), members, *data)
    assert good.test_acc > 0.7 and bad.test_acc < good.test_acc - 0.3
    assert 0 <= bad.train_acc <= 1 and 0 <= bad.test_acc <= 1


def test_datasets_offline_fixed_splits():
    digits, m1d = zdata.load("digits"), zdata.load("mnist1d")
    assert digits.x_train.shape == (1347, 64) and digits.x_test.shape == (450, 64)
    assert m1d.x_train.shape == (4000, 40) and m1d.x_test.shape == (1000, 40)
    for s in (digits, m1d):
        assert s.x_train.dtype == torch.float32 and s.y_train.dtype == torch.int64
        assert set(s.y_train.tolist()) == set(range(10))
    assert abs(digits.x_train.mean().item()) < 1e-4
    assert zdata.to_layout(m1d.x_test, "mnist1d", "set").shape == (1000, 40, 1)
    with pytest.raises(ValueError):
        zdata.sample_shape("mnist1d", "image")
