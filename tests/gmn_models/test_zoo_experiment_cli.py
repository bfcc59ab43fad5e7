"""The experiment's command line and report files on the synthetic zoo (label = weight scale):
worker processes give the same records as running in-process, the report folder holds the
table, per-run records, per-network predictions and one scatter plot per split, and bad
arguments fail with a one-line error and no report."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from gmn_models.zoo import experiment, report
from gmn_models.zoo import folder as zfolder

pytestmark = pytest.mark.usefixtures("one_thread")


def test_workers_give_the_same_records_as_in_process(synthetic_zoo):
    rows = zfolder.load_rows(synthetic_zoo)
    methods, splits, seeds = ["constant", "statnn"], ["full", "ood"], (0, 1)
    here = experiment.run_experiment(rows, methods, splits, seeds)
    pooled = experiment.run_experiment(rows, methods, splits, seeds, workers=2)
    assert [(r["method"], r["split"], r["seed"]) for r in pooled] == \
        [(m, s, seed) for s in splits for seed in seeds for m in methods]
    for a, b in zip(here, pooled):
        assert a["paths"] == b["paths"] and a["true"] == b["true"]
        np.testing.assert_allclose(a["pred"], b["pred"], rtol=1e-12)


def test_cli_writes_the_report(synthetic_zoo, tmp_path, capsys):
    out = tmp_path / "report"
    code = experiment.main(["--zoo", str(synthetic_zoo), "--methods", "constant,statnn",
                            "--splits", "full,10%", "--seeds", "2", "--out", str(out)])
    assert code == 0
    table = (out / "table.md").read_text()
    assert table.strip() == capsys.readouterr().out.strip()
    assert "| statnn |" in table and "10% (train/test" in table
    records = list(csv.DictReader(open(out / "records.csv")))
    assert len(records) == 2 * 2 * 2 and set(records[0]) == set(report.RECORD_COLUMNS)
    predictions = list(csv.DictReader(open(out / "predictions.csv")))
    assert len(predictions) == sum(int(r["n_test"]) for r in records)
    # the stored predictions reproduce the stored R²
    for rec in records:
        sel = [p for p in predictions if (p["method"], p["split"], p["seed"]) == (rec["method"], rec["split"], rec["seed"])]
        true, pred = np.array([float(p["true"]) for p in sel]), np.array([float(p["pred"]) for p in sel])
        assert experiment.metrics(true, pred)["r2"] == pytest.approx(float(rec["r2"]), abs=1e-12)
    seeds = (out / "seeds.md").read_text().splitlines()
    assert seeds[0] == "| method | full seed 0 | full seed 1 | 10% seed 0 | 10% seed 1 |" and len(seeds) == 4
    statnn_full_1 = next(r for r in records if (r["method"], r["split"], r["seed"]) == ("statnn", "full", "1"))
    assert seeds[3].split(" | ")[2] == f"{float(statnn_full_1['r2']):.3f} / {float(statnn_full_1['tau']):.3f}"
    families = (out / "families.md").read_text().split("\n\n")
    assert [block.splitlines()[0] for block in families] == ["| full | cnn2d | mlp |", "| 10% | cnn2d | mlp |"]
    assert all(len(block.strip().splitlines()) == 4 for block in families)  # header, rule, 2 methods
    for name in ("scatter_full.png", "scatter_10pct.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the CSV files are enough to rebuild every record and rewrite the report
    assert experiment.markdown_table(report.read_records(out)) == table.strip()
    (out / "families.md").unlink()
    assert report.main([str(out)]) == 0 and (out / "families.md").read_text().split("\n\n") == families
    assert report.main([str(tmp_path)]) == 1 and "cannot read the report" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--methods", "constant,oracle"], "unknown method"),
    (["--methods", "gmn", "--gmn", "width=3"], "--gmn"),
])
def test_cli_rejects_bad_arguments(synthetic_zoo, tmp_path, capsys, argv, message):
    out = tmp_path / "report"
    assert experiment.main(["--zoo", str(synthetic_zoo), "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and not out.exists()


def test_cli_reports_a_missing_zoo(tmp_path, capsys):
    assert experiment.main(["--zoo", str(tmp_path / "nowhere"), "--methods", "constant"]) == 1
    err = capsys.readouterr().err.strip()
    assert "cannot read zoo" in err and len(err.splitlines()) == 1


def test_reproduce_generates_the_zoo_then_writes_the_report(tmp_path):
    from gmn_models.zoo import reproduce

    out = tmp_path / "results"
    assert reproduce.main(["--out", str(out), "--size", "small", "--chunks", "2", "--members", "6",
                           "--methods", "constant,hparams", "--splits", "full", "--seeds", "1",
                           "--workers", "0"]) == 0
    rows = zfolder.load_rows(out / "zoo")
    assert len(rows) == 12 and len({r["family"] for r in rows}) == 2
    records = list(csv.DictReader(open(out / "records.csv")))
    assert [(r["method"], r["split"]) for r in records] == [("constant", "full"), ("hparams", "full")]
    assert int(records[0]["n_train"]) + int(records[0]["n_test"]) == 12
    assert (out / "scatter_full.png").exists() and "| hparams |" in (out / "table.md").read_text()


def test_a_rerun_keeps_finished_jobs_and_runs_the_rest(synthetic_zoo, tmp_path, monkeypatch, capsys):
    out = tmp_path / "report"
    argv = ["--zoo", str(synthetic_zoo), "--splits", "full", "--seeds", "2", "--out", str(out)]
    assert experiment.main([*argv, "--methods", "constant,statnn"]) == 0
    first = {(r["method"], r["seed"]): r for r in report.read_records(out)}
    assert len(list((out / "jobs").glob("statnn_full_*.json"))) == 2
    ran = []
    real = experiment.run_method
    monkeypatch.setattr(experiment, "run_method", lambda name, *a, **k: ran.append(name) or real(name, *a, **k))
    assert experiment.main([*argv, "--methods", "statnn,hparams"]) == 0
    assert ran == ["hparams", "hparams"]  # statnn's two jobs were read back, not rerun
    assert "kept from an earlier run]" in capsys.readouterr().err
    again = {(r["method"], r["seed"]): r for r in report.read_records(out)}
    assert [again[("statnn", s)]["pred"] for s in (0, 1)] == [first[("statnn", s)]["pred"] for s in (0, 1)]


def test_job_records_are_keyed_by_options_and_zoo(tmp_path):
    from gmn_models.zoo.jobs import JobStore

    record = {"method": "gmn", "split": "10%", "seed": 1, "r2": 0.5, "tau": float("nan"), "pred": [0.1]}
    store = JobStore(tmp_path, zoo="zoo-a")
    store.save(record, {"config": "hidden=32"})
    loaded = store.load(("gmn", "10%", 1), {"config": "hidden=32"})
    assert loaded["pred"] == [0.1] and np.isnan(loaded["tau"]) and loaded["code"]
    assert store.load(("gmn", "10%", 1), {"config": "hidden=64"}) is None
    assert store.load(("gmn", "10%", 2), {"config": "hidden=32"}) is None
    assert JobStore(tmp_path, zoo="zoo-b").load(("gmn", "10%", 1), {"config": "hidden=32"}) is None


def test_a_damaged_job_record_is_a_one_line_error(synthetic_zoo, tmp_path, capsys):
    out = tmp_path / "report"
    argv = ["--zoo", str(synthetic_zoo), "--methods", "constant", "--splits", "full", "--seeds", "1", "--out", str(out)]
    assert experiment.main(argv) == 0
    (job,) = (out / "jobs").glob("*.json")
    job.write_text(job.read_text()[:40])
    capsys.readouterr()
    assert experiment.main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert "not a job record" in err and job.name in err and len(err.splitlines()) == 1


def test_records_made_by_other_code_are_flagged(synthetic_zoo, tmp_path, capsys):
    import json

    out = tmp_path / "report"
    argv = ["--zoo", str(synthetic_zoo), "--methods", "constant", "--splits", "full", "--seeds", "1", "--out", str(out)]
    assert experiment.main(argv) == 0
    (job,) = (out / "jobs").glob("*.json")
    job.write_text(json.dumps({**json.loads(job.read_text()), "code": "older"}))
    capsys.readouterr()
    assert experiment.main(argv) == 0
    err = capsys.readouterr().err
    assert "made by other gmn_models code" in err and "1 of 1 records were kept from a run of other" in err
