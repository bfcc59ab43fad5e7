"""Files of an accuracy-prediction run (:func:`gmn_models.zoo.experiment.run_experiment`).

:func:`write_report` writes, into one folder:

* ``table.md`` — the methods × splits table (R² / Kendall τ, mean ± std over seeds);
* ``records.csv`` — one row per (method, split, seed): R², τ, sizes, seconds;
* ``predictions.csv`` — one row per test network and run: method, split, seed, path, family,
  true and predicted test accuracy (so any other plot or metric can be made later);
* ``families.md`` — per split, R² / Kendall τ within each family (mean over seeds): how
  well a method ranks networks of one family against each other, which the pooled numbers can
  hide (telling families apart is already worth R² ≈ 0.4 here);
* ``scatter_<split>.png`` — predicted against true test accuracy, one panel per method, seed 0
  (or the smallest seed run), coloured by family, with R² in each panel's title.

Every file is written atomically (a reader never sees a partial file).
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from gmn_compiler.fileio import write_atomically

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


def family_table(records: Sequence[dict], split: str) -> str:
    """Markdown table, methods × families, of R² / τ computed within each family on ``split``
    (mean over seeds)."""
    from .experiment import metrics  # here, not at the top: experiment imports this module lazily

    chosen = [r for r in records if r["split"] == split]
    families = sorted({f for r in chosen for f in r["families"]})
    lines = [f"| {split} | " + " | ".join(families) + " |", "|---" * (len(families) + 1) + "|"]
    for method in dict.fromkeys(r["method"] for r in chosen):
        cells = []
        for family in families:
            scores = []
            for rec in (r for r in chosen if r["method"] == method):
                mask = np.array([f == family for f in rec["families"]])
                scores.append(metrics(np.asarray(rec["true"])[mask], np.asarray(rec["pred"])[mask]))
            r2, tau = (_nanmean([s[k] for s in scores]) for k in ("r2", "tau"))
            cells.append(f"{r2:.2f} / {tau:.2f}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_scatter(records: Sequence[dict], split: str, path: str | os.PathLike) -> None:
    """Predicted vs. true test accuracy for every method on ``split`` (smallest seed), one
    panel per method, points coloured by family, identity line, R² in the title."""
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
        ax.set(xlim=(0, 1), ylim=(-0.1, 1.1), title=f"{rec['method']}: R² {rec['r2']:.3f}",
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
    splits = list(dict.fromkeys(r["split"] for r in records))
    atomic_write_text(out / "families.md", "\n\n".join(family_table(records, s) for s in splits) + "\n")
    for split in splits:
        plot_scatter(records, split, out / scatter_name(split))
