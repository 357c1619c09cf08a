"""Plots of results people would rather look at than read (matplotlib, written as PNG files).

Each function takes plain arrays, writes one figure atomically and returns its path.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .files import atomic_save  # noqa: E402


def _save(fig, path: str | os.PathLike) -> Path:
    try:
        return atomic_save(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))
    finally:
        plt.close(fig)


def pca_2d(x: np.ndarray) -> np.ndarray:
    """[n, d] -> [n, 2]: the first two principal components (centred SVD)."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"need at least 2 embeddings as an [n, d] array, got shape {x.shape}")
    x = x - x.mean(0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    out = x @ vt[:2].T
    return out if out.shape[1] == 2 else np.pad(out, ((0, 0), (0, 2 - out.shape[1])))


def plot_embedding_space(embeddings: np.ndarray, colours: Mapping[str, Sequence[float]], path, title: str = "SANE embeddings (PCA)") -> Path:
    """Scatter of the embeddings [n, d] in 2-D, one panel per colouring (e.g. test_acc, epoch)."""
    xy = pca_2d(embeddings)
    fig, axes = plt.subplots(1, len(colours), figsize=(5.5 * len(colours), 4.2), squeeze=False, layout="constrained")
    for ax, (name, c) in zip(axes[0], colours.items()):
        sc = ax.scatter(xy[:, 0], xy[:, 1], c=np.asarray(c, dtype=float), s=8, cmap="viridis")
        fig.colorbar(sc, ax=ax, label=name)
        ax.set(title=f"coloured by {name}", xlabel="PC 1", ylabel="PC 2")
    fig.suptitle(title)
    return _save(fig, path)


def plot_predicted_vs_true(true: Sequence[float], predictions: Mapping[str, Sequence[float]], path, prop: str = "test_acc") -> Path:
    """Predicted vs true values of one property, one panel per feature set (e.g. SANE, s(W))."""
    true = np.asarray(true, dtype=float)
    fig, axes = plt.subplots(1, len(predictions), figsize=(4.5 * len(predictions), 4.2), squeeze=False)
    lo, hi = float(true.min()), float(true.max())
    for ax, (name, pred) in zip(axes[0], predictions.items()):
        pred = np.asarray(pred, dtype=float)
        r2 = 1.0 - float(np.mean((pred - true) ** 2)) / max(float(np.var(true)), 1e-12)
        ax.scatter(true, pred, s=8, alpha=0.6)
        ax.plot([lo, hi], [lo, hi], "k--", lw=1)
        ax.set(title=f"{name}: R² = {r2:.3f}", xlabel=f"true {prop}", ylabel=f"predicted {prop}")
    return _save(fig, path)


def plot_finetuning_curves(epochs: Sequence[int], curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], path, title: str = "Fine-tuning",
                           xlabel: str = "fine-tuning epoch") -> Path:
    """Accuracy over fine-tuning epochs (or another x, named by `xlabel`); curves maps a label to
    (mean, std) per x."""
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    for label, (mean, std) in curves.items():
        mean, std = np.asarray(mean, dtype=float), np.asarray(std, dtype=float)
        ax.plot(epochs, mean, marker="o", label=label)
        ax.fill_between(epochs, mean - std, mean + std, alpha=0.2)
    ax.set(title=title, xlabel=xlabel, ylabel="test accuracy")
    ax.legend()
    return _save(fig, path)


def plot_training_curves(records: Sequence[Mapping], keys: Sequence[str], path, x: str = "epoch") -> Path:
    """Metrics logged during training (e.g. metrics.jsonl rows) against `x`, one line per key."""
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    for key in keys:
        pts = [(r[x], r[key]) for r in records if key in r and x in r]
        if pts:
            ax.plot(*zip(*pts), marker=".", label=key)
    ax.set(xlabel=x)
    ax.legend()
    return _save(fig, path)
