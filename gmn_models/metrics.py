"""Regression metrics for predicted model properties: MSE, R² and Kendall's tau-b.

Inputs are array-likes (NumPy arrays, torch tensors, lists) of matching shape ``[n]`` or
``[n, k]``; computations run in float64. Undefined values (fewer than two points, a constant
target) are ``nan`` rather than an exception, so that a log row can always be written.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["mse", "r2_score", "kendall_tau", "regression_metrics", "json_safe"]


def _as_array(values: Any) -> np.ndarray:
    if hasattr(values, "detach"):  # torch tensor
        values = values.detach().cpu().double().numpy()
    return np.asarray(values, dtype=np.float64)


def _pair(pred: Any, true: Any) -> tuple[np.ndarray, np.ndarray]:
    p, t = _as_array(pred), _as_array(true)
    if p.shape != t.shape:
        raise ValueError(f"predictions {list(p.shape)} and targets {list(t.shape)} differ in shape")
    return p, t


def mse(pred: Any, true: Any) -> float:
    """Mean squared error over all entries; nan when empty."""
    p, t = _pair(pred, true)
    return float(np.mean((p - t) ** 2)) if p.size else math.nan


def r2_score(pred: Any, true: Any) -> float:
    """Coefficient of determination ``1 - SS_res / SS_tot`` of 1-D inputs; nan when fewer than
    two points or the target is constant. Multi-column inputs: mean over columns."""
    p, t = _pair(pred, true)
    if p.ndim == 2:
        return _column_mean(r2_score, p, t)
    if p.size < 2:
        return math.nan
    total = float(np.sum((t - t.mean()) ** 2))
    if total == 0.0:
        return math.nan
    return 1.0 - float(np.sum((t - p) ** 2)) / total


def kendall_tau(x: Any, y: Any, chunk: int = 4_000_000) -> float:
    """Kendall's tau-b of two 1-D samples (ties handled as scipy.stats.kendalltau does); nan
    when fewer than two points or either sample is constant. Multi-column: mean over columns.

    Exact O(n²) pair count, in row blocks of about ``chunk`` pairs (memory stays bounded)."""
    a, b = _pair(x, y)
    if a.ndim == 2:
        return _column_mean(kendall_tau, a, b)
    n = a.size
    if n < 2:
        return math.nan
    concordance = 0.0  # sum over ordered pairs (i, j) of sign(a_i - a_j) * sign(b_i - b_j)
    rows = max(1, chunk // n)
    for start in range(0, n, rows):
        da = np.sign(a[start:start + rows, None] - a[None, :])
        db = np.sign(b[start:start + rows, None] - b[None, :])
        concordance += float(np.sum(da * db))
    pairs = n * (n - 1) / 2
    denominator = math.sqrt((pairs - _tied_pairs(a)) * (pairs - _tied_pairs(b)))
    return (concordance / 2) / denominator if denominator > 0 else math.nan


def _tied_pairs(values: np.ndarray) -> float:
    _, counts = np.unique(values, return_counts=True)
    return float(np.sum(counts * (counts - 1) / 2))


def _column_mean(metric, p: np.ndarray, t: np.ndarray) -> float:
    scores = [metric(p[:, j], t[:, j]) for j in range(p.shape[1])]
    return float(np.mean(scores)) if scores else math.nan


def regression_metrics(pred: Any, true: Any) -> dict[str, float]:
    """``{"mse", "r2", "kendall_tau", "n"}`` of predictions against targets (R² and tau
    averaged over columns for multi-column targets)."""
    p, t = _pair(pred, true)
    return {"mse": mse(p, t), "r2": r2_score(p, t), "kendall_tau": kendall_tau(p, t),
            "n": int(p.shape[0]) if p.ndim else 0}


def json_safe(value: Any) -> Any:
    """``value`` with every NaN / infinite float (in nested dicts and lists) replaced by None,
    so that ``json.dumps`` writes strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value
