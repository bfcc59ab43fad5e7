"""`python -m gmn_models.inr.reproduce --size small` end to end (issue 13): every zoo, every
experiment's records, the sample pictures and the report; a rerun resumes instead of redoing."""

from __future__ import annotations

import json

import pytest

from gmn_models.inr import reproduce
from gmn_models.inr.generate import load_rows

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("inr_reproduce")
    assert reproduce.main(["--out", str(out), "--size", "small", "--quiet"]) == 0
    return out


def test_every_zoo_is_generated(small_run):
    size = reproduce.SIZES["small"]
    for name, (dataset, setting) in reproduce.ZOOS.items():
        rows = load_rows(small_run / "zoos" / name)
        assert len(rows) == (size.image_signals if dataset == "images" else size.sine_signals)
        assert {r["setting"] for r in rows} == {setting}
        assert {r["dataset"] for r in rows} == {size.images if dataset == "images" else dataset}


def test_every_experiment_has_a_record_per_method_split_and_seed(small_run):
    seeds = reproduce.SIZES["small"].seeds
    for exp in reproduce.EXPERIMENTS:
        records = json.loads((small_run / "results" / f"{exp.name}.json").read_text())
        keys = sorted((r["split"], r["seed"], r["method"]) for r in records)
        assert keys == sorted((s, i, m) for s in exp.splits for i in range(seeds) for m in exp.methods), exp.name
        assert not [r for r in records if "refused" in r], exp.name
        if exp.edit:
            assert (small_run / "results" / f"{exp.name}.png").read_bytes()[:4] == b"\x89PNG"


def test_report_has_every_table_and_a_rerun_resumes(small_run, capsys):
    report = (small_run / "report.md").read_text()
    assert all(f"## {exp.name} " in report for exp in reproduce.EXPERIMENTS)
    stamps = {p: p.stat().st_mtime_ns for p in (small_run / "results").glob("*.json")}
    assert reproduce.main(["--out", str(small_run), "--size", "small", "--quiet"]) == 0
    assert {p: p.stat().st_mtime_ns for p in (small_run / "results").glob("*.json")} == stamps
    assert capsys.readouterr().out.strip() == report.strip()


def test_an_unusable_output_folder_is_a_one_line_error(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert reproduce.main(["--out", str(blocker), "--size", "small", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1
