"""Accuracy-prediction baselines and the experiment harness on a synthetic mixed-architecture
zoo whose label is an easy function of the weights (their scale): every baseline gives finite
predictions; the weight-space baselines beat the constant predictor, the architecture-only one
cannot; splits, metrics and the markdown table."""

from __future__ import annotations

import math

import numpy as np
import pytest
from safetensors.torch import save_file
from scipy.stats import kendalltau

from gmn_models.zoo import baselines, experiment, families
from gmn_models.zoo import folder as zfolder


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def rows(synthetic_zoo):
    return zfolder.load_rows(synthetic_zoo)


FAST = {"deepsets": dict(epochs=30, max_elements=256, lr=3e-3), "dmc": dict(epochs=20)}


@pytest.mark.parametrize("name", ["constant", "arch_only", "hparams", "statnn", "statnn_recipe", "deepsets", "dmc"])
def test_baselines_fit_predict_finite_and_learn_the_weight_scale(rows, name):
    train, test = rows[:45], rows[45:]
    pred = baselines.BASELINES[name](train, test, 0, **FAST.get(name, {}))
    assert pred.shape == (len(test),) and np.isfinite(pred).all()
    true = np.array([r["test_acc"] for r in test])
    r2 = 1 - ((pred - true) ** 2).sum() / ((true - true.mean()) ** 2).sum()
    if name in ("statnn", "statnn_recipe", "deepsets", "dmc"):  # the label is in the weights
        assert r2 > 0.5 and kendalltau(true, pred).statistic > 0.5, r2
    else:  # the label does not depend on the architecture or the (constant) recipe
        assert r2 < 0.3


def test_deterministic_given_seed(rows):
    train, test = rows[:30], rows[30:40]
    a = baselines.deepsets(train, test, 3, epochs=2, max_elements=64)
    assert np.array_equal(a, baselines.deepsets(train, test, 3, epochs=2, max_elements=64))
    assert np.array_equal(baselines.statnn(train, test, 3), baselines.statnn(train, test, 4))


def test_features_handle_mixed_architectures(rows, tmp_path):
    feats = [baselines.statnn_features(r) for r in rows]
    assert len({len(f) for f in feats}) == 1  # one length for every architecture
    feats_of_first = feats[0]
    mlp = next(r for r in rows if r["family"] == "mlp")
    assert not np.isnan(baselines.statnn_features(mlp)).any()  # 6 tensors fill the 6 + 4 slots
    shallow = tmp_path / "shallow.safetensors"  # 4 tensors: first-slots 4 and 5 are empty
    save_file(families.mlp(width=4, depth=1).state_dict(), str(shallow))
    feats = baselines.statnn_features({"root": str(tmp_path), "path": shallow.name})
    assert len(feats) == len(feats_of_first) and math.isnan(feats[8 * 4]) and not math.isnan(feats[8 * 3])
    x = baselines.dmc_input(mlp, length=128)
    assert x.shape == (2, 128) and x[1].all()  # long vector: cut to head + tail, all real
    values = baselines.flat_parameters(mlp["root"], mlp["path"])[0]
    assert np.array_equal(x[0, 64:], values[-64:])
    cnn = next(r for r in rows if r["family"] == "cnn2d")
    kinds = {baselines.KINDS[k] for k in baselines.flat_parameters(cnn["root"], cnn["path"])[3]}
    assert kinds == {"conv", "norm_weight", "bias", "norm_stat", "linear"}


def test_splits(rows):
    for seed in (0, 1):
        train, test = experiment.split_rows(rows, "full", seed)
        assert len(test) == 12 and len(train) == 48 and not {r["path"] for r in train} & {r["path"] for r in test}
        small, test10 = experiment.split_rows(rows, "10%", seed)
        assert test10 == test and len(small) == 4 and all(r in train for r in small)
    assert experiment.split_rows(rows, "full", 0)[1] != experiment.split_rows(rows, "full", 1)[1]
    train, test = experiment.split_rows(rows, "ood", 0)
    assert len(train) + len(test) == len(rows) and test
    for fam in ("mlp", "cnn2d"):
        widest_train = max(r["width"] for r in train if r["family"] == fam)
        assert widest_train < min(r["width"] for r in test if r["family"] == fam)
    with pytest.raises(ValueError):
        experiment.split_rows(rows, "half", 0)


