"""The demo's probe table and the model card report Kendall tau beside R^2, every s(W) baseline, and
how many bootstrap resamples gave no finite difference."""

import pytest

from hyperrep_hf import SaneConfig
from hyperrep_hf.cards import check_model_card, probe_eval_results, sane_model_card
from hyperrep_hf.demo import SANE_VS_GBT, SANE_VS_STATS, pivot_probe_table, probe_table_columns


def _row(features, prop, value, tau, **extra):
    return {"features": features, "property": prop, "metric": "r2" if tau is not None else "accuracy", "value": value,
            "kendall_tau": tau, **extra}


def test_pivot_puts_tau_beside_every_feature_set_and_counts_nonfinite_differences():
    rows = [
        _row("sane", "test_acc", 0.9, 0.8, vs_stats=0.1, vs_stats_ci=[0.05, 0.15], vs_stats_nonfinite=0,
             **{"vs_stats-gbt": -0.02, "vs_stats-gbt_ci": [-0.1, 0.04], "vs_stats-gbt_nonfinite": 3}),
        _row("stats", "test_acc", 0.8, 0.7), _row("stats-gbt", "test_acc", 0.92, 0.81), _row("weights", "test_acc", 0.1, 0.2),
        _row("sane", "init", 0.75, None),
    ]
    pivot = pivot_probe_table(rows)
    acc, init = pivot
    assert acc["SANE"] == 0.9 and acc["SANE tau"] == 0.8 and acc["s(W)+GBT tau"] == 0.81 and acc["W tau"] == 0.2
    assert acc[SANE_VS_STATS] == "+0.100 [+0.050, +0.150]"
    assert acc[SANE_VS_GBT] == "-0.020 [-0.100, +0.040] (3 non-finite)"
    assert init["SANE tau"] is None  # a classification has no tau
    columns = probe_table_columns(pivot, ("sane", "stats", "stats-gbt", "weights"))
    assert columns == ["property", "metric", "SANE", "SANE tau", "s(W)", "s(W) tau", "s(W)+GBT", "s(W)+GBT tau", "W",
                       "W tau", SANE_VS_STATS, SANE_VS_GBT]


def test_model_card_results_carry_kendall_tau_beside_r2():
    results = probe_eval_results({"test_acc": 0.9, "epoch": 0.8}, dataset="org/zoo", kendall_tau_by_property={"test_acc": 0.7})
    assert [(r.metric_type, r.metric_name, r.metric_value) for r in results] == [
        ("r_squared", "R^2 test_acc", 0.9), ("kendall_tau", "Kendall tau test_acc", 0.7), ("r_squared", "R^2 epoch", 0.8)]
    card = sane_model_card(SaneConfig.from_preset("tiny", token_size=33), model_name="x", eval_results=results)
    check_model_card(card)
    assert "| Kendall tau test_acc | 0.7000 |" in str(card) and card.data.metrics == ["kendall_tau", "r_squared"]
    with pytest.raises(ValueError, match="Kendall tau given for \\['ggap'\\] without an R\\^2"):
        probe_eval_results({"test_acc": 0.9}, dataset="org/zoo", kendall_tau_by_property={"ggap": 0.1})


def test_scratch_models_and_fine_tuning_follow_the_best_model_of_a_hyperparameter_zoo(tmp_path):
    """A hyperparameter zoo's first values (here a U(0,1) init) can train to chance: the from-scratch
    baseline is built, initialised and fine-tuned as the zoo's best train model instead."""
    import numpy as np
    import torch

    from hyperrep_hf.downstream.evaluation import scratch_models, zoo_recipe
    from hyperrep_hf.zoo import build_zoo

    torch.set_num_threads(1)
    hp = {"activation": ["sigmoid", "relu"], "init": ["uniform", "kaiming_uniform"], "optimizer": ["sgd", "adam"],
          "lr": [1e-4, 1e-3]}
    zoo = build_zoo({"name": "hyp", "architecture": "cnn-digits", "task": "digits", "search": "grid", "hyperparameters": hp},
                    tmp_path / "zoo", num_models=16, epochs=1, progress=False)
    meta = zoo.metadata("train")
    last = meta[meta["epoch"] == meta["epoch"].max()]
    best = last.loc[last["val_acc"].idxmax()]
    recipe = zoo_recipe(zoo)
    assert (recipe["init"], recipe["optimizer"], recipe["lr"]) == (best["init"], best["optimizer"], best["lr"])
    assert recipe["architecture_kwargs"]["activation"] == best["activation"]
    assert best["init"] != "uniform"  # what the test is about: not the zoo's first init
    model = scratch_models(zoo, 1)[0]
    assert best["activation"] in {type(m).__name__.lower() for m in model.modules()}
    first = next(p for n, p in model.named_parameters() if n.endswith("weight"))
    assert (first < 0).any()  # not U(0, 1)
    # a seed zoo's recipe is its one set of values
    seed = build_zoo("digits-seed", tmp_path / "seed", num_models=3, epochs=1, progress=False)
    assert {k: zoo_recipe(seed)[k] for k in ("init", "optimizer")} == {
        k: seed.config["hyperparameters"][k][0] for k in ("init", "optimizer")}
    assert np.isclose(zoo_recipe(seed)["lr"], seed.config["hyperparameters"]["lr"][0])


