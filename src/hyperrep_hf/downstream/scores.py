"""Scores for property prediction: R^2 and Kendall's tau as plain functions, and model-level
bootstrap intervals for them (and for mean accuracies of groups of models).

The local `evaluate` modules in hyperrep_hf/metrics/ call these, so both routes give the same number.
"""

from __future__ import annotations

import numpy as np


def _as_1d(values, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size == 0:
        raise ValueError(f"{name} is empty: a score needs at least two values")
    return arr


def r_squared(references, predictions) -> float:
    """Coefficient of determination R^2 = 1 - MSE / Var(references).

    references, predictions: array-likes of shape [n]. 1.0 is perfect, 0.0 is as good as predicting
    the mean of the references, negative is worse than that. Constant references give -inf for any
    error (nan when the predictions are exact too), since their variance is 0.
    """
    y, p = _as_1d(references, "references"), _as_1d(predictions, "predictions")
    if y.shape != p.shape:
        raise ValueError(f"references ({y.size}) and predictions ({p.size}) differ in length")
    mse = float(np.mean((y - p) ** 2))
    var = float(np.var(y))
    if var == 0.0:
        return float("nan") if mse == 0.0 else float("-inf")
    return 1.0 - mse / var


def kendall_tau(references, predictions) -> float:
    """Kendall's rank correlation (tau-b, ties handled) between references and predictions, in [-1, 1].

    It asks only whether the predictions order the models as the references do (e.g. ranking by accuracy).
    """
    y, p = _as_1d(references, "references"), _as_1d(predictions, "predictions")
    if y.shape != p.shape:
        raise ValueError(f"references ({y.size}) and predictions ({p.size}) differ in length")
    if y.size < 2:
        raise ValueError("Kendall's tau needs at least two values")
    try:  # imported here: scipy.stats costs about a second at package import
        from scipy import stats
    except ImportError as err:  # remote code without hyperrep_hf's dependencies
        raise ImportError("Kendall's tau needs scipy (pip install scipy)") from err

    return float(stats.kendalltau(y, p).statistic)


def model_bootstrap(groups, resamples: int = 1000, seed: int = 0) -> list[np.ndarray]:
    """Row indices of `resamples` bootstrap samples that draw whole groups with replacement.

    groups: [n] a group id per row (a zoo's model_id: its checkpoints at several epochs are not
    independent, so the models, not the rows, are resampled). Returns index arrays into the rows.
    """
    _, inverse = np.unique(np.asarray(groups), return_inverse=True)
    members = [np.flatnonzero(inverse == g) for g in range(inverse.max() + 1)]
    rng = np.random.default_rng(seed)
    return [np.concatenate([members[g] for g in rng.integers(0, len(members), len(members))]) for _ in range(resamples)]


def bootstrap_means(values, resamples: int = 1000, rng: np.random.Generator | None = None) -> np.ndarray:
    """Means [resamples] of `resamples` resamples, with replacement, of independent values [n] (e.g. the
    accuracies of n sampled models); two groups' arrays subtract to the bootstrap of their difference."""
    values = _as_1d(values, "values")
    rng = rng if rng is not None else np.random.default_rng(0)
    return values[rng.integers(0, values.size, (resamples, values.size))].mean(axis=1)


def percentile_interval(values, level: float = 0.95) -> list[float]:
    """The central `level` percentile interval [low, high] of bootstrap values [B], over the finite
    ones: report `num_nonfinite(values)` beside it, so resamples that gave no score are counted."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return [float("nan"), float("nan")]
    return [float(v) for v in np.percentile(values, [50 * (1 - level), 50 * (1 + level)])]


def num_nonfinite(values) -> int:
    """How many bootstrap values [B] are NaN or infinite (e.g. R^2 of a resample whose targets are all
    equal), which `percentile_interval` leaves out."""
    return int((~np.isfinite(np.asarray(values, dtype=np.float64))).sum())
