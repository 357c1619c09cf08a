"""stats-gbt: gradient-boosted trees on s(W) (Unterthiner et al. 2020), hyperparameters chosen on
validation, seeded, table-only (never pickled)."""

import numpy as np
import pytest
import torch

from hyperrep_hf.downstream.probes import ProbeSet, property_score
from hyperrep_hf.downstream.trees import GBT_GRID, GBT_MAX_ITER, TreeProbeSet


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


def test_tree_probes_leave_out_missing_targets_and_refuse_to_be_saved(tmp_path):
    (xt, yt), (xv, yv) = _nonlinear(60, 3), _nonlinear(20, 4)
    yt = {"acc": [float("nan")] + yt["acc"][1:], "init": [None, None] + yt["init"][2:]}
    trees = TreeProbeSet.fit("stats-gbt", xt, yt, xv, yv)
    assert trees.info["left_out"] == {"train": {"acc": 1, "init": 2}}
    assert np.isfinite(trees.predict(xv)["acc"]).all()
    with pytest.raises(ValueError, match="table-only.*hyperrep probe eval --features stats-gbt"):
        trees.save(tmp_path)
    with pytest.raises(ValueError, match="table-only and never saved"):
        ProbeSet.load(tmp_path, "stats-gbt")
    with pytest.raises(ValueError, match="no probe for property 'epoch'"):
        trees.predict(xv, ["epoch"])
    with pytest.raises(ValueError, match="NaN"):
        TreeProbeSet.fit("stats-gbt", xt * float("nan"), yt, xv, yv)


def test_the_command_offers_every_feature_set():
    from hyperrep_hf.commands.probe import FEATURES
    from hyperrep_hf.downstream.probes import FEATURE_SETS

    assert FEATURES == FEATURE_SETS and "stats-gbt" in FEATURES