def test_experiment_table_and_registry(rows):
    records = experiment.run_experiment(rows, ["constant", "statnn"], seeds=(0, 1, 2))
    assert len(records) == 3 * 3 * 2
    table = experiment.markdown_table(records)
    lines = table.splitlines()
    assert len(lines) == 4 and lines[0].count("R² / τ") == 3 and "±" in lines[3]
    statnn_full = [r["r2"] for r in records if r["method"] == "statnn" and r["split"] == "full"]
    assert np.mean(statnn_full) > 0.8
    m = experiment.metrics(np.array([0.1, 0.2, 0.3]), np.array([0.1, 0.2, 0.3]))
    assert m == {"r2": 1.0, "tau": 1.0}
    with pytest.raises(ValueError):
        experiment.register_method("statnn", baselines.statnn)
    experiment.register_method("bad", lambda tr, te, seed: np.zeros(1))
    try:
        with pytest.raises(ValueError, match="predictions"):
            experiment.run_method("bad", rows[:5], rows[5:8], 0)
    finally:
        del experiment.METHODS["bad"]
    with pytest.raises(KeyError):
        experiment.run_method("nope", rows, rows, 0)
    assert "gmn" in experiment.METHODS


def test_gmn_method_learns_the_weight_scale(rows):
    """On the synthetic zoo the label is the weights' scale: a small GMN trained by the
    experiment's ``gmn`` method ranks held-out networks well and beats the constant predictor."""
    from gmn_models.zoo.gmn_method import GMNConfig, gmn_predict

    train, test = experiment.split_rows(rows, "full", 0)
    config = GMNConfig(hidden=16, num_blocks=2, epochs=40, batch_size=8, lr=3e-3, min_steps=0)
    pred = gmn_predict(train, test, 0, config=config)
    true = np.array([r["test_acc"] for r in test])
    assert pred.shape == (len(test),) and np.isfinite(pred).all()
    scores = experiment.metrics(true, pred)
    assert scores["r2"] > 0.5 and scores["tau"] > 0.6, scores


def test_gmn_method_with_statistics_recipe_head_and_averaging_learns(rows):
    """The options of the ``gmn`` method together (statistics readout, recipe as an auxiliary
    target, an exponential moving average of the weights) still learn the label, and change
    the predictions (they are not ignored)."""
    from gmn_models.zoo.gmn_method import GMNConfig, gmn_predict

    train, test = experiment.split_rows(rows, "full", 0)
    base = GMNConfig(hidden=16, num_blocks=2, epochs=40, batch_size=8, lr=3e-3, min_steps=0, graph_stats=False)
    config = GMNConfig(**{**base.__dict__, "graph_stats": True, "aux_recipe": 0.5, "ema": 0.9})
    pred = gmn_predict(train, test, 0, config=config)
    true = np.array([r["test_acc"] for r in test])
    scores = experiment.metrics(true, pred)
    assert np.isfinite(pred).all() and scores["r2"] > 0.5 and scores["tau"] > 0.6, scores
    assert not np.allclose(pred, gmn_predict(train, test, 0, config=base))


def test_gmn_ensemble_averages_its_members(rows):
    """``ensemble`` trains every member on the same split and seed and averages them: exactly
    the mean of the members run alone, and different from either."""
    from gmn_models.zoo.gmn_method import GMNConfig, gmn_predict

    train, test = experiment.split_rows(rows, "full", 0)
    base = GMNConfig(hidden=8, num_blocks=1, epochs=6, batch_size=8, min_steps=0)
    ensemble = base.replace(["ensemble=graph_stats=1|graph_stats=0,hidden=12"])
    assert [(m.graph_stats, m.hidden, m.ensemble) for m in ensemble.members()] == [(True, 8, ""), (False, 12, "")]
    alone = [gmn_predict(train, test, 0, config=m) for m in ensemble.members()]
    together = gmn_predict(train, test, 0, config=ensemble)
    np.testing.assert_allclose(together, (alone[0] + alone[1]) / 2, rtol=1e-6)
    assert not np.allclose(together, alone[0]) and not np.allclose(together, alone[1])
    for bad in ("hidden=0|graph_stats=0", "width=3", "ensemble=hidden=4"):
        with pytest.raises(ValueError, match="--gmn"):
            base.replace([f"ensemble={bad}"])


