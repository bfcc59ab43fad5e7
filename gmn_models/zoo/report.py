"""Files of an accuracy-prediction run (:func:`gmn_models.zoo.experiment.run_experiment`).

:func:`write_report` writes, into one folder:

* ``table.md`` — the methods × splits table (R² / Kendall τ, mean ± std over seeds;
  :func:`markdown_table`);
* ``records.csv`` — one row per (method, split, seed): R², τ, sizes, seconds;
* ``predictions.csv`` — one row per test network and run: method, split, seed, path, family,
  true and predicted test accuracy (so any other plot or metric can be made later);
* ``seeds.md`` — methods × (split, seed), R² / Kendall τ of each run: whether a method is ahead
  of another on every seed, which means over seeds cannot say (:func:`seed_table`);
* ``families.md`` — per split, R² / Kendall τ within each family (mean over seeds): how
  well a method ranks networks of one family against each other, which the pooled numbers can
  hide (telling families apart is already worth R² ≈ 0.4 here);
* ``scatter_<split>.png`` — predicted against true test accuracy, one panel per method, seed 0
  (or the smallest seed run), coloured by family, with R² in each panel's title.

Every file is written atomically (a reader never sees a partial file).
``python -m gmn_models.zoo.report DIR`` rewrites the tables and plots of ``DIR`` from its two
CSV files (:func:`read_records`), e.g. after changing a plot.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from gmn_compiler.fileio import write_atomically

from ..metrics import r2_tau
from .folder import atomic_write_text

RECORD_COLUMNS = ("method", "split", "seed", "r2", "tau", "n_train", "n_test", "seconds")
PREDICTION_COLUMNS = ("method", "split", "seed", "path", "family", "true", "pred")


def _csv_text(columns: Sequence[str], rows: Sequence[Sequence]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    return buf.getvalue()


def records_csv(records: Sequence[dict]) -> str:
    """``records.csv``'s text: the :data:`RECORD_COLUMNS` of every record."""
    return _csv_text(RECORD_COLUMNS, [[rec[c] for c in RECORD_COLUMNS] for rec in records])


def predictions_csv(records: Sequence[dict]) -> str:
    """``predictions.csv``'s text: one line per test network of every record."""
    lines = []
    for rec in records:
        for path, family, true, pred in zip(rec["paths"], rec["families"], rec["true"], rec["pred"]):
            lines.append([rec["method"], rec["split"], rec["seed"], path, family, repr(true), repr(pred)])
    return _csv_text(PREDICTION_COLUMNS, lines)


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if not np.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


