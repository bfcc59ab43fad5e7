"""Training plots as PNG files: learning curves and predicted-vs-true scatter.

Drawn on matplotlib's Agg canvas directly (``matplotlib.figure.Figure``), without pyplot: no
global backend switch, no display needed, safe in worker processes. Files are written
atomically.
"""

from __future__ import annotations

import math
import os
from typing import Any, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from gmn_compiler.fileio import write_atomically

__all__ = ["plot_learning_curves", "plot_predictions"]


def _save(fig: Figure, path: str | os.PathLike) -> None:
    FigureCanvasAgg(fig)
    write_atomically(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120), suffix=".png")


def plot_learning_curves(history: Sequence[dict[str, Any]], path: str | os.PathLike,
                         best_epoch: int | None = None) -> None:
    """Train and validation loss per epoch (log scale when all positive), plus validation R²
    and Kendall tau on a second panel. ``history`` rows carry ``epoch``, ``train_loss``,
    ``val_loss``, ``val_r2``, ``val_kendall_tau`` (the rows of ``log.csv``)."""
    fig = Figure(figsize=(9, 3.6))
    loss_ax, score_ax = fig.subplots(1, 2)
    epochs = [row["epoch"] for row in history]
    for key, label in (("train_loss", "train"), ("val_loss", "validation")):
        loss_ax.plot(epochs, [row[key] for row in history], marker=".", label=label)
    losses = [row[k] for row in history for k in ("train_loss", "val_loss")]
    if losses and all(v > 0 for v in losses if not math.isnan(v)):
        loss_ax.set_yscale("log")
    if best_epoch is not None:
        loss_ax.axvline(best_epoch, color="grey", linestyle=":", label=f"best (epoch {best_epoch})")
    loss_ax.set(xlabel="epoch", ylabel="loss (MSE, normalised targets)", title="learning curves")
    loss_ax.legend()
    for key, label in (("val_r2", "validation R²"), ("val_kendall_tau", "validation Kendall τ")):
        score_ax.plot(epochs, [row[key] for row in history], marker=".", label=label)
    score_ax.set(xlabel="epoch", title="validation scores")
    score_ax.legend()
    fig.tight_layout()
    _save(fig, path)


def plot_predictions(true: Any, pred: Any, path: str | os.PathLike, title: str = "",
                     label: str = "target") -> None:
    """Scatter of predictions against targets (first column of 2-D inputs) with the identity
    line."""
    t = np.asarray(true, dtype=np.float64).reshape(len(true), -1)[:, 0]
    p = np.asarray(pred, dtype=np.float64).reshape(len(pred), -1)[:, 0]
    fig = Figure(figsize=(4.2, 4.2))
    ax = fig.subplots()
    ax.scatter(t, p, s=12, alpha=0.7)
    if t.size:
        low, high = float(min(t.min(), p.min())), float(max(t.max(), p.max()))
        ax.plot([low, high], [low, high], color="grey", linestyle="--", linewidth=1)
    ax.set(xlabel=f"true {label}", ylabel=f"predicted {label}", title=title)
    fig.tight_layout()
    _save(fig, path)