def test_unlabeled_rows_are_the_rest_of_the_pool_and_reach_only_semi_supervised_methods(rows):
    """At 10 % the unlabelled rows are full's training rows minus the labelled 10 %: disjoint
    from train and test; none elsewhere. A semi-supervised method receives them without
    their accuracies; other methods never see them."""
    for seed in (0, 1):
        pool, test = experiment.split_rows(rows, "full", seed)
        train, _ = experiment.split_rows(rows, "10%", seed)
        unlabeled = experiment.unlabeled_rows(rows, "10%", seed)
        paths = [r["path"] for r in unlabeled]
        assert sorted(paths + [r["path"] for r in train]) == sorted(r["path"] for r in pool)
        assert not set(paths) & {r["path"] for r in test}
    assert experiment.unlabeled_rows(rows, "full", 0) == [] and experiment.unlabeled_rows(rows, "ood", 0) == []
    seen = {}

    def spy(train_rows, test_rows, seed, unlabeled=()):
        seen["unlabeled"] = list(unlabeled)
        return np.zeros(len(test_rows))

    experiment.register_method("spy_semi", spy, semi_supervised=True)
    experiment.register_method("spy_plain", lambda tr, te, seed, **kw: seen.update(plain=kw) or np.zeros(len(te)))
    try:
        experiment.run_experiment(rows, ["spy_semi", "spy_plain"], ["10%"], [0])
    finally:
        for name in ("spy_semi", "spy_plain"):
            experiment.METHODS.pop(name)
            experiment.SEMI_SUPERVISED.discard(name)
    assert len(seen["unlabeled"]) == len(experiment.unlabeled_rows(rows, "10%", 0)) > 0
    assert all("test_acc" not in r and "train_acc" not in r for r in seen["unlabeled"])
    assert seen["plain"] == {}


def test_gmn_recipe_pretraining_reads_unlabeled_weights_not_labels(rows):
    """``pretrain_steps`` trains on the recipe of the training and unlabelled rows first (the
    unlabelled rows here carry no accuracy, so reading one would fail), then fits the label:
    the predictions still learn it and differ from those without pre-training."""
    from gmn_models.zoo.gmn_method import GMNConfig, gmn_predict

    unlabeled = [{k: v for k, v in r.items() if k not in experiment.LABELS}
                 for r in experiment.unlabeled_rows(rows, "10%", 0)]
    train, test = experiment.split_rows(rows, "full", 0)  # (the unlabelled rows' weights reappear: harmless)
    base = GMNConfig(hidden=16, num_blocks=2, epochs=40, batch_size=8, lr=3e-3, min_steps=0)
    config = base.replace(["pretrain_steps=20"])
    pred = gmn_predict(train, test, 0, config=config, unlabeled=unlabeled[:10])
    scores = experiment.metrics(np.array([r["test_acc"] for r in test]), pred)
    assert np.isfinite(pred).all() and scores["r2"] > 0.5, scores
    assert not np.allclose(pred, gmn_predict(train, test, 0, config=base))


def test_gmn_config_assignments():
    from gmn_models.zoo.gmn_method import GMNConfig

    config = GMNConfig().replace(["hidden=16", "lr=0.01", "value_transform=raw", "graph_stats=true",
                                  "aux_recipe=0.5", "ema=0.99"])
    assert (config.hidden, config.lr, config.value_transform) == (16, 0.01, "raw")
    assert (config.graph_stats, config.aux_recipe, config.ema) == (True, 0.5, 0.99)
    assert GMNConfig().graph_stats is True  # the default since issue 14's ablation
    assert GMNConfig().replace(["graph_stats=0"]).graph_stats is False
    for bad in (["width=3"], ["hidden"], ["hidden=wide"], ["value_transform=log"], ["hidden=0"], ["lr=-1"],
                ["graph_stats=maybe"], ["ema=1"], ["aux_recipe=-1"]):
        with pytest.raises(ValueError, match="--gmn"):
            GMNConfig().replace(bad)


def test_zoo_graphs_are_built_once_per_folder(rows, synthetic_zoo):
    """However the folder's path is spelled, the compiled graphs are one cached dataset; a
    different target is another dataset, labelled with that column."""
    from gmn_models.zoo.gmn_method import zoo_graphs

    graphs = zoo_graphs(synthetic_zoo)
    assert len(graphs) == len(rows)
    assert zoo_graphs(str(synthetic_zoo) + "/") is graphs
    assert zoo_graphs(synthetic_zoo / "models" / "..", "test_acc") is graphs
    by_path = {r["path"]: r for r in rows}
    for target in ("test_acc", "train_acc"):
        dataset = zoo_graphs(synthetic_zoo, target)
        labels = [float(dataset[i].y.reshape(-1)[0]) for i in range(3)]
        expected = [by_path[dataset.metadata[mid]["path"]][target] for mid in dataset.model_ids[:3]]
        assert labels == pytest.approx(expected)