def markdown_table(records: Sequence[dict]) -> str:
    """Methods × splits, cells ``R² mean ± std / τ mean ± std`` over seeds."""
    methods = list(dict.fromkeys(r["method"] for r in records))
    splits = list(dict.fromkeys(r["split"] for r in records))
    counts = {s: next(f"{r['n_train']}/{r['n_test']}" for r in records if r["split"] == s) for s in splits}
    lines = ["| method | " + " | ".join(f"{s} (train/test {counts[s]}): R² / τ" for s in splits) + " |",
             "|---" * (len(splits) + 1) + "|"]
    for m in methods:
        cells = []
        for s in splits:
            sel = [r for r in records if r["method"] == m and r["split"] == s]
            r2, tau = np.array([r["r2"] for r in sel]), np.array([r["tau"] for r in sel])
            cells.append(f"{r2.mean():.3f} ± {r2.std():.3f} / {tau.mean():.3f} ± {tau.std():.3f}")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def seed_table(records: Sequence[dict]) -> str:
    """Methods × (split, seed), cells ``R² / τ`` of each run (empty where a run is missing)."""
    methods = list(dict.fromkeys(r["method"] for r in records))
    columns = list(dict.fromkeys((r["split"], r["seed"]) for r in records))
    index = {(r["method"], r["split"], r["seed"]): r for r in records}
    lines = ["| method | " + " | ".join(f"{split} seed {seed}" for split, seed in columns) + " |",
             "|---" * (len(columns) + 1) + "|"]
    for m in methods:
        cells = [f"{index[(m, *c)]['r2']:.3f} / {index[(m, *c)]['tau']:.3f}" if (m, *c) in index else ""
                 for c in columns]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def family_table(records: Sequence[dict], split: str) -> str:
    """Markdown table, methods × families, of R² / τ computed within each family on ``split``
    (mean over seeds)."""
    chosen = [r for r in records if r["split"] == split]
    families = sorted({f for r in chosen for f in r["families"]})
    lines = [f"| {split} | " + " | ".join(families) + " |", "|---" * (len(families) + 1) + "|"]
    for method in dict.fromkeys(r["method"] for r in chosen):
        cells = []
        for family in families:
            scores = []
            for rec in (r for r in chosen if r["method"] == method):
                mask = np.array([f == family for f in rec["families"]])
                scores.append(r2_tau(np.asarray(rec["true"])[mask], np.asarray(rec["pred"])[mask]))
            r2, tau = (_nanmean([s[k] for s in scores]) for k in ("r2", "tau"))
            cells.append(f"{r2:.2f} / {tau:.2f}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_scatter(records: Sequence[dict], split: str, path: str | os.PathLike) -> None:
    """Predicted vs. true test accuracy for every method on ``split`` (smallest seed), one
    panel per method, points coloured by family, identity line, R² in the title."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # here: only plots need matplotlib
    from matplotlib.figure import Figure

    chosen = [r for r in records if r["split"] == split]
    seed = min(r["seed"] for r in chosen)
    chosen = [r for r in chosen if r["seed"] == seed]
    families = sorted({f for r in chosen for f in r["families"]})
    columns = min(4, len(chosen))
    rows = -(-len(chosen) // columns)
    fig = Figure(figsize=(3.2 * columns, 3.2 * rows + 0.5))
    axes = np.atleast_1d(fig.subplots(rows, columns, squeeze=False)).ravel()
    colours = {f: f"C{i}" for i, f in enumerate(families)}
    for ax, rec in zip(axes, chosen):
        true, pred = np.asarray(rec["true"]), np.asarray(rec["pred"])
        for family in families:
            mask = np.array([f == family for f in rec["families"]])
            ax.scatter(true[mask], pred[mask], s=4, alpha=0.5, color=colours[family], label=family)
        ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=0.8)
        low, high = min(-0.1, float(pred.min())), max(1.1, float(pred.max()))
        ax.set(xlim=(0, 1), ylim=(low, high), title=f"{rec['method']}: R² {rec['r2']:.3f}",
               xlabel="true test accuracy", ylabel="predicted")
    for ax in axes[len(chosen):]:
        ax.set_visible(False)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(families), markerscale=3, frameon=False)
    fig.suptitle(f"split {split}, seed {seed}")
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    FigureCanvasAgg(fig)
    write_atomically(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110), suffix=".png")


def scatter_name(split: str) -> str:
    """File name of ``split``'s scatter plot (``10%`` becomes ``10pct``)."""
    return f"scatter_{split.replace('%', 'pct')}.png"


def write_report(records: Sequence[dict], out: str | os.PathLike, table: str) -> None:
    """Write the files listed in the module docstring into ``out`` (created if needed)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "table.md", table + "\n")
    atomic_write_text(out / "records.csv", records_csv(records))
    atomic_write_text(out / "predictions.csv", predictions_csv(records))
    atomic_write_text(out / "seeds.md", seed_table(records) + "\n")
    splits = list(dict.fromkeys(r["split"] for r in records))
    atomic_write_text(out / "families.md", "\n\n".join(family_table(records, s) for s in splits) + "\n")
    for split in splits:
        plot_scatter(records, split, out / scatter_name(split))


def read_records(out: str | os.PathLike) -> list[dict]:
    """The records of a report folder, rebuilt from ``records.csv`` and ``predictions.csv``
    (the inverse of :func:`records_csv` and :func:`predictions_csv`)."""
    out = Path(out)
    with open(out / "records.csv", newline="") as f:
        records = [{"method": r["method"], "split": r["split"], "seed": int(r["seed"]), "r2": float(r["r2"]),
                    "tau": float(r["tau"]), "n_train": int(r["n_train"]), "n_test": int(r["n_test"]),
                    "seconds": float(r["seconds"]), "paths": [], "families": [], "true": [], "pred": []}
                   for r in csv.DictReader(f)]
    index = {(r["method"], r["split"], r["seed"]): r for r in records}
    with open(out / "predictions.csv", newline="") as f:
        for row in csv.DictReader(f):
            rec = index[(row["method"], row["split"], int(row["seed"]))]
            rec["paths"].append(row["path"])
            rec["families"].append(row["family"])
            rec["true"].append(float(row["true"]))
            rec["pred"].append(float(row["pred"]))
    return records


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gmn_models.zoo.report",
                                description="Rewrite a report folder's tables and plots from its CSV files.")
    p.add_argument("folder", help="a folder written by `python -m gmn_models.zoo.experiment --out`")
    args = p.parse_args(argv)
    try:
        records = read_records(args.folder)
    except (OSError, KeyError, ValueError) as e:
        print(f"error: cannot read the report in {args.folder}: {e!r}; "
              "expected records.csv and predictions.csv from an experiment run", file=sys.stderr)
        return 1
    write_report(records, args.folder, markdown_table(records))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
