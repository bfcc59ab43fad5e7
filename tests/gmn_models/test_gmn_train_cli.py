"""The gmn-train command: TOML / JSON configs, option overrides, resume, one-line errors."""

from __future__ import annotations

import csv
import json
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_gmn_datasets import make_model_folder

from gmn_models.train_cli import main


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A folder holding zoo/ (six models) and a TOML config that names it relatively."""
    root = tmp_path_factory.mktemp("project")
    make_model_folder(root / "zoo", n_mlp=6, n_cnn=0)
    (root / "train.toml").write_text(
        'dataset = "zoo"\nout = "runs/default"\nlabel_columns = ["scale"]\nsplit = [0.5, 0.25, 0.25]\n'
        "epochs = 50\nhidden = 8\nnum_blocks = 1\nbatch_size = 2\nlr = 0.01\ncompile_workers = 0\n"
        'cache_dir = "cache"\n')
    return root


def _epochs(out: Path) -> list[int]:
    with open(out / "log.csv") as handle:
        return [int(row["epoch"]) for row in csv.DictReader(handle)]


def test_train_from_toml_with_overrides_and_resume(project, tmp_path):
    out = tmp_path / "run"
    runner = CliRunner()
    first = runner.invoke(main, [str(project / "train.toml"), "--epochs", "2", "--out", str(out),
                                 "--set", "seed=3", "--no-progress"])
    assert first.exit_code == 0, first.output
    assert "best epoch" in first.output and "validation: mse" in first.output
    assert _epochs(out) == [1, 2]
    saved = json.loads((out / "config.json").read_text())
    assert saved["seed"] == 3 and saved["dataset"] == str(project / "zoo")  # relative to the file
    assert (project / "cache" / "processed").is_dir()
    refused = runner.invoke(main, [str(project / "train.toml"), "--epochs", "3", "--out", str(out)])
    assert refused.exit_code == 1 and "already holds a training run" in refused.output
    assert refused.output.count("\n") == 1  # one line
    changed = runner.invoke(main, [str(project / "train.toml"), "--epochs", "3", "--out", str(out), "--resume"])
    assert changed.exit_code == 1 and "config changed in ['seed']" in changed.output  # seed was 3
    resumed = runner.invoke(main, [str(project / "train.toml"), "--epochs", "3", "--out", str(out), "--resume",
                                   "--set", "seed=3"])
    assert resumed.exit_code == 0, resumed.output
    assert _epochs(out) == [1, 2, 3]


def test_json_config_and_bad_settings(project, tmp_path):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"dataset": str(project / "zoo"), "label_columns": "scale", "epochs": 1,
                                  "hidden": 8, "num_blocks": 1, "compile_workers": 0,
                                  "cache_dir": str(project / "cache"), "split": [0.5, 0.25, 0.25]}))
    runner = CliRunner()
    ok = runner.invoke(main, [str(config), "--out", str(tmp_path / "o"),
                              "--set", 'model_kwargs={"activation": "relu"}'])
    assert ok.exit_code == 0, ok.output
    assert json.loads((tmp_path / "o" / "config.json").read_text())["model_kwargs"] == {"activation": "relu"}
    unknown = runner.invoke(main, [str(config), "--set", "epochz=2"])
    assert unknown.exit_code == 1 and "unknown config key(s) ['epochz']" in unknown.output
    malformed = runner.invoke(main, [str(config), "--set", "epochs"])
    assert malformed.exit_code == 2 and "KEY=VALUE" in malformed.output
    wrong_label = runner.invoke(main, [str(config), "--out", str(tmp_path / "p"), "--set", "label_columns=nope"])
    assert wrong_label.exit_code == 1 and "label column 'nope' is not in" in wrong_label.output
    missing = runner.invoke(main, [str(tmp_path / "none.toml")])
    assert missing.exit_code == 1
    assert missing.stderr == f"gmn-train: error: {tmp_path / 'none.toml'}: no such config file\n"


def test_console_script_is_declared():
    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"]["gmn-train"] == "gmn_models.train_cli:main"
