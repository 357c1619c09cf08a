"""Local `evaluate` metric modules that work offline (the Hub has no R^2 / Kendall-tau metric to fetch here).

    >>> from hyperrep_hf.metrics import load_metric
    >>> load_metric("r_squared").compute(predictions=[1.0, 2.0, 2.9], references=[1.0, 2.0, 3.0])
    {'r_squared': 0.995}

Each module is a folder holding `<name>.py` (an `evaluate.Metric`), shipped as package data.
"""

from __future__ import annotations

from pathlib import Path

METRICS = ("r_squared", "kendall_tau")


def metric_path(name: str) -> str:
    """The folder of a local metric module, for `evaluate.load(metric_path("r_squared"))`."""
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; the local metrics are {list(METRICS)}")
    return str(Path(__file__).with_name(name))


def load_metric(name: str):
    """`evaluate.load` of a local metric module: no network needed."""
    import evaluate

    return evaluate.load(metric_path(name))


__all__ = ["METRICS", "load_metric", "metric_path"]
