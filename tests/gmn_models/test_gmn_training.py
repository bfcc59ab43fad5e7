"""Training a GMN on a model folder (gmn_models.training, metrics, plots): outputs, learning,
exact resume, early stopping, config errors; metrics against scipy / scikit-learn."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from scipy.stats import kendalltau
from sklearn.metrics import r2_score as sk_r2
from test_gmn_datasets import make_model_folder

from gmn_models.metrics import kendall_tau, mse, r2_score, r2_tau, regression_metrics
from gmn_models.model import GMN
from gmn_models.train_cli import load_config
from gmn_models.training import ConfigError, TrainConfig, train

PNG = b"\x89PNG\r\n\x1a\n"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return make_model_folder(tmp_path_factory.mktemp("zoo"), n_mlp=10, n_cnn=0)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def _config(zoo, cache, out, **changes) -> dict:
    base = dict(dataset=str(zoo), out=str(out), cache_dir=str(cache), label_columns="scale",
                split=[0.6, 0.2, 0.2], epochs=6, hidden=16, num_blocks=1, lr=3e-2, batch_size=2,
                compile_workers=0, progress=False)
    base.update(changes)
    return base


# ------------------------------------------------------------------ metrics
def test_kendall_tau_matches_scipy_with_ties():
    rng = np.random.default_rng(0)
    for n in (2, 7, 50, 301):
        x, y = rng.integers(0, 5, n).astype(float), rng.integers(0, 4, n) + rng.normal(0, 0.1, n) * (n % 2)
        assert kendall_tau(x, y) == kendalltau(x, y).statistic  # the one implementation: scipy's
    assert kendall_tau([1, 2, 3], [3, 2, 1]) == -1.0
    assert math.isnan(kendall_tau([1.0], [2.0])) and math.isnan(kendall_tau([1, 1, 1], [1, 2, 3]))


def test_r2_and_mse():
    rng = np.random.default_rng(1)
    true, pred = rng.normal(size=40), rng.normal(size=40)
    assert r2_score(pred, true) == pytest.approx(sk_r2(true, pred))
    assert r2_score(true, true) == 1.0 and math.isnan(r2_score([1.0, 2.0], [3.0, 3.0]))
    assert r2_score(pred, true) == sk_r2(true, pred)  # bit for bit
    assert r2_score([3.0, 3.0], [3.0, 3.0], force_finite=True) == sk_r2([3.0, 3.0], [3.0, 3.0]) == 1.0
    assert r2_score([1.0, 2.0], [3.0, 3.0], force_finite=True) == sk_r2([3.0, 3.0], [1.0, 2.0]) == 0.0
    assert mse(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 1.0])) == pytest.approx(2.5)
    two = regression_metrics(np.stack([pred, true], 1), np.stack([true, true], 1))
    assert two["r2"] == pytest.approx((sk_r2(true, pred) + 1.0) / 2) and two["n"] == 40
    with pytest.raises(ValueError, match="differ in shape"):
        mse([1.0, 2.0], [1.0])


def test_r2_tau_is_what_the_zoo_experiments_report():
    rng = np.random.default_rng(2)
    true, pred = np.round(rng.random(60), 1), rng.random(60)
    assert r2_tau(true, pred) == {"r2": sk_r2(true, pred), "tau": kendalltau(true, pred).statistic}
    assert r2_tau(np.full(5, 0.1), np.full(5, 0.1))["r2"] == 1.0  # constant target, exact: sklearn's 1.0
    assert r2_tau(np.full(5, 0.1), np.arange(5.0))["r2"] == 0.0
    assert all(math.isnan(v) for v in r2_tau(np.array([0.5]), np.array([0.4])).values())
    assert math.isnan(r2_tau(true, np.full(60, 0.3))["tau"])


# ------------------------------------------------------------------ training
def test_train_writes_outputs_and_learns(zoo, cache, tmp_path):
    out = tmp_path / "run"
    result = train(_config(zoo, cache, out, dropout=0.0))
    assert isinstance(result.model, GMN) and not result.model.training
    losses = [row["train_loss"] for row in result.history]
    assert len(losses) == 6 and min(losses[-2:]) < 0.9 * losses[0], losses
    with open(out / "log.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["epoch", "train_loss", "val_loss", "val_r2", "val_kendall_tau", "time_s"]
    assert [float(r["train_loss"]) for r in rows] == losses
    val = [row["val_loss"] for row in result.history]
    assert result.best_epoch == 1 + int(np.argmin(val))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_models"] == {"train": 6, "val": 2, "test": 2} and metrics["best_epoch"] == result.best_epoch
    assert set(metrics["test"]) == {"mse", "r2", "kendall_tau", "n"} and metrics["test"]["n"] == 2
    for png in ("learning_curves.png", "predictions.png"):
        assert (out / png).read_bytes()[:8] == PNG and (out / png).stat().st_size > 5000
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    assert checkpoint["epoch"] == 6 and set(checkpoint) >= {"model", "optimizer", "rng", "history"}
    best = torch.load(out / "best.pt", weights_only=True)
    assert best["epoch"] == result.best_epoch
    for name, tensor in result.model.state_dict().items():
        assert torch.equal(tensor, best["model"][name])
    splits = json.loads((out / "splits.json").read_text())
    assert sorted(splits["train"] + splits["val"] + splits["test"]) == list(range(10))


def test_resume_gives_the_same_result_as_an_uninterrupted_run(zoo, cache, tmp_path):
    settings = dict(dropout=0.2, epochs=4, patience=10)  # dropout: the RNG stream matters
    straight = train(_config(zoo, cache, tmp_path / "a", **settings))
    train(_config(zoo, cache, tmp_path / "b", **{**settings, "epochs": 2}))  # "interrupted" after 2
    resumed = train(_config(zoo, cache, tmp_path / "b", **{**settings, "resume": True}))
    for name, tensor in straight.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name
    strip = [{k: v for k, v in row.items() if k != "time_s"} for row in straight.history]
    assert strip == [{k: v for k, v in row.items() if k != "time_s"} for row in resumed.history]
    assert straight.metrics == resumed.metrics
    final_a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)["model"]
    final_b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)
    with pytest.raises(ConfigError, match=r"config changed in \['lr'\]"):
        train(_config(zoo, cache, tmp_path / "b", **{**settings, "resume": True, "lr": 0.5}))


def test_early_stopping_on_validation_loss_on_disk(zoo, cache, tmp_path):
    result = train(_config(zoo, cache, tmp_path / "run", lr=0.0, epochs=10, patience=2, on_disk=True))
    assert result.stopped_early and result.epochs_run == 3 and result.best_epoch == 1
    assert len({row["val_loss"] for row in result.history}) == 1  # lr 0: nothing changes
    assert list((cache / "processed").glob("graphs-*.db"))  # trained from the SQLite dataset
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["stopped_early"] is True


def test_config_errors(zoo, cache, tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) \['epochz'\]"):
        train(_config(zoo, cache, tmp_path / "x", epochz=3))
    with pytest.raises(ConfigError, match=r"config key 'split' = \[0.5, 0.6, 0.1\] \(list\): expected three"):
        TrainConfig.from_dict(_config(zoo, cache, tmp_path / "x", split=[0.5, 0.6, 0.1]))
    with pytest.raises(ConfigError, match=r"config key 'lr' = 'fast' \(str\): expected a finite number"):
        TrainConfig.from_dict(_config(zoo, cache, tmp_path / "x", lr="fast"))
    with pytest.raises(ConfigError, match="rejected its settings"):
        train(_config(zoo, cache, tmp_path / "x", epochs=1, model_kwargs={"colour": "red"}))
    train(_config(zoo, cache, tmp_path / "y", epochs=1))
    with pytest.raises(ConfigError, match="already holds a training run"):
        train(_config(zoo, cache, tmp_path / "y", epochs=1))
    again = train(_config(zoo, cache, tmp_path / "y", epochs=1, overwrite=True))
    assert again.epochs_run == 1


def test_load_config_resolves_paths_against_the_file(tmp_path):
    (tmp_path / "cfg").mkdir()
    path = tmp_path / "cfg" / "run.toml"
    path.write_text('dataset = "../zoo"\nout = "runs/a"\nlabel_columns = "test_acc"\nepochs = 3\n'
                    "split = [0.5, 0.25, 0.25]\n")
    cfg = load_config(path, {"epochs": 5})
    assert cfg.dataset == str(tmp_path / "cfg" / "../zoo") and cfg.out == str(tmp_path / "cfg" / "runs/a")
    assert cfg.epochs == 5 and cfg.label_columns == ["test_acc"] and cfg.split == [0.5, 0.25, 0.25]
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    with pytest.raises(ConfigError, match=r"bad.json: invalid JSON at line 1, column 2"):
        load_config(bad)
