"""gmn-train and train() meeting a stranger's input: damaged or hostile checkpoints, output
folders that hold other files, badly typed settings, malformed config files. Every expected
error is one line on stderr (``gmn-train: error: ...``), exit status 1, nothing written."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from test_gmn_datasets import make_model_folder

from gmn_models import train_cli
from gmn_models.train_cli import main
from gmn_models.train_config import _RULES, RUN_MARKER, ConfigError, TrainConfig
from gmn_models.training import train

pytestmark = pytest.mark.usefixtures("one_thread")

PREFIX = "gmn-train: error: "


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """zoo/ (six MLPs), a shared compile cache and config.json naming both (absolute paths)."""
    root = tmp_path_factory.mktemp("bad-inputs")
    make_model_folder(root / "zoo", n_mlp=6, n_cnn=0)
    (root / "config.json").write_text(json.dumps(_settings(root)))
    return root


def _settings(root: Path, **changes) -> dict:
    return {"dataset": str(root / "zoo"), "cache_dir": str(root / "cache"), "label_columns": "scale",
            "split": [0.5, 0.25, 0.25], "epochs": 1, "hidden": 8, "num_blocks": 1, "batch_size": 2,
            "lr": 0.01, "compile_workers": 0, "progress": False, **changes}


@pytest.fixture(scope="module")
def finished_run(project) -> Path:
    out = project / "finished"
    assert _cli(project, "--out", str(out)).exit_code == 0
    return out


def _cli(project: Path, *args: str, config: str = "config.json"):
    return CliRunner().invoke(main, [str(project / config), *args])


def _one_error(result, *fragments: str) -> str:
    """The single error line of ``result`` (exit status 1, nothing on stdout, no traceback)."""
    assert result.exit_code == 1, (result.output, result.exception)
    assert result.stdout == "" and "Traceback" not in result.stderr
    assert result.stderr.startswith(PREFIX) and result.stderr.count("\n") == 1, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr
    return result.stderr


def _copy(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    return dest


# ------------------------------------------------------------------ 1. checkpoints
class _CreatesFile:
    """Unpickling this runs ``open(path, "w")``: a stand-in for an arbitrary-code payload."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _damage(path: Path, kind: str, marker: Path) -> str:
    """Replace the checkpoint at ``path``; returns a fragment of the expected message."""
    good = torch.load(path, weights_only=True)
    if kind == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind in ("garbage", "empty"):
        path.write_bytes(b"" if kind == "empty" else b"certainly not a checkpoint\n" * 10)
    elif kind == "hostile":
        torch.save({**good, "history": _CreatesFile(marker)}, path)
    elif kind == "hostile-plain-pickle":
        path.write_bytes(pickle.dumps({"format": good["format"], "x": _CreatesFile(marker)}))
    elif kind == "not-ours":
        torch.save({"state_dict": good["model"]}, path)
    elif kind == "damaged":
        torch.save({**good, "epoch": "1", "rng": None}, path)
    elif kind == "wrong-shapes":
        torch.save({**good, "model": {k: torch.zeros(3) for k in good["model"]}}, path)
    elif kind == "future-schema":
        torch.save({**good, "schema_version": 99}, path)
    elif kind == "directory":
        path.unlink()
        path.mkdir()
    refused = "refused by the weights-only loader"  # also what garbage bytes read as pickle get
    return {"truncated": "truncated or corrupt", "garbage": refused, "empty": "truncated or corrupt",
            "hostile": refused, "hostile-plain-pickle": refused,
            "not-ours": "is not a gmn-train checkpoint", "damaged": "damaged gmn-train checkpoint (bad or "
            "missing ['epoch', 'rng'])", "wrong-shapes": "does not fit this model",
            "future-schema": "trained on schema v99 graphs",
            "directory": "cannot be read (Is a directory)"}[kind]


def test_the_hostile_payload_is_real(tmp_path):
    marker = tmp_path / "marker"
    pickle.loads(pickle.dumps(_CreatesFile(marker)))  # what a full unpickling would do
    assert marker.exists()