def test_generation_rows_carry_bootstrap_intervals_of_the_difference_to_the_baseline():
    """`finetuned_group_rows(bootstrap=B)`: each group's mean accuracy gets an interval over resamples
    of its models, and the other groups the difference to the baseline's with its interval, which
    includes 0 for the same models and excludes it for models far apart."""
    import numpy as np
    import torch

    from hyperrep_hf.downstream.evaluation import finetuned_group_rows
    from hyperrep_hf.downstream.scores import bootstrap_means
    from hyperrep_hf.zoo.architectures import build_model
    from hyperrep_hf.zoo.population import finetune
    from hyperrep_hf.zoo.tasks import load_task

    torch.manual_seed(0)
    task = load_task("digits")
    trained = [build_model("cnn-digits") for _ in range(4)]
    finetune(trained, task, 1)  # in place: one epoch from scratch
    untrained = [build_model("cnn-digits") for _ in range(4)]
    groups = {"kde30": trained, "again": trained, "chance": untrained}
    rows = {r["source"]: r for r in finetuned_group_rows(groups, task, (0,), seed=0, bootstrap=500, baseline="kde30")}
    assert "vs_kde30" not in rows["kde30"] and all(r["ci"][0] <= r["mean_acc"] <= r["ci"][1] for r in rows.values())
    assert rows["again"]["vs_kde30"] == 0.0 and rows["again"]["vs_kde30_ci"][0] < 0 < rows["again"]["vs_kde30_ci"][1]
    low, high = rows["chance"]["vs_kde30_ci"]
    assert rows["chance"]["vs_kde30"] == pytest.approx(rows["chance"]["mean_acc"] - rows["kde30"]["mean_acc"])
    assert low <= rows["chance"]["vs_kde30"] <= high < -0.3  # chance against trained models: far behind
    assert "ci" not in finetuned_group_rows({"a": trained}, task, (0,), seed=0)[0]  # no bootstrap: rows as before
    means = bootstrap_means([0.0, 1.0], 2000, np.random.default_rng(1))
    assert set(np.unique(means)) == {0.0, 0.5, 1.0} and abs(means.mean() - 0.5) < 0.05


def test_generation_rows_compare_with_the_baseline_at_another_epoch():
    """`baseline_epoch=E`: every row's difference is to the baseline after E epochs (the transfer
    relation "after one epoch vs scratch after five"); an epoch not fine-tuned to is refused."""
    import torch

    from hyperrep_hf.downstream.evaluation import finetuned_group_rows
    from hyperrep_hf.zoo.architectures import build_model
    from hyperrep_hf.zoo.tasks import load_task

    torch.manual_seed(0)
    task = load_task("digits")
    groups = {"sampled": [build_model("cnn-digits") for _ in range(3)],
              "scratch": [build_model("cnn-digits") for _ in range(3)]}
    rows = finetuned_group_rows(groups, task, (0, 1), seed=0, bootstrap=300, baseline="scratch", baseline_epoch=1)
    at = {(r["source"], r["epoch"]): r for r in rows}
    scratch_after_one = at["scratch", 1]["mean_acc"]
    assert scratch_after_one > at["scratch", 0]["mean_acc"] + 0.3  # one epoch of digits trains a CNN far off chance
    for epoch in (0, 1):
        row = at["sampled", epoch]
        assert "vs_scratch" not in row
        assert row["vs_scratch_at_1"] == pytest.approx(row["mean_acc"] - scratch_after_one)
        assert row["vs_scratch_at_1_ci"][0] <= row["vs_scratch_at_1"] <= row["vs_scratch_at_1_ci"][1]
    assert at["sampled", 0]["vs_scratch_at_1_ci"][1] < 0  # untrained models: behind scratch after one epoch
    with pytest.raises(ValueError, match="baseline_epoch 5 is not one of the epochs"):
        finetuned_group_rows(groups, task, (0, 1), seed=0, bootstrap=10, baseline="scratch", baseline_epoch=5)
