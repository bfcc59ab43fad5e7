"""Regression metrics for predicted model properties: MSE, R² and Kendall's tau-b.

Inputs are array-likes (NumPy arrays, torch tensors, lists) of matching shape ``[n]`` or
``[n, k]``; computations run in float64. Undefined values (fewer than two points, a constant
target) are ``nan`` rather than an exception, so that a log row can always be written.

The project's one implementation of R² and τ: training logs (:mod:`gmn_models.training`) and the
zoo experiments (:func:`r2_tau`, :mod:`gmn_models.zoo.experiment` and ``report``) use these.
R² equals ``sklearn.metrics.r2_score`` and τ ``scipy.stats.kendalltau`` bit for bit.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["mse", "r2_score", "kendall_tau", "r2_tau", "regression_metrics", "json_safe"]


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


def r2_score(pred: Any, true: Any, *, force_finite: bool = False) -> float:
    """Coefficient of determination ``1 - SS_res / SS_tot`` of 1-D inputs; nan when fewer than
    two points. A constant target gives nan, or with ``force_finite`` 1.0 for exact predictions
    and 0.0 otherwise (``sklearn.metrics.r2_score``'s default). Multi-column inputs: mean over
    columns."""
    p, t = _pair(pred, true)
    if p.ndim == 2:
        return _column_mean(lambda a, b: r2_score(a, b, force_finite=force_finite), p, t)
    if p.size < 2:
        return math.nan
    residual = float(np.sum((t - p) ** 2))
    total = float(np.sum((t - t.mean()) ** 2))
    if total == 0.0:
        return (1.0 if residual == 0.0 else 0.0) if force_finite else math.nan
    return 1.0 - residual / total


def kendall_tau(x: Any, y: Any) -> float:
    """Kendall's tau-b of two 1-D samples (``scipy.stats.kendalltau``, O(n log n)); nan when
    fewer than two points or either sample is constant (or holds a nan). Multi-column: mean
    over columns."""
    a, b = _pair(x, y)
    if a.ndim == 2:
        return _column_mean(kendall_tau, a, b)
    if a.size < 2 or not (np.ptp(a) > 0 and np.ptp(b) > 0):
        return math.nan
    from scipy.stats import kendalltau  # here: importing scipy.stats takes a while

    return float(kendalltau(a, b).statistic)


def r2_tau(true: Any, pred: Any) -> dict[str, float]:
    """``{"r2", "tau"}`` of predictions against targets, as the zoo experiments report them:
    R² with ``force_finite`` (a constant target scores 1.0 or 0.0, as scikit-learn's does), τ
    as :func:`kendall_tau`; both nan for fewer than two points. Note the order: targets first."""
    if len(true) < 2:
        return {"r2": math.nan, "tau": math.nan}
    return {"r2": r2_score(pred, true, force_finite=True), "tau": kendall_tau(true, pred)}


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