@pytest.mark.parametrize("kind", ["truncated", "garbage", "empty", "hostile", "hostile-plain-pickle",
                                  "not-ours", "damaged", "wrong-shapes", "future-schema", "directory"])
def test_a_bad_checkpoint_is_one_line_and_runs_nothing(project, finished_run, tmp_path, kind):
    out = _copy(finished_run, tmp_path / "run")
    marker = tmp_path / "marker"
    expected = _damage(out / "checkpoint.pt", kind, marker)
    before = {p.name: (p.read_bytes() if p.is_file() else None) for p in out.iterdir()}
    result = _cli(project, "--out", str(out), "--resume", "--epochs", "2")
    _one_error(result, str(out / "checkpoint.pt"), expected, "--overwrite")
    assert not marker.exists()
    assert {p.name: (p.read_bytes() if p.is_file() else None) for p in out.iterdir()} == before
    with pytest.raises(ConfigError, match="checkpoint"):
        train(_settings(project, out=str(out), resume=True, epochs=2))
    assert not marker.exists()


def test_every_checkpoint_load_is_weights_only(project, finished_run, tmp_path, monkeypatch):
    calls = []
    real = torch.load

    def spy(*args, **kwargs):
        calls.append((str(args[0]), kwargs.get("weights_only")))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    out = _copy(finished_run, tmp_path / "run")
    assert _cli(project, "--out", str(out), "--resume", "--epochs", "2").exit_code == 0
    assert any(path.endswith("checkpoint.pt") for path, _ in calls)
    assert all(weights_only is True for _, weights_only in calls), calls


