"""Population training: stacked and functional (BatchNorm, residual) training equal one-at-a-time
training; divergence; dropout; fine-tuning; zoo builds of BatchNorm architectures."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hyperrep_hf.zoo import (
    TaskData,
    build_model,
    build_zoo,
    evaluate_accuracy,
    finetune,
    init_weights,
    load_task,
)
from hyperrep_hf.zoo.population import (
    FunctionalPopulation,
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


@pytest.mark.parametrize("engine", ["grouped", "vmap"])
def test_a_diverging_batchnorm_model_leaks_into_no_other(digits, engine):
    def net(seed):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 10))

    models = [net(i) for i in range(3)]
    settings = [TrainSettings(seed=i, lr=1e-2) for i in range(3)]
    healthy = FunctionalPopulation([copy.deepcopy(m) for m in models], settings, engine=engine)
    with torch.no_grad():
        models[1][0].weight.fill_(float("nan"))
    population = FunctionalPopulation(models, settings, engine=engine)
    population.train_epoch(digits, 1, batch_size=10)
    healthy.train_epoch(digits, 1, batch_size=10)
    assert population.diverged.tolist() == [False, True, False]
    w, w_healthy = population.flat_weights(), healthy.flat_weights()
    torch.testing.assert_close(w[[0, 2]], w_healthy[[0, 2]])  # weights and BatchNorm statistics
    assert torch.isfinite(w[[0, 2]]).all()


def test_dropout_rates_stack_per_model(digits):
    models = _models("cnn-digits", 2, dropout=0.0) + _models("cnn-digits", 1, dropout=0.5)
    population = StackedPopulation(models, [TrainSettings(seed=i) for i in range(3)])
    x = digits.train_x[:64]
    eval_logits = population.forward(x, shared=True)
    train_logits = population.forward(x.expand(3, *x.shape), train=True)
    # only the model with dropout 0.5 changes between train and eval mode
    assert torch.allclose(eval_logits[:2], train_logits[:2], atol=1e-5)
    assert not torch.allclose(eval_logits[2], train_logits[2], atol=1e-3)


class _ItemGate(nn.Module):
    """A layer with data-dependent control flow (.item()): torch.vmap cannot batch it."""

    def forward(self, h):
        return h if h.sum().item() > -1e9 else -h


def test_make_population_picks_the_population_that_runs_the_models(digits):
    bn_mlp = [nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 10)) for _ in range(2)]
    population = make_population(bn_mlp, [TrainSettings(seed=i) for i in range(2)])
    assert isinstance(population, FunctionalPopulation)
    population.train_epoch(digits, 1, batch_size=10)
    assert population.engine == "grouped" and population.flat_weights().shape == (2, population.layout.num_weights)
    # LayerNorm mixes the features of a row: no grouped version, vmap runs it
    ln = [nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.LayerNorm(16), nn.Linear(16, 10)) for _ in range(2)]
    population = make_population(ln, [TrainSettings(seed=i) for i in range(2)], example_input=digits.train_x[:2])
    assert isinstance(population, FunctionalPopulation) and population.engine == "vmap"
    # neither engine runs .item(): one model after another
    gated = [nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.BatchNorm1d(16), _ItemGate(), nn.Linear(16, 10)) for _ in range(2)]
    population = make_population(gated, [TrainSettings(seed=i) for i in range(2)], example_input=digits.train_x[:2])
    assert isinstance(population, LoopPopulation)
    population.train_epoch(digits, 1, batch_size=10)
    with pytest.raises(ValueError, match=r"group_by_structure.*stacked=False"):
        make_population(_models("cnn-digits", 1, activation="tanh") + _models("cnn-digits", 1, activation="relu"), [TrainSettings()] * 2)
    assert isinstance(make_population(_models("cnn-digits", 1, activation="tanh") + _models("cnn-digits", 1, activation="relu"),
                                      [TrainSettings()] * 2, stacked=False), LoopPopulation)


def _image_task(x, y, n_train=30):
    return TaskData("images", x[:n_train], y[:n_train], x[n_train:], y[n_train:], x[n_train:], y[n_train:], 10)


@pytest.fixture(scope="module")
def bn_cases(digits):
    """(models, task): a ResNet-18 of width 4 on 8x8 digits and a VGG with BatchNorm on digits
    upsampled to 32x32 (its classifier expects 32x32; bilinear: no ties for max-pooling to break)."""
    x, y = digits.train_x[:50], digits.train_y[:50]
    resnet = []
    for seed in range(3):
        torch.manual_seed(seed)
        resnet.append(build_model("resnet18", in_channels=1, width=4))
    vgg = []
    for seed in range(3):
        torch.manual_seed(seed)
        vgg.append(build_model("vgg-s", in_channels=1, widths=(4, 8)))
    return {"resnet18": (resnet, _image_task(x, y)), "vgg-s": (vgg, _image_task(F.interpolate(x, size=32, mode="bilinear"), y))}


# Small learning rates: BatchNorm nets at batch 10 amplify float rounding when steps are large. The
# VGG's convolution biases feed BatchNorms, so their true gradient is 0 and Adam would scale rounding
# noise up to steps of lr: SGD only there.
BN_SETTINGS = {
    "resnet18": [
        TrainSettings(seed=0, optimizer="adam", lr=3e-4),
        TrainSettings(seed=1, optimizer="sgd", lr=1e-2, momentum=0.9, weight_decay=1e-3),
        TrainSettings(seed=2, optimizer="adamw", lr=3e-4, weight_decay=1e-2),
    ],
    "vgg-s": [
        TrainSettings(seed=0, optimizer="sgd", lr=2e-2, momentum=0.0),
        TrainSettings(seed=1, optimizer="sgd", lr=1e-2, momentum=0.9, weight_decay=1e-3),
        TrainSettings(seed=2, optimizer="sgd", lr=5e-3, momentum=0.5, weight_decay=1e-2),
    ],
}


@pytest.mark.parametrize("engine", ["grouped", "vmap"])
@pytest.mark.parametrize("arch", ["resnet18", "vgg-s"])
def test_functional_training_matches_training_each_model_alone(bn_cases, arch, engine):
    models, task = bn_cases[arch]
    population = FunctionalPopulation([copy.deepcopy(m) for m in models], BN_SETTINGS[arch], engine=engine)
    alone = LoopPopulation([copy.deepcopy(m) for m in models], BN_SETTINGS[arch])
    population.train_epoch(task, 1, batch_size=10)  # 3 steps per model, each its own data order
    alone.train_epoch(task, 1, batch_size=10)
    w0 = torch.stack([alone.layout.flatten(m.state_dict()) for m in models])
    w, w_alone = population.flat_weights(), alone.flat_weights()
    stats = [i for i, name in enumerate(alone.layout.names) if "running_" in name]
    cols = torch.cat([torch.arange(alone.layout.offsets[i], alone.layout.offsets[i] + alone.layout.entries[i].numel) for i in stats])
    assert (w_alone - w0).abs().max() > 0.02 and (w_alone[:, cols] - w0[:, cols]).abs().max() > 0.02  # weights and statistics moved
    torch.testing.assert_close(w, w_alone, atol=2e-4, rtol=1e-3)  # weights AND running statistics
    trained = [copy.deepcopy(m) for m in models]
    population.load_into(trained)
    for mine, theirs in zip(trained, alone.models):
        tracked = [b for n, b in mine.named_buffers() if n.endswith("num_batches_tracked")]
        assert tracked and all(int(b) == 3 for b in tracked)
        torch.testing.assert_close(mine.state_dict(), theirs.state_dict(), atol=2e-4, rtol=1e-3)
    loss, acc = population.evaluate(task.test_x, task.test_y)
    loss_alone, acc_alone = alone.evaluate(task.test_x, task.test_y)
    torch.testing.assert_close(loss, loss_alone, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(acc, acc_alone, atol=0.05, rtol=0)


@pytest.mark.parametrize("engine", ["grouped", "vmap"])
def test_evaluation_uses_each_models_running_statistics(bn_cases, engine):
    models, task = bn_cases["resnet18"]
    population = FunctionalPopulation([copy.deepcopy(m) for m in models], [TrainSettings(seed=i, lr=1e-2) for i in range(3)], engine=engine)
    population.train_epoch(task, 1, batch_size=10)
    before = population.flat_weights()
    x = task.test_x[:8]
    trained = [copy.deepcopy(m) for m in models]
    population.load_into(trained)
    with torch.no_grad():
        eval_logits = population.forward(x, shared=True)
        own_eval = torch.stack([m.eval()(x) for m in trained])
    torch.testing.assert_close(eval_logits, own_eval, atol=1e-4, rtol=1e-4)
    population.evaluate(task.test_x, task.test_y)
    torch.testing.assert_close(population.flat_weights(), before, atol=0, rtol=0)  # evaluation leaves the statistics alone
    with torch.no_grad():
        train_logits = population.forward(x.expand(3, *x.shape), train=True)
    assert not torch.allclose(eval_logits, train_logits, atol=1e-2)  # training mode normalises with the batch's statistics


@pytest.mark.parametrize("engine", ["grouped", "vmap"])
def test_functional_dropout_is_per_model_and_reproducible(digits, engine):
    def net(p, seed):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(p), nn.Flatten(), nn.Linear(144, 10))

    models = [net(0.0, 0), net(0.5, 1)]
    x = digits.train_x[:16]
    outs = []
    for _ in range(2):
        population = FunctionalPopulation([copy.deepcopy(m) for m in models], [TrainSettings(seed=i) for i in range(2)], engine=engine)
        torch.manual_seed(123)
        with torch.no_grad():
            outs.append(population.forward(x.expand(2, *x.shape), train=True))
    torch.testing.assert_close(outs[0], outs[1], atol=0, rtol=0)  # same torch seed, same masks
    trained = [copy.deepcopy(m) for m in models]
    population.load_into(trained)  # the training-mode forward updated the running statistics
    with torch.no_grad():
        own_train = torch.stack([copy.deepcopy(m).train()(x) for m in models])  # model 0's dropout is a no-op
        own_eval = torch.stack([m.eval()(x) for m in trained])
        eval_logits = population.forward(x, shared=True)
    torch.testing.assert_close(outs[0][0], own_train[0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(outs[0][1], own_train[1], atol=1e-3)
    torch.testing.assert_close(eval_logits, own_eval, atol=1e-5, rtol=1e-5)  # no dropout in evaluation


def test_zoo_build_trains_batchnorm_architectures_as_a_population(tmp_path, monkeypatch):
    from hyperrep_hf.zoo import build as build_module

    chosen = []
    real = build_module.make_population
    monkeypatch.setattr(build_module, "make_population", lambda *a, **k: chosen.append(real(*a, **k)) or chosen[-1])
    config = {"name": "tiny-resnet", "architecture": "resnet18", "architecture_kwargs": {"width": 2}, "task": "digits",
              "task_kwargs": {"limit": 40}, "hyperparameters": {"optimizer": ["adam"], "lr": [1e-3]}, "num_models": 3, "epochs": 1, "population_size": 3}
    zoo = build_zoo(config, tmp_path / "zoo", progress=False)
    assert len(chosen) == 1 and isinstance(chosen[0], FunctionalPopulation) and chosen[0].engine == "grouped"
    # the rows hold each model's trained weights and BatchNorm statistics, as one-at-a-time training gives them
    from hyperrep_hf.zoo.build import init_model

    spec = build_module.resolve_spec(config)
    task = load_task("digits", limit=40)
    specs = spec.models()
    alone = LoopPopulation([init_model(spec, m, task.input_shape, task.num_classes) for m in specs], [m.settings for m in specs])
    alone.train_epoch(task, 1, spec.batch_size)
    rows = {}
    for split in ("train", "validation", "test"):
        part = zoo.dataset[split]
        for mid, epoch, w in zip(part["model_id"], part["epoch"], zoo.weights(split)):
            if epoch == 1:
                rows[mid] = w
    torch.testing.assert_close(torch.stack([rows[m.model_id] for m in specs]), alone.flat_weights(), atol=2e-4, rtol=1e-3)
    assert any("running_mean" in name for name in zoo.layout.names)


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
