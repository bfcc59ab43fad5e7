"""Accuracy-prediction baselines and the experiment harness on a synthetic mixed-architecture
zoo whose label is an easy function of the weights (their scale): every baseline gives finite
predictions; the weight-space baselines beat the constant predictor, the architecture-only one
cannot; splits, metrics and the markdown table."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from scipy.stats import kendalltau

from gmn_models.zoo import baselines, experiment, families
from gmn_models.zoo import folder as zfolder


pytestmark = pytest.mark.usefixtures("one_thread")


def make_synthetic_zoo(path, n: int = 60, seed: int = 0) -> list[dict]:
    """MLPs and CNNs (BatchNorm) of several widths; weights = default init × s, s ~ U(0.3, 2),
    label ``test_acc`` = 0.1 + 0.4 (s - 0.3) / 1.7 + tiny noise — independent of architecture."""
    rng = np.random.default_rng(seed)
    rows = []
    (path / "models").mkdir(parents=True)
    for i in range(n):
        torch.manual_seed(seed * 1000 + i)
        width = int(rng.choice([4, 8, 12, 16]))
        if i % 2:
            fam, kw, shape = "mlp", dict(in_features=64, width=width, depth=2), [1, 64]
        else:
            fam, kw, shape = "cnn2d", dict(width=width, depth=2, norm="batch"), [1, 1, 8, 8]
        model = families.BUILDERS[fam](**kw)
        s = float(rng.uniform(0.3, 2.0))
        sd = {k: (v * s if v.is_floating_point() else v).contiguous() for k, v in model.state_dict().items()}
        rel = f"models/m{i:03d}.safetensors"
        save_file(sd, str(path / rel))
        rows.append({"path": rel, "builder": f"gmn_models.zoo.families:{fam}",
                     "builder_kwargs": json.dumps(kw), "input_shape": json.dumps(shape),
                     "test_acc": 0.1 + 0.4 * (s - 0.3) / 1.7 + float(rng.normal(0, 0.005)),
                     "train_acc": 0.5, "family": fam, "dataset": "digits", "layout": "flat",
                     "width": width, "depth": 2, "activation": "relu", "norm": "batch" if fam == "cnn2d" else None,
                     "kernel_size": 3 if fam == "cnn2d" else None, "lr": 1e-3, "epochs": 1,
                     "init_scale": 1.0, "weight_decay": 0.0, "label_noise": 0.0, "batch_size": 32,
                     "seed": i, "n_params": sum(v.numel() for v in sd.values() if v.is_floating_point()),
                     "chunk": 0, "member": i})
    (path / "models.csv").write_text(zfolder.rows_to_csv(rows))
    return zfolder.load_rows(path)


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    return make_synthetic_zoo(tmp_path_factory.mktemp("synthetic"))


FAST = {"deepsets": dict(epochs=30, max_elements=256, lr=3e-3), "dmc": dict(epochs=20)}


@pytest.mark.parametrize("name", ["constant", "arch_only", "hparams", "statnn", "deepsets", "dmc"])
def test_baselines_fit_predict_finite_and_learn_the_weight_scale(rows, name):
    train, test = rows[:45], rows[45:]
    pred = baselines.BASELINES[name](train, test, 0, **FAST.get(name, {}))
    assert pred.shape == (len(test),) and np.isfinite(pred).all()
    true = np.array([r["test_acc"] for r in test])
    r2 = 1 - ((pred - true) ** 2).sum() / ((true - true.mean()) ** 2).sum()
    if name in ("statnn", "deepsets", "dmc"):  # the label is in the weights
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


def test_gmn_method_smoke(rows):
    """The experiment's ``gmn`` method (parameter graphs + gmn_models.model.GMN) runs end to end."""
    pytest.importorskip("gmn_models.model")
    from gmn_models.zoo.gmn_method import gmn_predict

    pred = gmn_predict(rows[:12], rows[12:16], 0, hidden=8, num_blocks=1, epochs=1)
    assert pred.shape == (4,) and np.isfinite(pred).all()
