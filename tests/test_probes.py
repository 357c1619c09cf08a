"""Linear probes: closed-form ridge with a penalty grid, a linear classifier, saved probe sets."""

import json

import numpy as np
import pytest
import torch

from hyperrep_hf.downstream.evaluation import add_bootstrap_intervals
from hyperrep_hf.downstream.probes import PENALTIES, ProbeSet, property_score, ridge_path
from hyperrep_hf.downstream.scores import model_bootstrap, num_nonfinite, percentile_interval


def _toy(n, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g) * torch.tensor([1.0, 10.0, 0.1, 1.0, 5.0, 1.0])
    acc = (0.5 + 0.1 * x[:, 0] - 0.01 * x[:, 1] + 0.01 * torch.randn(n, generator=g)).tolist()
    act = ["relu" if v > 0 else "tanh" for v in x[:, 3].tolist()]
    return x, {"test_acc": acc, "activation": act}


def test_penalty_grid_is_the_published_one():
    assert len(PENALTIES) == 17
    assert PENALTIES[0] == pytest.approx(1e3) and PENALTIES[-1] == pytest.approx(1e-5)


def test_ridge_path_matches_normal_equations_and_leaves_bias_unpenalised():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(30, 4, generator=g, dtype=torch.float64), torch.randn(30, 2, generator=g, dtype=torch.float64) + 5
    coefs, biases = ridge_path(x, y, [0.0, 3.0])
    xc, yc = x - x.mean(0), y - y.mean(0)
    for coef, bias, lam in zip(coefs, biases, [0.0, 3.0]):
        expected = torch.linalg.solve(xc.T @ xc + lam * torch.eye(4, dtype=torch.float64), xc.T @ yc)
        torch.testing.assert_close(coef, expected)
        torch.testing.assert_close(bias, y.mean(0) - x.mean(0) @ expected)
    # More features than rows (the flat-weights case) takes the dual route; same solution.
    x, y = torch.randn(10, 25, generator=g, dtype=torch.float64), torch.randn(10, 1, generator=g, dtype=torch.float64)
    coefs, _ = ridge_path(x, y, [3.0, 1e-5])
    xc, yc = x - x.mean(0), y - y.mean(0)
    for coef, lam in zip(coefs, [3.0, 1e-5]):
        expected = torch.linalg.solve(xc.T @ xc + lam * torch.eye(25, dtype=torch.float64), xc.T @ yc)
        torch.testing.assert_close(coef, expected, rtol=1e-6, atol=1e-8)
    # Huge penalty: the weights vanish, the bias alone predicts the mean.
    coefs, biases = ridge_path(x, y, [1e12])
    assert coefs.abs().max() < 1e-8
    torch.testing.assert_close(biases[0], y.mean(0))


def test_probe_set_predicts_numeric_and_categorical_properties():
    (xt, yt), (xv, yv), (xs, ys) = _toy(200, seed=0), _toy(60, seed=1), _toy(80, seed=2)
    probes = ProbeSet.fit("weights", xt, yt, xv, yv)
    assert probes.probes["test_acc"].kind == "regression"
    assert probes.probes["activation"].kind == "classification"
    assert probes.probes["activation"].classes == ["relu", "tanh"]
    assert probes.probes["test_acc"].penalty in PENALTIES
    scores = probes.evaluate(xs, ys)
    assert scores["test_acc"]["r2"] > 0.95
    assert scores["test_acc"]["kendall_tau"] > 0.85
    assert scores["activation"]["accuracy"] > 0.9
    pred = probes.predict(xs[:3])
    assert set(pred) == {"test_acc", "activation"} and len(pred["test_acc"]) == 3
    assert all(a in ("relu", "tanh") for a in pred["activation"])


def test_validation_picks_a_strong_penalty_for_pure_noise():
    g = torch.Generator().manual_seed(3)
    x, xv = torch.randn(40, 30, generator=g), torch.randn(40, 30, generator=g)
    probes = ProbeSet.fit("stats", x, {"y": torch.randn(40, generator=g).tolist()}, xv, {"y": torch.randn(40, generator=g).tolist()})
    # Fitting noise with 30 features on 40 rows overfits: validation R^2 prefers the largest penalties.
    assert probes.probes["y"].penalty >= 10


def test_rows_with_nan_targets_are_left_out():
    (xt, yt), (xv, yv) = _toy(100, seed=0), _toy(40, seed=1)
    yt = {"test_acc": [float("nan")] + yt["test_acc"][1:]}
    probes = ProbeSet.fit("weights", xt, yt, xv, {"test_acc": yv["test_acc"]})
    assert np.isfinite(probes.predict(xv)["test_acc"]).all()


def test_missing_categorical_targets_are_left_out_and_counted():
    (xt, yt), (xv, yv) = _toy(100, seed=0), _toy(40, seed=1)
    train = {"activation": [None, None] + yt["activation"][2:], "test_acc": [float("nan")] + yt["test_acc"][1:]}
    val = {"activation": [None] + yv["activation"][1:], "test_acc": yv["test_acc"]}
    probes = ProbeSet.fit("weights", xt, train, xv, val)
    assert probes.probes["activation"].classes == ["relu", "tanh"]  # None is no class
    assert probes.info["left_out"] == {"train": {"activation": 2, "test_acc": 1}, "validation": {"activation": 1}}
    # scores leave a missing target's row out, and give nan when no target is left
    assert property_score("classification", [None, "relu", "tanh"], ["tanh", "relu", "tanh"]) == {"accuracy": 1.0}
    assert np.isnan(property_score("classification", [None], ["relu"])["accuracy"])
    assert np.isnan(property_score("regression", [float("nan")], [0.5])["r2"])
    with pytest.raises(ValueError, match="'activation' has no training or no validation target"):
        ProbeSet.fit("weights", xt, {"activation": yt["activation"]}, xv, {"activation": [None] * 40})