@pytest.mark.timeout(120)
def test_hostile_checkpoint_through_the_console_script(project, finished_run, tmp_path):
    out = _copy(finished_run, tmp_path / "run")
    marker = tmp_path / "marker"
    _damage(out / "checkpoint.pt", "hostile-plain-pickle", marker)
    proc = subprocess.run([sys.executable, "-m", "gmn_models.train_cli", str(project / "config.json"),
                           "--out", str(out), "--resume"], capture_output=True, text=True, timeout=110,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith(PREFIX) and proc.stderr.count("\n") == 1, proc.stderr
    assert "refused" in proc.stderr and not marker.exists()


# ------------------------------------------------------------------ 2. the output folder
def test_a_folder_of_other_files_is_refused_unless_overwrite(project, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    config = out / "config.json"  # the user's config, kept in the folder
    config.write_text(json.dumps(_settings(project, out=".")))
    for flags in ([], ["--resume"]):
        _one_error(CliRunner().invoke(main, [str(config), *flags]), str(out), "is not empty",
                   RUN_MARKER, "--overwrite")
    # --overwrite would replace the config file itself with the run's config.json
    _one_error(CliRunner().invoke(main, [str(config), "--overwrite"]), "would replace the config file")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "notes.txt"]
    config.rename(out / "train.json")
    result = CliRunner().invoke(main, [str(out / "train.json"), "--overwrite"])
    assert result.exit_code == 0, result.output
    assert (out / "notes.txt").read_text() == "my notes" and (out / RUN_MARKER).is_file()
    api = tmp_path / "api"
    api.mkdir()
    (api / "x.txt").write_text("x")
    with pytest.raises(ConfigError, match="is not empty"):
        train(_settings(project, out=str(api)))
    assert sorted(p.name for p in api.iterdir()) == ["x.txt"]
    assert train(_settings(project, out=str(api), overwrite=True)).epochs_run == 1
    assert (api / "x.txt").read_text() == "x"


def test_a_previous_run_needs_resume_or_overwrite(project, finished_run, tmp_path):
    out = _copy(finished_run, tmp_path / "run")
    _one_error(_cli(project, "--out", str(out)), "already holds a training run", "--resume", "--overwrite")
    _one_error(_cli(project, "--out", str(out), "--resume", "--overwrite"), "exclude each other")
    resumed = _cli(project, "--out", str(out), "--resume", "--epochs", "2")
    assert resumed.exit_code == 0, resumed.output
    assert json.loads((out / "metrics.json").read_text())["epochs_run"] == 2
    again = _cli(project, "--out", str(out), "--overwrite")
    assert again.exit_code == 0, again.output
    assert json.loads((out / "metrics.json").read_text())["epochs_run"] == 1  # started over
    (out / RUN_MARKER).unlink()  # a run made before the marker: checkpoint.pt still says so
    _one_error(_cli(project, "--out", str(out)), "already holds a training run")
    assert _cli(project, "--out", str(out), "--resume", "--epochs", "2").exit_code == 0


def test_a_checkpoint_from_before_schema_v2_is_refused(project, finished_run, tmp_path):
    """A checkpoint that records no schema version was trained on v1 graphs, which lack the
    node column ``signature``: resuming says so instead of feeding it the wrong columns."""
    out = _copy(finished_run, tmp_path / "run")
    saved = torch.load(out / "checkpoint.pt", weights_only=True)
    assert saved.pop("schema_version") == 2
    torch.save(saved, out / "checkpoint.pt")
    result = _cli(project, "--out", str(out), "--resume", "--epochs", "2")
    _one_error(result, str(out / "checkpoint.pt"), "trained on schema v1 graphs", "--overwrite")


def test_empty_missing_and_file_outs(project, tmp_path):
    (tmp_path / "empty").mkdir()
    assert _cli(project, "--out", str(tmp_path / "empty")).exit_code == 0
    assert _cli(project, "--out", str(tmp_path / "new" / "run"), "--resume").exit_code == 0  # starts one
    (tmp_path / "file").write_text("x")
    _one_error(_cli(project, "--set", f"out={json.dumps(str(tmp_path / 'file'))}"), "is a file, not a folder")


# ------------------------------------------------------------------ 3. settings and config files
BAD_SETTINGS = [("compile_workers", '"two"', "'two' (str)", "an integer >= 0"),
                ("out", "5", "5 (int)", "a folder path"),
                ("epochs", "-1", "-1 (int)", "an integer >= 1"),
                ("epochs", "2.5", "2.5 (float)", "an integer >= 1"),
                ("batch_size", "true", "True (bool)", "an integer >= 1"),
                ("lr", "fast", "'fast' (str)", "a finite number >= 0"),
                ("lr", "NaN", "nan (float)", "a finite number >= 0"),
                ("dropout", "1", "1 (int)", "a number in [0, 1)"),
                ("split", "[0.5, 0.5]", "[0.5, 0.5] (list)", "three fractions"),
                ("label_columns", "[1]", "[1] (list)", "a column name or a non-empty list"),
                ("model", "GMN", "'GMN' (str)", "'module:callable'"),
                ("model_kwargs", '{"a b": 1}', "{'a b': 1} (dict)", "a table of keyword arguments"),
                ("on_disk", '"yes"', "'yes' (str)", "true or false"),
                ("seed", "-3", "-3 (int)", "an integer in [0, 2**63)"),
                ("cache_dir", '""', "'' (str)", "a folder path or null")]


@pytest.mark.parametrize("key,value,shown,expected", BAD_SETTINGS)
def test_a_bad_setting_is_named_before_anything_is_written(project, tmp_path, key, value, shown, expected):
    out = tmp_path / "never"
    args = ["--out", str(out)] if key != "out" else []
    message = f"config key {key!r} = {shown}: expected {expected}"
    _one_error(_cli(project, *args, "--set", f"{key}={value}"), message)
    config = tmp_path / "c.json"
    parsed = train_cli._parse_set((f"{key}={value}",))[key]  # as --set reads it
    config.write_text(json.dumps({**_settings(project, out=str(out)), key: parsed}))
    _one_error(CliRunner().invoke(main, [str(config)]), f"config key {key!r}")
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["c.json"]


def test_every_setting_has_a_rule_and_defaults_pass():
    assert list(_RULES) == [f for f in TrainConfig.__dataclass_fields__]
    TrainConfig(dataset="zoo").validate()
    cfg = TrainConfig.from_dict({"dataset": Path("zoo"), "label_columns": "acc", "split": (0.6, 0.2, 0.2)})
    assert cfg.dataset == "zoo" and cfg.label_columns == ["acc"] and cfg.split == [0.6, 0.2, 0.2]
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) \['epoch'\] \(did you mean 'epochs'\?\)"):
        TrainConfig.from_dict({"dataset": "zoo", "epoch": 3})
    with pytest.raises(ConfigError, match="the config must be a table of settings, got a list"):
        TrainConfig.from_dict([1])


