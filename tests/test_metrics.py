"""R^2 and Kendall's tau: plain functions and the offline `evaluate` modules agree."""

import math

import numpy as np
import pytest
from scipy import stats

from hyperrep_hf.downstream.scores import kendall_tau, r_squared
from hyperrep_hf.metrics import load_metric, metric_path


def test_r_squared_is_one_minus_mse_over_variance():
    y = np.array([1.0, 2.0, 3.0, 4.0])
    p = np.array([1.1, 1.9, 3.2, 3.8])
    assert r_squared(y, p) == pytest.approx(1 - np.mean((y - p) ** 2) / np.var(y))
    assert r_squared(y, y) == 1.0
    assert r_squared(y, np.full(4, y.mean())) == pytest.approx(0.0)
    assert r_squared(y, -y) < 0


def test_r_squared_of_constant_references():
    assert r_squared([2.0, 2.0], [2.0, 2.1]) == -math.inf
    assert math.isnan(r_squared([2.0, 2.0], [2.0, 2.0]))


def test_kendall_tau_counts_order_only():
    y = [0.1, 0.5, 0.3, 0.9]
    assert kendall_tau(y, [10, 50, 30, 90]) == pytest.approx(1.0)
    assert kendall_tau(y, [-v for v in y]) == pytest.approx(-1.0)
    assert kendall_tau(y, [1, 3, 2, 2]) == pytest.approx(stats.kendalltau(y, [1, 3, 2, 2]).statistic)


def test_bad_lengths_are_named():
    with pytest.raises(ValueError, match="differ in length"):
        r_squared([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="at least two"):
        kendall_tau([1.0], [1.0])


def test_evaluate_modules_work_offline_and_match(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rng = np.random.default_rng(0)
    y = rng.normal(size=50)
    p = y + 0.3 * rng.normal(size=50)
    r2 = load_metric("r_squared").compute(predictions=p.tolist(), references=y.tolist())
    tau = load_metric("kendall_tau").compute(predictions=p.tolist(), references=y.tolist())
    assert r2 == {"r_squared": pytest.approx(r_squared(y, p))}
    assert tau == {"kendall_tau": pytest.approx(kendall_tau(y, p))}


def test_metric_modules_keep_one_import_per_line():
    # evaluate's import check breaks on "import a, b" (STACK.md).
    for name in ("r_squared", "kendall_tau"):
        text = open(f"{metric_path(name)}/{name}.py").read()
        assert not any(line.startswith("import ") and "," in line for line in text.splitlines())
    with pytest.raises(ValueError, match="local metrics"):
        metric_path("accuracy")