def test_save_and_load_round_trip(tmp_path):
    (xt, yt), (xv, yv) = _toy(100, seed=0), _toy(40, seed=1)
    probes = ProbeSet.fit("sane", xt, yt, xv, yv, info={"pooling": "mean"})
    path = probes.save(tmp_path)
    assert path == tmp_path / "probes" / "sane.json"
    assert json.loads(path.read_text())["info"]["pooling"] == "mean"
    assert not list((tmp_path / "probes").glob("*.tmp"))
    loaded = ProbeSet.load(tmp_path, "sane")
    assert loaded.predict(xv) == probes.predict(xv)
    assert loaded.info["pooling"] == "mean"


def test_bad_input_names_the_fix(tmp_path):
    (xt, yt), (xv, yv) = _toy(50, seed=0), _toy(20, seed=1)
    probes = ProbeSet.fit("sane", xt, {"test_acc": yt["test_acc"]}, xv, {"test_acc": yv["test_acc"]})
    with pytest.raises(ValueError, match="no probe for property 'epoch'.*hyperrep probe fit"):
        probes.predict(xv, ["epoch"])
    with pytest.raises(ValueError, match="fitted on 6 'sane' features, got 5"):
        probes.predict(xv[:, :5])
    with pytest.raises(FileNotFoundError, match="hyperrep probe fit"):
        ProbeSet.load(tmp_path, "stats")
    with pytest.raises(ValueError, match="NaN"):
        ProbeSet.fit("sane", xt * float("nan"), yt, xv, yv)


def test_model_bootstrap_draws_whole_models():
    groups = np.repeat([7, 3, 5, 9], [2, 3, 1, 4])
    draws = model_bootstrap(groups, resamples=50, seed=1)
    assert len(draws) == 50
    for rows in draws:
        drawn = groups[rows]
        for g in set(drawn.tolist()):  # a drawn model comes with all of its rows, k times
            assert (drawn == g).sum() % (groups == g).sum() == 0
    assert len({tuple(r) for r in draws}) > 1
    assert all((a == b).all() for a, b in zip(draws, model_bootstrap(groups, resamples=50, seed=1)))


def test_paired_bootstrap_intervals_separate_a_better_probe():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(20), 4)
    y = rng.normal(size=80)
    predictions = {("sane", "acc"): y + 0.2 * rng.normal(size=80), ("stats", "acc"): y + 0.8 * rng.normal(size=80),
                   ("weights", "acc"): y + 0.8 * rng.normal(size=80)}
    predictions["same", "acc"] = predictions["stats", "acc"]
    predictions["ranked", "acc"] = np.exp(predictions["sane", "acc"])  # sane's order, a worse R^2
    scores = {f: property_score("regression", y, predictions[f, "acc"]) for f in ("sane", "stats", "same", "ranked")}
    rows = [{"features": f, "property": "acc", "metric": "r2", "value": s["r2"], "kendall_tau": s["kendall_tau"]}
            for f, s in scores.items()]
    add_bootstrap_intervals(rows, predictions, {"acc": y}, groups, resamples=200)
    sane, stats, same, ranked = rows
    assert sane["ci"][0] < sane["value"] < sane["ci"][1] and "vs_stats" not in stats
    assert sane["vs_stats"] == pytest.approx(sane["value"] - stats["value"])
    assert sane["vs_stats_ci"][0] > 0  # clearly better on every resample of the models
    assert same["vs_stats"] == 0 and same["vs_stats_ci"] == [0, 0]
    # Kendall's tau gets its own intervals on the same resamples: it sees the order only
    assert sane["kendall_tau_ci"][0] < sane["kendall_tau"] < sane["kendall_tau_ci"][1]
    assert sane["vs_stats_tau"] == pytest.approx(sane["kendall_tau"] - stats["kendall_tau"])
    assert sane["vs_stats_tau_ci"][0] > 0 and same["vs_stats_tau_ci"] == [0, 0]
    assert ranked["vs_stats_ci"][1] < sane["vs_stats_ci"][0]  # a monotone map: far worse R^2 ...
    assert ranked["kendall_tau"] == pytest.approx(sane["kendall_tau"])  # ... the same tau
    assert ranked["vs_stats_tau_ci"] == pytest.approx(sane["vs_stats_tau_ci"])
    assert np.isnan(percentile_interval([np.nan, -np.inf])).all()  # no finite value: no interval


def test_bootstrap_intervals_count_the_resamples_without_a_finite_score():
    # Two models with a constant target each: a resample that draws one model twice has targets of
    # variance 0, so its R^2 is not finite. Those resamples are counted, not silently dropped.
    groups = np.repeat([0, 1], 3)
    y = np.repeat([0.25, 0.75], 3)
    predictions = {("stats", "acc"): y + np.linspace(-0.05, 0.05, 6), ("sane", "acc"): y + 0.01}
    rows = [{"features": f, "property": "acc", "metric": "r2",
             "value": property_score("regression", y, predictions[f, "acc"])["r2"]} for f in ("stats", "sane")]
    add_bootstrap_intervals(rows, predictions, {"acc": y}, groups, resamples=100, seed=3)
    single = sum(len(set(groups[d].tolist())) == 1 for d in model_bootstrap(groups, 100, seed=3))
    assert 0 < single < 100
    assert rows[0]["nonfinite"] == rows[1]["nonfinite"] == rows[1]["vs_stats_nonfinite"] == single
    assert all(np.isfinite(rows[1]["ci"])) and num_nonfinite([1.0, np.nan, -np.inf]) == 2