@pytest.mark.parametrize("name,text,position", [
    ("bad.json", '{"dataset": "zoo",\n "epochs": }', "bad.json: invalid JSON at line 2, column 12"),
    ("bad.toml", 'dataset = "zoo"\nepochs = \n', "bad.toml: invalid TOML: Invalid value (at line 2, col"),
    ("deep.json", "[" * 100_000, "deep.json: invalid JSON ("),
    ("list.json", "[1, 2]", "list.json: the config must be a table"),
    ("latin1.json", b'{"dataset": "\xe9"}', "latin1.json: not UTF-8 text"),
    ("config.yaml", "dataset: zoo", "config.yaml: config files are .json or .toml"),
])
def test_a_malformed_config_file_names_the_file_and_position(tmp_path, name, text, position):
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    _one_error(CliRunner().invoke(main, [str(path), "--out", str(tmp_path / "never")]), position)
    assert not (tmp_path / "never").exists()


# ------------------------------------------------------------------ 4. one-line errors
def test_expected_errors_are_one_line_and_debug_shows_the_traceback(project, tmp_path):
    (tmp_path / "no-table").mkdir()
    cases = [([str(tmp_path / "missing.toml")], "missing.toml: no such config file"),
             ([str(project / "config.json"), "--dataset", str(tmp_path / "nowhere")], "no such folder"),
             ([str(project / "config.json"), "--dataset", str(tmp_path / "no-table")], "no models.csv"),
             ([str(project / "config.json"), "--set", "label_columns=nope"], "label column 'nope' is not in"),
             ([str(project / "config.json"), "--set", "model=nowhere.at_all:GMN"], "cannot be imported")]
    for args, fragment in cases:
        _one_error(CliRunner().invoke(main, [*args, "--out", str(tmp_path / "never")]), fragment)
        debug = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "never"), "--debug"])
        assert debug.exit_code == 1 and debug.exc_info[0].__name__ in ("ConfigError", "ModelFolderError")
    assert not (tmp_path / "never").exists()


def test_usage_errors_are_one_line_with_status_2(project):
    for args in (["--epochs", "abc"], ["--set", "epochs"], ["--no-such-option"]):
        result = _cli(project, *args)
        assert result.exit_code == 2 and result.stderr.count("\n") == 1
        assert result.stderr.startswith(PREFIX) and result.stderr.endswith("(see gmn-train --help)\n")
    assert CliRunner().invoke(main, ["--help"]).exit_code == 0


def test_unexpected_errors_say_how_to_get_the_traceback(project, monkeypatch):
    def broken(cfg):
        raise RuntimeError("kaboom\nsecond line")

    monkeypatch.setattr(train_cli, "train", broken)
    assert _one_error(_cli(project)) == (f"{PREFIX}unexpected RuntimeError: kaboom "
                                         "(run again with --debug for the traceback)\n")
    debug = _cli(project, "--debug")
    assert debug.exit_code == 1 and isinstance(debug.exception, RuntimeError)

    def interrupted(cfg):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_cli, "train", interrupted)
    result = _cli(project)
    assert result.exit_code == 130 and result.stderr.strip() == "gmn-train: interrupted"
