"""Population training: stacked training equals one-at-a-time training; divergence; fine-tuning."""

import copy

import pytest
import torch
from torch import nn

from hyperrep_hf.zoo import build_model, evaluate_accuracy, finetune, init_weights, load_task
from hyperrep_hf.zoo.population import (
    LoopPopulation,
    StackedPopulation,
    TrainSettings,
    make_population,
)


@pytest.fixture(scope="module")
def digits():
    return load_task("digits", limit=200)


def _models(arch, n, **kw):
    out = []
    for seed in range(n):
        torch.manual_seed(seed)
        model = build_model(arch, **kw)
        out.append(init_weights(model, "kaiming_uniform", generator=torch.Generator().manual_seed(seed)))
    return out


@pytest.mark.parametrize("arch,kw", [("cnn-digits", {"activation": "tanh"}), ("mlp", {"in_features": 64, "hidden": [16]})])
def test_stacked_training_matches_training_each_model_alone(digits, arch, kw):
    models = _models(arch, 4, **kw)
    settings = [
        TrainSettings(seed=0, optimizer="adam", lr=1e-2),
        TrainSettings(seed=1, optimizer="sgd", lr=5e-2, momentum=0.9, weight_decay=1e-3),
        TrainSettings(seed=2, optimizer="adamw", lr=3e-3, weight_decay=1e-2),
        TrainSettings(seed=3, optimizer="adam", lr=1e-3, weight_decay=1e-3),
    ]
    stacked = StackedPopulation([copy.deepcopy(m) for m in models], settings)
    alone = LoopPopulation([copy.deepcopy(m) for m in models], settings)
    for epoch in (1, 2):
        stacked.train_epoch(digits, epoch, batch_size=10)
        alone.train_epoch(digits, epoch, batch_size=10)
    w_stacked, w_alone = stacked.flat_weights(), alone.flat_weights()
    assert not torch.equal(w_alone, torch.stack([alone.layout.flatten(m.state_dict()) for m in models]))  # they trained
    torch.testing.assert_close(w_stacked, w_alone, atol=2e-4, rtol=1e-3)
    loss_s, acc_s = stacked.evaluate(digits.test_x, digits.test_y)
    loss_a, acc_a = alone.evaluate(digits.test_x, digits.test_y)
    torch.testing.assert_close(acc_s, acc_a, atol=0.005, rtol=0)
    torch.testing.assert_close(loss_s, loss_a, atol=1e-3, rtol=1e-3)
    assert acc_s.max() > 0.5  # the settings learn


def test_a_diverging_model_is_marked_and_the_others_go_on(digits):
    models = _models("cnn-digits", 3, activation="relu")
    healthy = StackedPopulation([copy.deepcopy(m) for m in models], [TrainSettings(seed=i, lr=1e-2) for i in range(3)])
    with torch.no_grad():
        models[1][0].weight.fill_(float("nan"))  # model 1 produces NaN losses from the first step
    population = make_population(models, [TrainSettings(seed=i, lr=1e-2) for i in range(3)])
    assert isinstance(population, StackedPopulation)
    population.train_epoch(digits, 1, batch_size=10)
    healthy.train_epoch(digits, 1, batch_size=10)
    assert population.diverged.tolist() == [False, True, False]
    # the NaNs of model 1 leak into no other model: 0 and 2 train exactly as without it
    w, w_healthy = population.flat_weights(), healthy.flat_weights()
    torch.testing.assert_close(w[[0, 2]], w_healthy[[0, 2]])
    assert torch.isfinite(w[[0, 2]]).all() and not torch.equal(w[0], healthy.layout.flatten(models[0].state_dict()))


def test_dropout_rates_stack_per_model(digits):
    models = _models("cnn-digits", 2, dropout=0.0) + _models("cnn-digits", 1, dropout=0.5)
    population = StackedPopulation(models, [TrainSettings(seed=i) for i in range(3)])
    x = digits.train_x[:64]
    eval_logits = population.forward(x, shared=True)
    train_logits = population.forward(x.expand(3, *x.shape), train=True)
    # only the model with dropout 0.5 changes between train and eval mode
    assert torch.allclose(eval_logits[:2], train_logits[:2], atol=1e-5)
    assert not torch.allclose(eval_logits[2], train_logits[2], atol=1e-3)


def test_models_that_do_not_stack_train_one_after_another(digits):
    models = [nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 10)) for _ in range(2)]
    population = make_population(models, [TrainSettings(seed=i) for i in range(2)])
    assert isinstance(population, LoopPopulation)
    population.train_epoch(digits, 1, batch_size=10)
    assert population.flat_weights().shape == (2, population.layout.num_weights)


def test_finetune_and_evaluate_accuracy(digits):
    models = _models("cnn-digits", 3, activation="tanh")
    before = evaluate_accuracy(models, digits, "test")
    history = finetune(models, digits, epochs=2, lr=1e-2)
    assert history["test_acc"].shape == (3, 3)  # epochs 0, 1, 2 x models
    torch.testing.assert_close(history["test_acc"][0], before)
    after = evaluate_accuracy(models, digits, "test")  # the modules were updated in place
    torch.testing.assert_close(after, history["test_acc"][-1], atol=1e-6, rtol=0)
    assert (after > before).all()


def test_unknown_optimizer_is_refused():
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'.*adam"):
        TrainSettings(optimizer="rmsprop")
