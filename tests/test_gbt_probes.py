"""stats-gbt: gradient-boosted trees on s(W) (Unterthiner et al. 2020), hyperparameters chosen on
validation, seeded, kept as arrays that predict as sklearn does and are saved without pickle."""

import numpy as np
import pytest
import torch

from hyperrep_hf.downstream.probes import ProbeSet, property_score
from hyperrep_hf.downstream.trees import GBT_GRID, GBT_MAX_ITER, TreeEnsemble, TreeProbeSet


def _nonlinear(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 5, generator=g) * 4 - 2
    y = (torch.where(x[:, 0] > 0, 1.0, -1.0) * x[:, 1].abs() + 0.05 * torch.randn(n, generator=g)).tolist()
    label = ["high" if v > 0.5 else "low" for v in x[:, 2].square().tolist()]
    return x, {"acc": y, "init": label}


def test_trees_fit_what_a_linear_probe_cannot_and_choose_on_validation():
    (xt, yt), (xv, yv), (xs, ys) = _nonlinear(300, 0), _nonlinear(100, 1), _nonlinear(100, 2)
    trees = TreeProbeSet.fit("stats-gbt", xt, yt, xv, yv, seed=0)
    linear = ProbeSet.fit("stats", xt, yt, xv, yv)
    tree_pred, linear_pred = trees.predict(xs), linear.predict(xs)
    tree_r2 = property_score("regression", ys["acc"], tree_pred["acc"])["r2"]
    assert tree_r2 > 0.85 and tree_r2 > property_score("regression", ys["acc"], linear_pred["acc"])["r2"] + 0.3
    assert property_score("classification", ys["init"], tree_pred["init"])["accuracy"] > 0.9
    assert set(tree_pred["init"]) <= {"high", "low"}
    probe = trees.probes["acc"]
    chosen = probe.hyperparameters
    assert all(chosen[k] in v for k, v in GBT_GRID.items()) and 1 <= chosen["max_iter"] <= GBT_MAX_ITER
    # the recorded validation score is the refitted model's on the validation rows
    assert probe.validation["r2"] == pytest.approx(property_score("regression", yv["acc"], trees.predict(xv)["acc"])["r2"])
    # ... and no other grid point with sklearn's default 100 iterations does better there
    from sklearn.ensemble import HistGradientBoostingRegressor
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="openmp"):
        other = HistGradientBoostingRegressor(max_iter=100, early_stopping=False, random_state=0, learning_rate=0.2,
                                              max_leaf_nodes=7, min_samples_leaf=5).fit(xt.numpy(), np.array(yt["acc"]))
        other_r2 = property_score("regression", yv["acc"], other.predict(xv.numpy()))["r2"]
    assert probe.validation["r2"] >= other_r2
    # seeded: the same fit, the same predictions
    assert TreeProbeSet.fit("stats-gbt", xt, yt, xv, yv, seed=0).predict(xs) == tree_pred


def test_tree_probes_leave_out_missing_targets_and_are_saved_without_pickle(tmp_path):
    (xt, yt), (xv, yv) = _nonlinear(60, 3), _nonlinear(20, 4)
    yt = {"acc": [float("nan")] + yt["acc"][1:], "init": [None, None] + yt["init"][2:],
          "act": ["relu"] * 60}  # one class in train: a constant probe
    yv = {**yv, "act": ["relu"] * 20}
    trees = TreeProbeSet.fit("stats-gbt", xt, yt, xv, yv)
    assert trees.info["left_out"] == {"train": {"acc": 1, "init": 2}}
    assert np.isfinite(trees.predict(xv)["acc"]).all() and trees.probes["act"].trees is None
    path = trees.save(tmp_path)
    assert path == tmp_path / "probes" / "stats-gbt.json" and (tmp_path / "probes" / "stats-gbt.safetensors").is_file()
    loaded = TreeProbeSet.load(tmp_path)
    assert loaded.predict(xv) == trees.predict(xv) and loaded.info == trees.info
    assert {n: p.hyperparameters for n, p in loaded.probes.items()} == {n: p.hyperparameters for n, p in trees.probes.items()}
    with pytest.raises(FileNotFoundError, match="hyperrep probe fit --checkpoint .* --features stats-gbt"):
        TreeProbeSet.load(tmp_path / "elsewhere")
    with pytest.raises(ValueError, match="TreeProbeSet.load"):
        ProbeSet.load(tmp_path, "stats-gbt")
    with pytest.raises(ValueError, match="no probe for property 'epoch'"):
        trees.predict(xv, ["epoch"])
    with pytest.raises(ValueError, match="NaN"):
        TreeProbeSet.fit("stats-gbt", xt * float("nan"), yt, xv, yv)


@pytest.mark.parametrize("classes", [0, 2, 3])  # 0: a regression
def test_the_arrays_predict_what_sklearn_predicts_missing_values_included(classes):
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    rng = np.random.default_rng(classes)
    x = rng.normal(size=(300, 6))
    x[rng.random(x.shape) < 0.1] = np.nan  # sklearn learns where a NaN goes at each split
    signal = np.nan_to_num(x[:, 0]) + np.sin(np.nan_to_num(x[:, 1], nan=2.0))
    if classes:
        y = np.digitize(signal, np.quantile(signal, np.linspace(0, 1, classes + 1)[1:-1]))
        model = HistGradientBoostingClassifier(max_iter=20, random_state=0).fit(x, y)
        expected = model.decision_function(x).reshape(len(x), -1)
    else:
        model = HistGradientBoostingRegressor(max_iter=40, max_leaf_nodes=15, random_state=0).fit(x, signal)
        expected = model.predict(x)[:, None]
    trees = TreeEnsemble.from_sklearn(model)
    assert trees.roots.shape == (model.n_iter_, 1 if classes <= 2 else classes)
    np.testing.assert_allclose(trees.raw(x), expected, rtol=0, atol=1e-12)
    again = TreeEnsemble.from_tensors(trees.tensors("p"), "p")
    np.testing.assert_array_equal(again.raw(x), trees.raw(x))
    with pytest.raises(ValueError, match="pass the s\\(W\\) statistics they were fitted on"):
        trees.raw(x[:, :1])


def test_the_command_offers_every_feature_set():
    from hyperrep_hf.commands.probe import FEATURES
    from hyperrep_hf.downstream.probes import FEATURE_SETS

    assert FEATURES == FEATURE_SETS and "stats-gbt" in FEATURES
